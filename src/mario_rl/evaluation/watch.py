"""Watch a policy play live in a window (nes-py's pyglet image viewer), at the game's speed.

Opening the window is the only part that needs a display; every reason it cannot open (no
``$DISPLAY``, pyglet missing, the X server refusing) becomes one :class:`DisplayError` line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..envs import EnvConfig, MarioVectorEnv
from ..envs.stages import STAGES, parse_stages
from .evaluate import Policy, eval_seeds, game_config
from .media import SCREEN_H, SCREEN_W


class DisplayError(RuntimeError):
    """No window can be opened here; the message says why and what to do instead."""


class Viewer(Protocol):
    """What play() needs of a window."""

    def show(self, frame: np.ndarray) -> None: ...
    def close(self) -> None: ...


_NO_WINDOW_HINT = "use `mario-rl record` to make a video instead"


def open_viewer(caption: str, scale: int = 2) -> Viewer:
    """nes-py's pyglet viewer, opened; DisplayError (one line) where no window can open."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise DisplayError(
            f"no display: $DISPLAY is not set, so no window can open; run it in a desktop "
            f"session (or with X forwarding), or {_NO_WINDOW_HINT}"
        )
    try:
        import pyglet  # noqa: F401 - imported for the check; nes-py imports it again
    except ImportError:
        raise DisplayError(
            f"pyglet is not installed, and nes-py's viewer needs it; `uv pip install pyglet`, "
            f"or {_NO_WINDOW_HINT}"
        ) from None
    from nes_py._image_viewer import ImageViewer

    viewer = ImageViewer(
        caption, SCREEN_H * scale, SCREEN_W * scale, monitor_keyboard=True, relevant_keys=set()
    )
    try:
        viewer.open()
    except Exception as e:  # pyglet raises its own types per platform
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DisplayError(f"cannot open a window: {first}; {_NO_WINDOW_HINT}") from None
    return viewer


def _closed(viewer: Viewer) -> bool:
    """Whether the user closed the window or pressed Escape."""
    if getattr(viewer, "is_escape_pressed", False):
        return True
    window = getattr(viewer, "_window", None)  # nes-py keeps pyglet's window here
    return bool(window is not None and getattr(window, "has_exit", False))


def play(
    policy: Policy,
    env_config: EnvConfig,
    stage: str,
    viewer: Viewer,
    episodes: int = 1,
    seed: int = 0,
    fps: float | None = None,
    report: Callable[[str], None] = print,
) -> int:
    """Show ``episodes`` episodes of ``policy`` on ``stage`` (one stage or ``game``) in
    ``viewer``; returns the number of episodes finished. ``fps`` None plays at the game's
    speed, 0 as fast as possible. Closing the window or Escape stops early."""
    sel = parse_stages(stage)
    cfg = game_config(env_config) if sel.game else dataclasses.replace(env_config, stages=sel.spec)
    fps = 60 / cfg.frame_skip if fps is None else fps
    env = MarioVectorEnv(cfg, num_envs=1, workers=1, env_seeds=eval_seeds(seed, 1))
    env.keep_final_rgb(True)
    finished = 0
    try:
        obs, _ = env.reset()
        first = np.ones(1, bool)
        viewer.show(env.rgb(0))
        due = time.perf_counter()
        while finished < episodes and not _closed(viewer):
            obs, _, term, trunc, info = env.step(policy(obs, first))
            first = term | trunc
            viewer.show(info["final_rgb"][0] if first[0] else env.rgb(0))
            if first[0]:
                finished += 1
                ep = info["episode"]
                report(
                    f"episode {finished}: {STAGES[int(ep['stage'][0])]} x {int(ep['x_max'][0])}, "
                    f"{int(ep['stages_cleared'][0])} flag(s), ended by {ep['reason'][0]} "
                    f"after {int(ep['l'][0])} steps"
                )
            if fps > 0:
                due += 1 / fps
                time.sleep(max(0.0, due - time.perf_counter()))
    finally:
        env.close()
        viewer.close()
    return finished
