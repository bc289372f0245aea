#!/usr/bin/env bash
# Installs what the checks need, then runs them all: lint, format, types, tests.
# Needs: Python 3.11+ with pip; PostgreSQL on 127.0.0.1:5432 for the postgres tests
# (they fail with a message saying so when it is down).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
echo "== ruff"; python3 -m ruff check .
python3 -m ruff format --check .
echo "== mypy (strict)"; python3 -m mypy
echo "== pytest"; python3 -m pytest "$@"
