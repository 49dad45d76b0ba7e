#!/usr/bin/env bash
# Set up a virtual environment with the test requirements and run the fast
# test suite. Extra arguments go to pytest (e.g. `-m slow` for the slow set).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
# The package itself, editable: scripts, tests and CRF workers import this tree.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e .
exec .venv/bin/python -m pytest "$@"
