"""Per-episode game logic read from RAM: positions, deaths, flags, and the reward components.

Pure Python over a RAM snapshot (``bytes``), one env at a time, so it is cheap, testable
without an emulator, and shared by the vector env and the single env.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import EnvConfig
from .stages import STAGES

# RAM addresses (Super Mario Bros, as read by gym-super-mario-bros).
X_PAGE, X_SCREEN = 0x6D, 0x86
Y_PIXEL, Y_VIEWPORT = 0x3B8, 0xB5
WORLD, STAGE = 0x75F, 0x75C
# The loaded area: its type and its index within that type (together, the game's area pointer
# without the top bit). 0x750 looks like the area but holds the destination of the next pipe,
# which the level's enemy data rewrites while the screen scrolls.
AREA_TYPE, AREA_OFFSET = 0x74E, 0x74F
LIVES, PLAYER_STATE, GAME_MODE, FLOAT_STATE = 0x75A, 0x0E, 0x770, 0x1D
SWIMMING = 0x704
ENEMY_TYPES = (0x16, 0x17, 0x18, 0x19, 0x1A)
TIME_DIGITS, SCORE_DIGITS = (0x7F8, 3), (0x7DE, 6)
CHANGE_AREA_TIMER, PRELEVEL_TIMER = 0x6DE, 0x7A0

STATE_DEAD, STATE_DYING = 0x06, 0x0B
BUSY_STATES = frozenset((0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07))
STAGE_OVER_ENEMIES = (0x2D, 0x31)  # Bowser, flagpole

COMPONENTS = ("progress", "flag", "death", "fall", "time", "score", "warp", "puzzle", "wrong_path")
"""Reward component names, in reporting order."""

# Wrong-path zones (x range, y predicate) as the PPO seeds define them; entering one ends the episode.
_WRONG_PATH_ZONES = {
    "4-4": [
        (lambda x, y: x <= 1500 and y < 127),
        (lambda x, y: 1588 <= x < 2380 and y >= 127),
    ],
    "7-4": [
        (lambda x, y: 506 <= x <= 832 and y > 127),
        (lambda x, y: 832 < x <= 1064 and y < 80),
        (lambda x, y: 1113 < x <= 1464 and y < 191),
        (lambda x, y: 1579 < x <= 1943 and y < 191),
        (lambda x, y: 1946 < x <= 1964 and y >= 191),
        (lambda x, y: 1984 < x <= 2060 and (y >= 191 or y < 127)),
        (lambda x, y: 2114 < x < 2440 and y < 191),
    ],
    "8-4": [
        (lambda x, y: 2440 < x <= 2500),
        (lambda x, y: 3675 <= x <= 3700),
    ],
}
# A loop-back (the castle maze teleporting Mario back) shows as x dropping this much in one step
# without an area change; nobody runs that far left in a few frames.
LOOP_BACK_PX = 100
WARP_STAGES = ("1-2", "4-2")
PUZZLE_STAGE = "7-4"
PUZZLE_WINDOW_FRAMES = 400


def digits(ram: bytes, spec: tuple[int, int]) -> int:
    """A number stored one decimal digit per byte."""
    addr, n = spec
    value = 0
    for b in ram[addr : addr + n]:
        value = value * 10 + b
    return value


@dataclass
class Reading:
    """What one step's RAM says about Mario."""

    x: int
    y: int
    world: int
    stage: int
    area: int
    lives: int
    state: int
    time: int
    dying: bool
    flag: bool

    @property
    def stage_name(self) -> str:
        """'W-S' of the stage being played."""
        return f"{self.world}-{self.stage}"


