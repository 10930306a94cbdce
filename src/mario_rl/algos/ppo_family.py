"""The PPO family by name: the trainer class each ``PPOConfig.algo`` means, and :func:`make_ppo`."""

from __future__ import annotations

from typing import Any

from mario_rl.algos.ppo import PPO
from mario_rl.algos.ppo_lstm import PPOLSTM
from mario_rl.algos.ppo_rnd import PPORND
from mario_rl.config.ppo import PPOConfig
from mario_rl.parallel.collective import LOCAL, Collective

__all__ = ["TRAINERS", "make_ppo"]

TRAINERS: dict[str, type[PPO]] = {"ppo": PPO, "ppo-lstm": PPOLSTM, "ppo-rnd": PPORND}


def make_ppo(
    config: PPOConfig,
    envs: Any | None = None,
    *,
    obs_shape: tuple[int, int, int] | None = None,
    n_actions: int | None = None,
    collective: Collective = LOCAL,
) -> PPO:
    """The trainer ``config.algo`` names (:class:`PPO`, :class:`PPOLSTM` or :class:`PPORND`),
    over ``envs`` or, without an env, for observations ``obs_shape`` and ``n_actions`` actions."""
    trainer = TRAINERS.get(config.algo)
    if trainer is None:
        raise ValueError(f"algo must be one of {tuple(TRAINERS)}, got {config.algo!r}")
    return trainer(config, envs, obs_shape=obs_shape, n_actions=n_actions, collective=collective)
