"""PPO's rollout storage: preallocated tensors for T steps x N envs (uint8 observations, actions,
log-probs, values, GAE's bootstraps and results, RND's and the LSTM's extras), and what one env
group's collection hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mario_rl.config.ppo import PPOConfig
from mario_rl.models import LSTMState

__all__ = ["GroupPart", "Rollout"]


@dataclass
class GroupPart:
    """What one env group's collection loop hands back besides the buffer columns it filled."""

    episodes: list[dict[str, Any]] = field(default_factory=list)
    components: dict[str, np.ndarray] = field(default_factory=dict)
    state: LSTMState | None = None
    t_env: float = 0.0
    t_inf: float = 0.0
    t_store: float = 0.0


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
        self.advantages = z()
        self.returns = z()
        if cfg.algo == "ppo-rnd":
            self.next_frames = torch.zeros((t, n, h, w), dtype=torch.uint8, device=device)
            self.values_int = z()
            self.last_value_int = torch.zeros(n, device=device)
            self.rewards_int = z()
            self.returns_int = z()
        if cfg.algo == "ppo-lstm":
            s, hs = t // cfg.bptt_len, cfg.lstm_hidden
            # LSTM state at the start of each bptt_len sequence, before that step's reset mask.
            self.seq_h = torch.zeros((s, n, hs), device=device)
            self.seq_c = torch.zeros((s, n, hs), device=device)
            if cfg.lstm_penalty > 0:
                self.step_h = torch.zeros((t, n, hs), device=device)
                self.step_c = torch.zeros((t, n, hs), device=device)
        self.episodes: list[dict[str, Any]] = []
        self.components: dict[str, np.ndarray] = {}
        self.times: dict[str, float] = {}
        self.first_step = 0
        """global_step at the start of this rollout (for episode records)."""
