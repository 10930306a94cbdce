"""Optimizers whose state lives in shared memory, for Hogwild training across processes (A3G).

torch's Adam and RMSprop create their state lazily at the first step, in the process that steps;
these subclasses create it up front in the constructor and move it to shared memory, so that
every worker process that receives the optimizer (pickled through torch.multiprocessing) updates
the same moments and step counts in place. The update rules are torch's own; nothing is locked
(Hogwild: concurrent steps may interleave, which A3C tolerates by design).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mario_rl.config.a3g import A3GConfig


def _zeros_shared(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format).share_memory_()


def _step_shared() -> torch.Tensor:
    # torch keeps a non-capturable optimizer's step as a CPU float scalar; same here, shared.
    return torch.zeros((), dtype=torch.float32).share_memory_()


class SharedAdam(torch.optim.Adam):
    """Adam (optionally AMSGrad) with step, exp_avg, exp_avg_sq (and max_exp_avg_sq) allocated in
    the constructor, in shared memory. The seed's defaults: betas (0.9, 0.999), eps 1e-3."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        # foreach/fused would be picked only for CUDA params; the shared model is on the CPU.
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            foreach=False,
        )  # fmt: skip
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = _step_shared()
                state["exp_avg"] = _zeros_shared(p)
                state["exp_avg_sq"] = _zeros_shared(p)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = _zeros_shared(p)


class SharedRMSprop(torch.optim.RMSprop):
    """RMSprop with step and square_avg allocated in the constructor, in shared memory. The
    seed's defaults: alpha 0.99, eps 0.1, not centered, no momentum."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-4,
        alpha: float = 0.99,
        eps: float = 0.1,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(
            params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
            centered=centered, foreach=False,
        )  # fmt: skip
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = _step_shared()
                state["square_avg"] = _zeros_shared(p)
                if group["momentum"] > 0:
                    state["momentum_buffer"] = _zeros_shared(p)
                if group["centered"]:
                    state["grad_avg"] = _zeros_shared(p)


def make_optimizer(
    cfg: A3GConfig, params: Iterable[nn.Parameter], shared: bool
) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` asks for: a shared-memory one (built once, in the main process) or a
    plain torch one (built by each worker over the shared parameters, state private to it)."""
    params = list(params)
    if cfg.optimizer == "rmsprop":
        if shared:
            return SharedRMSprop(params, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps)
        return torch.optim.RMSprop(
            params, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps, foreach=False
        )
    if shared:
        return SharedAdam(params, lr=cfg.lr, eps=cfg.adam_eps, amsgrad=cfg.amsgrad)
    return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, amsgrad=cfg.amsgrad, foreach=False)


def state_is_shared(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every state tensor of ``optimizer`` is in shared memory (and there is some state)."""
    tensors = [
        v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    ]
    return bool(tensors) and all(t.is_shared() for t in tensors)
