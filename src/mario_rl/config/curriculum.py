"""The stage-curriculum options PPO's and A3G's configs share, and their one-line checks (the
curriculum itself is :class:`mario_rl.rl.curriculum.Curriculum`)."""

from __future__ import annotations

from typing import Any

__all__ = ["check_curriculum_options"]


def check_curriculum_options(cfg: Any) -> None:
    """ValueError (one line) on a bad curriculum option of a PPO or A3G config (fields
    ``curriculum``, ``curriculum_floor``, ``curriculum_decay``, ``curriculum_frontier``,
    ``curriculum_master``)."""
    if not 0.0 < cfg.curriculum_floor <= 1.0:
        raise ValueError(f"curriculum_floor must be in (0, 1], got {cfg.curriculum_floor}")
    if not 0.0 <= cfg.curriculum_decay < 1.0:
        raise ValueError(f"curriculum_decay must be in [0, 1), got {cfg.curriculum_decay}")
    if cfg.curriculum_frontier < 0:
        raise ValueError(
            f"curriculum_frontier must be >= 0 (0: every stage from the start),"
            f" got {cfg.curriculum_frontier}"
        )
    if not 0.0 < cfg.curriculum_master <= 1.0:
        raise ValueError(f"curriculum_master must be in (0, 1], got {cfg.curriculum_master}")
    if cfg.curriculum_frontier and not cfg.curriculum:
        raise ValueError(
            "--curriculum-frontier opens the curriculum's stages a few at a time:"
            " give --curriculum with it"
        )
