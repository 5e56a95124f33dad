# The two set-up commands of the README:
#   make demo   installs fastdit and generates a short video with a tiny random model
#   make test   installs fastdit with its test dependencies and runs the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= out

.PHONY: demo test install install-test

install:
	@scripts/install.sh

install-test:
	@scripts/install.sh test

demo: install
	$(PY) -m fastdit ops

test: install-test
	$(PY) -m pytest -q tests
