"""Action sets: named lists of NES button combinations, and their controller bytes."""

from __future__ import annotations

import numpy as np

# NES controller bits as the emulator reads them.
BUTTONS = {"A": 1, "B": 2, "select": 4, "start": 8, "up": 16, "down": 32, "left": 64, "right": 128}

_RIGHT_ONLY = [["NOOP"], ["right"], ["right", "A"], ["right", "B"], ["right", "A", "B"]]
_SIMPLE = [*_RIGHT_ONLY, ["A"], ["left"]]
_COMPLEX = [
    *_RIGHT_ONLY,
    ["A"],
    ["left"],
    ["left", "A"],
    ["left", "B"],
    ["left", "A", "B"],
    ["down"],
    ["up"],
]
# The A3G seed's ten actions.
_A3G = [
    *_RIGHT_ONLY,
    ["A"],
    ["left", "A"],
    ["left", "B"],
    ["left", "A", "B"],
    ["down"],
]

ACTION_SETS: dict[str, list[list[str]]] = {
    "right-only": _RIGHT_ONLY,
    "simple": _SIMPLE,
    "complex": _COMPLEX,
    "a3g": _A3G,
}


def action_bytes(name: str) -> np.ndarray:
    """Controller byte of each action of a named set (uint8 array); ValueError on unknown name."""
    if name not in ACTION_SETS:
        raise ValueError(f"unknown action set {name!r}; expected one of {', '.join(ACTION_SETS)}")
    return np.array(
        [sum(BUTTONS[b] for b in combo if b != "NOOP") for combo in ACTION_SETS[name]],
        dtype=np.uint8,
    )


def action_meanings(name: str) -> list[str]:
    """Human-readable name of each action of a set, e.g. 'right+A'."""
    action_bytes(name)
    return ["+".join(combo) for combo in ACTION_SETS[name]]
