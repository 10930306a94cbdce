"""The fast vector environment: N envs in T emulator groups, stepped by T threads.

Autoreset semantics (Gymnasium ``AutoresetMode.SAME_STEP``): when env ``i`` ends an episode at
a step, ``obs[i]`` returned by that step is already the first observation of its next episode;
the last observation of the finished one is ``infos["final_obs"][i]`` (valid where
``infos["_final_obs"][i]``), and its statistics are in ``infos["episode"]`` (valid where
``infos["_episode"][i]``). Rewards, terminations and truncations belong to the finished episode.
After ``keep_final_rgb(True)`` (recording), ``infos["final_rgb"][i]`` is likewise the last
full-colour screen of the finished episode, since ``rgb(i)`` already shows the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import accumulate
from typing import Any, TypeVar

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from .actions import action_meanings
from .config import EnvConfig
from .core import EmulatorGroup, StepResult
from .rules import COMPONENTS
from .stages import STAGES, StageSelection, parse_stages

T = TypeVar("T")


def _split(n: int, parts: int) -> list[range]:
    """Contiguous, nearly equal index ranges."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [range(bounds[k], bounds[k + 1]) for k in range(parts)]


class MarioVectorEnv(VectorEnv):
    """``num_envs`` Super Mario Bros envs, stepped by ``workers`` threads (each owns a group)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        config: EnvConfig,
        num_envs: int = 8,
        workers: int = 1,
        seed: int = 0,
        env_seeds: Sequence[int | Sequence[int]] | None = None,
    ):
        config.validate()
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not 1 <= workers <= num_envs:
            raise ValueError(f"workers must be between 1 and num_envs ({num_envs}), got {workers}")
        self.config = config
        self.num_envs = num_envs
        self.workers = workers
        self.ranges = _split(num_envs, workers)
        if env_seeds is not None and len(env_seeds) != num_envs:
            raise ValueError(f"env_seeds has {len(env_seeds)} entries for {num_envs} envs")
        self._seed = seed
        self._env_seeds = env_seeds
        self.groups = [EmulatorGroup(config, len(r), self._seeds(r, seed)) for r in self.ranges]
        n_actions = len(action_meanings(config.actions))
        shape = (config.frame_stack, config.size, config.size)
        self.single_observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.single_action_space = spaces.Discrete(n_actions)
        self.observation_space = spaces.Box(0, 255, (num_envs, *shape), np.uint8)
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, n_actions))
        # The calling thread steps group 0 itself; the pool steps the others.
        self._pool = ThreadPoolExecutor(workers - 1) if workers > 1 else None
        self._started = False

    def _seeds(self, r: range, seed: int) -> list:
        """Per-env random streams: explicit ones if given, else derived from the run's seed."""
        if self._env_seeds is not None:
            return [self._env_seeds[i] for i in r]
        return [int(seed) * 100_003 + i for i in r]

    # -- Gymnasium API ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start every env; ``seed`` re-seeds stage draws and no-op starts."""
        if seed is not None:
            self._seed = seed
        for g, r in zip(self.groups, self.ranges, strict=True):
            g.reseed(self._seeds(r, self._seed))
        obs = np.concatenate(self.map_groups(lambda k: self.groups[k].reset()))
        self._started = True
        return obs, _positions(self.groups)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One agent step of every env (autoreset SAME_STEP, see the module docstring)."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {actions.shape}")
        results: list[StepResult] = self.map_groups(
            lambda k: self.groups[k].step(actions[self.ranges[k].start : self.ranges[k].stop])
        )
        return _assemble(results, self.groups)

    def step_group(
        self, k: int, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One agent step of group ``k``'s envs only (indices ``self.ranges[k]``), same contract.

        Safe to call for different groups from different threads at once: this is how a
        collector lets each worker run its own envs without waiting for the slowest group at
        every step (``map_groups``). Arrays and infos are indexed within the group.
        """
        if not self._started:
            raise RuntimeError("call reset() before step_group()")
        r = self.ranges[k]
        actions = np.asarray(actions)
        if actions.shape != (len(r),):
            raise ValueError(f"group {k} expects {len(r)} actions, got shape {actions.shape}")
        res = self.groups[k].step(actions)
        return _assemble([res], [self.groups[k]])

    def map_groups(self, fn: Callable[[int], T]) -> list[T]:
        """Run ``fn(k)`` for every group ``k`` at once, one worker thread each (group 0 in the
        calling thread); returns the results in group order and re-raises the first failure."""
        if self._pool is None:
            return [fn(k) for k in range(self.workers)]
        futures = [self._pool.submit(fn, k) for k in range(1, self.workers)]
        try:
            first = fn(0)
        finally:
            # Never leave a group running in the pool when this returns or raises.
            wait(futures)
        return [first, *(f.result() for f in futures)]

    def close(self, **kwargs: Any) -> None:
        """Stop the threads and release the emulators."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for g in self.groups:
            g.close()
        self.groups = []

    # -- extras -------------------------------------------------------------------------------
    def set_stages(self, indices: list[int] | range, stages: str | StageSelection) -> None:
        """Assign a stage selection to some envs; it takes effect at each one's next reset."""
        selection = parse_stages(stages)
        for i in indices:
            if not 0 <= i < self.num_envs:
                raise IndexError(f"env index {i} out of range 0..{self.num_envs - 1}")
            g, j = self._locate(i)
            g.set_selection(j, selection)

    def stages_of(self, i: int) -> StageSelection:
        """The stage selection env ``i`` draws from."""
        g, j = self._locate(i)
        return g.selection[j]

    def rgb(self, i: int) -> np.ndarray:
        """A copy of env ``i``'s full-colour screen."""
        g, j = self._locate(i)
        return g.rgb(j)

    def keep_final_rgb(self, on: bool = True) -> None:
        """Recording: report each finished episode's last screen in ``infos["final_rgb"]``."""
        for g in self.groups:
            g.keep_final_rgb = on

    @property
    def frames(self) -> int:
        """Emulated frames so far, all envs together."""
        return sum(g.frames for g in self.groups)

    def action_meanings(self) -> list[str]:
        """Names of the actions."""
        return action_meanings(self.config.actions)

    def _locate(self, i: int) -> tuple[EmulatorGroup, int]:
        for g, r in zip(self.groups, self.ranges, strict=True):
            if i in r:
                return g, i - r.start
        raise IndexError(i)


def _positions(groups: Sequence[EmulatorGroup]) -> dict[str, Any]:
    """Per-env position info after the latest step (or reset) of ``groups``, in order."""
    eps = [ep for g in groups for ep in g.episodes]
    return {
        "x_pos": np.array([e.x for e in eps], np.int32),
        "y_pos": np.array([e.y for e in eps], np.int32),
        "x_max": np.array([e.x_max for e in eps], np.int32),
        "stage": np.array(
            [STAGES.index(e.stage) if e.stage in STAGES else -1 for e in eps], np.int32
        ),
        "lives": np.array([e.lives for e in eps], np.int32),
        "time": np.array([e.time for e in eps], np.int32),
        "flag_get": np.array([e.flag for e in eps], bool),
    }


def _assemble(
    results: list[StepResult], groups: Sequence[EmulatorGroup]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The Gymnasium step tuple of consecutive groups' results, their envs numbered in order."""
    obs = np.concatenate([res.obs for res in results])
    rewards = np.concatenate([res.rewards for res in results])
    n = len(rewards)
    terminated = np.concatenate([res.terminated for res in results])
    truncated = np.concatenate([res.truncated for res in results])
    infos = _positions(groups)
    infos["reward_components"] = {
        c: np.concatenate([res.components[c] for res in results]) for c in COMPONENTS
    }
    ended = terminated | truncated
    if ended.any():
        # Where each group's envs start in the output (only needed for the envs that ended).
        offsets = list(accumulate((len(res.rewards) for res in results[:-1]), initial=0))
        infos["final_obs"] = np.zeros((n,), dtype=object)
        infos["_final_obs"] = ended.copy()
        ep = {
            "r": np.zeros(n, np.float32),
            "l": np.zeros(n, np.int32),
            "x_max": np.zeros(n, np.int32),
            "x_end": np.zeros(n, np.int32),
            "flag": np.zeros(n, bool),
            "stages_cleared": np.zeros(n, np.int32),
            "stage": np.zeros(n, np.int32),
            "start_stage": np.zeros(n, np.int32),
            "reason": np.full(n, "", dtype=object),
            "time_left": np.zeros(n, np.int32),
            "restored": np.zeros(n, bool),
            "components": {c: np.zeros(n, np.float32) for c in COMPONENTS},
        }
        for res, off in zip(results, offsets, strict=True):
            for j, fo in res.final_obs.items():
                infos["final_obs"][off + j] = fo
            for j, stats in res.finished.items():
                i = off + j
                for k, v in stats.items():
                    if k == "components":
                        for c, cv in v.items():
                            ep["components"][c][i] = cv
                    else:
                        ep[k][i] = v
        infos["episode"] = ep
        infos["_episode"] = ended.copy()
        if any(res.final_rgb for res in results):
            infos["final_rgb"] = np.zeros((n,), dtype=object)
            for res, off in zip(results, offsets, strict=True):
                for j, screen in res.final_rgb.items():
                    infos["final_rgb"][off + j] = screen
    return obs, rewards, terminated, truncated, infos


def make_vector_env(
    config: EnvConfig | None = None, num_envs: int = 8, workers: int = 1, seed: int = 0
) -> MarioVectorEnv:
    """The training vector env (see MarioVectorEnv for the autoreset contract)."""
    return MarioVectorEnv(config or EnvConfig(), num_envs=num_envs, workers=workers, seed=seed)
