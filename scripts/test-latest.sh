#!/usr/bin/env bash
# Run the suite against the newest releases of every dependency (not scripts/constraints.txt), in
# its own venv (.venv-latest), so that drift (a genai-prices, SDK or mitmproxy release that changes
# behaviour) is found before users find it. Prints what changed against the pins. Usage:
#   bash scripts/test-latest.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
PY=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
rm -rf .venv-latest
"$PY" -m venv .venv-latest
.venv-latest/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv-latest/bin/python -m pip install --quiet --disable-pip-version-check --upgrade -e '.[dev]'
echo "test-latest: versions that differ from scripts/constraints.txt:"
.venv-latest/bin/python -m pip freeze --exclude-editable | sort > .venv-latest/freeze.txt
grep -v '^#' scripts/constraints.txt | sort | comm -13 - .venv-latest/freeze.txt | sed 's/^/  /' || true
.venv-latest/bin/python -m pytest "$@"
