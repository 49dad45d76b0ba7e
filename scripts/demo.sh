#!/usr/bin/env bash
# Set up a virtual environment with the requirements and run the embedded
# demo (scripts/demo.py): synthetic data, training, evaluation, inference.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
# The package itself, editable: scripts, tests and CRF workers import this tree.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e .
exec .venv/bin/python scripts/demo.py "$@"
