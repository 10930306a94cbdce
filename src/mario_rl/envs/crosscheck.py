"""Cross-check of the native emulator core against nes-py 9.0.1, its oracle.

One job: play scenarios on both machines in lock-step from the same start state, with the same
buttons and the same RAM pokes on every frame, compare the full 2 KiB RAM after every frame and
the full-colour screen on a subset of frames, and report the first divergence in one line
(scenario, stage, frame, first differing address or pixel, both values). Each scenario also
proves that it covered what it claims (a death, a pipe, a warp, a loop, a flag) from the RAM it
went through.

The scenarios themselves (scripts, checks and the list) are in ``crosscheck_scenarios``. A
scenario's script is a generator that reads the (identical) RAM of the two machines and yields
either a controller byte (one frame) or a ``{address: value}`` dict (pokes written into both
machines before the next frame). When the script ends before the frame budget, right-biased
random play (seeded by the scenario's name) fills the rest, so a longer budget extends every
scenario. Run every scenario at a longer budget with::

    uv run python -m mario_rl.envs.crosscheck --frames 20000 [--stages all] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Game, Scenario and the scenarios live with the scripts; the RAM names, checks and STAGES that
# tests read from this module are re-exported here.
from .crosscheck_scenarios import (
    LIVES,
    MODE_TASK,
    MODEL_RUN,
    PLAYER_STATE,
    PLAYING,
    TIME_DIGITS,
    X_PAGE,
    Y_PAGE,
    Game,
    Item,
    Scenario,
    life_lost,
    looped,
    random_play,
    scenarios,
)
from .stages import STAGES

__all__ = [
    "LIVES",
    "MODEL_RUN",
    "MODE_TASK",
    "PLAYER_STATE",
    "PLAYING",
    "STAGES",
    "TIME_DIGITS",
    "X_PAGE",
    "Y_PAGE",
    "Game",
    "Result",
    "Scenario",
    "crosscheck",
    "life_lost",
    "looped",
    "main",
    "ram_difference",
    "scenarios",
    "screen_difference",
]


@dataclass
class Result:
    """One scenario's cross-check."""

    scenario: str
    stage: str
    frames: int
    """Frames emulated (RAM compared after each, and at the start)."""
    screens: int
    """Frames whose screens were compared, full-colour and gray (the start's included)."""
    divergence: str | None
    """The first difference between the machines, one line; None if none."""
    event: str | None
    """What the scenario failed to go through; None if it did (not checked after a divergence)."""
    seconds: float

    @property
    def ok(self) -> bool:
        return self.divergence is None and self.event is None

    def line(self) -> str:
        if self.divergence:
            return self.divergence
        if self.event:
            return f"{self.scenario} [{self.stage}]: machines equal over {self.frames} frames, but {self.event}"
        return f"{self.scenario} [{self.stage}]: equal over {self.frames} frames ({self.screens} screens)"


# -- comparison -------------------------------------------------------------------------------
def ram_difference(native: np.ndarray, reference: np.ndarray) -> str | None:
    """The first differing address of two RAMs with both values (and how many differ), or
    None if equal."""
    if np.array_equal(native, reference):
        return None
    diff = np.flatnonzero(native != reference)
    a = int(diff[0])
    return (
        f"RAM ${a:04X} native=${int(native[a]):02X} nes-py=${int(reference[a]):02X} "
        f"({len(diff)} of {len(native)} bytes differ)"
    )


def screen_difference(native: np.ndarray, reference: np.ndarray, kind: str = "") -> str | None:
    """The first differing pixel (row-major) of two screens, (240, 256, 3) full-colour or
    (240, 256) gray, with both values; None if equal."""
    if np.array_equal(native, reference):
        return None
    bad = native != reference
    if bad.ndim == 3:
        bad = bad.any(axis=2)
    y, x = (int(v) for v in np.argwhere(bad)[0])

    def value(a: np.ndarray) -> object:
        return tuple(int(v) for v in a[y, x]) if a.ndim == 3 else int(a[y, x])

    name = f"{kind} screen" if kind else "screen"
    return (
        f"{name} pixel (y={y}, x={x}) native={value(native)} nes-py={value(reference)} "
        f"({int(bad.sum())} of {bad.size} pixels differ)"
    )


