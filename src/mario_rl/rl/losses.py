"""The objectives: PPO's terms for one minibatch (clipped surrogate, value loss, entropy, KL
estimates) and A3G's actor-critic loss of one rollout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["a3g_loss", "ppo_losses", "value_loss"]


def value_loss(values: Tensor, returns: Tensor, kind: str) -> Tensor:
    """The value loss alone ('mse' = 0.5 * squared error, 'huber' = smooth L1)."""
    if kind == "huber":
        return F.smooth_l1_loss(values, returns)
    return 0.5 * (values - returns).square().mean()


def ppo_losses(
    logits: Tensor,
    actions: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    values: Tensor,
    returns: Tensor,
    clip: float,
    vf_loss: str = "mse",
) -> dict[str, Tensor]:
    """The clipped-surrogate PPO terms for one minibatch (advantages already normalised or not).

    Returns policy (to minimise), value, entropy (to maximise), approx_kl = mean((r-1) - log r)
    (Schulman's low-variance estimator), old_approx_kl = mean(-log r) and clipfrac.
    """
    logp_all = F.log_softmax(logits, dim=-1)
    new_logprobs = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    log_ratio = new_logprobs - old_logprobs
    ratio = log_ratio.exp()
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
    v_loss = value_loss(values, returns, vf_loss)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        old_approx_kl = (-log_ratio).mean()
        clipfrac = ((ratio - 1).abs() > clip).float().mean()
    return {
        "policy": pg_loss,
        "value": v_loss,
        "entropy": entropy,
        "approx_kl": approx_kl,
        "old_approx_kl": old_approx_kl,
        "clipfrac": clipfrac,
    }


def a3g_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    advantages: Tensor,
    returns: Tensor,
    ent_coef: float,
    vf_coef: float,
) -> dict[str, Tensor]:
    """The actor-critic loss of one rollout, summed over its T steps as in the seed (so its
    learning rate carries over): ``-sum(log pi(a) * A) - c_H * sum(H) + c_V * sum(0.5 (R - V)^2)``.

    Returns ``loss`` (to minimise) and per-step means for logging: ``policy`` (-log pi(a) * A),
    ``value`` (0.5 squared error) and ``entropy``.
    """
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.reshape(-1, 1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    policy = -(logp * advantages.detach())
    value = 0.5 * (returns.detach() - values).square()
    loss = policy.sum() - ent_coef * entropy.sum() + vf_coef * value.sum()
    return {
        "loss": loss,
        "policy": policy.mean().detach(),
        "value": value.mean().detach(),
        "entropy": entropy.mean().detach(),
    }
