#!/usr/bin/env bash
# On a board (or any machine) with TensorRT and cuda-python: lint, build fp32 and fp16 engines, verify
# both (which stamps them), then time steps with and without CUDA graphs. docs/BOARD.md walks through it.
#   bash scripts/board_check.sh bundles/inverted-pendulum-xlstm.policy [MAX_BATCH]   (OUT=dir, PYTHON=python3)
set -euo pipefail
BUNDLE=${1:?usage: scripts/board_check.sh BUNDLE [MAX_BATCH]}
MAX_BATCH=${2:-1}
PY=${PYTHON:-python3}
OUT=${OUT:-board_results}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"

TARGET=$($PY -c "import tensorrt; from policyrt.export.trt_build import generation; print(generation(tensorrt.__version__))")
echo "== TensorRT $($PY -c 'import tensorrt; print(tensorrt.__version__)') -> lint target $TARGET"
$PY -m policyrt.cli lint "$BUNDLE" --target "$TARGET" --precision fp16 | tee "$OUT/lint.txt"
for precision in fp32 fp16; do
    echo "== build-engine $precision (batch 1..$MAX_BATCH)"
    $PY -m policyrt.cli build-engine "$BUNDLE" --precision "$precision" --max-batch "$MAX_BATCH" 2>&1 | tee "$OUT/build-$precision.txt"
    echo "== verify $precision"
    if ! $PY -m policyrt.cli verify "$BUNDLE" --backend tensorrt --precision "$precision" > "$OUT/verify-$precision.txt"; then
        cat "$OUT/verify-$precision.txt"
        echo "verify $precision FAILED: no stamp, so no latency for this engine"
        continue
    fi
    cat "$OUT/verify-$precision.txt"
    batches=1
    [ "$MAX_BATCH" -gt 1 ] && batches="1 $MAX_BATCH"
    echo "== latency $precision"
    # shellcheck disable=SC2086  # batches is a list on purpose
    $PY "$HERE/benchmarks/trt_latency.py" "$BUNDLE" --precision "$precision" --batch $batches --json "$OUT/latency-$precision.json"
done
echo "results in $OUT/"
