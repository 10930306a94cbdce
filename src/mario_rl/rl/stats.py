"""Running and summary statistics: running mean/variance, explained variance, episode means,
and the linear schedule that anneals a coefficient over training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["RunningMeanStd", "episode_metrics", "explained_variance", "linear_schedule"]


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
        """Fold a batch given by its mean, population variance and size (mario_rl.parallel.distributed
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


def episode_metrics(
    episodes: list[dict[str, Any]], restored: list[dict[str, Any]]
) -> dict[str, float]:
    """Means over finished episodes (charts/episode_return, …, charts/flag_rate, and
    charts/stages_cleared: flags per episode, above 1 only where episodes play on into the next
    stage), and the episodes begun from a saved progress state counted apart
    (charts/restored_*)."""
    metrics: dict[str, float] = {}
    if episodes:
        metrics["charts/episodes"] = float(len(episodes))
        for key, tag in (
            ("r", "episode_return"), ("l", "episode_length"), ("x_max", "x_max"),
            ("flag", "flag_rate"), ("stages_cleared", "stages_cleared"),
        ):  # fmt: skip
            vals = [float(e[key]) for e in episodes if key in e]
            if vals:
                metrics[f"charts/{tag}"] = float(np.mean(vals))
    if restored:
        metrics["charts/restored_episodes"] = float(len(restored))
        metrics["charts/restored_flag_rate"] = float(
            np.mean([bool(e.get("flag")) for e in restored])
        )
    return metrics
