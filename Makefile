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

# A tiny random model makes noise: the demo shows the whole path (prompt -> mp4) in seconds on a CPU.
demo: install
	$(PY) -m fastdit make-tiny-model $(DEMO_DIR)/tiny-wan
	$(PY) -m fastdit generate --model $(DEMO_DIR)/tiny-wan --prompt "a red fox running through snow" \
		--output $(DEMO_DIR)/demo.mp4

test: install-test
	$(PY) -m pytest -q tests
