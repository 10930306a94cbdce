"""nes-py snapshots at the start of each stage (and of the whole game), made once per process.

gym-super-mario-bros already knows how to skip the title screen and place Mario at a stage's
start; we let it do that once per stage and keep the resulting native state, which loads into
any emulator slot in microseconds. Snapshots are per-process (they cannot be pickled).
"""

from __future__ import annotations

import threading

from gym_super_mario_bros.smb_env import SuperMarioBrosEnv

from .emulator import rom_path
from .stages import world_stage

__all__ = ["rom_path", "start_snapshot"]

# Each snapshot refers to memory of the emulator that made it, so that emulator is kept alive.
_cache: dict[str, tuple[object, SuperMarioBrosEnv]] = {}
_lock = threading.Lock()


def start_snapshot(stage: str | None) -> object:
    """Native state at the start of ``stage`` ('W-S'), or of the whole game when None."""
    key = stage or "game"
    with _lock:
        entry = _cache.get(key)
        if entry is None:
            env = SuperMarioBrosEnv(target=world_stage(stage) if stage else None)
            entry = _cache[key] = (env.dump_state(), env)
        return entry[0]