def read(ram: bytes) -> Reading:
    """Decode the RAM fields the rules use."""
    viewport = ram[Y_VIEWPORT]
    y_pixel = ram[Y_PIXEL]
    y = 255 + (255 - y_pixel) if viewport < 1 else 255 - y_pixel
    state = ram[PLAYER_STATE]
    flag = ram[GAME_MODE] == 2
    if not flag:
        for addr in ENEMY_TYPES:
            if ram[addr] in STAGE_OVER_ENEMIES:
                flag = ram[FLOAT_STATE] == 3
                break
    return Reading(
        x=ram[X_PAGE] * 256 + ram[X_SCREEN],
        y=y,
        world=ram[WORLD] + 1,
        stage=ram[STAGE] + 1,
        area=(ram[AREA_TYPE] << 5) | ram[AREA_OFFSET],
        lives=ram[LIVES],
        state=state,
        time=digits(ram, TIME_DIGITS),
        dying=state in (STATE_DYING, STATE_DEAD) or viewport > 1,
        flag=flag,
    )


@dataclass
class Outcome:
    """The result of one agent step for one env."""

    reward: float
    terminated: bool
    truncated: bool
    components: dict[str, float]
    reason: str = ""
    """Why the episode ended: flag, death, game_over, warp, wrong_path, timeout, stall, max_steps."""


@dataclass
class Episode:
    """Rule state of one env's current episode (reset at every episode start)."""

    stage: str
    """Stage being played now."""
    start_stage: str
    """Stage the episode started on."""
    x: int = 0
    y: int = 0
    time: int = 400
    area: int = 0
    best_x: int = 0
    """Maximum x in the current area: the progress baseline."""
    x_max: int = 0
    """Maximum x in the current stage (any area): what progress tables report."""
    clock_start: int = 400
    lives: int = 2
    score: int = 0
    steps: int = 0
    stage_steps: int = 0
    since_progress: int = 0
    ret: float = 0.0
    flag: bool = False
    stages_cleared: int = 0
    puzzle_spots: list[str] = field(default_factory=list)
    puzzle_start: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))


