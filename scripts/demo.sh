#!/usr/bin/env bash
# The main job: set up the environment, then run the closed-loop demo (sim server + controller).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/policyrt demo "$@"
