"""The cross-check's scenarios: what each one plays and what it must go through.

One job: define the scenarios that ``crosscheck`` (the harness) plays on the native core and on
nes-py. A scenario is a start state, a script and a check. A script is a generator that reads the
(identical) RAM of the two machines through a ``Game`` and yields either a controller byte (one
frame) or a ``{address: value}`` dict (RAM pokes written into both machines before the next
frame): random play, the shipped 1-1 model's recorded run, deaths by enemy, pit and time, pipes
into and out of 1-1's bonus room, warp zones, castle loops and a whole-game flag. A check reads
the RAM history the scenario went through and says what is missing (a death of the right kind, a
pipe, a warp, a loop, a flag), or None. ``scenarios()`` lists them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from .stages import STAGES

# Super Mario Bros RAM.
X_PAGE, X_PIXEL, Y_PIXEL, Y_PAGE = 0x6D, 0x86, 0xCE, 0xB5
PLAYER_STATE, FLOAT_STATE = 0x0E, 0x1D
AREA_POINTER, ENTRANCE_CONTROL, HALFWAY_PAGE = 0x750, 0x752, 0x75B
AREA_TYPE = 0x74E
LIVES, STAGE, WORLD, AREA = 0x75A, 0x75C, 0x75F, 0x760
GAME_MODE, MODE_TASK = 0x770, 0x772
TIME_DIGITS = 0x7F8
STAR_TIMER = 0x79F
Y_SPEED, Y_SUBPIXEL_FORCE = 0x9F, 0x433
X_SPEED = 0x57
# $0E, the player's routine: 2 side pipe, 3 down pipe, 4 flagpole, 8 playing, $0B dying.
SIDE_PIPE, DOWN_PIPE, FLAGPOLE, PLAYING, DYING = 0x02, 0x03, 0x04, 0x08, 0x0B

# Buttons (the controller byte).
A, B, DOWN, LEFT, RIGHT = 0x01, 0x02, 0x20, 0x40, 0x80

# The ROM's area tables (file offsets, header included): per world, the offset of its first
# area in the list of area pointers (FindAreaPointer: AreaAddrOffsets[WorldAddrOffsets[w] + a]).
_WORLD_AREA_OFFSETS, _AREA_POINTERS = 0x1CC4, 0x1CCC

DATA = Path(__file__).resolve().parents[3] / "tests" / "data"
MODEL_RUN = DATA / "ppo-1-1-flag.json"
"""The shipped 1-1 model's run to the flag: per-frame buttons and RAM pokes (see record_ppo_1_1.py)."""

Item = int | dict[int, int]
Script = Callable[["Game"], Iterator[Item]]
Check = Callable[[np.ndarray], str | None]


class Game:
    """What a script sees: the RAM both machines share (read-only by contract) and the frame."""

    def __init__(self, ram: np.ndarray) -> None:
        self.ram = ram
        self.frame = 0

    def __getitem__(self, address: int) -> int:
        return int(self.ram[address])

    @property
    def x(self) -> int:
        return int(self.ram[X_PAGE]) * 256 + int(self.ram[X_PIXEL])

    @property
    def playing(self) -> bool:
        """In the game proper with Mario under control (not a transition or cut-scene)."""
        return self[MODE_TASK] == 3 and self[PLAYER_STATE] == PLAYING and self[GAME_MODE] == 1


@dataclass(frozen=True)
class Scenario:
    """A start state, a script of buttons and pokes, and the event it must have gone through."""

    name: str
    stage: str | None
    """'W-S' (a stage's start state, as gym-super-mario-bros makes it) or None (whole game)."""
    script: Script
    check: Check
    """History of RAM (frames + 1, 2048) -> None if the event happened, else what is missing."""
    frames: int
    """Frame budget of the CI test."""
    proves: str


# -- scripts ----------------------------------------------------------------------------------
# Random play: (buttons, weight); each choice is held for 1..24 frames.
_RANDOM = (
    (RIGHT, 3),
    (RIGHT | B, 3),
    (RIGHT | A, 2),
    (RIGHT | A | B, 3),
    (A, 1),
    (LEFT, 1),
    (LEFT | A, 0.5),
    (DOWN, 0.5),
    (0, 1),
)