class Rules:
    """Episode rules and reward shaping for one configuration (stateless; state is in Episode)."""

    def __init__(self, config: EnvConfig, game: bool) -> None:
        self.cfg = config
        self.rw = config.reward
        self.game = game

    def start(self, ram: bytes) -> Episode:
        """A new episode beginning at the state this RAM describes."""
        r = read(ram)
        ep = Episode(stage=r.stage_name, start_stage=r.stage_name)
        self._enter_stage(ep, r, ram)
        return ep

    def _enter_stage(self, ep: Episode, r: Reading, ram: bytes) -> None:
        ep.stage = r.stage_name
        ep.lives = r.lives
        ep.x = ep.best_x = ep.x_max = r.x
        ep.y, ep.time, ep.area = r.y, r.time, r.area
        ep.clock_start = r.time
        ep.stage_steps = 0
        ep.since_progress = 0
        ep.score = digits(ram, SCORE_DIGITS)
        ep.puzzle_spots = []

    def step(self, ep: Episode, ram: bytes) -> Outcome:
        """Advance the episode by one agent step given the RAM after it."""
        cfg, rw = self.cfg, self.rw
        r = read(ram)
        c = dict.fromkeys(COMPONENTS, 0.0)
        ep.steps += 1
        ep.stage_steps += 1
        terminated = truncated = False
        reason = ""

        if r.stage_name != ep.stage and not r.dying:
            # A new stage: after the flag when play goes on, otherwise a warp pipe.
            if not ep.flag and not self.game:
                # The episode ends in the stage it leaves: its stats stay that stage's.
                return self._outcome(ep, c, True, False, "warp")
            self._enter_stage(ep, r, ram)
            ep.flag = False
        elif r.area != ep.area:
            # Pipes and bonus rooms: x restarts in the new area, so progress restarts from here.
            ep.area = r.area
            ep.best_x = r.x
            ep.since_progress = 0
        elif rw.wrong_path and ep.stage in _WRONG_PATH_ZONES and r.x < ep.x - LOOP_BACK_PX:
            c["wrong_path"] -= rw.wrong_path
            terminated, reason = True, "wrong_path"

        if r.x > ep.best_x and not terminated:
            c["progress"] += rw.progress * min(r.x - ep.best_x, rw.progress_clip)
            ep.best_x = r.x
            ep.since_progress = 0
        else:
            ep.since_progress += 1
        ep.x_max = max(ep.x_max, r.x)
        ep.x, ep.y, ep.time = r.x, r.y, r.time

        if rw.score:
            score = digits(ram, SCORE_DIGITS)
            if score > ep.score:
                c["score"] += rw.score * (score - ep.score)
            ep.score = score
        if rw.time:
            c["time"] -= rw.time
        if rw.fall and r.y < rw.fall_y:
            c["fall"] -= rw.fall
        if rw.warp and ep.stage in WARP_STAGES and r.y > 254:
            c["warp"] -= rw.warp
        if rw.puzzle and ep.stage == PUZZLE_STAGE:
            c["puzzle"] += self._puzzle(ep, r)
        if rw.wrong_path and not terminated:
            for zone in _WRONG_PATH_ZONES.get(ep.stage, ()):
                if zone(r.x, r.y):
                    c["wrong_path"] -= rw.wrong_path
                    terminated, reason = True, "wrong_path"
                    break

        if r.flag and not ep.flag:
            ep.flag = True
            ep.stages_cleared += 1
            c["flag"] += rw.flag
            if self.cfg.flag_ends:
                terminated, reason = True, "flag"

        if r.dying and not terminated:
            c["death"] -= rw.death
            if cfg.life_loss_ends:
                terminated, reason = True, "death"
            if r.lives == 0:
                terminated, reason = True, "game_over"
        elif r.lives == 0xFF:
            terminated, reason = True, "game_over"
        ep.lives = r.lives

        if not terminated:
            if cfg.time_per_stage and r.time < max(ep.clock_start - cfg.time_per_stage, 0):
                truncated, reason = True, "timeout"
            elif cfg.stall_steps and ep.since_progress >= cfg.stall_steps:
                truncated, reason = True, "stall"
            elif cfg.max_steps and ep.steps >= cfg.max_steps:
                truncated, reason = True, "max_steps"

        return self._outcome(ep, c, terminated, truncated, reason)

    def _outcome(
        self, ep: Episode, c: dict[str, float], terminated: bool, truncated: bool, reason: str
    ) -> Outcome:
        """Scale the step's components, add them to the episode's sums and return the step."""
        total = 0.0
        for k, v in c.items():
            if v:
                v *= self.rw.scale
                c[k] = v
                ep.sums[k] += v
                total += v
        ep.ret += total
        return Outcome(total, terminated, truncated, c, reason)

    def _puzzle(self, ep: Episode, r: Reading) -> float:
        """7-4's path sequence: start, first, main and last spots in order within the window."""
        x, y, spots = r.x, r.y, ep.puzzle_spots
        window = PUZZLE_WINDOW_FRAMES // max(1, self.cfg.frame_skip)
        if x < 1700 or (spots and ep.stage_steps - ep.puzzle_start > window):
            spots.clear()
            return 0.0
        if 1700 < x < 1846 and y >= 191:
            if not spots:
                spots.append("start")
                ep.puzzle_start = ep.stage_steps
        elif not spots:
            return 0.0
        elif 1903 <= x <= 1927 and y == 191 and spots == ["start"]:
            spots.append("first")
        elif 1984 <= x <= 2080:
            if y == 127 and spots == ["start", "first"]:
                spots.append("main")
            elif y != 127:
                spots.clear()
        elif 2114 <= x <= 2164 and y == 127 and spots == ["start", "first", "main"]:
            spots.append("last")
        elif 2200 < x <= 2440 and y >= 191 and spots == ["start", "first", "main", "last"]:
            spots.clear()
            ep.best_x = max(ep.best_x, x)
            return self.rw.puzzle
        return 0.0


def stage_number(name: str) -> int:
    """Index 0..31 of a stage name (for integer info arrays)."""
    return STAGES.index(name)