# -- the runner -------------------------------------------------------------------------------
def crosscheck(
    scenario: Scenario,
    frames: int | None = None,
    screens_every: int = 4,
    tamper: dict[int, dict[int, int]] | None = None,
) -> Result:
    """Play ``scenario`` for ``frames`` frames (its CI budget by default) on the native core and
    on nes-py in lock-step; RAM compared after every frame, screens every ``screens_every``-th
    frame (0: only the start's). Stops at the first divergence.

    ``tamper`` pokes the native machine only, before the given frames ({frame: {address:
    value}}): it exists to prove that the check fails and names what differs.
    """
    from nes_py._native import NativeEmulator

    from .emulator import native_start_state, rom_bytes
    from .nes._core import Machines
    from .snapshots import rom_path, start_snapshot

    frames = scenario.frames if frames is None else frames
    stage = scenario.stage or "game"
    t0 = time.perf_counter()
    core = Machines(rom_bytes(), 1)
    ram = np.asarray(core)[0]
    ref = NativeEmulator(rom_path())
    ref_ram = ref.ram_buffer()
    ref_screen = np.empty((240, 256, 3), np.uint8)
    screen = np.empty((240, 256, 3), np.uint8)
    gray, ref_gray = np.empty((240, 256), np.uint8), np.empty((240, 256), np.uint8)
    core.load(0, native_start_state(scenario.stage))
    ref.load_state(start_snapshot(scenario.stage))

    history = np.empty((frames + 1, 2048), np.uint8)
    game = Game(ram)
    screens = 0

    def result(f: int, divergence: str | None) -> Result:
        event = None if divergence else scenario.check(history[: f + 1])
        return Result(scenario.name, stage, f, screens, divergence, event, time.perf_counter() - t0)

    def diverged(f: int, what: str) -> Result:
        return result(f, f"{scenario.name} [{stage}] frame {f}: {what}")

    def screens_differ() -> str | None:
        core.screen(0, screen, "rgb")
        ref.copy_screen_rgb(ref_screen)
        if d := screen_difference(screen, ref_screen):
            return d
        core.screen(0, gray, "gray")
        ref.copy_screen_grayscale(ref_gray)
        return screen_difference(gray, ref_gray, "gray")

    if d := ram_difference(ram, ref_ram):
        return diverged(0, d)
    if d := screens_differ():
        return diverged(0, d)
    screens += 1
    history[0] = ram
    items = _chain(scenario.script(game), random_play(game, _seed(scenario.name)))
    f = 0
    while f < frames:
        item = next(items)
        if isinstance(item, dict):
            for address, value in item.items():
                ram[address] = ref_ram[address] = value
            continue
        f += 1
        for address, value in (tamper or {}).get(f, {}).items():
            ram[address] = value
        draw = screens_every > 0 and f % screens_every == 0
        ref.frame_advance(item)
        core.step_one(0, item, draw)
        game.frame = f
        if d := ram_difference(ram, ref_ram):
            return diverged(f, d)
        history[f] = ram
        if draw:
            if d := screens_differ():
                return diverged(f, d)
            screens += 1
    return result(f, None)


def _chain(first: Iterator[Item], then: Iterator[Item]) -> Iterator[Item]:
    yield from first
    yield from then


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


# -- CLI --------------------------------------------------------------------------------------
def _select(all_: list[Scenario], stages: str) -> list[Scenario]:
    if stages == "all":
        return all_
    want = {s.strip() for s in stages.split(",")}
    return [s for s in all_ if (s.stage or "game") in want]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mario_rl.envs.crosscheck",
        description="Cross-check the native core against nes-py: every scenario, lock-step.",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=20000,
        help="frames per scenario (at least each scripted scenario's own length)",
    )
    p.add_argument("--stages", default="all", help="'all' or a comma list of W-S and/or 'game'")
    p.add_argument("--screens-every", type=int, default=4)
    p.add_argument("--jobs", type=int, default=1, help="scenarios run in parallel processes")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    chosen = _select(scenarios(), args.stages)
    if not chosen:
        print(f"no scenario on stages {args.stages!r}", file=sys.stderr)
        return 2
    jobs = [(s.name, max(args.frames, s.frames), args.screens_every) for s in chosen]
    print(
        f"{'scenario':<14} {'stage':<5} {'frames':>7} {'RAM cmp':>8} {'screens':>8} "
        f"{'s':>6}  result",
        flush=True,
    )
    results: list[Result] = []
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            for r in pool.map(_run_named, jobs):
                results.append(_print_row(r))
    else:
        for job in jobs:
            results.append(_print_row(_run_named(job)))
    bad = [r for r in results if not r.ok]
    total = sum(r.frames for r in results)
    print(
        f"{len(results) - len(bad)}/{len(results)} scenarios equal and covered; "
        f"{total} frames compared"
    )
    for r in bad:
        print(r.line())
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 1 if bad else 0


def _run_named(job: tuple[str, int, int]) -> Result:
    name, frames, every = job
    scenario = next(s for s in scenarios() if s.name == name)
    return crosscheck(scenario, frames=frames, screens_every=every)


def _print_row(r: Result) -> Result:
    status = "ok" if r.ok else ("DIVERGED" if r.divergence else "NOT COVERED")
    print(
        f"{r.scenario:<14} {r.stage:<5} {r.frames:>7} {r.frames + 1:>8} {r.screens:>8} "
        f"{r.seconds:>6.1f}  {status}",
        flush=True,
    )
    return r


if __name__ == "__main__":
    sys.exit(main())
