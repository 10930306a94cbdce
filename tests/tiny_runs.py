"""Command-line options for training runs of a few dozen steps, shared by the tests that train."""

from __future__ import annotations

SMALL = ["--size", "36", "--actions", "right-only", "--envs", "2", "--workers", "1",
         "--rollout-steps", "32", "--minibatch-size", "32", "--epochs", "1", "--eval-every", "0",
         "--network", "small"]  # fmt: skip
"""A PPO run of 64 steps per update pair: 36x36 frames, 2 envs, one epoch, no evaluations."""