def random_play(game: Game, seed: int) -> Iterator[Item]:
    """Right-biased random play with jumps, forever; lives topped up to 3 so the game goes on
    in the same stage (deaths and all)."""
    rng = np.random.default_rng(seed)
    buttons = np.array([b for b, _ in _RANDOM])
    weights = np.array([w for _, w in _RANDOM], float)
    weights /= weights.sum()
    while True:
        if game[LIVES] < 2:
            yield {LIVES: 2}
        b = int(buttons[rng.choice(len(buttons), p=weights)])
        for _ in range(int(rng.integers(1, 25))):
            yield b


def hold(buttons: int, frames: int) -> Iterator[Item]:
    """The same buttons for ``frames`` frames."""
    for _ in range(frames):
        yield buttons


def until(game: Game, buttons: int, done: Callable[[], bool], limit: int) -> Iterator[Item]:
    """``buttons`` each frame until ``done()`` (at most ``limit`` frames)."""
    for _ in range(limit):
        if done():
            return
        yield buttons


@cache
def _rom() -> bytes:
    from .emulator import rom_bytes

    return rom_bytes()


def area_pointer(world: int, area: int) -> int:
    """The game's area pointer of area ``area`` of world ``world`` (both from 0)."""
    rom = _rom()
    return rom[_AREA_POINTERS + rom[_WORLD_AREA_OFFSETS + world] + area]


def teleport(game: Game, page: int) -> Iterator[Item]:
    """Restart the current area at ``page`` as the game restarts at a halfway page (the area
    pointer reset to the stage's own, then InitializeArea); waits until Mario is back in play."""
    yield {
        AREA_POINTER: area_pointer(game[WORLD], game[AREA]),
        HALFWAY_PAGE: page,
        ENTRANCE_CONTROL: 0,
        MODE_TASK: 0,
    }
    yield 0
    yield from until(game, 0, lambda: game.playing, 400)


def model_run(game: Game) -> Iterator[Item]:
    """The shipped 1-1 model's recorded run (buttons and the env's pokes, frame by frame)."""
    data = json.loads(MODEL_RUN.read_text())
    buttons = bytes.fromhex(data["buttons"])
    pokes: dict[int, dict[int, int]] = {}
    for frame, address, value in data["pokes"]:
        pokes.setdefault(frame, {})[address] = value
    for f, b in enumerate(buttons):
        if f in pokes:
            yield pokes[f]
        yield b


# -- checks -----------------------------------------------------------------------------------
def _x(h: np.ndarray) -> np.ndarray:
    return h[:, X_PAGE].astype(np.int64) * 256 + h[:, X_PIXEL]


def moved(px: int) -> Check:
    """Mario got ``px`` pixels right of where he started at some point."""

    def check(h: np.ndarray) -> str | None:
        x = _x(h)
        if x.max() - x[0] < px:
            return f"Mario never got {px} px right of his start (best {x.max() - x[0]})"
        return None

    return check


def _check_all(*checks: Check) -> Check:
    def check(h: np.ndarray) -> str | None:
        for c in checks:
            if msg := c(h):
                return msg
        return None

    return check


def _at_start(stage: str | None) -> Check:
    def check(h: np.ndarray) -> str | None:
        if stage is None:
            want = (0, 0)
        else:
            w, s = (int(v) for v in stage.split("-"))
            want = (w - 1, s - 1)
        got = (int(h[0, WORLD]), int(h[0, STAGE]))
        if got != want:
            return f"the start state is world/stage {got}, not {want}"
        return None

    return check


def life_lost(how: str) -> Check:
    """Lives went down by one, through a death of kind ``how``: 'pit' (Mario below the screen
    before any dying state), 'enemy' (the dying routine started on screen, with time left) or
    'time' (the clock at 000 when Mario died)."""

    def check(h: np.ndarray) -> str | None:
        drops = np.flatnonzero(np.diff(h[:, LIVES].astype(int)) == -1)
        if not len(drops):
            return "no life was lost"
        before = h[: drops[0] + 1]
        dead = np.flatnonzero(np.isin(before[:, PLAYER_STATE], (DYING, 0x06)))
        end = int(dead[0]) if len(dead) else len(before) - 1
        fell = bool((before[: end + 1, Y_PAGE] >= 2).any())
        clock = before[end, TIME_DIGITS : TIME_DIGITS + 3].astype(int) @ np.array([100, 10, 1])
        kind = "pit" if fell else "time" if clock == 0 else "enemy"
        if kind == "enemy" and before[end, PLAYER_STATE] != DYING:
            kind = "unknown"
        if kind != how:
            return f"a life was lost, but to {kind}, not {how}"
        return None

    return check


