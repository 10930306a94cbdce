"""The emulator backends behind the envs: the native core (default) and nes-py (the reference).

Both present N machines through one small interface (``Emulators``): step every machine some
frames with its buttons and get the gray screens the observation needs, step one machine,
read and poke RAM, copy a screen, save and load a machine's state, and make the start state of
a stage. The env layer (``core.EmulatorGroup``) knows nothing else of either.

The native core (``mario_rl.envs.nes._core``) is our own C emulator, exact to nes-py's RAM after
every frame and its screens pixel for pixel; it draws only the frames that are looked at, and
its states are plain ``bytes`` (picklable, checked on load). nes-py stays available as
``emulator="nes-py"`` for cross-checks; its states live in the process that made them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from .stages import world_stage

BACKENDS = ("native", "nes-py")
SMB_SHA1 = "ab30029efec6ccfc5d65dfda7fbc6e6489a80805"
"""SHA-1 of the Super Mario Bros ROM that ships inside gym-super-mario-bros (header included)."""
SCREEN = (240, 256)

# RAM addresses the start sequence reads or writes (gym-super-mario-bros's _skip_start_screen).
_WORLD, _STAGE, _AREA, _PRELEVEL_TIMER, _TIME = 0x075F, 0x075C, 0x0760, 0x07A0, 0x07F8
_START = 8


class EmulatorError(RuntimeError):
    """A machine did something the game never does (an unknown opcode: its state is corrupt)."""


class Emulators(Protocol):
    """N machines of one backend."""

    name: str
    n: int
    rams: np.ndarray
    """(n, 2048) uint8: each machine's CPU RAM, live (writes poke the machine)."""

    def step(
        self,
        buttons: np.ndarray,
        frames: int,
        first: np.ndarray | None = None,
        gray: np.ndarray | None = None,
        gray_prev: np.ndarray | None = None,
    ) -> None:
        """Every machine ``frames`` frames; ``first`` replaces ``buttons`` on the first frame;
        the last frame's gray screens go to ``gray`` and the one before's to ``gray_prev``."""
        ...

    def step_one(self, i: int, button: int, draw: bool = True) -> None:
        """One frame of machine ``i``; ``draw=False`` promises its screen is not looked at."""
        ...

    def gray(self, i: int, out: np.ndarray) -> None:
        """Machine ``i``'s screen as nes-py's gray ((77 R + 150 G + 29 B) >> 8) into ``out``."""
        ...

    def rgb(self, i: int) -> np.ndarray:
        """A copy of machine ``i``'s full-colour screen (240, 256, 3)."""
        ...

    def dump_state(self, i: int) -> object: ...

    def load_state(self, i: int, state: object) -> None: ...

    def start_state(self, stage: str | None) -> object:
        """The state at the start of ``stage`` ('W-S'), or of the whole game when None."""
        ...

    def check(self) -> None:
        """Raise EmulatorError if a machine has gone wrong since the last check."""
        ...

    def close(self) -> None: ...


def rom_path() -> str:
    """Path of the Super Mario Bros ROM: ``$MARIO_RL_ROM`` if set, else the one shipped inside
    gym-super-mario-bros. Either way it must be that ROM (checked by ``rom_bytes``)."""
    from gym_super_mario_bros._roms import smb1_rom_path

    return os.environ.get("MARIO_RL_ROM") or smb1_rom_path()


@cache
def rom_bytes() -> bytes:
    """The ROM, checked to be the one the native core supports."""
    path = Path(rom_path())
    if not path.is_file():
        raise ValueError(f"ROM file {path} does not exist (set MARIO_RL_ROM to a .nes file)")
    data = path.read_bytes()
    check_rom(data)
    return data


def check_rom(data: bytes) -> None:
    """Raise ValueError (one line) unless ``data`` is the Super Mario Bros ROM we support."""
    digest = hashlib.sha1(data).hexdigest()
    if digest != SMB_SHA1:
        raise ValueError(
            f"not the supported Super Mario Bros ROM (SHA-1 {digest[:12]}…, expected "
            f"{SMB_SHA1[:12]}…: the one inside gym-super-mario-bros 9.1)"
        )


def _digits(ram: np.ndarray, address: int, length: int) -> int:
    # gym-super-mario-bros reads a counter as the decimal digits joined as text.
    return int("".join(str(int(d)) for d in ram[address : address + length]))


def skip_start_screen(step: Callable[[int], None], ram: np.ndarray, stage: str | None) -> None:
    """gym-super-mario-bros's start sequence (press Start, write the target stage, run out
    the pre-level timer, idle until the clock ticks), on any machine: same frames, same RAM."""
    target = None
    if stage is not None:
        from gym_super_mario_bros._roms.decode_target import decode_target

        target = decode_target(world_stage(stage), False)
    step(_START)
    step(0)
    while _digits(ram, _TIME, 3) == 0:
        step(_START)
        if target is not None:
            ram[_WORLD], ram[_STAGE], ram[_AREA] = (t - 1 for t in target)
        step(0)
        ram[_PRELEVEL_TIMER] = 0
    last = _digits(ram, _TIME, 3)
    while _digits(ram, _TIME, 3) >= last:
        last = _digits(ram, _TIME, 3)
        step(_START)
        step(0)


