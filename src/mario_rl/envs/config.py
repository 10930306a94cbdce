"""The environment's options in one place: episode rules, preprocessing and reward shaping.

Every default lives here and is documented here (docs/environment.md repeats them for users).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .actions import ACTION_SETS
from .emulator import BACKENDS
from .stages import parse_stages


@dataclass
class RewardConfig:
    """Reward shaping. Each component is a scale; 0 switches it off.

    The reward of a step is ``scale * sum(components)``; every component (already multiplied by
    ``scale``) is reported per step in ``info["reward_components"]``.
    """

    progress: float = 1.0
    """Reward per pixel of new maximum x in the current area (area changes reset the baseline)."""
    progress_clip: float = 30.0
    """Most progress pixels rewarded in one step (guards against position glitches)."""
    flag: float = 50.0
    """Bonus for reaching the flag (or the axe)."""
    death: float = 50.0
    """Penalty for losing a life."""
    fall: float = 0.0
    """Penalty per step while Mario is below ``fall_y`` (falling into a pit); the A3G seed uses 1."""
    fall_y: int = 70
    """Height under which the fall penalty applies."""
    time: float = 0.0
    """Penalty per agent step (a pressure to hurry)."""
    score: float = 0.0
    """Reward per point of in-game score gained; the uvipen seed uses 1/40."""
    warp: float = 1.0
    """Penalty per step above the ceiling on 1-2 and 4-2 (the warp-zone deterrent)."""
    puzzle: float = 30.0
    """Reward for taking 7-4's correct path sequence (the A3G seed's 'sound' reward)."""
    wrong_path: float = 50.0
    """Penalty for a wrong path on 4-4, 7-4 and 8-4 (zones and loop-backs); also ends the episode."""
    scale: float = 0.1
    """Multiplier applied to the sum of all components."""

    def validate(self) -> None:
        """Raise ValueError naming a bad field."""
        for name, value in vars(self).items():
            if isinstance(value, float) and (value != value or value < 0):
                raise ValueError(f"reward.{name} must be a number >= 0, got {value}")
        if self.scale <= 0:
            raise ValueError(f"reward.scale must be > 0, got {self.scale}")


@dataclass
class EnvConfig:
    """Which stages, which episode rules, which observations and actions."""

    stages: str = "1-1"
    """Stage selection: '1-1', '1-1,4-2' (weights as '1-1:3'), 'all' or 'game'."""
    actions: str = "simple"
    """Action set: right-only (5), simple (7), complex (12) or a3g (10)."""
    frame_skip: int = 4
    """Emulator frames per agent step (the action is repeated)."""
    max_pool: bool = True
    """Observation is the pixel-wise max of the last two frames of a step (hides sprite flicker)."""
    size: int = 84
    """Observations are resized to size x size."""
    crop_hud: bool = False
    """Drop the top 32 rows (score, coins, world, time) before resizing."""
    stage_marker: bool = False
    """Write the stage being played into each observation's top-left corner as a 5-bit code
    (stage index 0..31, one white or black square per bit, over the HUD): a task label, so one
    model for many stages can tell them apart (training and evaluation must agree on it)."""
    interpolation: str = "linear"
    """Resize interpolation: linear (fast), area (smoother, ~10x slower) or nearest."""
    frame_stack: int = 4
    """Frames stacked in one observation."""
    life_loss_ends: bool = True
    """A lost life ends the episode (off: play on until game over)."""
    flag_ends: bool = True
    """Reaching the flag ends the episode (off: play on into the next stage, as the game does)."""
    time_per_stage: int = 0
    """In-game clock units allowed per stage before the episode is cut (the A3G seed's -tps); 0 = off."""
    stall_steps: int = 500
    """Cut the episode after this many agent steps without a new maximum x; 0 = off."""
    max_steps: int = 10_000
    """Hard cap on agent steps per episode; 0 = off."""
    noop_max: int = 30
    """Episodes start after 0..noop_max emulator frames of no-op (seeded); 0 = off."""
    noop_random: bool = False
    """Use random actions instead of no-ops for the start frames."""
    jump_repress: bool = False
    """Make a jump action jump whenever Mario can: when the previous action held A too and Mario
    stands (or swims), A is released for the step's first frame. Without it, holding A across
    a landing does nothing (the NES wants a new press), which the frame stack cannot show."""
    jump_unblock: bool = False
    """The narrow form of ``jump_repress``: A is released for the step's first frame only when the
    previous action held A too, Mario stands, and the last step left his x where it was (he is
    blocked, as against a stair or a pipe). That is the one place a held A is a trap for a greedy
    policy (it stands still forever); a held A elsewhere keeps its meaning, so a model trained
    without the rule plays the same with it except where it would stall."""
    progress_starts: float = 0.0
    """Training aid: the chance that an episode starts from a state an earlier episode of the
    same env group reached on that stage (a few kept per 256 px of x) instead of the stage's
    start, so the far parts of a stage get practised; 0 = off. Not used in 'game' mode;
    evaluation always starts at the stage start. Such episodes are marked 'restored'."""
    progress_cells: bool = False
    """Progress starts by cells, as Go-Explore keeps them: states where Mario stands, a few per
    32x32 px cell of x and y, drawn with weight 1/sqrt(episodes that stood in the cell), so
    rarely reached places (a higher platform, the far side of a hard jump) are practised most.
    Without it, a few states per 256 px of x, drawn uniformly."""
    demos: str = ""
    """Demonstration files (comma-separated), each a route to one stage's flag written by
    ``mario-rl explore``; used by demo_starts."""
    demo_starts: float = 0.0
    """Training aid: the chance that an episode of a stage with a demo starts from a state along
    the demo (drawn uniformly from its steps) instead of the stage's start, so a hard jump the
    demo makes is practised where it is made; 0 = off. Evaluation always starts at the stage
    start. Such episodes are marked 'restored', as progress starts are."""
    emulator: str = "native"
    """Emulator backend: native (this package's C core, exact to nes-py and ~10x+ faster) or
    nes-py (the reference it is checked against)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward shaping."""

    def to_dict(self) -> dict:
        """JSON-able dict (recorded in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EnvConfig:
        """Inverse of to_dict; unknown keys are refused (a checkpoint from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown environment options {unknown}")
        d = dict(data)
        reward = d.pop("reward", {}) or {}
        rknown = {f.name for f in fields(RewardConfig)}
        if set(reward) - rknown:
            raise ValueError(f"unknown reward options {sorted(set(reward) - rknown)}")
        return cls(**d, reward=RewardConfig(**reward))

    def validate(self) -> None:
        """Raise ValueError (a one-line message) on a bad option."""
        parse_stages(self.stages)
        if self.actions not in ACTION_SETS:
            raise ValueError(
                f"unknown action set {self.actions!r}; expected one of {', '.join(ACTION_SETS)}"
            )
        if self.emulator not in BACKENDS:
            raise ValueError(
                f"unknown emulator {self.emulator!r}; expected one of {', '.join(BACKENDS)}"
            )
        if self.interpolation not in ("linear", "area", "nearest"):
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; expected linear, area or nearest"
            )
        for name, low in [("frame_skip", 1), ("size", 8), ("frame_stack", 1)]:
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 0.0 <= self.progress_starts < 1.0:
            raise ValueError(f"progress_starts must be in [0, 1), got {self.progress_starts}")
        if self.progress_cells and not self.progress_starts:
            raise ValueError("progress_cells needs progress_starts > 0 (e.g. 0.5)")
        if not 0.0 <= self.demo_starts < 1.0:
            raise ValueError(f"demo_starts must be in [0, 1), got {self.demo_starts}")
        if self.demo_starts and not self.demos.strip():
            raise ValueError("demo_starts needs demos (e.g. --demos demos/1-3.json)")
        if self.demos.strip() and not self.demo_starts:
            raise ValueError("demos need demo_starts > 0 (e.g. --demo-starts 0.25)")
        if self.demo_starts:
            from .demos import demo_paths, demo_states

            paths = demo_paths(self.demos, self.stages)
            twice = sorted({p for p in paths if paths.count(p) > 1})
            if twice:
                raise ValueError(f"demos: {twice[0]} is listed twice; give each demo once")
            if not paths:
                raise ValueError(
                    f"demos: no demo in {self.demos} is of the run's stages ({self.stages}); give"
                    " demos of those stages (mario-rl explore --stage W-S writes one)"
                )
            for path in paths:
                demo_states(path, self)
        for name in ("time_per_stage", "stall_steps", "max_steps", "noop_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        self.reward.validate()
