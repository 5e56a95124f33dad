#!/usr/bin/env bash
# Create .venv (if needed) and install fastdit with its dependencies into it.
#   scripts/install.sh          runtime dependencies
#   scripts/install.sh test     plus the test dependencies (pytest, triton, playwright) and
#                               Debian's chromium for the web page test (apt-get, as root)
# With no NVIDIA/AMD GPU, torch is the CPU build (torch==2.13.0, served from the local cache
# on our machines) so that no CUDA packages are downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# The web page test drives Debian's chromium through Playwright (Playwright's own browser
# download is not used). Checked on every run, before the stamp: the browser is not in the venv.
if [ "$EXTRA" = "test" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[install] installing Debian's chromium (for the web page test)"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "[install] WARNING: apt-get install chromium failed: the web page test will fail" >&2
  else
    echo "[install] WARNING: /usr/bin/chromium is missing (apt-get install chromium, as root):" \
         "the web page test will fail" >&2
  fi
fi
STAMP="$VENV/.fastdit-installed-${EXTRA:-runtime}"
HASH="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/kfd ]; then
    echo "[install] GPU found: installing torch"
    "${PIP[@]}" torch
  else
    echo "[install] no GPU found: installing the CPU build of torch (torch==2.13.0)"
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
if [ "$EXTRA" = "test" ]; then
  echo "[install] installing fastdit with test dependencies"
  "${PIP[@]}" -e ".[test]"
else
  echo "[install] installing fastdit"
  "${PIP[@]}" -e .
fi
echo "$HASH" > "$STAMP"
