"""Which stages each A3G worker plays: the per-rank assignment (the seed's --train-stages) and the
plumbing of the curriculum (:class:`mario_rl.rl.curriculum.Curriculum`, shared with PPO) that
moves workers toward the stages whose episodes fail most: weights published in a shared array."""

from __future__ import annotations

from typing import Any

from mario_rl.config.a3g import A3GConfig
from mario_rl.envs.stages import STAGES, StageSelection, parse_stages
from mario_rl.rl.curriculum import Curriculum

__all__ = [
    "Curriculum",
    "assign_stages",
    "curriculum_selection",
    "is_curriculum_spec",
    "plan_workers",
    "publish_weights",
    "stage_shares",
    "train_stages_note",
    "train_stages_spec",
    "untrained_stages",
]


def stage_shares(workers: int) -> list[tuple[str, ...]]:
    """The stages each of ``workers`` (< 32) ranks plays under --train-stages: rank r gets stages
    r, r + W, r + 2W, … (game order), so all 32 are covered and shares differ by one at most."""
    return [STAGES[r::workers] for r in range(workers)]


def assign_stages(stages: str, workers: int, train_stages: bool, curriculum: bool) -> list[str]:
    """The stage selection of each worker rank.

    Normally every worker trains on ``stages``. With ``train_stages`` (the seed's -ts) and 32
    workers or more, rank r < 32 trains on stage r alone, as in the seed, and the others on the
    whole game, or, with ``curriculum``, on all 32 stages drawn by the curriculum's weights. With
    fewer than 32 workers (where the seed trains the first W stages only) every stage still gets
    a worker: rank r plays the list of :func:`stage_shares`, one stage drawn at each episode
    start (uniformly, or by the curriculum's weights), or ``all`` for a single worker.
    """
    if not train_stages:
        return [parse_stages(stages).spec] * workers
    if workers < len(STAGES):
        return [
            "all" if len(share) == len(STAGES) else ",".join(share)
            for share in stage_shares(workers)
        ]
    rest = "all" if curriculum else "game"
    return [STAGES[r] if r < len(STAGES) else rest for r in range(workers)]


def untrained_stages(workers: int, train_stages: bool) -> tuple[str, ...]:
    """Stages no worker plays under ``train_stages`` (none: every stage gets a worker)."""
    if not train_stages:
        return ()
    covered = {s for spec in assign_stages("all", workers, True, False) for s in _stages_of(spec)}
    return tuple(s for s in STAGES if s not in covered)


def _stages_of(spec: str) -> tuple[str, ...]:
    sel = parse_stages(spec)
    return STAGES if sel.game else sel.stages


def train_stages_spec(workers: int) -> str:
    """The stages ``train_stages`` covers with ``workers`` workers (for evaluation and records):
    ``all`` whenever every stage has a worker, which it always has."""
    missing = set(untrained_stages(workers, True))
    return "all" if not missing else ",".join(s for s in STAGES if s not in missing)


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
            f"with --train-stages and {cfg.workers} workers each worker plays one stage;"
            " use fewer or more than 32 workers"
            if cfg.train_stages
            else f"it needs a set of stages (a list or 'all'), not {stages!r}"
        )
        raise ValueError(f"--curriculum has no worker to move: {why}")
    return assignments, ranks


def train_stages_note(workers: int, train_stages: bool, curriculum: bool = False) -> str | None:
    """One line on how --train-stages shares the 32 stages among fewer than 32 workers (None
    with 32 or more: rank r < 32 plays stage r, as in the seed)."""
    if not train_stages or workers >= len(STAGES):
        return None
    how = "by the curriculum's weights" if curriculum else "uniformly"
    if workers == 1:
        return f"--train-stages with 1 worker: it plays all 32 stages, one drawn {how} per episode"
    sizes = sorted({len(share) for share in stage_shares(workers)})
    each = " or ".join(map(str, sizes))
    return (
        f"--train-stages with {workers} workers: worker r plays the stages r, r+{workers}, … of"
        f" the 32 ({each} each, one drawn {how} per episode); every stage is trained"
    )


def publish_weights(curriculum: Curriculum, shared: Any) -> None:
    """Write the curriculum's weights into a 32-slot shared array (indexed like STAGES), where
    curriculum workers read them at their episode resets."""
    for s, w in curriculum.weights().items():
        shared[STAGES.index(s)] = w


def curriculum_selection(base: StageSelection, shared: Any) -> StageSelection:
    """``base``'s stages weighted by the shared curriculum weights (``base`` until any are set)."""
    weights = {s: float(shared[STAGES.index(s)]) for s in base.stages}
    if sum(weights.values()) <= 0:
        return base
    return base.with_weights(weights)
