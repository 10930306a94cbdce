"""Kickstarting (PPO ``--teachers``): frozen per-stage teacher policies, and the loss term that
pulls the trained model's action distribution toward the teacher of each sample's stage.

A teacher is any feed-forward mario-rl checkpoint with the run's observation size and action
set, named for the stage it plays (``1-1=models/ppo-1-1-small``). On every rollout the teachers
label the samples of their stages with their action log-probabilities (once per rollout, not per
epoch); the update adds ``coef * KL(teacher || model)`` averaged over the minibatch (samples of
stages without a teacher add 0). The RL loss trains everything as usual, so the model can pass
its teachers and learns the stages that have none: what Schmitt et al. (2018) call
kickstarting, and with a coefficient that never decays, multi-teacher policy distillation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mario_rl.config.ppo import parse_teachers
from mario_rl.envs import EnvConfig
from mario_rl.envs.stages import STAGES, parse_stages
from mario_rl.io.checkpoint import load_checkpoint, policy_weights
from mario_rl.models import ActorCritic, ModelSpec

__all__ = ["Teachers", "load_teachers", "parse_teachers", "teacher_kl"]


@dataclass
class Teachers:
    """Frozen teacher models by stage index (into STAGES)."""

    models: dict[int, ActorCritic]

    @torch.no_grad()
    def log_probs(self, obs: Tensor, stages: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
        """(log-probabilities (B, A), has-teacher mask (B,)) for observations ``obs`` (B, C, H, W)
        showing ``stages`` (B,) (rows without a teacher: zeros and False)."""
        mask = torch.zeros(len(stages), dtype=torch.bool)
        logp: Tensor | None = None
        for stage, model in self.models.items():
            rows = torch.nonzero(stages == stage).flatten()
            for k in range(0, len(rows), chunk):
                r = rows[k : k + chunk]
                out = F.log_softmax(model(obs[r]).logits.float(), dim=-1)
                if logp is None:
                    logp = torch.zeros((len(stages), out.shape[-1]))
                logp[r] = out
                mask[r] = True
        if logp is None:
            logp = torch.zeros((len(stages), 1))
        return logp, mask


def teacher_kl(logits: Tensor, teacher_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(the loss term: KL(teacher || model) summed over the masked rows / all rows, the mean KL
    over the masked rows for the dashboard). ``logits`` (B, A) are the model's, with gradients."""
    if not bool(mask.any()):
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    t = teacher_logp[mask]
    s = F.log_softmax(logits[mask].float(), dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return kl.sum() / len(mask), kl.mean().detach()


def load_teachers(
    spec: str, env: EnvConfig, obs_shape: tuple[int, ...], n_actions: int
) -> Teachers | None:
    """The teachers ``spec`` names, each checked against the run (its env's stage selection,
    observation shape, action set): ValueError or CheckpointError (one line) otherwise, before
    anything is written. Loading never runs code (safetensors + JSON). None for ``''``."""
    if not spec:
        return None
    selection = parse_stages(env.stages)
    models: dict[int, ActorCritic] = {}
    for stage, path in parse_teachers(spec).items():
        if not selection.game and stage not in selection.stages:
            raise ValueError(
                f"--teachers: {stage} is not one of the run's stages ({selection.spec}); give"
                " teachers for stages the run trains on"
            )
        if not os.path.exists(path):
            raise ValueError(f"--teachers: {path} does not exist; give a checkpoint directory")
        tensors, meta = load_checkpoint(path)
        try:
            spec_t = ModelSpec.from_dict(meta.get("model_spec") or {})
            env_t = EnvConfig.from_dict(meta.get("env_config") or {})
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--teachers: {path} has no usable model spec ({e})") from None
        why = None
        if spec_t.recurrent:
            why = "it is recurrent (teachers must be feed-forward PPO models)"
        elif tuple(spec_t.obs_shape) != tuple(obs_shape):
            why = f"it sees {list(spec_t.obs_shape)}, this run {list(obs_shape)} (--size, frame stack)"
        elif spec_t.n_actions != n_actions or env_t.actions != env.actions:
            why = f"its action set is {env_t.actions!r}, this run's {env.actions!r}"
        if why:
            raise ValueError(f"--teachers: {path} cannot teach this run: {why}")
        model = ActorCritic(spec_t)
        try:
            model.load_state_dict(policy_weights(tensors), strict=True)
        except RuntimeError as e:
            first = " ".join(str(e).split())[:200]
            raise ValueError(f"--teachers: {path}: weights do not fit its spec ({first})") from None
        model.eval().requires_grad_(False)
        models[STAGES.index(stage)] = model
    return Teachers(models)