def reached(address: int, values: tuple[int, ...], what: str) -> Check:
    """RAM ``address`` held one of ``values`` on some frame."""

    def check(h: np.ndarray) -> str | None:
        if not np.isin(h[:, address], values).any():
            return f"{what} never happened (${address:04X} never in {values})"
        return None

    return check


def flag_reached(h: np.ndarray) -> str | None:
    """Mario slid down a flagpole ($1D = 3, $0E = 4) past x 3150."""
    pole = (h[:, FLOAT_STATE] == 3) & (h[:, PLAYER_STATE] == FLAGPOLE)
    if not pole.any():
        return "Mario never slid down the flagpole"
    if _x(h)[pole].max() < 3150:
        return "a flagpole slide was seen short of 1-1's pole (x < 3150)"
    return None


# -- scenarios --------------------------------------------------------------------------------
def _random_scenario(stage: str | None, frames: int) -> Scenario:
    name = f"random-{stage or 'game'}"
    return Scenario(
        name,
        stage,
        script=lambda g: iter(()),
        check=_check_all(_at_start(stage), moved(64)),
        frames=frames,
        proves="random right-biased play with jumps from the start (deaths, respawns)",
    )


def death_by_enemy(game: Game) -> Iterator[Item]:
    # Walk right into 1-1's first Goomba; then until Mario is back in play.
    lives = game[LIVES]
    yield from until(game, RIGHT, lambda: game[LIVES] < lives, 1500)
    yield from until(game, 0, lambda: game.playing, 600)


def death_by_pit(game: Game) -> Iterator[Item]:
    # From page 4 of 1-1 walk right into the first pit (x 1104).
    yield from teleport(game, 4)
    lives = game[LIVES]
    yield from until(game, RIGHT, lambda: game[LIVES] < lives, 1500)
    yield from until(game, 0, lambda: game.playing, 600)


def death_by_time(game: Game) -> Iterator[Item]:
    # The clock set to 101 (hurry-up music at 100), then to 003; stand still until it runs out.
    yield {TIME_DIGITS: 1, TIME_DIGITS + 1: 0, TIME_DIGITS + 2: 1}
    yield from hold(RIGHT, 60)
    yield {TIME_DIGITS: 0, TIME_DIGITS + 1: 0, TIME_DIGITS + 2: 3}
    lives = game[LIVES]
    yield from until(game, 0, lambda: game[LIVES] < lives, 1500)
    yield from until(game, 0, lambda: game.playing, 600)


def align(game: Game, x: int, limit: int = 200) -> Iterator[Item]:
    """Walk to ``x`` (within 2 px) and stand still there."""
    for _ in range(limit):
        d = x - game.x
        if abs(d) <= 2 and game[X_SPEED] == 0 and game[FLOAT_STATE] == 0:
            return
        yield 0 if abs(d) <= 2 else (RIGHT if d > 0 else LEFT)


def onto_pipe(game: Game, x: int) -> Iterator[Item]:
    """From the left of a 2-3 block pipe whose opening is at ``x``: hop on and stand at ``x``."""
    yield from align(game, x - 24)
    yield from hold(A, 14)
    yield from hold(A | RIGHT, 12)
    yield from until(game, 0, lambda: game[FLOAT_STATE] == 0, 100)
    yield from align(game, x)


def bonus_room(game: Game) -> Iterator[Item]:
    # 1-1 from page 3: onto the fourth pipe, Down into the underground bonus room, over the
    # bricks, right into the exit pipe, out of the pipe near the end of 1-1.
    yield from teleport(game, 3)
    yield from onto_pipe(game, 920)
    yield from until(game, DOWN, lambda: game[AREA_TYPE] == 2 and game.playing, 400)
    yield from until(game, 0, lambda: game[FLOAT_STATE] == 0, 200)
    yield from hold(RIGHT | A, 35)
    yield from until(game, RIGHT, lambda: game[PLAYER_STATE] == SIDE_PIPE, 600)
    yield from until(game, 0, lambda: game.playing, 600)
    yield from hold(RIGHT, 60)


