"""Peer reference for `mario-rl bench train`: Stable-Baselines3's PPO on this project's envs.

It trains SB3's PPO (CnnPolicy = the Nature CNN) on the same Mario envs, rollout, epochs and
minibatch as a `mario-rl bench train` run, and prints its training steps/s as JSON. SB3 is not
a dependency of mario-rl; run it next to the project without installing it:

    uv run --with stable-baselines3 python benchmarks/sb3_ppo.py --envs 8 --rollout-steps 512 \
        --epochs 10 --minibatch-size 256 --seconds 100 --vec subproc

The first rollout + update is warm-up and not counted, like in `mario-rl bench train`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from mario_rl.envs import EnvConfig
from mario_rl.envs.single import MarioEnv


class _Clock(BaseCallback):
    """Remembers when the second rollout starts (right after the warm-up update)."""

    def __init__(self) -> None:
        super().__init__()
        self.start: float | None = None
        self.steps0 = 0

    def _on_rollout_start(self) -> None:
        if self.start is None and self.model.num_timesteps > 0:
            self.start = time.perf_counter()
            self.steps0 = self.model.num_timesteps

    def _on_step(self) -> bool:
        return True


def _make(env_cfg: EnvConfig, seed: int):
    return lambda: MarioEnv(env_cfg, seed=seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--rollout-steps", type=int, default=512)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--minibatch-size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=100.0)
    p.add_argument("--vec", choices=["dummy", "subproc"], default="subproc")
    p.add_argument("--actions", default="simple")
    p.add_argument("--torch-threads", type=int, default=2)
    a = p.parse_args()

    torch.set_num_threads(a.torch_threads)
    env_cfg = EnvConfig(stages="1-1", actions=a.actions)
    fns = [_make(env_cfg, i) for i in range(a.envs)]
    venv = SubprocVecEnv(fns) if a.vec == "subproc" else DummyVecEnv(fns)
    model = PPO(
        "CnnPolicy",
        venv,
        n_steps=a.rollout_steps,
        batch_size=a.minibatch_size,
        n_epochs=a.epochs,
        learning_rate=2.5e-4,
        device="cpu",
        seed=1,
        verbose=0,
    )
    clock = _Clock()
    batch = a.envs * a.rollout_steps
    # Learn in chunks of one rollout so the time budget is checked at update boundaries.
    while True:
        model.learn(total_timesteps=batch, callback=clock, reset_num_timesteps=False)
        if clock.start is not None and time.perf_counter() - clock.start >= a.seconds:
            break
    now = time.perf_counter()
    steps = model.num_timesteps - clock.steps0
    venv.close()
    print(
        json.dumps(
            {
                "framework": "stable-baselines3",
                "vec": a.vec,
                "envs": a.envs,
                "rollout_steps": a.rollout_steps,
                "epochs": a.epochs,
                "minibatch_size": a.minibatch_size,
                "torch_threads": torch.get_num_threads(),
                "train_steps_per_s": round(steps / (now - clock.start), 1),
                "seconds": round(now - clock.start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
