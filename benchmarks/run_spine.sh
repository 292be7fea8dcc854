#!/usr/bin/env bash
# Spine benchmark (issue 2): step latency of the session vs the xlstm package's eager step vs the
# PyTorch reference, and the lockstep round trip over tcp loopback, all in ONE run; JSON + PNG.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
.venv/bin/policyrt bench bundles/inverted-pendulum-xlstm.policy --steps 5000 --loop --json "$out/spine.json"
.venv/bin/python benchmarks/plot_latency.py "$out/spine.json" "$out/spine.png"
