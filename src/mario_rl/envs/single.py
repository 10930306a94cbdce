"""A plain Gymnasium env over one emulator, for evaluation, recording and users' own loops.

It is an emulator group of one, so it gives the same observations, rewards and terminations
as the vector env for the same seed and actions.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .actions import action_meanings
from .config import EnvConfig
from .core import EmulatorGroup
from .rules import Episode
from .stages import STAGES


class MarioEnv(gym.Env):
    """One Super Mario Bros env with this project's rules and preprocessing."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60}

    def __init__(
        self, config: EnvConfig | None = None, seed: int = 0, render_mode: str | None = None
    ):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.config = config or EnvConfig()
        self.config.validate()
        self.render_mode = render_mode
        self._seed = seed
        self.group = EmulatorGroup(self.config, 1, [self._env_seed(seed)])
        shape = (self.config.frame_stack, self.config.size, self.config.size)
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.action_space = spaces.Discrete(len(action_meanings(self.config.actions)))
        self._pending: np.ndarray | None = None
        # The screen of an episode that just ended, for render() until the next reset.
        self._final_rgb: np.ndarray | None = None
        self.group.keep_final_rgb = render_mode == "rgb_array"

    @staticmethod
    def _env_seed(seed: int) -> int:
        # Env 0 of a vector env with the same seed draws from the same stream.
        return int(seed) * 100_003

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode. Without a seed after an episode ended, this is the start the
        vector env would have auto-reset to, so both stay in step."""
        super().reset(seed=seed)
        if seed is not None or self._pending is None:
            if seed is not None:
                self._seed = seed
            self.group.reseed([self._env_seed(self._seed)])
            obs = self.group.reset()[0]
        else:
            obs = self._pending
        self._pending = None
        self._final_rgb = None
        return obs, self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One agent step; after the episode ends, call reset().

        On the step that ends an episode the info describes the state that ended it (its
        ``x_pos``, ``flag_get``, ``lives``, stage…), as gym-super-mario-bros reports it; the next
        episode's start is what the following ``reset()`` returns."""
        if self._pending is not None:
            raise RuntimeError("episode has ended; call reset()")
        # The group auto-resets a finished env within step() and replaces its Episode, so the
        # one being played is taken now: the rules update it up to the step that ends it.
        episode = self.group.episodes[0]
        res = self.group.step(np.array([action]))
        info = self._info(episode)
        info["reward_components"] = {k: float(v[0]) for k, v in res.components.items()}
        obs = res.obs[0]
        if 0 in res.final_obs:
            self._pending = obs
            obs = res.final_obs[0]
            info["episode"] = res.finished[0]
            self._final_rgb = res.final_rgb.get(0)
        return obs, float(res.rewards[0]), bool(res.terminated[0]), bool(res.truncated[0]), info

    def render(self) -> np.ndarray | None:
        """The full-colour 240x256 screen (a copy); after the episode ended, its last screen
        (with ``render_mode="rgb_array"``; otherwise the start of the next episode)."""
        if self._final_rgb is not None:
            return self._final_rgb.copy()
        return self.group.rgb(0)

    def set_stages(self, stages: str) -> None:
        """Stages drawn from at the next seeded reset."""
        from .stages import parse_stages

        self.group.set_selection(0, parse_stages(stages))

    def action_meanings(self) -> list[str]:
        """Names of the actions."""
        return action_meanings(self.config.actions)

    @property
    def frames(self) -> int:
        """Emulated frames so far."""
        return self.group.frames

    def _info(self, ep: Episode | None = None) -> dict[str, Any]:
        """What the game shows of episode ``ep`` (default: the current one)."""
        if ep is None:
            ep = self.group.episodes[0]
        return {
            "x_pos": ep.x,
            "y_pos": ep.y,
            "x_max": ep.x_max,
            "stage": ep.stage,
            "stage_index": STAGES.index(ep.stage) if ep.stage in STAGES else -1,
            "lives": ep.lives,
            "time": ep.time,
            "flag_get": ep.flag,
        }

    def close(self) -> None:
        """Release the emulator."""
        if self.group is not None:
            self.group.close()
            self.group = None
