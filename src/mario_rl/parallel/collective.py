"""The collective interface an algorithm calls for every number that must agree across replicas,
and :class:`Local`, its one-process implementation (every call is the plain local computation).

PPO calls these unconditionally; under torchrun :class:`mario_rl.parallel.distributed.Distributed`
answers them with all-reduces, so the algorithm has no ``if distributed`` branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from torch import Tensor

if TYPE_CHECKING:
    from mario_rl.rl.stats import RunningMeanStd

__all__ = ["LOCAL", "Collective", "Episodes", "Local", "Merged", "Metrics"]

Metrics = dict[str, float]
Episodes = list[dict[str, Any]]
Merged = tuple[Metrics, Episodes]

T = TypeVar("T")
S = TypeVar("S")
C = TypeVar("C")


class Collective(Protocol):
    """What a data-parallel replica needs from the others."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that owns the run directory (logs, evaluates, checkpoints)."""
        ...

    def rank_config(self, cfg: C) -> C:
        """This replica's copy of a config (its own seed and device)."""
        ...

    def broadcast_tensors(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        ...

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        """Replace each parameter's gradient by its mean over the replicas."""
        ...

    def mean_std(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and (unbiased) std of every replica's samples together."""
        ...

    def mean(self, x: Tensor) -> float:
        """The mean of a per-replica scalar over the replicas."""
        ...

    def min_max(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Global min and max of ``x``."""
        ...

    def update_running_stats(self, rms: RunningMeanStd, x: Tensor) -> None:
        """Fold every replica's batch ``x`` into ``rms`` as one batch."""
        ...

    def from_main(self, fn: Callable[[], tuple[T, S]]) -> tuple[T | None, S]:
        """Run ``fn() -> (kept, shared)`` on rank 0 and send ``shared`` to every replica."""
        ...

    def merge_update(self, metrics: Metrics, episodes: Episodes, restored: Episodes) -> Merged:
        """Every replica's update metrics and finished episodes, merged on rank 0."""
        ...

    def agree_stop(self, reason: str | None, code: int) -> tuple[str | None, int]:
        """One vote per update, so that every replica stops at the same one."""
        ...


class Local:
    """The collective of a single process: nothing to agree with, so each call is local."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return True

    def rank_config(self, cfg: C) -> C:
        return cfg

    def broadcast_tensors(self, tensors: Sequence[Tensor]) -> None:
        pass

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        pass

    def mean_std(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.mean(), x.std()

    def mean(self, x: Tensor) -> float:
        return float(x)

    def min_max(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.min(), x.max()

    def update_running_stats(self, rms: RunningMeanStd, x: Tensor) -> None:
        rms.update(x)

    def from_main(self, fn: Callable[[], tuple[T, S]]) -> tuple[T | None, S]:
        return fn()

    def merge_update(self, metrics: Metrics, episodes: Episodes, restored: Episodes) -> Merged:
        return metrics, episodes

    def agree_stop(self, reason: str | None, code: int) -> tuple[str | None, int]:
        return reason, code


LOCAL = Local()
"""The shared one-process collective (it holds no state)."""
