"""Play a policy for N episodes on each stage and summarise per stage (no training knowledge).

Evaluation draws its no-op starts from seed streams that training never uses (training seeds
are plain integers; evaluation seeds are tagged sequences), so a table is an honest measure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..envs import EnvConfig, MarioVectorEnv
from ..envs.stages import STAGES, parse_stages

EVAL_SEED_TAG = 0x5EED_E7A1

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``act(obs uint8 (N,C,H,W), first bool (N,)) -> actions (N,)``; ``first`` marks envs whose
episode just began (a recurrent policy resets their state)."""


@dataclass
class EpisodeResult:
    """One evaluation episode."""

    stage: str
    cleared: bool
    x_max: int
    steps: int
    reason: str
    ret: float
    stages_cleared: int
    """Flags reached (in ``game`` mode: stages cleared in sequence)."""
    time_left: int
    """In-game clock left when the episode ended."""


@dataclass
class StageReport:
    """Summary of one stage's episodes."""

    episodes: list[EpisodeResult] = field(default_factory=list)

    def summary(self) -> dict:
        """Clear rate, progress and time figures of the stage."""
        eps = self.episodes
        cleared = [e for e in eps if e.cleared]
        xs = [e.x_max for e in eps]
        return {
            "episodes": len(eps),
            "clear_rate": len(cleared) / len(eps) if eps else 0.0,
            "mean_x": float(np.mean(xs)) if xs else 0.0,
            "max_x": int(max(xs)) if xs else 0,
            "mean_return": float(np.mean([e.ret for e in eps])) if eps else 0.0,
            "mean_steps_to_flag": float(np.mean([e.steps for e in cleared])) if cleared else None,
            "mean_time_left_at_flag": float(np.mean([e.time_left for e in cleared]))
            if cleared
            else None,
            "deaths": sum(e.reason in ("death", "game_over") for e in eps),
            "mean_stages_cleared": float(np.mean([e.stages_cleared for e in eps])) if eps else 0.0,
            "end_stages": sorted({e.stage for e in eps}),
            "ends": {r: sum(e.reason == r for e in eps) for r in sorted({e.reason for e in eps})},
        }


def eval_seeds(seed: int, n: int) -> list[list[int]]:
    """Seed sequences for ``n`` evaluation envs: disjoint from any training seed."""
    return [[EVAL_SEED_TAG, int(seed), i] for i in range(n)]


def evaluate(
    policy: Policy,
    env_config: EnvConfig,
    stages: str,
    episodes: int = 10,
    seed: int = 0,
    workers: int = 1,
    max_envs: int = 32,
) -> dict[str, StageReport]:
    """Play ``episodes`` episodes on every stage of ``stages``; returns a report per stage.

    Episodes run side by side in vector envs of up to ``max_envs`` (batched inference,
    ``workers`` threads); each env counts only its first episode. ``game`` plays the whole game
    from 1-1 with all lives, on through the stages, until game over.
    """
    sel = parse_stages(stages)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if sel.game:
        env_config = dataclasses.replace(
            env_config,
            life_loss_ends=False,
            flag_ends=False,
            max_steps=max(env_config.max_steps, 50_000),
        )
    jobs = [(s, i) for s in sel.stages for i in range(episodes)]
    reports: dict[str, StageReport] = {}
    for start in range(0, len(jobs), max_envs):
        chunk = jobs[start : start + max_envs]
        n = len(chunk)
        env = MarioVectorEnv(
            dataclasses.replace(env_config, stages=sel.spec if sel.game else chunk[0][0]),
            num_envs=n,
            workers=min(workers, n),
            env_seeds=eval_seeds(seed, len(jobs))[start : start + n],
        )
        if not sel.game:
            for i, (stage, _) in enumerate(chunk):
                env.set_stages([i], stage)
        obs, _ = env.reset()
        first = np.ones(n, bool)
        done = np.zeros(n, bool)
        while not done.all():
            obs, _, term, trunc, info = env.step(policy(obs, first))
            first = term | trunc
            for i in np.flatnonzero(first & ~done):
                ep = info["episode"]
                key = "game" if sel.game else chunk[i][0]
                reports.setdefault(key, StageReport()).episodes.append(
                    EpisodeResult(
                        stage=STAGES[int(ep["stage"][i])],
                        cleared=bool(ep["flag"][i]) and not sel.game,
                        stages_cleared=int(ep["stages_cleared"][i]),
                        x_max=int(ep["x_max"][i]),
                        steps=int(ep["l"][i]),
                        reason=str(ep["reason"][i]),
                        ret=float(ep["r"][i]),
                        time_left=int(ep["time_left"][i]),
                    )
                )
            done |= first
        env.close()
    return reports


def summarise(reports: dict[str, StageReport]) -> dict[str, dict]:
    """Per-stage summaries in game order."""
    order = {s: i for i, s in enumerate(STAGES)}
    return {s: reports[s].summary() for s in sorted(reports, key=lambda s: order.get(s, math.inf))}
