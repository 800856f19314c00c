#!/usr/bin/env bash
# Creates .venv (once) and installs unitransformer with its test extra into it.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" 2>&1 \
    | grep -v "is neither a file nor a directory" || true
.venv/bin/python -c "import unitransformer, tasks" || { echo "setup failed: unitransformer is not importable" >&2; exit 1; }
