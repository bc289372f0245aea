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
# Branch coverage of the whole suite, gated: COVERAGE_MIN is the measured total rounded down,
# less a point for what timing moves between runs (measured 91.73-92.21 % in five runs of round
# 14: the outage and crash paths move it).
# It only goes up: raise it when the suite covers more, never lower it to make a change pass.
# With arguments (a subset of the tests) the gate would not mean anything: no coverage then.
COVERAGE_MIN=90
if [ "$#" -eq 0 ]; then
  echo "== pytest (branch coverage >= ${COVERAGE_MIN}%)"
  python3 -m pytest --cov=stream_expiry --cov-branch --cov-report=term \
    --cov-fail-under="${COVERAGE_MIN}"
else
  echo "== pytest"; python3 -m pytest "$@"
fi
