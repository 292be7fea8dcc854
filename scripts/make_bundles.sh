#!/usr/bin/env bash
# Rebuild the six shipped bundles from scratch: collect mixed-quality data with the scripted experts,
# train an xLSTM and a DT policy per environment, export. These are the commands recorded in each
# bundle's manifest (provenance.commands; `policyrt info BUNDLE` prints them), which stay the authority
# if this script and a bundle ever disagree. About 70 minutes on 2 cores, one job at a time.
#   bash scripts/make_bundles.sh [KEY...]    (keys: pendulum double-pendulum reacher; default all)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
keys=("$@")
[ ${#keys[@]} -gt 0 ] || keys=(pendulum double-pendulum reacher)

pendulum() {
  policyrt sim collect --env InvertedPendulum-v5 --expert lqr --episodes 40 --action-noise 0,0.3,0.05,0.05 --expert-gain 1,1,0.2,0 --seed 0 --out data/gain-pendulum
  policyrt train xlstm --data data/gain-pendulum --out checkpoints/gain-pendulum-xlstm --steps 1000 --embedding-dim 64 --num-blocks 2 --num-heads 2 --labels behaviour --seed 0
  policyrt export checkpoints/gain-pendulum-xlstm --out bundles/inverted-pendulum-xlstm.policy
  policyrt train dt --data data/gain-pendulum --out checkpoints/gain-pendulum-dt128 --steps 3000 --hidden-size 128 --n-layer 2 --labels behaviour --seed 0
  policyrt export checkpoints/gain-pendulum-dt128 --out bundles/inverted-pendulum-dt.policy
}

double_pendulum() {
  policyrt sim collect --env InvertedDoublePendulum-v5 --expert lqr --episodes 80 --action-noise 0,0.1,0.05,0.05 --expert-gain 1,1,0.6,0.3 --seed 0 --out data/gain-double-pendulum
  policyrt train xlstm --data data/gain-double-pendulum --out checkpoints/gain-dp-xlstm --steps 2000 --embedding-dim 64 --num-blocks 2 --num-heads 2 --labels behaviour --seed 0
  policyrt export checkpoints/gain-dp-xlstm --out bundles/double-pendulum-xlstm.policy
  policyrt train dt --data data/gain-double-pendulum --out checkpoints/gain-dp-dt --steps 2500 --hidden-size 128 --n-layer 2 --labels behaviour --seed 0
  policyrt export checkpoints/gain-dp-dt --out bundles/double-pendulum-dt.policy
}

reacher() {
  policyrt sim collect --env Reacher-v5 --expert ik --episodes 500 --action-noise 0,0,0.1,0,0 --random-mix 0,0,0,0.5,1 --seed 0 --out data/mix-reacher
  policyrt train xlstm --data data/mix-reacher --out checkpoints/reacher-xlstm-5k --steps 5000 --window 50 --batch-size 32 --embedding-dim 64 --num-blocks 2 --num-heads 2 --return-scale 10 --target-return -4 --labels behaviour --seed 0
  policyrt export checkpoints/reacher-xlstm-5k --out bundles/reacher-xlstm.policy
  policyrt train dt --data data/mix-reacher --out checkpoints/reacher-dt-8k --steps 8000 --lr 6e-4 --hidden-size 128 --n-layer 2 --max-ep-len 64 --return-scale 10 --target-return -4 --labels behaviour --seed 0
  policyrt export checkpoints/reacher-dt-8k --out bundles/reacher-dt.policy
}

for key in "${keys[@]}"; do
  case $key in
    pendulum) pendulum ;;
    double-pendulum) double_pendulum ;;
    reacher) reacher ;;
    *) echo "unknown key $key (pendulum, double-pendulum, reacher)" >&2; exit 2 ;;
  esac
done
