"""Advantages and returns of a rollout: GAE, A3G's (advantage, n-step return) pair, and RND's
never-reset discounted sums."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["a3g_targets", "discounted_running_returns", "gae"]


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


def a3g_targets(*rollout: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(GAE(lambda) advantages, n-step bootstrapped returns) of a (T,) or (T, N) rollout, as the
    seed takes them: the policy follows the advantages, the value is regressed on the returns
    (lambda 1).

    ``rollout`` is :func:`gae`'s (rewards, values, next_values, terminations, dones), each (T,)
    or (T, N). ``next_values[t]`` is V of the observation after step t in the same episode (see
    :func:`mario_rl.rl.advantages.gae`); terminations cut the bootstrap, dones cut the chain.
    """
    shape = rollout[0].shape
    args = tuple(x.reshape(shape[0], -1) for x in rollout)  # gae works on (T, N)
    adv, _ = gae(*args, gamma, lam)
    _, returns = gae(*args, gamma, 1.0)
    return adv.reshape(shape), returns.reshape(shape)
