"""Shared pieces of the on-policy learners (PPO now, A3G later): GAE, running statistics,
explained variance, schedules, and flattening an optimizer's state into tensors + JSON.

Everything here works on torch tensors, has no env or model imports, and is small enough to be
checked against hand-computed values (tests/test_ppo.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminations: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a (T, N) rollout; returns (advantages, returns).

    ``next_values[t]`` is V of the observation that *followed* step t in the same episode: V(obs[t+1])
    normally, and V(final_obs) where the episode was truncated (time limit), because with same-step
    autoreset ``obs[t+1]`` already belongs to the next episode. ``terminations[t]`` cuts the
    bootstrap (a real end: dying, the flag); ``dones[t]`` (termination or truncation) cuts the
    λ-chain so that no advantage leaks from one episode into the next. With all-zero
    terminations/dones this is the non-episodic estimate RND uses for intrinsic returns.
    """
    not_term = 1.0 - terminations.float()
    not_done = 1.0 - dones.float()
    deltas = rewards + gamma * next_values * not_term - values
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values


def discounted_running_returns(
    rewards: Tensor, running: Tensor, gamma: float
) -> tuple[Tensor, Tensor]:
    """Per-env running discounted sums ``R_t = gamma * R_{t-1} + r_t`` over a (T, N) rollout,
    never reset (RND normalises intrinsic rewards by the std of these). Returns (all R_t, last R)."""
    out = torch.empty_like(rewards)
    for t in range(rewards.shape[0]):
        running = running * gamma + rewards[t]
        out[t] = running
    return out, running


def explained_variance(y_pred: Tensor, y_true: Tensor) -> float:
    """1 - Var[y_true - y_pred] / Var[y_true]: 1 is perfect, 0 is no better than the mean,
    NaN when the targets are constant."""
    var_y = torch.var(y_true)
    if var_y == 0:
        return float("nan")
    return float(1.0 - torch.var(y_true - y_pred) / var_y)


def linear_schedule(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0 moving linearly to ``end`` at progress 1 (clamped)."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress


class RunningMeanStd(nn.Module):
    """Running mean and variance (parallel Welford / Chan et al.), kept as buffers so they live in
    a module's state_dict and therefore in checkpoints. ``shape`` is the shape of one sample."""

    mean: Tensor
    var: Tensor
    count: Tensor

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        super().__init__()
        # float64: millions of updates in float32 drift visibly.
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # epsilon as the prior count keeps the first update from dividing by zero.
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch (leading dimension = samples) into the statistics."""
        x = x.to(torch.float64).reshape(-1, *self.mean.shape)
        self.update_from_moments(x.mean(0), x.var(0, unbiased=False), x.shape[0])

    @torch.no_grad()
    def update_from_moments(
        self, batch_mean: Tensor, batch_var: Tensor, n: int | float | Tensor
    ) -> None:
        """Fold a batch given by its mean, population variance and size (mario_rl.distributed
        passes the moments of every rank's batch together)."""
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: Tensor, clip: float | None = None) -> Tensor:
        """(x - mean) / std in x's dtype, optionally clipped to ±clip."""
        mean = self.mean.to(x.dtype)
        std = self.var.to(x.dtype).add(1e-8).sqrt()
        y = (x - mean) / std
        return y.clamp(-clip, clip) if clip is not None else y


def check_device(device: str) -> None:
    """ValueError (one line) unless ``device`` names a torch device that exists here.

    Called before a run directory is made, so that ``--device cuda:7`` on a machine without
    that GPU is refused as bad input instead of failing after files were written."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"--device {device!r} is not a torch device; use cpu, cuda, cuda:<index> or mps"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: CUDA is not available on this machine; use --device cpu"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"--device {device}: GPU {dev.index} does not exist; this machine has {n} "
                f"(cuda:0 … cuda:{n - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"--device {device}: MPS is not available on this machine; use --device cpu"
        )
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: unsupported device type; use cpu, cuda[:i] or mps")
