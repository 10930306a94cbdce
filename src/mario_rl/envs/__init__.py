"""Environments: stages, episode rules, reward shaping, preprocessing, vector and single envs (no torch)."""

from .actions import ACTION_SETS, action_meanings
from .config import EnvConfig, RewardConfig
from .registration import env_id, register_envs
from .rules import COMPONENTS
from .single import MarioEnv
from .stages import STAGES, StageError, StageSelection, parse_stages
from .vector import MarioVectorEnv, make_vector_env

# Importing the package is what makes gymnasium.make("mario_rl/Mario-1-1-v0") work.
register_envs()

__all__ = [
    "ACTION_SETS",
    "COMPONENTS",
    "STAGES",
    "EnvConfig",
    "MarioEnv",
    "MarioVectorEnv",
    "RewardConfig",
    "StageError",
    "StageSelection",
    "action_meanings",
    "env_id",
    "make_vector_env",
    "parse_stages",
    "register_envs",
]
