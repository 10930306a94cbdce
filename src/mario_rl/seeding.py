"""Every random stream of a run, derived from the run seed in one place.

Streams are offsets of the seed: strides are primes, so that no two streams (a rank's, an env
group's, the episodes after a resume) start from the same seed within any realistic run. The
values are part of the checkpoint contract: changing one changes what a resumed run draws.
"""

from __future__ import annotations

__all__ = [
    "EVAL_SEED",
    "collect_seed",
    "group_seed",
    "rank_seed",
    "resume_seed",
    "worker_seed",
]

RANK_STRIDE = 104_729
RESUME_STRIDE = 7919
GROUP_STRIDE = 1_000_003

EVAL_SEED = 1_000_003
"""Seed of the evaluation episodes' no-op starts (a stream training never draws from)."""


def rank_seed(seed: int, rank: int) -> int:
    """The seed a data-parallel rank trains with (rank 0 keeps the run seed)."""
    return seed + rank * RANK_STRIDE


def collect_seed(seed: int) -> int:
    """The action-sampling stream of a PPO trainer (its learner draws from ``seed`` itself)."""
    return seed + 1


def group_seed(collect: int, group: int) -> int:
    """Env group ``group``'s action-sampling stream, from the trainer's collection seed."""
    return collect + GROUP_STRIDE * group


def resume_seed(seed: int, update: int) -> int:
    """Fresh episodes (and, off rank 0, fresh generators) after a resume at ``update``."""
    return seed + RESUME_STRIDE * update


def worker_seed(seed: int, rank: int, base_step: int | None = None) -> int:
    """A3G worker ``rank``'s env and sampling seed; after a resume (``base_step`` given) a
    stream the run has not used."""
    if base_step is None:
        return seed + rank
    return seed + RESUME_STRIDE * rank + base_step