class NativeEmulators:
    """N machines of the native core; one call steps them all without the GIL."""

    name = "native"

    def __init__(self, n: int, threads: int = 1) -> None:
        from .nes._core import Machines

        self.n = n
        self.threads = threads
        self._core = Machines(rom_bytes(), n)
        self.rams = np.asarray(self._core)
        self._faults = [0] * n
        self._total_faults = 0

    def step(self, buttons, frames, first=None, gray=None, gray_prev=None) -> None:
        self._total_faults = self._core.step(
            buttons, frames, first=first, gray=gray, gray_prev=gray_prev, threads=self.threads
        )

    def step_one(self, i: int, button: int, draw: bool = True) -> None:
        self._core.step_one(i, int(button), draw)

    def gray(self, i: int, out: np.ndarray) -> None:
        self._core.screen(i, out, "gray")

    def rgb(self, i: int) -> np.ndarray:
        out = np.empty((*SCREEN, 3), np.uint8)
        self._core.screen(i, out, "rgb")
        return out

    def dump_state(self, i: int) -> bytes:
        return self._core.dump(i)

    def load_state(self, i: int, state: object) -> None:
        if not isinstance(state, bytes | bytearray | memoryview):
            raise ValueError(
                f"a native-core state is bytes (from dump_state), got {type(state).__name__}"
            )
        self._core.load(i, state)
        # A loaded state brings its own count of unknown opcodes: only new ones are reported.
        self._faults[i] = self._core.status(i)["faults"]

    def start_state(self, stage: str | None) -> bytes:
        return native_start_state(stage)

    def check(self) -> None:
        if self._total_faults == sum(self._faults):
            return
        for i in range(self.n):
            s = self._core.status(i)
            new = s["faults"] > self._faults[i]
            self._faults[i] = s["faults"]
            if new:
                raise EmulatorError(
                    f"emulator {i} ran into an unknown opcode (the first: ${s['fault_op']:02X} at "
                    f"${s['fault_pc']:04X}): its game state is corrupt (restart the episode)"
                )

    def close(self) -> None:
        self._core = None


_start_lock = threading.Lock()


@cache
def native_start_state(stage: str | None) -> bytes:
    """The native core's state at the start of ``stage`` (or the whole game), made once per
    process by the same start sequence gym-super-mario-bros runs."""
    from .nes._core import Machines

    with _start_lock:
        core = Machines(rom_bytes(), 1)
        ram = np.asarray(core)[0]
        # Every frame is drawn: the state's screen is the last frame's, as nes-py's is.
        skip_start_screen(lambda b: core.step_one(0, b, True), ram, stage)
        return core.dump(0)


class NesPyEmulators:
    """N nes-py emulators (the reference backend)."""

    name = "nes-py"

    def __init__(self, n: int, threads: int = 1) -> None:
        from nes_py.vector_env import VectorNESEmulator

        del threads
        self.n = n
        self._emu = VectorNESEmulator(rom_path(), n)
        self.rams = _RamRows(self._emu.rams)

    def step(self, buttons, frames, first=None, gray=None, gray_prev=None) -> None:
        for k in range(frames):
            self._emu.step(first if (k == 0 and first is not None) else buttons)
            if gray_prev is not None and k == frames - 2:
                self._emu.observation("grayscale", output=gray_prev)
        if gray is not None:
            self._emu.observation("grayscale", output=gray)

    def step_one(self, i: int, button: int, draw: bool = True) -> None:
        self._emu.step_one(i, int(button))

    def gray(self, i: int, out: np.ndarray) -> None:
        self._emu.observation_one(i, "grayscale", output=out)

    def rgb(self, i: int) -> np.ndarray:
        return np.array(self._emu.screens[i], copy=True)

    def dump_state(self, i: int) -> object:
        return self._emu.dump_state(i)

    def load_state(self, i: int, state: object) -> None:
        self._emu.load_state(i, state)

    def start_state(self, stage: str | None) -> object:
        from .snapshots import start_snapshot

        return start_snapshot(stage)

    def check(self) -> None:
        pass

    def close(self) -> None:
        self._emu.close()


class _RamRows:
    """nes-py's per-machine RAM views indexed like a 2-D array's rows."""

    def __init__(self, rows: tuple[np.ndarray, ...]) -> None:
        self._rows = rows

    def __getitem__(self, i: int) -> np.ndarray:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)


def make_emulators(backend: str, n: int, threads: int = 1) -> Emulators:
    """``n`` machines of ``backend`` ('native' or 'nes-py')."""
    if backend == "native":
        return NativeEmulators(n, threads)
    if backend == "nes-py":
        return NesPyEmulators(n, threads)
    raise ValueError(f"unknown emulator {backend!r}: choose one of {', '.join(BACKENDS)}")
