"""The native core against nes-py 9.0.1: full RAM after every frame, screens on a subset.

Every scenario of ``mario_rl.envs.crosscheck`` at its CI budget (2,000 frames of random play on
each of the 32 stages and the whole game; scripted deaths, pipes, warps, a model's run and a
whole-game flag), each asserting that the machines stayed equal and that the scenario went
through the event it claims. A failure's message names the scenario, stage, frame and first
differing address (or pixel) with both values.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mario_rl.envs import crosscheck as cc

SCENARIOS = {s.name: s for s in cc.scenarios()}
STAGE_RUNS = [n for n in SCENARIOS if n.startswith("random-")]
EVENTS = [n for n in SCENARIOS if not n.startswith("random-")]


def test_every_stage_and_the_game_have_a_random_run_of_2000_frames() -> None:
    stages = {SCENARIOS[n].stage for n in STAGE_RUNS}
    assert stages == {*cc.STAGES, None}
    assert all(SCENARIOS[n].frames >= 2000 for n in STAGE_RUNS)


@pytest.mark.parametrize("name", STAGE_RUNS)
def test_random_play(name: str) -> None:
    r = cc.crosscheck(SCENARIOS[name])
    assert r.ok, r.line()
    assert r.frames == SCENARIOS[name].frames
    assert r.screens == r.frames // 4 + 1


@pytest.mark.parametrize("name", EVENTS)
def test_event(name: str) -> None:
    r = cc.crosscheck(SCENARIOS[name])
    assert r.ok, r.line()


def test_model_run_is_recorded() -> None:
    data = json.loads(cc.MODEL_RUN.read_text())
    assert len(bytes.fromhex(data["buttons"])) > 1000


def test_a_one_sided_poke_is_reported_with_frame_and_address() -> None:
    # Lives (only changed by a death) set to 9 on the native machine before frame 100.
    r = cc.crosscheck(SCENARIOS["random-1-1"], frames=300, tamper={100: {cc.LIVES: 9}})
    assert not r.ok and r.frames == 100
    assert r.divergence == (
        "random-1-1 [1-1] frame 100: RAM $075A native=$09 nes-py=$02 (1 of 2048 bytes differ)"
    )
    assert r.line() == r.divergence


def test_a_screen_difference_names_the_pixel() -> None:
    a = np.zeros((240, 256, 3), np.uint8)
    b = a.copy()
    assert cc.screen_difference(a, b) is None
    b[17, 200] = (1, 2, 3)
    b[30, 5, 0] = 9
    assert cc.screen_difference(a, b) == (
        "screen pixel (y=17, x=200) native=(0, 0, 0) nes-py=(1, 2, 3) (2 of 61440 pixels differ)"
    )


def _history(frames: int, **columns: list[int]) -> np.ndarray:
    h = np.zeros((frames, 2048), np.uint8)
    h[:, cc.Y_PAGE] = 1
    h[:, cc.LIVES] = 2
    h[:, cc.PLAYER_STATE] = cc.PLAYING
    h[:, cc.TIME_DIGITS] = 3
    for name, values in columns.items():
        h[:, getattr(cc, name)] = values
    return h


def test_death_checks_tell_the_kinds_apart() -> None:
    # A pit: Mario below the screen before the dead state; then a life lost.
    pit = _history(5, Y_PAGE=[1, 2, 3, 3, 1], PLAYER_STATE=[8, 8, 6, 6, 8], LIVES=[2, 2, 2, 1, 1])
    # An enemy: the dying state on screen with time left.
    enemy = _history(4, PLAYER_STATE=[8, 11, 11, 8], LIVES=[2, 2, 1, 1])
    # Time: the clock at 000 when Mario dies.
    time = _history(4, PLAYER_STATE=[8, 11, 11, 8], LIVES=[2, 2, 1, 1])
    time[1:, cc.TIME_DIGITS] = 0
    none = _history(4)
    for h, kind in ((pit, "pit"), (enemy, "enemy"), (time, "time")):
        for check in ("pit", "enemy", "time"):
            msg = cc.life_lost(check)(h)
            assert (msg is None) == (check == kind), (kind, check, msg)
        assert cc.life_lost(kind)(none) == "no life was lost"


def test_cli_runs_a_stage_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "cc.json"
    assert cc.main(["--stages", "8-3", "--frames", "2000", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["scenario"], r["frames"], r["divergence"]) for r in rows] == [
        ("random-8-3", 2000, None)
    ]
    table = capsys.readouterr().out
    assert "random-8-3" in table and "1/1 scenarios equal" in table


def test_a_gray_difference_names_the_pixel() -> None:
    a = np.zeros((240, 256), np.uint8)
    b = a.copy()
    b[239, 255] = 7
    assert cc.screen_difference(a, b, "gray") == (
        "gray screen pixel (y=239, x=255) native=0 nes-py=7 (1 of 61440 pixels differ)"
    )


def test_loop_check_wants_four_pages_back_in_play() -> None:
    h = _history(4)
    h[:, cc.MODE_TASK] = 3
    h[:, cc.X_PAGE] = [4, 5, 1, 2]
    assert cc.looped(h) is None
    h[2, cc.PLAYER_STATE] = 0x06  # dead: a respawn, not a loop
    assert cc.looped(h) == "the castle never looped Mario back four pages"
    h[2, cc.PLAYER_STATE] = cc.PLAYING
    h[:, cc.X_PAGE] = [4, 5, 2, 3]  # three pages back
    assert cc.looped(h) is not None
