#!/usr/bin/env bash
# The test command: environment, lint, Python 3.10 check of the board-side packages, full test suite.
# Pass pytest arguments through, e.g. `bash scripts/test.sh -m "not slow"` for the fast set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== Python 3.10 compatibility of policyrt/ runtime/ controllers/ and the board-side export modules (vermin)"
.venv/bin/vermin --target=3.10- --violations --no-tips --eval-annotations --backport dataclasses policyrt runtime controllers \
    export/trt_build.py export/trt_builder.py export/trt_lint.py export/trt_ops.py export/fp16.py
echo "== TensorRT lint of every shipped bundle (all generations, fp16: the stricter precision)"
for bundle in bundles/*.policy; do
    .venv/bin/python -m policyrt.cli lint "$bundle" --target all --precision fp16 | grep -E "^(lint|  ERROR|  WARNING|FAIL)"
done
echo "== pytest"
.venv/bin/python -m pytest "$@"
