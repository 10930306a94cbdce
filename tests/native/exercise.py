"""Every entry point of the native extension, good and bad input: run by sanitize.sh against
an extension built with AddressSanitizer and UndefinedBehaviorSanitizer ($MARIO_RL_CORE)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from mario_rl.envs.emulator import rom_bytes, skip_start_screen

so = next(Path(os.environ["MARIO_RL_CORE"]).glob("_core*"))
spec = importlib.util.spec_from_file_location("_core", so)
core = importlib.util.module_from_spec(spec)
spec.loader.exec_module(core)

rom = rom_bytes()
n = 5
m = core.Machines(rom, n)
ram = np.asarray(m)
start = core.Machines(rom, 1)
skip_start_screen(lambda b: start.step_one(0, b, True), np.asarray(start)[0], "1-1")
snap = start.dump(0)
for i in range(n):
    m.load(i, snap)

rng = np.random.default_rng(0)
gray, prev = np.zeros((n, 240, 256), np.uint8), np.zeros((n, 240, 256), np.uint8)
rgb = np.zeros((240, 256, 3), np.uint8)
for step in range(300):
    buttons = rng.integers(0, 256, n, dtype=np.uint8)
    m.step(buttons, 4, first=buttons & 0xFE, gray=gray, gray_prev=prev, threads=1 + step % 3)
    m.step_one(step % n, int(buttons[0]), bool(step % 2))
    m.screen(step % n, rgb, "rgb")
    if step % 25 == 0:
        s = m.dump(step % n)
        m.load((step + 1) % n, s)
        bad = bytearray(s)
        bad[rng.integers(16, len(bad))] ^= 0xFF
        for data in (bytes(bad), s[:-3], b"", b"MRLN" + bytes(60)):
            try:
                m.load(0, data)
            except ValueError:
                pass
            else:
                sys.exit(f"a bad snapshot was accepted at step {step}")
    if step % 50 == 0:
        ram[step % n, rng.integers(0, 2048, 64)] = rng.integers(0, 256, 64, dtype=np.uint8)
for bad_call in (
    lambda: m.step(np.zeros(n + 1, np.uint8)),
    lambda: m.step(np.zeros(n, np.int32)),
    lambda: m.step(np.zeros(n, np.uint8), gray=np.zeros(10, np.uint8)),
    lambda: m.step_one(n, 0),
    lambda: m.step_one(0, 999),
    lambda: m.screen(0, np.zeros(3, np.uint8)),
    lambda: core.Machines(rom[:100], 1),
    lambda: core.Machines(rom, 0),
):
    try:
        bad_call()
    except (ValueError, IndexError):
        pass
    else:
        sys.exit("a bad call was accepted")
for i in range(n):
    m.power_on(i)
    m.reset(i)
    m.status(i)
print("exercise: every call ran")
