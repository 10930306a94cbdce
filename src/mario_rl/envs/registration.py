"""Registers this project's envs with Gymnasium, so ``gymnasium.make(id, **options)`` builds them.

Ids (namespace ``mario_rl``, version ``v0``):

* ``mario_rl/Mario-1-1-v0`` … ``mario_rl/Mario-8-4-v0``: one stage;
* ``mario_rl/Mario-all-v0``: each episode on a stage drawn from the 32;
* ``mario_rl/Mario-game-v0``: the whole game from 1-1, as the game plays it;
* ``mario_rl/Mario-v0``: any selection, given as ``stages="1-1,4-2:3"`` (default ``1-1``).

Keyword arguments of ``gymnasium.make`` are ``EnvConfig`` fields (``actions="complex"``,
``frame_skip=2``, ``reward={"flag": 0}``…), or ``config=EnvConfig(...)`` as a base they override,
plus ``render_mode`` and ``seed`` (the stream a ``reset()`` without a seed starts from). No
``TimeLimit`` is added: the env truncates episodes itself (``max_steps``, ``stall_steps``).
The fixed ids carry their selection as the entry point's ``id_stages`` argument (so a spec
rebuilds its env), which refuses a ``stages=`` that would contradict the id.
``gymnasium.make_vec(id, num_envs=n)`` builds the project's own ``MarioVectorEnv`` (threaded
emulator groups, ``workers=``) rather than ``n`` copies in a ``SyncVectorEnv``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym

from .config import EnvConfig, RewardConfig
from .single import MarioEnv
from .stages import STAGES
from .vector import MarioVectorEnv

NAMESPACE = "mario_rl"
VERSION = 0
_FIXED = (*STAGES, "all", "game")
"""Selections that have an id of their own."""
_OPTIONS = tuple(f.name for f in dataclasses.fields(EnvConfig) if f.name != "stages")


def env_id(stages: str | None = None) -> str:
    """The Gymnasium id of a stage selection with an id of its own ('1-1', 'all', 'game'), or of
    the id that takes any selection (``stages`` None)."""
    if stages is None:
        return f"{NAMESPACE}/Mario-v{VERSION}"
    if stages not in _FIXED:
        raise ValueError(
            f"no id for stages {stages!r}; use {env_id()!r} with stages={stages!r} instead"
        )
    return f"{NAMESPACE}/Mario-{stages}-v{VERSION}"


def register_envs() -> None:
    """Register every id (once: ids already registered are left as they are)."""
    for stages in (None, *_FIXED):
        name = env_id(stages)
        if name in gym.registry:
            continue
        gym.register(
            id=name,
            entry_point=f"{__name__}:make_env",
            vector_entry_point=f"{__name__}:make_vector",
            # The env truncates episodes itself (EnvConfig.max_steps, stall_steps); a TimeLimit
            # on top would cut at a different step whenever a user changes max_steps.
            max_episode_steps=None,
            kwargs={} if stages is None else {"id_stages": stages},
        )


def make_env(
    stages: str | None = None,
    *,
    id_stages: str | None = None,
    config: EnvConfig | None = None,
    seed: int = 0,
    render_mode: str | None = None,
    **options: Any,
) -> MarioEnv:
    """Entry point of every id: a ``MarioEnv`` for ``stages`` (or the id's own, ``id_stages``)
    with ``config`` (default ``EnvConfig()``) changed by ``options`` (``EnvConfig`` fields)."""
    cfg = env_config(stages, id_stages=id_stages, config=config, **options)
    return MarioEnv(cfg, seed=seed, render_mode=render_mode)


def make_vector(
    num_envs: int = 8,
    stages: str | None = None,
    *,
    id_stages: str | None = None,
    config: EnvConfig | None = None,
    workers: int = 1,
    seed: int = 0,
    **options: Any,
) -> MarioVectorEnv:
    """Vector entry point of every id (``gymnasium.make_vec``): a ``MarioVectorEnv`` of
    ``num_envs`` envs over ``workers`` threads, configured as ``make_env`` does."""
    if options.get("render_mode") is not None:
        raise ValueError(
            "the vector env does not render; use env.rgb(i), or "
            "gymnasium.make_vec(..., vectorization_mode='sync', render_mode='rgb_array')"
        )
    options.pop("render_mode", None)
    cfg = env_config(stages, id_stages=id_stages, config=config, **options)
    return MarioVectorEnv(cfg, num_envs=num_envs, workers=workers, seed=seed)


def env_config(
    stages: str | None = None,
    *,
    id_stages: str | None = None,
    config: EnvConfig | None = None,
    **options: Any,
) -> EnvConfig:
    """``config`` (default ``EnvConfig()``) with the stages and the ``EnvConfig`` fields given;
    TypeError naming the valid options for an unknown one, ValueError for a bad value."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; the options are EnvConfig "
            f"fields: stages (mario_rl/Mario-v0 only), {', '.join(_OPTIONS)}, "
            "or config=EnvConfig(...), render_mode and seed"
        )
    if id_stages is not None and stages is not None:
        raise ValueError(
            f"{env_id(id_stages)} always plays {id_stages!r}; for stages={stages!r} "
            f"use gymnasium.make({env_id()!r}, stages={stages!r})"
        )
    base = config or EnvConfig()
    changes = dict(options)
    if isinstance(changes.get("reward"), dict):
        known = {f.name for f in dataclasses.fields(RewardConfig)}
        bad = sorted(set(changes["reward"]) - known)
        if bad:
            raise TypeError(
                f"unknown reward option(s) {', '.join(map(repr, bad))}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        # A dict changes some fields of the base's reward shaping, as options change the base.
        changes["reward"] = dataclasses.replace(base.reward, **changes["reward"])
    chosen = id_stages if id_stages is not None else stages
    if chosen is not None:
        changes["stages"] = chosen
    cfg = dataclasses.replace(base, **changes)
    cfg.validate()
    return cfg
