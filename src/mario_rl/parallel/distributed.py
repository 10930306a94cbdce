"""Data-parallel PPO under ``torchrun``: the process group and every collective the trainer uses.

Each rank is a whole actor-learner replica (its own envs, seeds offset by rank, its own copy of
the model); the ranks stay identical because every number that feeds an update is global:

* weights: broadcast from rank 0 after construction and after a resume;
* gradients: one flat all-reduce (mean) per minibatch, before clipping;
* per-minibatch advantage normalisation: global mean / std (one all-reduce of count, sum, sum of
  squares);
* the target-KL early stop: the global mean approx_kl;
* RND: the observation and intrinsic-return running statistics are fed the global batch moments,
  the 'minmax' reward scaling uses the global min / max.

So a 2-rank update equals the single-process update on the two ranks' batches side by side
(tests/test_distributed.py). Rank 0 alone touches the run directory (logs, progress display,
evaluations, checkpoints); it gathers the other ranks' metrics and finished episodes each update,
and one vote per update makes every rank stop together. Outside torchrun (no ``WORLD_SIZE``, or
``WORLD_SIZE=1``) nothing here is used and a run is exactly what it was without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

from mario_rl.parallel.collective import Episodes, Merged, Metrics
from mario_rl.rl.stats import episode_metrics
from mario_rl.seeding import rank_seed

if TYPE_CHECKING:
    from mario_rl.config.ppo import PPOConfig
    from mario_rl.rl.stats import RunningMeanStd

T = TypeVar("T")
S = TypeVar("S")


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun launch (from its environment variables)."""

    rank: int
    local_rank: int
    world_size: int


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch this process belongs to; None outside torchrun or with one process."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return Launch(int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), world)


def backend_for(cuda_available: bool) -> str:
    """nccl for CUDA tensors and gloo for CPU ones (objects, CPU training) where CUDA exists."""
    return "cpu:gloo,cuda:nccl" if cuda_available else "gloo"


