#!/usr/bin/env bash
# The test command: environment, lint, Python 3.10 check of the board-side packages, full test suite.
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m "not slow"` for the fast set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== Python 3.10 compatibility of policyrt/ runtime/ controllers/ (vermin)"
.venv/bin/vermin --target=3.10- --violations --no-tips --eval-annotations --backport dataclasses policyrt runtime controllers
echo "== pytest"
.venv/bin/python -m pytest "$@"
