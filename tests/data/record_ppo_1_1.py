"""Record the shipped 1-1 model's greedy run to the flag as per-frame buttons and RAM pokes.

The env steps the native core frame by frame; this wraps its emulators to log, for the first
episode, every frame's controller byte and every RAM write the env makes between frames (its
cut-scene fast-forward), so ``crosscheck_scenarios.model_run`` replays the run exactly on both
machines.

    uv run python tests/data/record_ppo_1_1.py   # writes tests/data/ppo-1-1-flag.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mario_rl.envs import MarioVectorEnv
from mario_rl.envs.emulator import native_start_state
from mario_rl.evaluation.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("ppo-1-1-flag.json")


class Recorder:
    """One native machine whose first episode is logged frame by frame."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.buttons: list[int] = []
        self.pokes: list[tuple[int, int, int]] = []
        self.loads = 0
        self.last: np.ndarray | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load_state(self, i: int, state) -> None:
        self.loads += 1
        if self.loads == 1:
            assert state == native_start_state("1-1"), "the episode must start at 1-1's start"
        self.inner.load_state(i, state)
        self.last = self.inner.rams[0].copy()

    def step_one(self, i: int, button: int, draw: bool = True) -> None:
        if self.loads == 1:
            ram = self.inner.rams[0]
            for a in np.flatnonzero(ram != self.last):
                self.pokes.append((len(self.buttons), int(a), int(ram[a])))
            self.buttons.append(int(button))
        self.inner.step_one(i, button, True)
        self.last = self.inner.rams[0].copy()

    def step(self, buttons, frames, first=None, gray=None, gray_prev=None) -> None:
        for k in range(frames):
            b = first[0] if (k == 0 and first is not None) else buttons[0]
            self.step_one(0, int(b))
            if gray_prev is not None and k == frames - 2:
                self.inner.gray(0, gray_prev[0])
        if gray is not None:
            self.inner.gray(0, gray[0])


def main() -> None:
    policy = load_policy(ROOT / "models" / "ppo-1-1")
    config = policy.env_config
    assert config.emulator == "native"
    env = MarioVectorEnv(config, num_envs=1, env_seeds=[[0]])
    group = env.groups[0]
    rec = group.emu = Recorder(group.emu)
    obs, _ = env.reset()
    first = np.ones(1, bool)
    while True:
        obs, _, term, trunc, info = env.step(policy(obs, first))
        first = term | trunc
        if first[0]:
            break
    stats = info["episode"]
    print({k: v for k, v in stats.items() if k != "components"})
    assert stats["flag"][0], "the model did not reach the flag"
    OUT.write_text(
        json.dumps(
            {
                "about": "models/ppo-1-1, greedy, 1-1 from its start (env seed [0]): per-frame "
                "buttons (hex) and pokes [frame, address, value] made before that frame",
                "buttons": bytes(rec.buttons).hex(),
                "pokes": rec.pokes,
            }
        )
        + "\n"
    )
    print(f"{len(rec.buttons)} frames, {len(rec.pokes)} pokes -> {OUT}")


if __name__ == "__main__":
    main()
