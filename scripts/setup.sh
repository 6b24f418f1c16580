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
# The client matrix runs the openai npm package on Node and curl (tests/e2e/test_clients.py); the
# dashboard's browser tests drive Debian's Chromium (Playwright cannot download its own offline);
# the fleet tests start a real redis-server and a throwaway Postgres cluster (initdb, pg_ctl).
missing=()
for pair in node:nodejs npm:npm curl:curl chromium:chromium redis-server:redis-server; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1 \
  || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: warning: the tests need ${missing[*]}; install them" >&2
  fi
fi
# The dashboard's third-party browser code (uPlot), at the versions of its package-lock.json.
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix addon/llmtap/ui --no-audit --no-fund --silent
fi
echo "setup: ready ($(.venv/bin/python --version), llmtap $(.venv/bin/python -c 'import llmtap; print(llmtap.__version__)'))"
