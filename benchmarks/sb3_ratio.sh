#!/usr/bin/env bash
# mario-rl PPO against Stable-Baselines3 PPO at equal hyper-parameters, back to back.
#
# Both train PPO on this project's 1-1 env (84x84 gray, 4 frames, skip 4, simple actions: the
# flags override the default preset's 64x64 and right-only) with
# the Nature CNN, 8 envs x 512 steps, 10 epochs, minibatch 256, 2 torch threads; each prints its
# training steps/s after a warm-up update. The ratio of the two is the result (these machines
# drift by 2x from day to day, so only a ratio measured in one run is claimed).
#
#   bash benchmarks/sb3_ratio.sh [SECONDS]     # default 120 s per side
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
out="$(mktemp -d)"
uv run --with stable-baselines3 python benchmarks/sb3_ppo.py --envs 8 --rollout-steps 512 \
  --epochs 10 --minibatch-size 256 --actions simple --seconds "$seconds" --vec subproc \
  > "$out/sb3.json"
uv run mario-rl bench train --envs 8 --workers 2 --rollout-steps 512 --epochs 10 \
  --minibatch-size 256 --actions simple --size 84 --network nature --seconds "$((2 * seconds))" \
  --json > "$out/mario-rl.json"
uv run python - "$out" <<'PY'
import json, sys
from pathlib import Path

d = Path(sys.argv[1])
sb3 = json.loads((d / "sb3.json").read_text())
ours = json.loads((d / "mario-rl.json").read_text())
mine = ours["train_steps_per_s"]
print(json.dumps({"sb3_steps_per_s": sb3["train_steps_per_s"], "mario_rl_steps_per_s": mine,
                  "ratio": round(mine / sb3["train_steps_per_s"], 2), "mario_rl": ours,
                  "sb3": sb3}, indent=1))
PY
