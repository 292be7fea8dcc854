#!/usr/bin/env bash
# Issue 6 device check (torch-cuda tests, parity, latency with/without CUDA graphs): see gpu_check.py.
#   [OUT=dir] [PYTHON=python] bash benchmarks/gpu_check.sh [gpu_check.py args]
# Picks the first Python that imports torch unless PYTHON is set; a hard 300 s cap backs the script's
# own deadline (it writes its JSON before then).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
      PYTHON="$candidate"; break
    fi
  done
fi
exec timeout --kill-after=10 300 "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
