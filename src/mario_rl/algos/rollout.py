"""PPO's rollout storage: preallocated tensors for T steps x N envs (uint8 observations, actions,
log-probs, values, GAE's bootstraps and results).

Recurrent PPO and PPO + RND keep more per step; their rollouts (in ``ppo_lstm.py`` and
``ppo_rnd.py``) fill the ``keep_*`` methods, which keep nothing here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mario_rl.config.ppo import PPOConfig
from mario_rl.models import ACOutput, LSTMState

__all__ = ["Rollout"]


class Rollout:
    """Preallocated storage for one rollout of T steps x N envs (plus what GAE needs).

    Observations are uint8; with ``channels_last`` they are stored NHWC so that minibatch gathers
    come out channels_last (the fast conv layout on CPU) with no copy. ``obs`` is always the
    logical (T, N, C, H, W) view.
    """

    def __init__(self, cfg: PPOConfig, obs_shape: tuple[int, ...], device: torch.device):
        t, n = cfg.rollout_steps, cfg.num_envs
        c, h, w = obs_shape
        if cfg.channels_last:
            self.obs_store = torch.zeros((t, n, h, w, c), dtype=torch.uint8, device=device)
            self.obs = self.obs_store.permute(0, 1, 4, 2, 3)
        else:
            self.obs_store = torch.zeros((t, n, c, h, w), dtype=torch.uint8, device=device)
            self.obs = self.obs_store
        z = lambda dtype=torch.float32: torch.zeros((t, n), dtype=dtype, device=device)  # noqa: E731
        self.actions = z(torch.int64)
        self.logprobs = z()
        self.rewards = z()
        self.values = z()
        self.next_values = z()
        """V of the observation that followed each step in the same episode (GAE's bootstrap)."""
        self.terminations = z(torch.bool)
        self.dones = z(torch.bool)
        self.starts = z(torch.bool)
        """obs[t] is the first observation of an episode (the LSTM resets there)."""
        self.stages = torch.full((t, n), -1, dtype=torch.int16, device=device)
        """Index into STAGES of the stage obs[t] shows (-1 where the env does not say)."""
        self.advantages = z()
        self.returns = z()
        self.episodes: list[dict[str, Any]] = []
        self.components: dict[str, np.ndarray] = {}
        self.times: dict[str, float] = {}
        self.first_step = 0
        """global_step at the start of this rollout (for episode records)."""

    # -- what the collector hands over besides the fields above (nothing kept here) --------------
    def keep_state(self, t: int, cols: slice, state: LSTMState | None) -> None:
        """The recurrent state of envs ``cols`` before step ``t``."""

    def keep_output(self, t: int, cols: slice, out: ACOutput) -> None:
        """The rest of the policy's output at step ``t`` (actions, log-probs, values are stored)."""

    def keep_next_obs(self, t: int, cols: slice, next_obs: Tensor) -> None:
        """The observations that followed step ``t``."""

    def keep_final_obs(self, t: int, rows: np.ndarray, finals: Tensor) -> None:
        """The last observations of the episodes of envs ``rows`` that ended at step ``t``."""

    def keep_last_output(self, last: ACOutput) -> None:
        """The policy's output on the observations after the last step (values are bootstrapped)."""
