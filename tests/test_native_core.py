"""The native emulator core's API: input checks, snapshots, threads, faults, and the env
pipeline giving the same results on both backends (the frame-by-frame RAM cross-check against
nes-py is tests/test_crosscheck.py)."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import struct
import zlib

import numpy as np
import pytest
from mario_rl.envs.nes._core import Machines

from mario_rl.cli import main
from mario_rl.envs import EnvConfig, make_vector_env
from mario_rl.envs.emulator import (
    EmulatorError,
    NativeEmulators,
    check_rom,
    native_start_state,
    rom_bytes,
)

SCREEN = 240 * 256
HEADER = 16  # snapshot header: magic, version, reserved, ROM checksum, payload checksum


def _machines(n: int = 2, stage: str = "1-1") -> Machines:
    m = Machines(rom_bytes(), n)
    for i in range(n):
        m.load(i, native_start_state(stage))
    return m


def _reseal(snap: bytearray) -> bytes:
    """Recompute the payload checksum (the same CRC-32 as zlib) after editing a snapshot."""
    snap[12:16] = struct.pack("<I", zlib.crc32(bytes(snap[HEADER:])))
    return bytes(snap)


# -- ROM -----------------------------------------------------------------------------------
def test_only_the_supported_rom_is_accepted():
    rom = rom_bytes()
    check_rom(rom)
    with pytest.raises(ValueError, match="not the supported Super Mario Bros ROM") as e:
        check_rom(rom[:-1] + b"\x00")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="iNES"):
        Machines(b"garbage" * 100, 1)
    mapper1 = bytearray(rom)
    mapper1[6] |= 0x10
    with pytest.raises(ValueError, match="mapper"):
        Machines(bytes(mapper1), 1)
    with pytest.raises(ValueError, match="shorter"):
        Machines(rom[:20000], 1)


def test_a_bad_rom_path_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    bad = tmp_path / "smb.nes"
    bad.write_bytes(rom_bytes()[:-16])
    monkeypatch.setenv("MARIO_RL_ROM", str(bad))
    rom_bytes.cache_clear()
    try:
        assert main(["bench", "env", "--seconds", "1", "--envs", "1"]) == 2
    finally:
        monkeypatch.delenv("MARIO_RL_ROM")
        rom_bytes.cache_clear()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not the supported Super Mario Bros ROM" in err


# -- buffers and arguments -------------------------------------------------------------------
def test_bad_buffers_are_refused_and_nothing_runs():
    m = _machines(2)
    ram = np.asarray(m)
    before = ram.copy()
    gray = np.zeros((2, 240, 256), np.uint8)
    cases = [
        ({"buttons": np.zeros(2, np.int64)}, "uint8"),
        ({"buttons": np.zeros(3, np.uint8)}, "2 entries"),
        ({"buttons": [1, 2]}, "uint8 array"),
        ({"buttons": np.zeros(2, np.uint8), "gray": np.zeros((2, 240, 255), np.uint8)}, "bytes"),
        ({"buttons": np.zeros(2, np.uint8), "gray": np.zeros((2, 240, 256), np.float32)}, "uint8"),
        ({"buttons": np.zeros(2, np.uint8), "gray": gray[:, :, ::2]}, "contiguous"),
        ({"buttons": np.zeros(2, np.uint8), "gray": gray, "gray_prev": gray}, "different"),
        ({"buttons": np.zeros(2, np.uint8), "frames": 0}, "frames"),
        ({"buttons": np.zeros(2, np.uint8), "threads": 0}, "threads"),
    ]
    for kwargs, words in cases:
        with pytest.raises(ValueError, match=words) as e:
            m.step(**kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="writable"):
        m.step(np.zeros(2, np.uint8), gray=_readonly(2 * SCREEN))
    for bad in (-1, 256):
        with pytest.raises(ValueError, match="0..255"):
            m.step_one(0, bad)
    with pytest.raises(IndexError, match="out of range"):
        m.step_one(2, 0)
    with pytest.raises(ValueError, match="kind"):
        m.screen(0, np.zeros(SCREEN, np.uint8), "hsv")
    assert np.array_equal(ram, before), "a refused call changed a machine"


def _readonly(n: int) -> np.ndarray:
    a = np.zeros(n, np.uint8)
    a.setflags(write=False)
    return a


def test_ram_view_is_live():
    m = _machines(1)
    ram = np.asarray(m)
    assert ram.shape == (1, 2048) and ram.dtype == np.uint8
    ram[0, 0x075A] = 7  # lives
    assert np.asarray(m)[0, 0x075A] == 7
    assert pickle.loads(pickle.dumps(m.dump(0)))[:4] == b"MRLN"


# -- snapshots -------------------------------------------------------------------------------
def test_snapshot_round_trip_continues_identically():
    a, b = _machines(1), _machines(1)
    rng = np.random.default_rng(0)
    for _ in range(60):
        a.step_one(0, int(rng.choice([0x80, 0x81, 0x82])), False)
    b.load(0, a.dump(0))
    ga, gb = np.zeros(SCREEN, np.uint8), np.zeros(SCREEN, np.uint8)
    for _ in range(120):
        btn = int(rng.choice([0x80, 0x81, 0x83, 0x00]))
        a.step_one(0, btn)
        b.step_one(0, btn)
    a.screen(0, ga)
    b.screen(0, gb)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(ga, gb)
    assert a.dump(0) == b.dump(0)


def _child_steps(snap: bytes, buttons: list[int]) -> bytes:
    m = Machines(rom_bytes(), 1)
    m.load(0, snap)
    for btn in buttons:
        m.step_one(0, btn, False)
    return m.dump(0)


def test_snapshots_are_portable_across_processes():
    m = _machines(1)
    buttons = [0x81, 0x80, 0x82, 0x80] * 30
    snap = m.dump(0)
    with mp.get_context("spawn").Pool(1) as pool:
        theirs = pool.apply(_child_steps, (snap, buttons))
    for btn in buttons:
        m.step_one(0, btn, False)
    assert theirs == m.dump(0)


def test_bad_snapshots_are_refused_without_touching_the_machine():
    m = _machines(1)
    m.step_one(0, 0x80)
    keep = m.dump(0)
    good = bytearray(keep)
    version = bytearray(good)
    version[4] = 2
    corrupt = bytearray(good)
    corrupt[HEADER + 300] ^= 0xFF
    other_rom = bytearray(good)
    other_rom[8] ^= 1
    impossible = bytearray(good)
    # payload: pc(2) a x y sp p zero_entry(6) next done ppu_time(24) v t(4) fine_x..state(10)
    line_at = HEADER + 2 + 6 + 24 + 4 + 10
    impossible[line_at : line_at + 2] = struct.pack("<h", 999)
    cases = [
        (b"", "MRLN"),
        (b"XXXX" + bytes(good[4:]), "MRLN"),
        (bytes(good[:-1]), "length"),
        (bytes(good) + b"\0", "length"),
        (_reseal(version), "version"),
        (bytes(corrupt), "corrupted"),
        (bytes(other_rom), "another ROM"),
        (_reseal(impossible), "impossible"),
    ]
    for data, words in cases:
        with pytest.raises(ValueError, match=words) as e:
            m.load(0, data)
        assert "\n" not in str(e.value)
        assert m.dump(0) == keep
    with pytest.raises(ValueError, match="bytes"):
        NativeEmulators(1).load_state(0, object())


# -- threads, drawing, faults ----------------------------------------------------------------
def test_threads_and_selective_drawing_give_the_same_machines():
    n = 6
    one, many, drawn = _machines(n), _machines(n), _machines(n)
    rng = np.random.default_rng(3)
    outs = {
        k: (np.zeros((n, 240, 256), np.uint8), np.zeros((n, 240, 256), np.uint8)) for k in "omd"
    }
    for _ in range(40):
        buttons = rng.choice(np.array([0x80, 0x81, 0x82, 0x83, 0x00], np.uint8), n)
        first = buttons & 0xFE
        one.step(buttons, 4, first=first, gray=outs["o"][0], gray_prev=outs["o"][1])
        many.step(buttons, 4, first=first, gray=outs["m"][0], gray_prev=outs["m"][1], threads=3)
        drawn.step(
            buttons, 4, first=first, gray=outs["d"][0], gray_prev=outs["d"][1], draw_all=True
        )
        for k in "md":
            assert np.array_equal(outs["o"][0], outs[k][0])
            assert np.array_equal(outs["o"][1], outs[k][1])
    assert np.array_equal(np.asarray(one), np.asarray(many))
    assert all(one.dump(i) == drawn.dump(i) for i in range(n))


def test_an_unknown_opcode_is_reported_and_never_hangs():
    emu = NativeEmulators(2)
    for i in range(2):
        emu.load_state(i, native_start_state("1-1"))
    snap = bytearray(emu.dump_state(1))
    snap[HEADER : HEADER + 2] = struct.pack("<H", 0x0700)  # PC into RAM ...
    emu.load_state(1, _reseal(snap))
    emu.rams[1, 0x0700:0x0800] = 0x02  # ... full of KIL opcodes
    emu.step(np.zeros(2, np.uint8), 4)
    with pytest.raises(
        EmulatorError, match=r"emulator 1 .*unknown opcode \(the first: \$02 at \$0700"
    ) as e:
        emu.check()
    assert "\n" not in str(e.value)
    emu.check()  # reported once
    # A clean start loaded over the wrecked machine is not reported, though its count drops.
    emu.load_state(1, native_start_state("1-1"))
    emu.step(np.zeros(2, np.uint8), 4)
    emu.check()


# -- the env on both backends ----------------------------------------------------------------
@pytest.mark.parametrize(("stages", "actions"), [("1-1", "simple"), ("4-4,8-4", "complex")])
def test_env_pipeline_is_identical_on_both_backends(stages, actions):
    results = {}
    for emulator in ("native", "nes-py"):
        cfg = EnvConfig(stages=stages, emulator=emulator, actions=actions, noop_max=8)
        env = make_vector_env(cfg, num_envs=3, workers=1, seed=5)
        env.keep_final_rgb(True)
        obs, info = env.reset()
        rng = np.random.default_rng(5)
        seen = [(obs, info)]
        for k in range(150):
            a = rng.integers(env.single_action_space.n, size=3)
            a[rng.random(3) < 0.5] = 1
            seen.append(env.step(a))
            if k % 50 == 0:
                seen.append(env.rgb(k % 3))
        env.close()
        results[emulator] = seen
    for k, (a, b) in enumerate(zip(results["native"], results["nes-py"], strict=True)):
        assert _same(a, b), f"step {k} differs between the native core and nes-py"


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) and a.dtype == object:
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(np.array_equal(a, b))


def test_eval_prints_the_same_table_on_both_backends(capsys):
    tables = []
    for emulator in ("native", "nes-py"):
        args = ["eval", "--checkpoint", "models/ppo-1-1", "--episodes", "1", "--workers", "1"]
        assert main([*args, "--emulator", emulator]) == 0
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1]
    assert "1-1" in tables[0]


def test_actions_out_of_range_are_refused_in_one_line():
    env = make_vector_env(EnvConfig(), num_envs=2)
    env.reset(seed=0)
    for bad in ([0, 7], [-1, 0]):
        with pytest.raises(ValueError, match=r"0\.\.6") as e:
            env.step(np.array(bad))
        assert "\n" not in str(e.value)
    env.close()
