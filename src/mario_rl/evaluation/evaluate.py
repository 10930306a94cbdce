"""Play a policy for N episodes on each stage and summarise per stage (no training knowledge).

Evaluation draws its no-op starts from seed streams that training never uses (training seeds
are plain integers; evaluation seeds are tagged sequences), so a table is an honest measure.
Episodes run side by side in one vector env whose emulator groups step in ``workers`` threads,
so many stages are evaluated in parallel with batched inference.

Besides how far episodes got, each row says where the ones that missed the flag ended (the x of
the step that ended them, their median and most common 64-pixel stretch) and how (a lost life or
a time / stall limit): what stands between a model and the stage's flag.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..envs import EnvConfig, MarioVectorEnv
from ..envs.stages import STAGES, parse_stages
from .levels import progress, stage_length

EVAL_SEED_TAG = 0x5EED_E7A1

END_BUCKET_PX = 64
"""Width of the stretches of x in which end places are counted (``top_end_x``): four 16-pixel
blocks, about one obstacle (a pipe, a gap, a goomba's reach)."""
DEATH_ENDS = ("death", "game_over")
"""Episode end reasons that are a lost life."""
LIMIT_ENDS = ("timeout", "stall", "max_steps")
"""Episode end reasons that are a limit: the in-game clock, no progress, the step cap."""

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``act(obs uint8 (N,C,H,W), first bool (N,)) -> actions (N,)``; ``first`` marks envs whose
episode just began (a recurrent policy resets their state)."""

FrameSink = Callable[[int, np.ndarray], None]
"""``sink(job, rgb)``: one full-colour 240x256x3 screen (a copy) of evaluation job ``job``'s
episode, called once after the reset and once per agent step, in order."""


@dataclass
class StageVisit:
    """One stage as an episode played it (several per episode in whole-game runs)."""

    stage: str
    x_max: int = 0
    cleared: bool = False
    steps: int = 0
    """Agent steps spent on the stage."""
    deaths: int = 0
    clock_start: int = 0
    """In-game clock when the stage was entered."""
    clock_at_flag: int | None = None
    """In-game clock when the flag (or axe) was reached."""
    x_end: int = 0
    """Mario's x when play left the stage: where the episode ended, or where it went on from."""
    end: str = ""
    """How play left the stage: the episode's end reason on its last stage ('death', 'stall', …);
    'flag' or 'warp' for a stage it went on from."""

    @property
    def progress(self) -> float:
        """Share of the stage covered (1 when cleared)."""
        if self.stage not in STAGES:
            return 0.0
        return progress(self.stage, self.x_max, self.cleared)

    @property
    def game_time(self) -> int | None:
        """In-game clock units from entering the stage to its flag (None if not cleared)."""
        return None if self.clock_at_flag is None else self.clock_start - self.clock_at_flag


@dataclass
class EpisodeResult:
    """One evaluation episode.

    ``cleared`` and ``x_max`` are those of the stage it started on (a warp pipe or, with
    ``flag_ends`` off, the flag takes an episode on to other stages: see ``path``).
    """

    stage: str
    """Stage it ended on."""
    cleared: bool
    x_max: int
    steps: int
    reason: str
    ret: float
    stages_cleared: int
    """Flags reached (in ``game`` mode: stages cleared in sequence)."""
    time_left: int
    """In-game clock left when the episode ended."""
    deaths: int = 0
    """Lives lost (with ``life_loss_ends`` at most one)."""
    path: list[StageVisit] = field(default_factory=list)
    """Stages in the order played (one entry unless play went on past a flag or a warp)."""

    @property
    def start(self) -> StageVisit:
        """The visit of the stage it started on."""
        if self.path:
            return self.path[0]
        # No step record: the furthest x stands in for where it ended.
        return StageVisit(
            self.stage,
            self.x_max,
            self.cleared,
            self.steps,
            self.deaths,
            x_end=self.x_max,
            end=self.reason,
        )


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def end_places(xs: Sequence[int], reasons: Sequence[str]) -> dict:
    """Where and how the episodes that missed the flag ended, given each one's end x and reason.

    ``end_xs`` (sorted), ``median_end_x``, ``top_end_x`` (start of the most common
    :data:`END_BUCKET_PX`-wide stretch; on a tie the one nearest the start, the obstacle met
    first) with ``top_end_share`` (its share of these episodes), and ``end_deaths`` /
    ``end_timeouts`` (how many ended by a lost life / a limit; the rest left by a warp or a wrong
    path). The x values are None when every episode reached the flag.
    """
    if len(xs) != len(reasons):
        raise ValueError(f"{len(xs)} end x values for {len(reasons)} end reasons")
    row: dict = {"end_xs": sorted(int(x) for x in xs)}
    if xs:
        buckets = Counter(int(x) // END_BUCKET_PX for x in xs)
        top = min(buckets, key=lambda b: (-buckets[b], b))
        row["median_end_x"] = float(np.median(xs))
        row["top_end_x"] = top * END_BUCKET_PX
        row["top_end_share"] = buckets[top] / len(xs)
    else:
        row["median_end_x"] = row["top_end_x"] = row["top_end_share"] = None
    row["end_deaths"] = sum(r in DEATH_ENDS for r in reasons)
    row["end_timeouts"] = sum(r in LIMIT_ENDS for r in reasons)
    return row


def _visit_row(visits: list[StageVisit]) -> dict:
    """The summary columns shared by stage and whole-game tables."""
    cleared = [v for v in visits if v.cleared]
    failed = [v for v in visits if not v.cleared]
    xs = [v.x_max for v in visits]
    stage = visits[0].stage
    return {
        "episodes": len(visits),
        "clear_rate": len(cleared) / len(visits),
        "mean_x": float(np.mean(xs)),
        "max_x": int(max(xs)),
        "stage_length": stage_length(stage) if stage in STAGES else None,
        "mean_progress": float(np.mean([v.progress for v in visits])),
        "max_progress": float(max(v.progress for v in visits)),
        "mean_steps_to_flag": _mean([v.steps for v in cleared]),
        "mean_game_time_to_flag": _mean([v.game_time for v in cleared]),
        "mean_time_left_at_flag": _mean([v.clock_at_flag for v in cleared]),
        "deaths": sum(v.deaths for v in visits),
        **end_places([v.x_end for v in failed], [v.end for v in failed]),
    }


@dataclass
class StageReport:
    """Summary of one stage's episodes."""

    episodes: list[EpisodeResult] = field(default_factory=list)

    def summary(self) -> dict:
        """Clear rate, progress (x and share of the stage), steps and in-game time to the flag,
        deaths, how the episodes ended, and where on the stage the ones without a clear ended."""
        eps = self.episodes
        if not eps:
            return {"episodes": 0, "clear_rate": 0.0, "mean_x": 0.0, "max_x": 0}
        row = _visit_row([e.start for e in eps])
        row["deaths"] = sum(e.deaths for e in eps)
        row["mean_return"] = float(np.mean([e.ret for e in eps]))
        row["mean_stages_cleared"] = float(np.mean([e.stages_cleared for e in eps]))
        row["end_stages"] = sorted({e.stage for e in eps})
        row["ends"] = {r: sum(e.reason == r for e in eps) for r in sorted({e.reason for e in eps})}
        return row


def eval_seeds(seed: int, n: int) -> list[list[int]]:
    """Seed sequences for ``n`` evaluation envs: disjoint from any training seed."""
    return [[EVAL_SEED_TAG, int(seed), i] for i in range(n)]


def game_config(env_config: EnvConfig) -> EnvConfig:
    """The rules of a whole-game run: all lives, on through the flags, until game over."""
    return dataclasses.replace(
        env_config,
        stages="game",
        life_loss_ends=False,
        flag_ends=False,
        max_steps=max(env_config.max_steps, 50_000),
    )


def evaluate(
    policy: Policy,
    env_config: EnvConfig,
    stages: str,
    episodes: int = 10,
    seed: int = 0,
    workers: int = 1,
    max_envs: int = 32,
    on_frame: FrameSink | None = None,
) -> dict[str, StageReport]:
    """Play ``episodes`` episodes on every stage of ``stages``; returns a report per stage.

    Episodes run side by side in vector envs of up to ``max_envs`` (batched inference,
    ``workers`` threads); each env counts only its first episode. ``game`` plays the whole game
    from 1-1 with all lives, on through the stages, until game over: its report is keyed by
    ``"game"``, each episode's ``path`` listing the stages in the order played (see
    :func:`game_table`). ``on_frame`` receives every screen of every counted episode, job ``k``
    being episode ``k % episodes`` of the ``k // episodes``-th stage.
    """
    sel = parse_stages(stages)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    # An honest measure: every episode starts at the stage's start, never from a saved state.
    env_config = dataclasses.replace(
        env_config, progress_starts=0.0, progress_cells=False, demos="", demo_starts=0.0
    )
    if sel.game:
        env_config = game_config(env_config)
    jobs = [("game" if sel.game else s, i) for s in sel.stages for i in range(episodes)]
    seeds = eval_seeds(seed, len(jobs))
    reports: dict[str, StageReport] = {}
    for start in range(0, len(jobs), max_envs):
        chunk = jobs[start : start + max_envs]
        env = MarioVectorEnv(
            dataclasses.replace(env_config, stages=sel.spec if sel.game else chunk[0][0]),
            num_envs=len(chunk),
            workers=min(workers, len(chunk)),
            env_seeds=seeds[start : start + len(chunk)],
        )
        try:
            if not sel.game:
                for i, (stage, _) in enumerate(chunk):
                    env.set_stages([i], stage)
            results = _play_chunk(env, policy, start, on_frame)
        finally:
            env.close()
        for (key, _), result in zip(chunk, results, strict=True):
            reports.setdefault(key, StageReport()).episodes.append(result)
    return reports


def _play_chunk(
    env: MarioVectorEnv, policy: Policy, job0: int, on_frame: FrameSink | None
) -> list[EpisodeResult]:
    """Play the first episode of every env of ``env``; per-stage visits tracked step by step."""
    n = env.num_envs
    if on_frame is not None:
        env.keep_final_rgb(True)
    obs, info = env.reset()
    paths: list[list[StageVisit]] = [[] for _ in range(n)]
    _track(paths, info, np.ones(n, bool), np.zeros(n, bool), step=False)
    if on_frame is not None:
        for i in range(n):
            on_frame(job0 + i, env.rgb(i))
    lives = info["lives"].copy()
    results: list[EpisodeResult | None] = [None] * n
    first = np.ones(n, bool)
    done = np.zeros(n, bool)
    while not done.all():
        obs, _, term, trunc, info = env.step(policy(obs, first))
        first = term | trunc
        running = ~done & ~first
        lost = running & (info["lives"] < lives)
        _track(paths, info, running, lost, step=True)
        lives = info["lives"].copy()
        for i in np.flatnonzero(~done):
            if on_frame is not None:
                on_frame(job0 + i, info["final_rgb"][i] if first[i] else env.rgb(i))
        for i in np.flatnonzero(first & ~done):
            results[i] = _finish(paths[i], info["episode"], i)
        done |= first
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _track(
    paths: list[list[StageVisit]], info: dict, active: np.ndarray, lost: np.ndarray, step: bool
) -> None:
    """Fold one step's (or the reset's) per-env info into the visits of the envs still playing."""
    for i in np.flatnonzero(active):
        k = int(info["stage"][i])
        stage = STAGES[k] if k >= 0 else "?"
        path = paths[i]
        if not path or path[-1].stage != stage:
            _enter(path, stage, int(info["time"][i]))
        visit = path[-1]
        # The stage number can change a frame before the clock is set for the new stage (still
        # the last one's, tallied down): the clock only runs down inside a stage, so its
        # starting value is the highest seen.
        visit.clock_start = max(visit.clock_start, int(info["time"][i]))
        visit.steps += step
        visit.x_max = max(visit.x_max, int(info["x_max"][i]))
        visit.x_end = int(info["x_pos"][i])
        visit.deaths += int(lost[i])
        if info["flag_get"][i] and not visit.cleared:
            visit.cleared = True
            visit.clock_at_flag = int(info["time"][i])


def _enter(path: list[StageVisit], stage: str, clock: int) -> None:
    """Start a visit of ``stage``; the one before was left by its flag or else by a warp."""
    if path:
        path[-1].end = "flag" if path[-1].cleared else "warp"
    path.append(StageVisit(stage, clock_start=clock))


def _finish(path: list[StageVisit], ep: dict, i: int) -> EpisodeResult:
    """Env ``i``'s episode from its end-of-episode stats and its visits (the step that ended it
    is not in the visits: the info of that step already describes the next episode)."""
    stage = STAGES[int(ep["stage"][i])]
    reason = str(ep["reason"][i])
    time_left = int(ep["time_left"][i])
    if not path or path[-1].stage != stage:
        _enter(path, stage, time_left)
    last = path[-1]
    last.x_max = max(last.x_max, int(ep["x_max"][i]))
    last.x_end = int(ep["x_end"][i])
    last.end = reason
    last.deaths += reason in DEATH_ENDS
    if reason == "flag" and not last.cleared:
        last.cleared = True
        last.clock_at_flag = time_left
    steps = int(ep["l"][i])
    last.steps = steps - sum(v.steps for v in path[:-1])
    return EpisodeResult(
        stage=stage,
        cleared=path[0].cleared,
        x_max=path[0].x_max,
        steps=steps,
        reason=reason,
        ret=float(ep["r"][i]),
        stages_cleared=int(ep["stages_cleared"][i]),
        time_left=time_left,
        deaths=sum(v.deaths for v in path),
        path=path,
    )


def summarise(reports: dict[str, StageReport]) -> dict[str, dict]:
    """Per-stage summaries in game order (a whole-game report: one row per stage reached)."""
    if "game" in reports:
        return game_table(reports["game"])
    order = {s: i for i, s in enumerate(STAGES)}
    return {s: reports[s].summary() for s in sorted(reports, key=lambda s: order.get(s, math.inf))}


def game_table(report: StageReport) -> dict[str, dict]:
    """Whole-game runs as per-stage rows: of the runs that reached a stage, how many cleared it,
    how far they got, in how many steps and how much in-game time, and the lives lost there."""
    visits: dict[str, list[StageVisit]] = {}
    for ep in report.episodes:
        for v in ep.path:
            visits.setdefault(v.stage, []).append(v)
    order = {s: i for i, s in enumerate(STAGES)}
    return {s: _visit_row(visits[s]) for s in sorted(visits, key=lambda s: order.get(s, math.inf))}


def game_runs(report: StageReport) -> list[dict]:
    """Each whole-game run: the stages cleared in sequence and where it ended."""
    return [
        {
            "cleared": [v.stage for v in ep.path if v.cleared],
            "path": [v.stage for v in ep.path],
            "ended_on": ep.stage,
            "x": ep.path[-1].x_max,
            "progress": ep.path[-1].progress,
            "reason": ep.reason,
            "steps": ep.steps,
            "deaths": ep.deaths,
            "return": ep.ret,
        }
        for ep in report.episodes
    ]
