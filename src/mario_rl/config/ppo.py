"""The PPO family's hyper-parameters (plain PPO, recurrent PPO, PPO + RND) in one dataclass.

Defaults follow the Mario PPO seeds (8 envs x 512 steps, 10 epochs, gamma 0.9, lambda 0.95) with
CleanRL's pixel details (Adam eps 1e-5, grad clip 0.5, per-minibatch advantage normalisation) and
the cheap "small" encoder so that training is fast on a 2-core CPU (see docs/ for measurements).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from mario_rl.config.curriculum import check_curriculum_options
from mario_rl.config.records import NETWORKS, from_dict
from mario_rl.envs.stages import StageError, stage_index

ALGOS = ("ppo", "ppo-lstm", "ppo-rnd")


FORM = "STAGE=CHECKPOINT[,STAGE=CHECKPOINT…], e.g. 1-1=models/ppo-1-1-small"


def parse_teachers(spec: str) -> dict[str, str]:
    """``'1-1=a,1-4=b'`` as {stage: checkpoint path}; ValueError (one line) on a bad form."""
    out: dict[str, str] = {}
    for part in spec.split(","):
        stage, sep, path = part.strip().partition("=")
        if not sep or not stage.strip() or not path.strip():
            raise ValueError(f"--teachers: {part.strip()!r} is not STAGE=CHECKPOINT; give {FORM}")
        try:
            stage_index(stage)
        except StageError as e:
            raise ValueError(f"--teachers: {e}") from None
        if stage.strip() in out:
            raise ValueError(f"--teachers: stage {stage.strip()} has two teachers; give one each")
        out[stage.strip()] = path.strip()
    return out


@dataclass
class PPOConfig:
    """Hyper-parameters of PPO, LSTM-PPO and PPO+RND."""

    algo: Literal["ppo", "ppo-lstm", "ppo-rnd"] = "ppo"
    """Which variant: 'ppo' (feed-forward), 'ppo-lstm' (LSTM core, truncated BPTT) or 'ppo-rnd'
    (random network distillation exploration bonus, two value heads)."""
    total_steps: int = 5_000_000
    """Agent steps (all envs together) to train for; also the horizon of the linear schedules."""
    num_envs: int = 8
    """Parallel environments collecting experience."""
    rollout_steps: int = 512
    """Steps per env between two updates (the seed's learn_step); a batch is num_envs*rollout_steps."""
    minibatch_size: int = 256
    """Samples per gradient step; must divide num_envs*rollout_steps."""
    epochs: int = 10
    """Passes over each batch."""
    gamma: float = 0.9
    """Discount of the extrinsic (game) reward; 0.9 is what worked for Mario in every seed."""
    gae_lambda: float = 0.95
    """GAE lambda (1.0 = Monte-Carlo advantages, 0 = one-step TD)."""
    lr: float = 2.5e-4
    """Adam learning rate at the start."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """'linear' anneals lr to lr_final over total_steps; 'constant' keeps it."""
    lr_final: float = 0.0
    """Learning rate at total_steps when lr_schedule is 'linear'."""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5 rather than torch's 1e-8, as in the reference PPO implementations)."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient at the start."""
    ent_schedule: Literal["constant", "linear"] = "constant"
    """'linear' anneals ent_coef to ent_coef_final over total_steps."""
    ent_coef_final: float = 1e-4
    """Entropy coefficient at total_steps when ent_schedule is 'linear'."""
    clip: float = 0.2
    """PPO ratio clip epsilon."""
    vf_coef: float = 0.5
    """Value loss weight."""
    vf_loss: Literal["mse", "huber"] = "mse"
    """Value loss: 'mse' (0.5 * squared error) or 'huber' (smooth L1, delta 1)."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (0 disables)."""
    norm_adv: bool = True
    """Normalise advantages to zero mean / unit std within each minibatch."""
    target_kl: float | None = None
    """Stop the rest of an update (all remaining epochs) once approx_kl > 1.5 * target_kl; None = never."""
    lstm_hidden: int = 512
    """LSTM hidden size (ppo-lstm)."""
    bptt_len: int = 16
    """Sequence length for truncated back-propagation through time (ppo-lstm); divides rollout_steps
    and minibatch_size."""
    lstm_penalty: float = 0.0
    """Weight of the mean squared difference between the LSTM states recomputed during the update and
    those seen while collecting, over every step of every sequence (the LSTM seed's idea, which only
    counted the last step); 0 disables it."""
    rnd_int_coef: float = 1.0
    """Weight of the intrinsic advantage (ppo-rnd)."""
    rnd_ext_coef: float = 2.0
    """Weight of the extrinsic advantage (ppo-rnd)."""
    rnd_gamma_int: float = 0.99
    """Discount of the (non-episodic) intrinsic returns (ppo-rnd)."""
    rnd_update_proportion: float = 0.25
    """Fraction of each minibatch the RND predictor is trained on (slows its fitting down)."""
    rnd_obs_clip: float = 5.0
    """Clip of the normalised observation fed to the RND networks."""
    rnd_reward_norm: Literal["std", "minmax"] = "std"
    """Intrinsic reward scaling: 'std' divides by a running std of intrinsic returns (the RND paper);
    'minmax' rescales each rollout to [0, 1] (the seed's choice)."""
    rnd_init_steps: int = 64
    """Random-action steps per env used to initialise the RND observation statistics."""
    curriculum: bool = False
    """Draw each new episode's stage toward the stages whose episodes fail most: after every
    rollout the envs' stage weights become floor + (1 - floor) * the stage's running failure rate
    (replacing any weights given in --stages). Needs a set of stages (a list or 'all'). A3G: moves
    the workers that train on a set of stages (or the whole-game workers of --train-stages)."""
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
    teachers: str = ""
    """Kickstarting: 'STAGE=CHECKPOINT,…' names a feed-forward model (same --size and --actions)
    for some of the run's stages; the update adds teacher_coef * KL(teacher || model) on the
    samples of those stages, pulling the model toward what the teacher does there while the RL
    loss trains on as usual. '' = off. PPO and PPO+RND."""
    teacher_coef: float = 1.0
    """Weight of the teachers' KL term in the loss."""
    teacher_steps: int = 0
    """Agent steps over which teacher_coef decays linearly to 0 (0: it never decays)."""
    demo_bc: float = 0.0
    """Behaviour cloning on the env's demos (--demos): each minibatch's loss adds demo_bc times
    the cross-entropy of the model's policy against the demos' actions on demo_bc_batch
    (observation, action) pairs of their routes. 0 = off. PPO and PPO+RND."""
    demo_bc_batch: int = 64
    """Demo pairs drawn for each minibatch's behaviour-cloning term."""
    demo_bc_steps: int = 0
    """Agent steps over which demo_bc decays linearly to 0 (0: it never decays)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the network's weights, updated after every PPO
    update (weight * decay + new * (1 - decay); 0.95 averages about the last 20 updates), and
    play with it: checkpoints store it beside the trained weights, and evaluations, export,
    teachers and --init-from use it, while training goes on from the trained weights. It steadies
    a policy whose greedy evaluations swing from one checkpoint to the next. 0 = off."""
    network: Literal["nature", "small", "impala"] = "small"
    """Encoder: 'small' (16-32-32 convs + 256 features, ~2.5x faster to train than Nature on CPU),
    'nature' (the DQN Nature CNN, 512 features) or 'impala' (IMPALA ResNet 16-32-32; slow on CPU)."""
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    """Arithmetic of the update's forward and backward passes: 'bf16' runs them under bfloat16
    autocast (weights, optimizer state, losses and collection stay float32); 'auto' is bf16 where
    the hardware computes it natively (a CPU with AMX or AVX512-BF16, a CUDA GPU) and fp32
    elsewhere. Measured here (AMX CPU, 2 threads): 1.35x the samples/s for the small CNN at 64x64,
    2.1x for the Nature CNN at 84x84 (docs/benchmarks.md)."""
    channels_last: bool = True
    """Run convolutions in NHWC layout (measured ~1.6x faster with oneDNN on CPU)."""
    torch_threads: int = 2
    """torch intra-op threads for learning (0 = torch's default)."""
    collect_threads: int = 1
    """torch intra-op threads while collecting: batch-8 inference gains nothing from a second thread,
    and an OpenMP barrier per step stalls badly whenever the other core is busy (0 = torch_threads)."""
    group_collect: bool = True
    """With several env workers, each runs its own act-step loop over its own envs, so none waits
    for the slowest group at every step (measured 1.2x faster training with 2 workers; see
    docs/benchmarks.md). Off: one policy call for all envs, then all step together."""
    async_collect: bool = False
    """Collect the next rollout in a background thread (with a snapshot of the policy) while
    learning on the last one. The emulator releases the GIL, so env stepping and learning share
    the cores; costs one update of policy lag (PPO's ratio is taken against the behaviour
    policy's stored log-probs, so clipping still bounds the step). Not bit-reproducible. On 2
    cores use torch_threads=1 with it: a 2-thread OpenMP learner stalls beside the env threads
    (measured 143 vs 183 steps/s). Call PPO.close() before closing the env."""
    device: str = "cpu"
    """Torch device."""
    seed: int = 1
    """Seed of the trainer's torch generator (action sampling, minibatch order, init)."""

    @property
    def batch_size(self) -> int:
        """Samples per update."""
        return self.num_envs * self.rollout_steps

    @property
    def num_updates(self) -> int:
        """Updates in total_steps (at least one)."""
        return max(1, self.total_steps // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (for checkpoints and run records)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PPOConfig:
        """Inverse of to_dict; unknown keys are an error so that typos do not pass silently."""
        return from_dict(cls, data)

    def validate(self) -> None:
        """Raise ValueError with a one-line message saying what is wrong and what would be right."""
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        for name in ("total_steps", "num_envs", "rollout_steps", "minibatch_size", "epochs",
                     "lstm_hidden", "bptt_len"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.torch_threads < 0:
            raise ValueError(
                f"torch_threads must be >= 0 (0 = torch default), got {self.torch_threads}"
            )
        if self.collect_threads < 0:
            raise ValueError(
                f"collect_threads must be >= 0 (0 = torch_threads), got {self.collect_threads}"
            )
        if self.rnd_init_steps < 0:
            raise ValueError(f"rnd_init_steps must be >= 0, got {self.rnd_init_steps}")
        for name in ("gamma", "gae_lambda", "rnd_gamma_int"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_final < 0 or self.ent_coef < 0 or self.ent_coef_final < 0:
            raise ValueError("lr_final, ent_coef and ent_coef_final must be >= 0")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}"
            )
        if self.ent_schedule not in ("constant", "linear"):
            raise ValueError(
                f"ent_schedule must be 'constant' or 'linear', got {self.ent_schedule!r}"
            )
        if self.vf_loss not in ("mse", "huber"):
            raise ValueError(f"vf_loss must be 'mse' or 'huber', got {self.vf_loss!r}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}")
        if self.rnd_reward_norm not in ("std", "minmax"):
            raise ValueError(
                f"rnd_reward_norm must be 'std' or 'minmax', got {self.rnd_reward_norm!r}"
            )
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0 (0.1-0.3 is usual), got {self.clip}")
        if self.vf_coef < 0 or self.max_grad_norm < 0 or self.lstm_penalty < 0:
            raise ValueError("vf_coef, max_grad_norm and lstm_penalty must be >= 0")
        if self.adam_eps <= 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ValueError(f"target_kl must be > 0 or None (no early stop), got {self.target_kl}")
        if not 0.0 < self.rnd_update_proportion <= 1.0:
            raise ValueError(
                f"rnd_update_proportion must be in (0, 1], got {self.rnd_update_proportion}"
            )
        if not self.rnd_obs_clip > 0:
            raise ValueError(f"rnd_obs_clip must be > 0, got {self.rnd_obs_clip}")
        check_curriculum_options(self)
        if self.teachers:
            parse_teachers(self.teachers)
            if self.algo not in ("ppo", "ppo-rnd"):
                raise ValueError(
                    f"--teachers works with --algo ppo or ppo-rnd, not {self.algo}"
                    " (its samples are single steps, a recurrent model's are sequences)"
                )
        if not 0 <= self.demo_bc < float("inf"):
            raise ValueError(f"demo_bc must be a finite number >= 0, got {self.demo_bc}")
        if self.demo_bc and self.algo not in ("ppo", "ppo-rnd"):
            raise ValueError(
                f"--demo-bc works with --algo ppo or ppo-rnd, not {self.algo}"
                " (its samples are single steps, a recurrent model's are sequences)"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(
                f"ema_decay must be in [0, 1) (0: off; 0.95 averages ~20 updates), got {self.ema_decay}"
            )
        if self.demo_bc_batch < 1:
            raise ValueError(f"demo_bc_batch must be a positive integer, got {self.demo_bc_batch}")
        if self.demo_bc_steps < 0:
            raise ValueError(f"demo_bc_steps must be >= 0 (0: no decay), got {self.demo_bc_steps}")
        if not self.teacher_coef >= 0:
            raise ValueError(f"teacher_coef must be >= 0, got {self.teacher_coef}")
        if self.teacher_steps < 0:
            raise ValueError(f"teacher_steps must be >= 0 (0: no decay), got {self.teacher_steps}")
        batch = self.batch_size
        if batch % self.minibatch_size:
            divisors = [d for d in (64, 128, 256, 512, 1024, 2048) if batch % d == 0]
            raise ValueError(
                f"minibatch_size {self.minibatch_size} must divide num_envs*rollout_steps = {batch}"
                f" (e.g. one of {divisors})"
            )
        if self.algo == "ppo-lstm":
            if self.rollout_steps % self.bptt_len:
                raise ValueError(
                    f"ppo-lstm: bptt_len {self.bptt_len} must divide rollout_steps {self.rollout_steps}"
                    " so that a rollout splits into whole sequences"
                )
            if self.minibatch_size % self.bptt_len:
                raise ValueError(
                    f"ppo-lstm: a minibatch must be whole sequences: minibatch_size {self.minibatch_size}"
                    f" must be a multiple of bptt_len {self.bptt_len}"
                    f" (the batch holds {batch // self.bptt_len} sequences of {self.bptt_len} steps)"
                )
        if self.device != "cpu" and not self.device.startswith(("cuda", "mps")):
            raise ValueError(f"device must be 'cpu', 'cuda[:i]' or 'mps', got {self.device!r}")
