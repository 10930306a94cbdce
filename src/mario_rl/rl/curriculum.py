"""The stage curriculum: per-stage running failure rates from finished episodes, turned into the
weights by which new episodes draw their stage (stages failed most are drawn most).

Pure bookkeeping, no I/O and no env: A3G's main process publishes the weights to its workers
(:mod:`mario_rl.algos.a3g_stages`), PPO re-weights its envs' stage selection after each rollout
(:mod:`mario_rl.algos.ppo`). Its state is JSON-able, for checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Curriculum"]


class Curriculum:
    """Per-stage running failure rates from finished episodes, turned into sampling weights.

    ``record(stage, cleared)`` folds one episode in (a stage never seen counts as failed);
    ``weights()`` is ``floor + (1 - floor) * failure`` per stage, so stages failed most are drawn
    most and mastered ones still at ``floor`` relative weight.
    """

    def __init__(self, stages: Sequence[str], floor: float = 0.1, decay: float = 0.9) -> None:
        self.stages = tuple(stages)
        self.floor = floor
        self.decay = decay
        self.failure = dict.fromkeys(self.stages, 1.0)
        self.episodes = dict.fromkeys(self.stages, 0)

    def record(self, stage: str, cleared: bool) -> None:
        """One finished episode that started on ``stage`` (ignored if not a curriculum stage)."""
        if stage not in self.failure:
            return
        self.failure[stage] = self.decay * self.failure[stage] + (1.0 - self.decay) * (
            0.0 if cleared else 1.0
        )
        self.episodes[stage] += 1

    def weights(self) -> dict[str, float]:
        """Relative sampling weight per curriculum stage (not normalised)."""
        return {s: self.floor + (1.0 - self.floor) * f for s, f in self.failure.items()}

    def shares(self) -> dict[str, float]:
        """The weights normalised to sum to 1 (what TensorBoard shows as ``curriculum/<stage>``)."""
        weights = self.weights()
        total = sum(weights.values())
        return {s: w / total for s, w in weights.items()}

    def state(self) -> dict[str, Any]:
        """JSON-able state (checkpoints)."""
        return {"failure": dict(self.failure), "episodes": dict(self.episodes)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` output (stages not in this curriculum are ignored). A value out
        of range (a failure rate outside [0, 1], a negative count) is a one-line ValueError."""
        for s, f in state.get("failure", {}).items():
            if s in self.failure:
                f = float(f)
                if not (math.isfinite(f) and 0.0 <= f <= 1.0):
                    raise ValueError(f"curriculum state: failure rate of {s} is {f}, not in [0, 1]")
                self.failure[s] = f
        for s, n in state.get("episodes", {}).items():
            if s in self.episodes:
                if int(n) < 0:
                    raise ValueError(f"curriculum state: episode count of {s} is {n}, not >= 0")
                self.episodes[s] = int(n)
