"""A3G's hyper-parameters (asynchronous advantage actor-critic, Hogwild workers) in one dataclass.

Defaults are the seed's (dgriff777/SuperMarioRL main.py: lr 1e-4, gamma 0.99, GAE tau 1.0, entropy
0.01, value 0.5, 20-step rollouts, Adam with eps 1e-3 and shared state), except where the seed is
wrong or sized for another machine: gradient clipping is on, workers default to one per core of
this 2-core CPU, and the network is the cheap "small" encoder with a 256-wide LSTM, since every
worker runs its model on one torch thread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mario_rl.config.curriculum import check_curriculum_options
from mario_rl.config.records import NETWORKS, RENAMED, from_dict

OPTIMIZERS = ("adam", "rmsprop")


@dataclass
class A3GConfig:
    """Hyper-parameters of A3G."""

    total_steps: int = 5_000_000
    """Agent steps (all workers together) to train for; also the horizon of the lr schedule."""
    workers: int = 2
    """Worker processes, each with its own env and model copy (the seed used 32; on CPU one per
    core is right)."""
    envs_per_worker: int = 1
    """Envs each worker steps together, with one batched forward pass per step and one Hogwild
    update per rollout of all of them (1: the seed's one env per worker). On a CPU a batch-1
    forward pass is most of a worker's time, so a few envs per worker multiply its steps/s."""
    rollout_steps: int = 20
    """Steps of one rollout between two updates of the shared model (the seed's -ns)."""
    gamma: float = 0.99
    """Discount of the (shaped) game reward."""
    gae_lambda: float = 1.0
    """GAE lambda of the policy's advantages (the seed's -t/--tau); the value target is always the
    n-step bootstrapped return."""
    lr: float = 1e-4
    """Learning rate at the start."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """'linear' anneals lr to lr_final over total_steps (read from the shared step count)."""
    lr_final: float = 0.0
    """Learning rate at total_steps when lr_schedule is 'linear'."""
    optimizer: Literal["adam", "rmsprop"] = "adam"
    """Optimizer of the shared model: 'adam' or 'rmsprop'."""
    amsgrad: bool = False
    """AMSGrad variant of Adam."""
    adam_eps: float = 1e-3
    """Adam epsilon (the seed's SharedAdam uses 1e-3)."""
    rmsprop_alpha: float = 0.99
    """RMSprop smoothing constant."""
    rmsprop_eps: float = 0.1
    """RMSprop epsilon (the seed's SharedRMSprop uses 0.1)."""
    shared_optimizer: bool = True
    """One optimizer whose state lives in shared memory, stepped by every worker without locks; off:
    each worker keeps its own optimizer state over the shared parameters (not checkpointed)."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    norm_adv: bool = False
    """Normalise the policy's advantages over each update (all its steps and envs) to mean 0 and
    std 1, as PPO does; off: the seed's raw advantages, whose size follows the reward scale, so
    the entropy bonus weighs little where rewards are large."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 40.0
    """Clip each worker's gradient to this global norm before it reaches the shared model
    (0 disables; the seed had no clipping). The loss sums over the rollout's steps, hence 40."""
    network: Literal["nature", "small", "impala"] = "small"
    """Encoder: 'small' (16-32-32 convs + 256 features), 'nature' or 'impala' (slow on CPU)."""
    lstm_hidden: int = 256
    """LSTM hidden size (the seed used 512 with a bigger encoder)."""
    gpu_ids: list[int] = field(default_factory=lambda: [-1])
    """Devices of the workers' model copies, round-robin by rank: -1 is the CPU, i is cuda:i. The
    shared model and the optimizer stay on the CPU."""
    train_stages: bool = False
    """The seed's -ts: worker r < 32 trains on stage r (1-1, 1-2, …), the rest on the whole game."""
    curriculum: bool = False
    """Move workers that train on a set of stages (a list, all, or the whole-game workers of
    --train-stages) toward the stages whose episodes fail most."""
    curriculum_floor: float = 0.1
    """Smallest curriculum weight of a stage relative to an always-failed one (cleared stages are
    still revisited)."""
    curriculum_decay: float = 0.9
    """Per-episode decay of a stage's running failure rate (0.9: about the last 10 episodes)."""
    curriculum_frontier: int = 0
    """With the curriculum: open the stages a few at a time, in the order given (game order for
    A3G), the next one whenever fewer than this many open stages are unmastered; 0 opens every
    stage from the start. Stages not yet open are not drawn."""
    curriculum_master: float = 0.5
    """Running clear rate of training episodes at which the frontier counts a stage as mastered."""
    log_interval_s: float = 5.0
    """Seconds between metric rows (TensorBoard, metrics.jsonl), losses averaged over the interval:
    A3G's workers update asynchronously, so rows are by time rather than by update."""
    seed: int = 1
    """Seed of the initial weights; worker r also seeds its env and action sampling with seed + r."""

    @property
    def algo(self) -> str:
        """The algorithm's name (what models.model_spec reads: A3G's policy is recurrent)."""
        return "a3g"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (for checkpoints and run records)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> A3GConfig:
        """Inverse of to_dict; unknown keys are an error so that typos do not pass silently."""
        return from_dict(cls, data, renamed=RENAMED, convert={"gpu_ids": list})

    def validate(self) -> None:
        """Raise ValueError with a one-line message saying what is wrong and what would be right."""
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}"
            )
        for name in ("total_steps", "workers", "envs_per_worker", "rollout_steps", "lstm_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("gamma", "gae_lambda", "rmsprop_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("lr_final", "ent_coef", "vf_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.adam_eps > 0 or not self.rmsprop_eps > 0:
            raise ValueError("adam_eps and rmsprop_eps must be > 0")
        if self.amsgrad and self.optimizer != "adam":
            raise ValueError("amsgrad is an Adam option; use it with optimizer 'adam'")
        if not self.gpu_ids or any(
            isinstance(g, bool) or not isinstance(g, int) or g < -1 for g in self.gpu_ids
        ):
            raise ValueError(
                f"gpu_ids must be a list of -1 (CPU) or GPU indices >= 0, got {self.gpu_ids!r}"
            )
        check_curriculum_options(self)
        if not self.log_interval_s > 0:
            raise ValueError(f"log_interval_s must be > 0, got {self.log_interval_s}")
