#!/usr/bin/env bash
# Rebuild the issue-4 demo bundles from scratch: collect mixed-quality data with the scripted experts,
# train an xLSTM and a DT policy per environment, export. Every command is also recorded in each
# bundle's manifest (provenance.commands). About 25 minutes on 2 cores.
#   bash scripts/make_bundles.sh [ENV_KEY...]    (keys: pendulum double-pendulum reacher; default all)
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/policyrt
keys=("$@")
[ ${#keys[@]} -gt 0 ] || keys=(pendulum double-pendulum reacher)

recipe() {  # key env expert noise-levels return-scale
  local key=$1 env=$2 expert=$3 noise=$4 scale=$5
  $P sim collect --env "$env" --expert "$expert" --episodes 60 --action-noise "$noise" --seed 0 --out "data/$key"
  $P train xlstm --data "data/$key" --out "checkpoints/$key-xlstm" --steps 800 --embedding-dim 64 --num-blocks 2 \
    --num-heads 2 --return-scale "$scale" --seed 0
  $P export "checkpoints/$key-xlstm" --out "bundles/$key-xlstm-small.policy"
  $P train dt --data "data/$key" --out "checkpoints/$key-dt" --steps 1500 --hidden-size 64 --n-layer 2 --n-head 1 \
    --context 20 --return-scale "$scale" --seed 0
  $P export "checkpoints/$key-dt" --out "bundles/$key-dt-small.policy"
}

for key in "${keys[@]}"; do
  case $key in
    pendulum) recipe pendulum InvertedPendulum-v5 lqr 0,0.5,1.0 1000 ;;
    double-pendulum) recipe double-pendulum InvertedDoublePendulum-v5 lqr 0,0.2,0.4 1000 ;;
    reacher) recipe reacher Reacher-v5 ik 0,0.1,0.3 10 ;;
    *) echo "unknown key $key (pendulum, double-pendulum, reacher)" >&2; exit 2 ;;
  esac
done
