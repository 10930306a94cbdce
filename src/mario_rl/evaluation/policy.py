"""Load a trained policy from a checkpoint (safetensors + JSON, never unpickled) and evaluate it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import set_threads
from ..envs import EnvConfig, action_meanings
from ..io.checkpoint import (
    CheckpointError,
    load_checkpoint,
    policy_weights,
    prefixed,
    save_checkpoint,
    strip_prefix,
)
from ..models import ActorCritic, ModelSpec
from ..rl.actions import policy_act
from .evaluate import Policy, evaluate, summarise
from .report import CLEARED_BAR


class LoadedPolicy:
    """A checkpoint's model as a batched policy ``act(obs, first) -> actions``."""

    def __init__(self, model: ActorCritic, env_config: EnvConfig, meta: dict, deterministic: bool):
        self.model = model
        self.env_config = env_config
        self.meta = meta
        self.deterministic = deterministic
        self.state: Any = None
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Actions for a batch; ``first`` resets the recurrent state of envs starting an episode."""
        if self.state is not None and self.state[0].shape[0] != len(obs):
            self.state = None
        actions, self.state = policy_act(
            self.model,
            obs,
            self.state,
            deterministic=self.deterministic,
            starts=first if self.model.spec.recurrent else None,
            generator=self.generator,
        )
        return actions


def load_policy(
    path: str | os.PathLike[str], deterministic: bool = True, device: str = "cpu"
) -> LoadedPolicy:
    """The policy in a checkpoint; CheckpointError (one line) if it is not a usable one."""
    tensors, meta = load_checkpoint(path)
    for key in ("model_spec", "env_config"):
        if key not in meta:
            raise CheckpointError(
                f"{path}: checkpoint has no {key!r}; is it a mario-rl model checkpoint?"
            )
    try:
        spec = ModelSpec.from_dict(meta["model_spec"])
        env_config = EnvConfig.from_dict(meta["env_config"])
        # A training aid only: a loaded policy plays from the stages' starts.
        env_config.progress_starts = 0.0
        env_config.progress_cells = False
        env_config.demos = ""
        env_config.demo_starts = 0.0
        env_config.validate()
        _check_fits(spec, env_config)
        model = ActorCritic(spec)
        model.load_state_dict(policy_weights(tensors), strict=True)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        # torch's load errors span lines and name the keys only after the first one.
        first = " ".join(str(e).split())[:300] or type(e).__name__
        raise CheckpointError(
            f"{path}: weights do not fit the recorded model: {first}; "
            "use a checkpoint saved by mario-rl train"
        ) from None
    model.to(device).eval()
    return LoadedPolicy(model, env_config, meta, deterministic)


def export_policy(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], note: str = "", trained: bool = False
) -> tuple[Path, int]:
    """Write the policy of checkpoint ``src`` as a small checkpoint at ``dst``: the network's
    weights only (no optimizer, RND or other training state), its model and env records, the
    training job and counters, and ``note``. It plays, evaluates, teaches (``--teachers``) and
    starts runs (``--init-from``) like the original; it cannot be resumed. The network is the one
    ``src`` plays with (its weight average where it has one), or with ``trained`` its trained
    weights. ``src`` must load as a policy (CheckpointError otherwise). Returns (the path
    written, its weights' bytes)."""
    load_policy(src)  # refuses anything that would not play
    tensors, meta = load_checkpoint(src)
    # The network it plays with (a weight average where the run kept one), as plain weights.
    chosen = strip_prefix(tensors, "model.") if trained else policy_weights(tensors)
    weights = prefixed(chosen, "model.")
    kept = {k: v for k, v in meta.items() if k != "checkpoint"}
    kept["optimizer"] = None
    if note:
        kept["note"] = note
    path = save_checkpoint(dst, weights, kept)
    return path, sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")


def _check_fits(spec: ModelSpec, env: EnvConfig) -> None:
    """ValueError unless the model's inputs and outputs are those of its recorded environment
    (a checkpoint whose two halves disagree would crash, or play wrong buttons, mid-episode)."""
    n = len(action_meanings(env.actions))
    if spec.n_actions != n:
        raise ValueError(
            f"the model has {spec.n_actions} actions but its action set {env.actions!r} has {n}"
        )
    shape = (env.frame_stack, env.size, env.size)
    if tuple(spec.obs_shape) != shape:
        raise ValueError(
            f"the model takes observations {tuple(spec.obs_shape)} but its environment gives {shape}"
        )


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    stages: str,
    episodes: int = 5,
    seed: int = 0,
    workers: int = 1,
    torch_threads: int = 1,
    sample: bool = False,
    noop_max: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on ``stages``; flat metrics for training-time logs and best-keeping.

    Returns ``flag_rate`` and ``mean_x`` over all episodes, plus ``stage/<W-S>/clear_rate`` and
    ``stage/<W-S>/mean_x``, and ``stages_cleared`` (stages cleared in at least CLEARED_BAR of
    their episodes, 8 of 10: the bar the reports and the campaign use).
    """
    set_threads(max(1, torch_threads))
    policy: Policy = load_policy(checkpoint, deterministic=not sample)
    env_config = policy.env_config
    if noop_max is not None:
        env_config.noop_max = noop_max
    table = summarise(evaluate(policy, env_config, stages, episodes, seed=seed, workers=workers))
    out: dict[str, Any] = {}
    n = sum(s["episodes"] for s in table.values())
    out["flag_rate"] = sum(s["clear_rate"] * s["episodes"] for s in table.values()) / max(1, n)
    out["mean_x"] = sum(s["mean_x"] * s["episodes"] for s in table.values()) / max(1, n)
    out["stages_cleared"] = sum(s["clear_rate"] >= CLEARED_BAR - 1e-9 for s in table.values())
    for stage, s in table.items():
        out[f"stage/{stage}/clear_rate"] = s["clear_rate"]
        out[f"stage/{stage}/mean_x"] = s["mean_x"]
    return out