class Distributed:
    """This rank's view of the process group, with the collectives of a data-parallel update."""

    def __init__(self, rank: int, local_rank: int, world_size: int) -> None:
        self.rank = rank
        self.local_rank = local_rank
        self.world_size = world_size

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates and checkpoints."""
        return self.rank == 0

    @classmethod
    def init(cls, launch: Launch, timeout_s: float = 1800.0) -> Distributed:
        """Join the process group (torchrun's MASTER_ADDR / MASTER_PORT rendezvous)."""
        cuda = torch.cuda.is_available()
        if cuda and launch.local_rank < torch.cuda.device_count():
            # nccl binds a communicator to the current device: make it this rank's GPU.
            torch.cuda.set_device(launch.local_rank)
        tdist.init_process_group(
            backend_for(cuda),
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        return cls(launch.rank, launch.local_rank, launch.world_size)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        tdist.barrier()

    def close(self) -> None:
        """Leave the process group."""
        if tdist.is_initialized():
            tdist.destroy_process_group()

    # -- configuration -----------------------------------------------------------------------
    def rank_config(self, cfg: PPOConfig) -> PPOConfig:
        """This rank's copy of the PPO config: its own seed, and cuda:LOCAL_RANK for 'cuda'."""
        device = f"cuda:{self.local_rank}" if cfg.device.startswith("cuda") else cfg.device
        return dataclasses.replace(cfg, seed=rank_seed(cfg.seed, self.rank), device=device)

    # -- collectives of the update -------------------------------------------------------------
    def broadcast_tensors(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (one flat broadcast per dtype)."""
        by_kind: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            by_kind.setdefault((t.dtype, t.device), []).append(t)
        with torch.no_grad():
            for group in by_kind.values():
                # reshape copies channels_last tensors into logical order, which copy_ undoes.
                flat = torch.cat([t.reshape(-1) for t in group])
                tdist.broadcast(flat, src=0)
                for t, chunk in zip(group, flat.split([t.numel() for t in group]), strict=True):
                    t.copy_(chunk.view_as(t))

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        """Replace each parameter's gradient by its mean over the ranks (one flat all-reduce)."""
        # A None grad is None on every rank (same graph): skipping it keeps Adam's behaviour.
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        tdist.all_reduce(flat)
        flat /= self.world_size
        for g, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(chunk.view_as(g))

    def mean_std(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and (unbiased) std of ``x`` over every rank's samples together."""
        x64 = x.detach().double()
        moments = torch.stack([x64.new_tensor(float(x.numel())), x64.sum(), x64.square().sum()])
        tdist.all_reduce(moments)
        n, total, sq = moments
        mean = total / n
        var = ((sq - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)
        return mean.to(x.dtype), var.sqrt().to(x.dtype)

    def mean(self, x: Tensor) -> float:
        """The mean of a per-rank scalar over the ranks."""
        y = x.detach().double().reshape(1).clone()
        tdist.all_reduce(y)
        return float(y) / self.world_size

    def min_max(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Global min and max of ``x`` (one all-reduce of max over (max, -min))."""
        both = torch.stack([x.max(), -x.min()]).detach().clone()
        tdist.all_reduce(both, op=tdist.ReduceOp.MAX)
        return -both[1], both[0]

    def update_running_stats(self, rms: RunningMeanStd, x: Tensor) -> None:
        """Fold every rank's batch ``x`` into ``rms`` as one batch (same result on every rank)."""
        x = x.detach().to(torch.float64).reshape(-1, *rms.mean.shape)
        n = x.new_full((1,), float(x.shape[0]))
        moments = torch.cat([n, x.sum(0).reshape(-1), x.square().sum(0).reshape(-1)])
        tdist.all_reduce(moments)
        k = rms.mean.numel()
        count = moments[0]
        mean = (moments[1 : 1 + k] / count).reshape(rms.mean.shape)
        var = (moments[1 + k :] / count).reshape(rms.mean.shape) - mean.square()
        rms.update_from_moments(mean, var.clamp(min=0), count)

    # -- rank 0 and the others ------------------------------------------------------------------
    def from_main(self, fn: Callable[[], tuple[T, S]]) -> tuple[T | None, S]:
        """Run ``fn() -> (kept, shared)`` on rank 0 alone and send ``shared`` to every rank.

        The other ranks get ``(None, shared)``. If ``fn`` raises on rank 0 it raises there, and
        the others exit quietly with the code the command line gives that error (rank 0 says why).
        """
        box: list[Any] = [None]
        kept: T | None = None
        error: BaseException | None = None
        if self.is_main:
            try:
                kept, shared = fn()
                box[0] = ("ok", shared)
            except Exception as e:
                error = e
                box[0] = ("error", 2 if isinstance(e, ValueError) else 1)
        tdist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        status, payload = box[0]
        if status == "error":
            raise SystemExit(payload)
        return kept, payload

    def merge_update(self, metrics: Metrics, episodes: Episodes, restored: Episodes) -> Merged:
        """Every rank's update metrics and finished episodes, on rank 0.

        Rank 0 gets the metrics averaged over the ranks, with the episode statistics (flag rate,
        returns, …) recomputed over all ranks' episodes, and the episodes themselves (each
        marked with its ``rank``). The other ranks get their own arguments back.
        """
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        tdist.gather_object((metrics, episodes, restored), gathered, dst=0)
        if gathered is None:
            return metrics, episodes
        all_eps = [ep | {"rank": r} for r, (_, eps, _) in enumerate(gathered) for ep in eps]
        all_restored = [ep for _, _, rest in gathered for ep in rest]
        per_rank_episode_keys = {k for _, eps, rest in gathered for k in episode_metrics(eps, rest)}
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for m, _, _ in gathered:
            for k, v in m.items():
                if k not in per_rank_episode_keys:
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
        merged = {k: sums[k] / counts[k] for k in sums}
        return merged | episode_metrics(all_eps, all_restored), all_eps

    def agree_stop(self, reason: str | None, code: int) -> tuple[str | None, int]:
        """One vote per update: the first rank's stop reason (rank 0's first), the worst code."""
        votes: list[Any] = [None] * self.world_size
        tdist.all_gather_object(votes, (reason, code))
        reasons = [r for r, _ in votes if r]
        return (reasons[0] if reasons else None), max(c for _, c in votes)


@contextlib.contextmanager
def from_env(timeout_s: float = 1800.0) -> Iterator[Distributed | None]:
    """The process group of a torchrun launch for the duration of the block (None outside one)."""
    launch = launch_from_env()
    if launch is None:
        yield None
        return
    dist = Distributed.init(launch, timeout_s)
    try:
        yield dist
        # Leave together: a rank that tears down its gloo pairs while a peer's are still open
        # can make that peer's I/O thread abort the process at exit (seen ~1 in 5 resumes).
        dist.barrier()
    finally:
        dist.close()
