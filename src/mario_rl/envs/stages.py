"""Stage names and the stage-selection syntax shared by every command.

A selection is one of:
  * one stage ``W-S`` (``1-1`` … ``8-4``);
  * a comma list (``1-1,4-2``), optionally weighted (``1-1:3,1-2``);
  * ``all``: each episode on a stage drawn from the 32 (weights settable);
  * ``game``: the whole game from 1-1, as the game plays it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STAGES: tuple[str, ...] = tuple(f"{w}-{s}" for w in range(1, 9) for s in range(1, 5))
"""The 32 stages in game order."""

VALID_FORMS = "a stage 1-1 … 8-4, a comma list like 1-1,4-2 (weights as 1-1:3), 'all' or 'game'"


class StageError(ValueError):
    """A stage selection that cannot be parsed; the message names the valid forms."""


def stage_index(name: str) -> int:
    """Index 0..31 of a stage name ``W-S``; raises StageError otherwise."""
    try:
        return STAGES.index(name.strip())
    except ValueError:
        raise StageError(f"unknown stage {name.strip()!r}; expected {VALID_FORMS}") from None


def world_stage(name: str) -> tuple[int, int]:
    """(world, stage) integers of a stage name."""
    i = stage_index(name)
    return i // 4 + 1, i % 4 + 1


@dataclass(frozen=True)
class StageSelection:
    """A parsed stage selection: which stages episodes start on, and how they are drawn."""

    spec: str
    """The text it was parsed from (normalised)."""
    stages: tuple[str, ...]
    """Stages an episode may start on (``('1-1',)`` for ``game``)."""
    weights: tuple[float, ...]
    """Sampling weight of each stage (sums to 1)."""
    game: bool = False
    """True for ``game``: play on through the stages as the game does."""

    def sample(self, rng: np.random.Generator) -> str:
        """Draw the stage of the next episode."""
        if len(self.stages) == 1:
            return self.stages[0]
        return self.stages[int(rng.choice(len(self.stages), p=np.asarray(self.weights)))]

    def with_weights(self, weights: dict[str, float]) -> StageSelection:
        """The same stages with new sampling weights (missing stages keep weight 0)."""
        w = np.array([max(0.0, float(weights.get(s, 0.0))) for s in self.stages])
        if w.sum() <= 0:
            raise StageError("stage weights must have a positive sum")
        return StageSelection(self.spec, self.stages, tuple((w / w.sum()).tolist()), self.game)


def parse_stages(spec: str | StageSelection) -> StageSelection:
    """Parse a stage selection; raises StageError with a one-line message on bad input."""
    if isinstance(spec, StageSelection):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise StageError(f"empty stage selection; expected {VALID_FORMS}")
    text = spec.strip().lower()
    if text == "game":
        return StageSelection("game", ("1-1",), (1.0,), game=True)
    if text == "all":
        return StageSelection("all", STAGES, tuple([1.0 / 32] * 32))
    names: list[str] = []
    weights: list[float] = []
    for part in text.split(","):
        part = part.strip()
        name, _, weight = part.partition(":")
        if name in ("all", "game"):
            raise StageError(f"{name!r} cannot be part of a list; expected {VALID_FORMS}")
        stage_index(name)
        if name in names:
            raise StageError(f"stage {name} is listed twice; expected {VALID_FORMS}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise StageError(
                f"bad weight {weight!r} for stage {name}; expected a number > 0"
            ) from None
        if not w > 0 or not np.isfinite(w):
            raise StageError(f"bad weight {weight!r} for stage {name}; expected a number > 0")
        names.append(name)
        weights.append(w)
    total = sum(weights)
    norm = ",".join(n if w == 1.0 else f"{n}:{w:g}" for n, w in zip(names, weights, strict=True))
    return StageSelection(norm, tuple(names), tuple(w / total for w in weights))


def check_curriculum_stages(selection: StageSelection) -> None:
    """ValueError (one line) unless ``selection`` is a set of stages a curriculum can weigh: a
    list or 'all', not one stage or the whole game."""
    if selection.game or len(selection.stages) < 2:
        raise ValueError(
            "--curriculum weighs the stages episodes are drawn from: it needs a set of"
            f" stages (a list like 1-1,1-2 or 'all'), not {selection.spec!r}"
        )
