"""The stage curriculum: per-stage running failure rates from finished episodes, turned into the
weights by which new episodes draw their stage (stages failed most are drawn most), and
optionally a frontier: stages open one after another, in the order given, as earlier ones are
mastered, so a model learns a few new stages at a time instead of all of them at once.

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

    With ``frontier`` N > 0 only the first stages (in the order given) are open, weight 0 for the
    rest: the next stage opens whenever fewer than N open stages are unmastered, mastered meaning
    a running clear rate (1 - failure) of at least ``master``. An open stage stays open (a stage
    forgotten again is just unmastered), so the open count only grows.
    """

    def __init__(
        self,
        stages: Sequence[str],
        floor: float = 0.1,
        decay: float = 0.9,
        frontier: int = 0,
        master: float = 0.5,
    ) -> None:
        self.stages = tuple(stages)
        self.floor = floor
        self.decay = decay
        self.frontier = frontier
        self.master = master
        self.failure = dict.fromkeys(self.stages, 1.0)
        self.episodes = dict.fromkeys(self.stages, 0)
        self.opened = len(self.stages)
        """How many stages (a prefix of ``stages``) episodes may be drawn from."""
        if frontier > 0:
            self.opened = min(frontier, len(self.stages))
            self._open_more()

    def mastered(self, stage: str) -> bool:
        """Whether ``stage``'s running clear rate has reached ``master``."""
        return 1.0 - self.failure[stage] >= self.master

    def _open_more(self) -> None:
        if self.frontier <= 0:
            return
        while self.opened < len(self.stages) and (
            sum(not self.mastered(s) for s in self.stages[: self.opened]) < self.frontier
        ):
            self.opened += 1

    def record(self, stage: str, cleared: bool) -> None:
        """One finished episode that started on ``stage`` (ignored if not a curriculum stage)."""
        if stage not in self.failure:
            return
        self.failure[stage] = self.decay * self.failure[stage] + (1.0 - self.decay) * (
            0.0 if cleared else 1.0
        )
        self.episodes[stage] += 1
        self._open_more()

    def weights(self) -> dict[str, float]:
        """Relative sampling weight per curriculum stage (not normalised; 0 for a stage the
        frontier has not opened yet)."""
        return {
            s: (self.floor + (1.0 - self.floor) * self.failure[s]) if i < self.opened else 0.0
            for i, s in enumerate(self.stages)
        }

    def shares(self) -> dict[str, float]:
        """The weights normalised to sum to 1 (what TensorBoard shows as ``curriculum/<stage>``)."""
        weights = self.weights()
        total = sum(weights.values())
        return {s: w / total for s, w in weights.items()}

    def state(self) -> dict[str, Any]:
        """JSON-able state (checkpoints)."""
        return {
            "failure": dict(self.failure),
            "episodes": dict(self.episodes),
            "opened": list(self.stages[: self.opened]),
        }

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
        # A frontier opened by a saved run stays open (a state from before frontiers has none).
        if self.frontier > 0:
            saved = set(state.get("opened", ()))
            while self.opened < len(self.stages) and self.stages[self.opened] in saved:
                self.opened += 1
            self._open_more()
