"""A tiny deterministic stand-in for the Mario vector env (same contract, no emulator).

Each env walks along a 1-D corridor: action 1 ("right") moves forward, others stay; the obs is a
stack of frames whose brightness encodes the position, so a policy can learn from pixels. Episodes
terminate at the goal (reward +1) or on a random "death", and are truncated at ``max_len`` steps.
Autoreset is SAME_STEP, as in mario_rl.envs.vector: on an episode end the returned obs is the
new episode's first obs and the finished one's last obs is ``infos["final_obs"][i]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces


class FakeVectorEnv:
    """Deterministic given the seed; ``copy.deepcopy`` gives an env that continues identically."""

    def __init__(
        self,
        num_envs: int = 4,
        size: int = 84,
        stack: int = 4,
        n_actions: int = 3,
        goal: int = 12,
        max_len: int = 30,
        death_p: float = 0.02,
        seed: int = 0,
    ):
        self.num_envs = num_envs
        self.size, self.stack, self.goal, self.max_len, self.death_p = (
            size,
            stack,
            goal,
            max_len,
            death_p,
        )
        self.single_observation_space = spaces.Box(0, 255, (stack, size, size), np.uint8)
        self.single_action_space = spaces.Discrete(n_actions)
        self._rng = np.random.default_rng(seed)
        self.pos = np.zeros(num_envs, np.int64)
        self.t = np.zeros(num_envs, np.int64)
        self.ret = np.zeros(num_envs, np.float32)
        self.frames = np.zeros((num_envs, stack, size, size), np.uint8)

    def _frame(self, i: int) -> np.ndarray:
        f = np.full((self.size, self.size), 20, np.uint8)
        col = int(self.pos[i] * (self.size - 4) / max(self.goal, 1))
        f[:, col : col + 4] = 255  # a bright bar at Mario's position
        return f

    def _reset_one(self, i: int) -> None:
        self.pos[i] = 0
        self.t[i] = 0
        self.ret[i] = 0.0
        f = self._frame(i)
        self.frames[i] = f[None]

    def reset(
        self, *, seed: int | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        for i in range(self.num_envs):
            self._reset_one(i)
        return self.frames.copy(), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions)
        assert actions.shape == (self.num_envs,), actions.shape
        progress = (actions == 1).astype(np.float32)
        self.pos += progress.astype(np.int64)
        self.t += 1
        death = self._rng.random(self.num_envs) < self.death_p
        flag = self.pos >= self.goal
        reward = (0.1 * progress + 1.0 * flag - 1.0 * (death & ~flag)).astype(np.float32)
        self.ret += reward
        terminated = flag | death
        truncated = (self.t >= self.max_len) & ~terminated
        for i in range(self.num_envs):
            self.frames[i, :-1] = self.frames[i, 1:]
            self.frames[i, -1] = self._frame(i)
        infos: dict[str, Any] = {
            "reward_components": {"progress": 0.1 * progress, "flag": 1.0 * flag.astype(np.float32)}
        }
        ended = terminated | truncated
        if ended.any():
            infos["final_obs"] = np.zeros(self.num_envs, dtype=object)
            infos["_final_obs"] = ended.copy()
            infos["episode"] = {
                "r": np.where(ended, self.ret, 0).astype(np.float32),
                "l": np.where(ended, self.t, 0).astype(np.int32),
                "x_max": np.where(ended, self.pos, 0).astype(np.int32),
                "flag": flag & ended,
            }
            infos["_episode"] = ended.copy()
            for i in np.flatnonzero(ended):
                infos["final_obs"][i] = self.frames[i].copy()
                self._reset_one(i)
        return self.frames.copy(), reward, terminated, truncated, infos

    def close(self) -> None:
        pass


class GroupedFakeVectorEnv:
    """Several FakeVectorEnvs as the groups of one vector env, with the group API of
    ``MarioVectorEnv`` (``ranges``, ``step_group``, ``map_groups``: one thread per group)."""

    def __init__(self, groups: int = 2, envs_per_group: int = 2, seed: int = 0, **kw: Any):
        self.groups = [
            FakeVectorEnv(num_envs=envs_per_group, seed=seed + 17 * k, **kw) for k in range(groups)
        ]
        self.num_envs = groups * envs_per_group
        self.ranges = [range(k * envs_per_group, (k + 1) * envs_per_group) for k in range(groups)]
        self.single_observation_space = self.groups[0].single_observation_space
        self.single_action_space = self.groups[0].single_action_space
        self.group_steps: list[list[tuple]] = [[] for _ in range(groups)]
        """Every step_group result, per group (for tests to check what the collector stored)."""
        self.start_obs: list[np.ndarray] = []
        """Each group's obs from the last reset() or step(): where group stepping starts."""
        self.lockstep_calls = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs = [
            g.reset(seed=None if seed is None else seed + 17 * k)[0]
            for k, g in enumerate(self.groups)
        ]
        self.start_obs = obs
        return np.concatenate(obs), {}

    def step_group(self, k: int, actions: np.ndarray):
        out = self.groups[k].step(actions)
        self.group_steps[k].append(out)
        return out

    def map_groups(self, fn):
        import threading

        results: list[Any] = [None] * len(self.groups)
        errors: list[BaseException] = []

        def run(k: int) -> None:
            try:
                results[k] = fn(k)
            except BaseException as e:  # re-raised in the caller
                errors.append(e)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(self.groups))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def step(self, actions: np.ndarray):
        """Every group at once (lock-step), as ``MarioVectorEnv.step``; not in group_steps."""
        self.lockstep_calls += 1
        outs = [
            g.step(actions[r.start : r.stop]) for g, r in zip(self.groups, self.ranges, strict=True)
        ]
        self.start_obs = [o[0] for o in outs]
        infos: dict[str, Any] = {}
        return (
            np.concatenate([o[0] for o in outs]),
            np.concatenate([o[1] for o in outs]),
            np.concatenate([o[2] for o in outs]),
            np.concatenate([o[3] for o in outs]),
            infos,
        )

    def close(self) -> None:
        pass
