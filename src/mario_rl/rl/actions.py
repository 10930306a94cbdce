"""Choosing actions from a policy's logits: sampled (training) or greedy (evaluation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from mario_rl.models import ActorCritic, LSTMState

__all__ = ["policy_act", "sample_actions"]


def sample_actions(
    logits: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample from a categorical over the last dim; returns (actions int64, their log-probs)."""
    logp = F.log_softmax(logits, dim=-1)
    actions = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return actions, logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


@torch.inference_mode()
def policy_act(
    model: ActorCritic,
    obs: np.ndarray | Tensor,
    state: LSTMState | None = None,
    deterministic: bool = True,
    starts: np.ndarray | Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, LSTMState | None]:
    """Actions for uint8 observations (N,C,H,W) or one (C,H,W): greedy (argmax) or sampled.

    For a recurrent model pass the previous ``state`` (None = zeros) and ``starts`` (True where an
    episode begins, resetting that env's state); returns (actions as int64 numpy, new state).
    """
    x = torch.as_tensor(obs)
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    device = next(model.parameters()).device
    x = x.to(device)
    s = (
        None
        if starts is None
        else torch.as_tensor(starts, dtype=torch.bool, device=device).reshape(-1)
    )
    out = model(x, state, s)
    if deterministic:
        actions = out.logits.argmax(-1)
    else:
        actions, _ = sample_actions(out.logits, generator)
    a = actions.cpu().numpy()
    return (a[0:1] if single else a), out.state