def warp(page: int, pipe: int) -> Script:
    """From ``page`` of the stage (its warp zone), down the pipe whose opening is at ``pipe``."""

    def script(game: Game) -> Iterator[Item]:
        yield from teleport(game, page)
        yield from onto_pipe(game, pipe)
        yield from until(game, DOWN, lambda: game[PLAYER_STATE] == DOWN_PIPE, 60)
        yield from until(game, 0, lambda: game.playing, 1000)
        yield from hold(RIGHT, 60)

    return script


def game_flag(game: Game) -> Iterator[Item]:
    # Whole game: 1-1 from page 12, a jump onto the flagpole, the castle, the score count, then
    # 1-2's intro (Mario walks into a side pipe) and 1-2 itself.
    yield from teleport(game, 12)
    yield from until(game, RIGHT, lambda: game.x >= 3130, 300)
    yield from hold(RIGHT | A, 30)
    yield from until(game, 0, lambda: game[STAGE] == 1 and game.playing, 1500)
    yield from hold(RIGHT, 60)


def castle_loop(game: Game) -> Iterator[Item]:
    """Run right through a castle with pokes for invincibility (star), lives and lava (Mario
    held at floor level over it, lifted over the wall he is stuck against), jumping when
    blocked: the path along the bottom is a wrong one, so the castle loops Mario back four
    pages. Ends 120 frames after the first loop."""
    last, stuck, jump, lifts, after = game.x, 0, 0, 0, -1
    for _ in range(4000):
        if after == 0:
            return
        yield {STAR_TIMER: 0x20, LIVES: 2}
        prev_page = game[X_PAGE]
        if game[Y_PAGE] > 1 or (game[Y_PAGE] == 1 and game[Y_PIXEL] > 184):
            yield {Y_PAGE: 1, Y_PIXEL: 176, Y_SPEED: 0, Y_SUBPIXEL_FORCE: 0}
        if jump:
            jump -= 1
            b = RIGHT | A | B
        else:
            stuck = stuck + 1 if game.x <= last else 0
            last = max(last, game.x) if stuck else game.x
            b = RIGHT | B
            if stuck >= 3 and game[FLOAT_STATE] == 2 and game[Y_PIXEL] >= 170:
                lifts += 1
                yield {Y_PIXEL: (96, 64, 128, 32)[lifts % 4], Y_SPEED: 0, Y_SUBPIXEL_FORCE: 0}
                stuck = 0
            elif stuck >= 3 and game[FLOAT_STATE] == 0:
                jump, stuck, b = 32, 0, RIGHT
        yield b
        if after > 0:
            after -= 1
        elif (prev_page - game[X_PAGE]) % 256 == 4:
            after = 120


def looped(h: np.ndarray) -> str | None:
    """The castle sent Mario back exactly four pages while he was playing (no death, same
    stage and area)."""
    page = h[:, X_PAGE].astype(int)
    back = np.flatnonzero((page[:-1] - page[1:]) % 256 == 4) + 1
    for t in back:
        a, b = h[t - 1], h[t]
        if (
            a[PLAYER_STATE] == b[PLAYER_STATE] == PLAYING
            and a[MODE_TASK] == b[MODE_TASK] == 3
            and (a[WORLD], a[STAGE], a[AREA]) == (b[WORLD], b[STAGE], b[AREA])
        ):
            return None
    return "the castle never looped Mario back four pages"


def went_through_pipes(h: np.ndarray) -> str | None:
    """Down a pipe into the bonus room (area type 2) and out by a side pipe to 1-1's end."""
    state, area = h[:, PLAYER_STATE], h[:, AREA_TYPE]
    down = np.flatnonzero((state == DOWN_PIPE) & (area == 1))
    if not len(down):
        return "Mario never went down a pipe in 1-1"
    inside = np.flatnonzero((area == 2) & (np.arange(len(h)) > down[0]))
    if not len(inside):
        return "the bonus room (area type 2) was never loaded"
    side = np.flatnonzero((state == SIDE_PIPE) & (area == 2))
    if not len(side):
        return "Mario never left the bonus room by its side pipe"
    back = (area == 1) & (np.arange(len(h)) > side[0]) & (_x(h) > 2500)
    if not back.any():
        return "Mario never came back out near 1-1's end (x > 2500)"
    return None


