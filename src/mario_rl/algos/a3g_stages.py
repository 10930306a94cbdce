"""Which stages each A3G worker plays: the per-rank assignment (the seed's --train-stages) and the
curriculum that moves workers toward the stages whose episodes fail most."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mario_rl.config.a3g import A3GConfig
from mario_rl.envs.stages import STAGES, StageSelection, parse_stages

__all__ = [
    "Curriculum",
    "assign_stages",
    "curriculum_selection",
    "is_curriculum_spec",
    "plan_workers",
    "train_stages_spec",
    "train_stages_warning",
    "untrained_stages",
]


def assign_stages(stages: str, workers: int, train_stages: bool, curriculum: bool) -> list[str]:
    """The stage selection of each worker rank.

    Normally every worker trains on ``stages``. With ``train_stages`` (the seed's -ts), rank r < 32
    trains on stage r alone and the others on the whole game, or, with ``curriculum``, on all 32
    stages drawn by the curriculum's weights.
    """
    if not train_stages:
        return [parse_stages(stages).spec] * workers
    rest = "all" if curriculum else "game"
    return [STAGES[r] if r < len(STAGES) else rest for r in range(workers)]


def untrained_stages(workers: int, train_stages: bool) -> tuple[str, ...]:
    """Stages no worker plays under ``train_stages`` (fewer than 32 workers), else none."""
    return STAGES[workers:] if train_stages else ()


def train_stages_spec(workers: int) -> str:
    """The stages ``train_stages`` covers with ``workers`` workers (for evaluation and records)."""
    return "all" if workers >= len(STAGES) else ",".join(STAGES[:workers])


def is_curriculum_spec(spec: str) -> bool:
    """Whether a worker with this stage selection can be moved by the curriculum."""
    sel = parse_stages(spec)
    return not sel.game and len(sel.stages) > 1


def plan_workers(cfg: A3GConfig, stages: str) -> tuple[list[str], list[int]]:
    """(stage selection per rank, ranks the curriculum moves); ValueError (one line) when
    --curriculum would move no worker."""
    assignments = assign_stages(stages, cfg.workers, cfg.train_stages, cfg.curriculum)
    ranks = (
        [r for r, s in enumerate(assignments) if is_curriculum_spec(s)] if cfg.curriculum else []
    )
    if cfg.curriculum and not ranks:
        why = (
            "with --train-stages only workers beyond the 32 stage workers follow it; use more than 32 workers"
            if cfg.train_stages
            else f"it needs a set of stages (a list or 'all'), not {stages!r}"
        )
        raise ValueError(f"--curriculum has no worker to move: {why}")
    return assignments, ranks


def train_stages_warning(workers: int, train_stages: bool) -> str | None:
    """The warning for --train-stages with fewer than 32 workers (which stages go untrained)."""
    missing = untrained_stages(workers, train_stages)
    if not missing:
        return None
    covered = STAGES[0] if workers == 1 else f"{STAGES[0]} … {STAGES[workers - 1]}"
    return (
        f"--train-stages with {workers} workers trains {covered} only; {len(missing)} stages get"
        f" no worker and are not trained ({', '.join(missing)}); use 32 workers or more"
    )


class Curriculum:
    """Per-stage running failure rates from finished episodes, turned into sampling weights.

    ``record(stage, cleared)`` folds one episode in (a stage never seen counts as failed);
    ``weights()`` is ``floor + (1 - floor) * failure`` per stage, so stages failed most are drawn
    most and mastered ones still at ``floor`` relative weight. The main process publishes the
    weights into a shared array that curriculum workers read at their episode resets.
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

    def publish(self, shared: Any) -> None:
        """Write the weights into a 32-slot shared array (indexed like STAGES)."""
        for s, w in self.weights().items():
            shared[STAGES.index(s)] = w

    def state(self) -> dict[str, Any]:
        """JSON-able state (checkpoints)."""
        return {"failure": dict(self.failure), "episodes": dict(self.episodes)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` output (stages not in this curriculum are ignored)."""
        for s, f in state.get("failure", {}).items():
            if s in self.failure:
                self.failure[s] = float(f)
        for s, n in state.get("episodes", {}).items():
            if s in self.episodes:
                self.episodes[s] = int(n)


def curriculum_selection(base: StageSelection, shared: Any) -> StageSelection:
    """``base``'s stages weighted by the shared curriculum weights (``base`` until any are set)."""
    weights = {s: float(shared[STAGES.index(s)]) for s in base.stages}
    if sum(weights.values()) <= 0:
        return base
    return base.with_weights(weights)
