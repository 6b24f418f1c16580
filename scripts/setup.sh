#!/usr/bin/env bash
# Create ./.venv with Python >= 3.12 (mitmproxy 12 needs it) and install llmtap with its dev extras,
# at the versions in scripts/constraints.txt.
# Safe to run again: an existing .venv is reused and the install refreshed.
set -euo pipefail
cd "$(dirname "$0")/.."

is_312() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
  local cand
  for cand in python3.12 python3.13 python3.14 python3; do
    if command -v "$cand" >/dev/null 2>&1 && is_312 "$cand"; then command -v "$cand"; return 0; fi
  done
  # pyenv installs that are not the global version (the shim refuses them).
  for cand in "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
    if [ -x "$cand" ] && is_312 "$cand"; then echo "$cand"; return 0; fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! is_312 .venv/bin/python; then
  PY=$(find_python) || { echo "setup: llmtap needs Python >= 3.12 (none found on PATH or in ~/.pyenv)" >&2; exit 1; }
  echo "setup: creating .venv with $PY ($("$PY" --version))"
  rm -rf .venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# Pinned (scripts/constraints.txt); scripts/test-latest.sh tries the newest releases instead.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt -e '.[dev]'
# The client matrix runs the openai npm package on Node and curl (tests/e2e/test_clients.py).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing nodejs, npm and curl (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm curl >/dev/null
  else
    echo "setup: warning: node, npm and curl are needed by the client tests; install them" >&2
  fi
fi
echo "setup: ready ($(.venv/bin/python --version), llmtap $(.venv/bin/python -c 'import llmtap; print(llmtap.__version__)'))"
