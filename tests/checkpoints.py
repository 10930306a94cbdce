"""A checkpoint for tests in a fraction of a second: a freshly initialised model, no training."""

from __future__ import annotations

from pathlib import Path

from mario_rl.envs import EnvConfig, action_meanings
from mario_rl.io.checkpoint import save_checkpoint
from mario_rl.models import ActorCritic, ModelSpec


def fresh_checkpoint(path: Path, env: EnvConfig | None = None, recurrent: bool = False) -> Path:
    """Save an untrained small model with ``env`` (default: EnvConfig()) as its environment."""
    env = env or EnvConfig()
    spec = ModelSpec(
        network="small",
        obs_shape=(env.frame_stack, env.size, env.size),
        n_actions=len(action_meanings(env.actions)),
        recurrent=recurrent,
        hidden_size=64,
    )
    model = ActorCritic(spec)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"step": 0, "model_spec": spec.to_dict(), "env_config": env.to_dict()}
    return save_checkpoint(path, tensors, meta)