def warped_to(world: int) -> Check:
    """A down pipe took Mario to world ``world`` (from 1), stage 1, without a flag."""

    def check(h: np.ndarray) -> str | None:
        w0 = int(h[0, WORLD])
        after = np.flatnonzero((h[:, WORLD] == world - 1) & (h[:, STAGE] == 0))
        if not len(after):
            return f"world {w0 + 1} never became {world}-1"
        if (h[: after[0], FLOAT_STATE] == 3).any():
            return "a flagpole was touched on the way (not a warp)"
        if not (h[: after[0] + 1, PLAYER_STATE] == DOWN_PIPE).any():
            return f"world {world} reached, but not down a pipe"
        there = h[after[0] :]
        if not ((there[:, WORLD] == world - 1) & _in_play(there)).any():
            return f"{world}-1 was never played"
        return None

    return check


def _in_play(h: np.ndarray) -> np.ndarray:
    """Per frame: in the game proper with Mario under control."""
    return (h[:, MODE_TASK] == 3) & (h[:, GAME_MODE] == 1) & (h[:, PLAYER_STATE] == PLAYING)


def next_stage_after_flag(h: np.ndarray) -> str | None:
    """Whole game: 1-1's flagpole slide, then 1-2 (stage 1) loaded and played."""
    pole = np.flatnonzero((h[:, FLOAT_STATE] == 3) & (h[:, PLAYER_STATE] == FLAGPOLE))
    if not len(pole):
        return "Mario never slid down the flagpole"
    nxt = np.flatnonzero((h[:, STAGE] == 1) & (h[:, WORLD] == 0) & (h[:, PLAYER_STATE] == PLAYING))
    if not len(nxt) or nxt[0] < pole[0]:
        return "1-2 was never played after the flag"
    return None


def scenarios(frames_per_stage: int = 2000) -> list[Scenario]:
    """Every scenario: random play on each of the 32 stages and the whole game, then events."""
    out = [_random_scenario(s, frames_per_stage) for s in (*STAGES, None)]
    out += [
        Scenario(
            "model-1-1",
            "1-1",
            model_run,
            check=flag_reached,
            frames=_model_frames() + 400,
            proves="the shipped PPO 1-1 model's recorded run to the flag",
        ),
        Scenario(
            "death-enemy",
            "1-1",
            death_by_enemy,
            check=life_lost("enemy"),
            frames=900,
            proves="small Mario killed by 1-1's first Goomba, death animation, respawn",
        ),
        Scenario(
            "death-pit",
            "1-1",
            death_by_pit,
            check=life_lost("pit"),
            frames=900,
            proves="a fall into 1-1's first pit, respawn",
        ),
        Scenario(
            "death-time",
            "1-1",
            death_by_time,
            check=_check_all(life_lost("time"), reached(TIME_DIGITS + 2, (0,), "time-out")),
            frames=900,
            proves="hurry-up at 100, the clock running out, time-up death, respawn",
        ),
        Scenario(
            "pipes-1-1",
            "1-1",
            bonus_room,
            check=went_through_pipes,
            frames=900,
            proves="down pipe, area change to the bonus room and back by the side exit pipe",
        ),
        Scenario(
            "warp-1-2",
            "1-2",
            warp(11, 2920),
            check=warped_to(3),
            frames=700,
            proves="1-2's warp zone (after the exit pipe): the middle pipe to 3-1",
        ),
        Scenario(
            "warp-4-2",
            "4-2",
            warp(13, 3432),
            check=warped_to(5),
            frames=700,
            proves="4-2's end warp zone: the pipe to 5-1",
        ),
        *(
            Scenario(
                f"loop-{stage}",
                stage,
                castle_loop,
                check=looped,
                frames=900,
                proves=f"{stage}'s castle loop: the wrong (bottom) path sends Mario back",
            )
            for stage in ("4-4", "7-4", "8-4")
        ),
        Scenario(
            "flag-game",
            None,
            game_flag,
            check=next_stage_after_flag,
            frames=1500,
            proves="whole game: 1-1's flag, castle, score count, 1-2's intro pipe, 1-2",
        ),
    ]
    return out


def _model_frames() -> int:
    try:
        return len(bytes.fromhex(json.loads(MODEL_RUN.read_text())["buttons"]))
    except FileNotFoundError:
        return 0
