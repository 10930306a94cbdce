"""Options of a training run that belong to no algorithm: where, how long, how often to save/evaluate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunConfig:
    """A training run's bookkeeping."""

    run_dir: str = ""
    """Run directory (default: runs/<algo>-<stages>-<time>); an existing one needs --resume."""
    resume: bool = False
    """Continue the run in --run-dir from its latest checkpoint."""
    checkpoint_every: int = 100_000
    """Agent steps between periodic checkpoints."""
    keep_checkpoints: int = 3
    """Periodic checkpoints kept (plus best and final)."""
    eval_every: int = 100_000
    """Agent steps between evaluations (run in another process); 0 = off."""
    eval_episodes: int = 5
    """Episodes per stage in each evaluation during training."""
    eval_sample: bool = False
    """Evaluations during training sample actions from the policy instead of its greedy argmax
    (an early policy's argmax can be one fixed action that hides what it has learnt)."""
    log_every: int = 1
    """Updates between TensorBoard/progress refreshes."""
    stop_at_clear_rate: float = 0.0
    """Stop training once an evaluation clears every stage at this rate (0 = never)."""
    init_from: str = ""
    """Start a new run from the network weights of this checkpoint (a shipped model or a run's
    checkpoint with the same algorithm, network, size, action set and LSTM size): fine-tuning on
    other stages, say. The optimizer, counters and curriculum start fresh."""

    def validate(self) -> None:
        """Raise ValueError (one line) on a bad option."""
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        for name in ("eval_every", "eval_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                )
        if not 0 <= self.stop_at_clear_rate <= 1:
            raise ValueError(
                f"--stop-at-clear-rate must be in [0, 1], got {self.stop_at_clear_rate}"
            )
