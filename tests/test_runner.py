"""Tests for mario_rl.run: run directories, logging, progress, signals, schedule, eval process.

Top-level imports stay light (no torch): the evaluation child imports this module to find
the functions it runs.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mario_rl.io import checkpoint as ck
from mario_rl.run import checkpoints as ckpts
from mario_rl.run.checkpoints import (
    CheckpointSchedule,
    flag_rate_then_mean_x,
    stages_then_flag_rate,
)
from mario_rl.run.evaluator import EvalProcess
from mario_rl.run.guards import NonFiniteError, SignalGuard, check_finite
from mario_rl.run.logger import Logger, read_metrics
from mario_rl.run.progress import PhaseTimer, Progress
from mario_rl.run.rundir import RunDir, RunDirError

SRC = Path(__file__).resolve().parents[1] / "src"


# ---------------------------------------------------------------------------- run directory


def test_run_dir_create_refuse_resume(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "ppo-1-1"
    run = RunDir(path, config={"lr": 1e-4})
    assert run.checkpoints.is_dir() and run.tb.is_dir()
    assert json.loads(run.config_path.read_text()) == {"lr": 1e-4}

    with pytest.raises(RunDirError) as e:
        RunDir(path, config={"lr": 1e-4})
    assert (
        str(e.value)
        == f"run directory {path} exists; pass --resume to continue it or choose another --run-dir"
    )

    (run.checkpoints / ".ckpt-000000000005.tmp-1-abcd").mkdir()  # left by a crash
    resumed = RunDir(path, resume=True, config={"lr": 5e-5})
    assert resumed.saved_config() == {"lr": 1e-4}
    assert json.loads((path / "config.resume-1.json").read_text()) == {"lr": 5e-5}
    assert not any(p.name.startswith(".") for p in run.checkpoints.iterdir())
    assert resumed.latest_checkpoint() is None
    RunDir(path, resume=True, config={"lr": 1e-4})  # unchanged config: nothing new written
    assert sorted(p.name for p in path.glob("config*")) == ["config.json", "config.resume-1.json"]

    with pytest.raises(RunDirError, match="does not exist; nothing to resume"):
        RunDir(tmp_path / "nope", resume=True)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "file").write_text("x")
    with pytest.raises(RunDirError, match="no config.json"):
        RunDir(tmp_path / "odd", resume=True)
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty")  # an empty directory is fine for a new run


def test_run_dir_default_path(tmp_path: Path) -> None:
    import datetime as dt

    when = dt.datetime(2025, 3, 4, 5, 6, 7)
    assert RunDir.default_path("ppo", "1-1", root="runs", now=when) == Path(
        "runs/ppo-1-1-20250304-050607"
    )
    assert (
        RunDir.default_path("a3g", ["1-1", "1-2"], now=when).name == "a3g-1-1+1-2-20250304-050607"
    )
    assert RunDir.default_path(
        "ppo", [f"{w}-{s}" for w in range(1, 9) for s in range(1, 5)], now=when
    ).name.startswith("ppo-32stages-")
    a = RunDir.open(None, algo="ppo", stages="1-1", root=tmp_path)
    b = RunDir.open("", algo="ppo", stages="1-1", root=tmp_path)
    assert a.path != b.path and a.path.parent == tmp_path
    with pytest.raises(RunDirError, match="--resume needs --run-dir"):
        RunDir.open(None, algo="ppo", stages="1-1", resume=True, root=tmp_path)


# ---------------------------------------------------------------------------- logger


def test_logger_jsonl_and_purge_on_resume(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", config={})
    with Logger(run) as log:
        for step in (100, 200, 300):
            log.log(step, {"SPS": 50.0, "n": np.int64(3), "skipme": "text"}, prefix="charts")
            log.log(step, {"losses/value": float("nan")})
    rows = read_metrics(run.path)
    assert [r["step"] for r in rows] == [100, 100, 200, 200, 300, 300]
    assert (
        rows[0]["charts/SPS"] == 50.0
        and rows[0]["charts/n"] == 3.0
        and "charts/skipme" not in rows[0]
    )
    assert rows[1]["losses/value"] is None
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 400, "charts/SP')  # a crash mid-write
    # TensorBoard reads event files in name order and names carry whole seconds, then a
    # per-process counter that sorts as text ("10" < "9"): a resume in the same second as the
    # first writer could be read first. Real resumes are new processes, later; wait as they do.
    first = max(int(p.name.split(".")[3]) for p in run.tb.glob("events.out.tfevents.*"))
    while int(time.time()) <= first:
        time.sleep(0.05)

    # Resume from the checkpoint at step 200: rows at/after 200 are dropped and TB purges them.
    with Logger(run, purge_step=200) as log:
        log.log(200, {"SPS": 60.0}, prefix="charts")
        log.log(300, {"SPS": 70.0}, prefix="charts")
    rows = read_metrics(run.path)
    assert [(r["step"], r.get("charts/SPS")) for r in rows if "charts/SPS" in r] == [
        (100, 50.0),
        (200, 60.0),
        (300, 70.0),
    ]
    assert run.metrics_path.read_text().endswith("\n")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.tb))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("charts/SPS")] == [
        (100, 50.0),
        (200, 60.0),
        (300, 70.0),
    ]


# ---------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_phase_timer() -> None:
    clock = FakeClock()
    timer = PhaseTimer(clock)
    with timer("env"):
        clock.t += 3
    with timer("learn"):
        clock.t += 1
    with pytest.raises(ZeroDivisionError), timer("env"):
        clock.t += 2
        raise ZeroDivisionError
    assert timer.shares() == {"env": 5 / 6, "learn": 1 / 6}


def test_progress_plain_lines() -> None:
    clock, out = FakeClock(), io.StringIO()
    timer = PhaseTimer(clock)
    timer.add("env", 3.0)
    timer.add("learn", 1.0)
    prog = Progress(
        10_000,
        start_step=1000,
        timer=timer,
        title="ppo 1-1",
        stream=out,
        log_every_s=30,
        clock=clock,
    )
    assert not prog.interactive  # a StringIO is not a terminal
    for i in range(1, 7):
        clock.t += 10
        prog.update(1000 + 1000 * i, best_x=1234.0, flags=2)
    prog.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at t=10 (first), t=40, and close
    assert lines[-1] == (
        "[ppo 1-1] 7,000/10,000 steps (70.0%) | 100 SPS | ETA 30s | best x 1,234 | flags 2 | env 75% learn 25%"
    )
    assert prog.sps == pytest.approx(100.0) and prog.eta_s == pytest.approx(30.0)


def test_progress_interactive_renders() -> None:
    out = io.StringIO()
    with Progress(100, stream=out, interactive=True, refresh_s=0) as prog:
        prog.update(50, best_x=10, flags=0)
    assert "50/100 steps" in out.getvalue()


# ---------------------------------------------------------------------------- signals


def test_signal_guard_in_process() -> None:
    old = signal.getsignal(signal.SIGUSR1)
    with SignalGuard([signal.SIGUSR1], quiet=True, grace_s=0.0) as guard:
        assert not guard.stop_requested
        signal.raise_signal(signal.SIGUSR1)
        assert guard.stop_requested and guard.received == signal.SIGUSR1
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) is old


_SIGNAL_CHILD = textwrap.dedent(
    """
    import sys, time
    from mario_rl.run.guards import SignalGuard
    with SignalGuard() as guard:
        print("ready", flush=True)
        deadline = time.monotonic() + 20
        while not guard.stop_requested and time.monotonic() < deadline:
            time.sleep(0.01)  # one "update"
        print("final checkpoint" if guard.stop_requested else "timeout", guard.received, flush=True)
    sys.exit(0 if guard.stop_requested else 3)
    """
)


def test_signal_guard_sigterm_graceful_exit(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_SIGNAL_CHILD)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.strip() == f"final checkpoint {int(signal.SIGTERM)}"
    assert "SIGTERM received: stopping after this update" in err


# ---------------------------------------------------------------------------- non-finite guard


def test_check_finite() -> None:
    import torch

    check_finite(
        {"loss": 1.0, "n": 3, "flag": True, "name": "x", "t": torch.ones(3), "a": np.zeros(2)},
        step=5,
    )
    for bad in (
        float("nan"),
        float("inf"),
        np.array([1.0, np.nan]),
        torch.tensor(float("nan")),
        np.float32("inf"),
    ):
        with pytest.raises(NonFiniteError, match="non-finite training values at step 7: losses/v="):
            check_finite({"ok": 1.0, "losses/v": bad}, step=7)


# ---------------------------------------------------------------------------- schedule


def _state(step: int, tag: str = "ok") -> tuple[dict, dict]:
    return {"w": np.full(3, step, dtype=np.float32)}, {"behaviour": tag}


def test_schedule_periodic_final_best(tmp_path: Path) -> None:
    sched = CheckpointSchedule(tmp_path / "ck", every=100, keep=2)
    calls = []

    def make_state(step: int) -> tuple[dict, dict]:
        calls.append(step)
        return _state(step)

    saved = [
        p.name
        for step in range(0, 501, 30)
        if (p := sched.maybe_save(step, lambda s=step: make_state(s)))
    ]
    assert calls == [120, 210, 300, 420] and saved == [ckpts.periodic_name(s) for s in calls]
    assert [s for s, _ in ckpts.list_periodic(tmp_path / "ck")] == [300, 420]
    assert sched.latest == tmp_path / "ck" / ckpts.periodic_name(420)
    final = sched.save_final(505, *_state(505))
    assert ck.load_checkpoint(final)[1]["step"] == 505

    assert sched.consider_best(sched.latest, {"clear_rate": 0.0, "mean_x": 800.0}, 420)
    assert not sched.consider_best(sched.latest, {"flag_rate": 0.0, "mean_x": 700.0}, 420)
    assert not sched.consider_best(sched.latest, {"flag_rate": float("nan"), "mean_x": 900.0}, 420)
    assert sched.consider_best(
        final, {"flag_rate": 0.2, "mean_x": 100.0, "per_stage": {"1-1": np.float64(0.2)}}, 505
    )
    tensors, meta = ck.load_checkpoint(sched.best_path)
    assert meta["step"] == 505 and meta["best"]["score"] == [0.0, 0.2, 100.0]
    assert meta["best"]["metrics"]["per_stage"] == {"1-1": 0.2}
    # A resumed schedule knows the best so far and where the next periodic save is due.
    again = CheckpointSchedule(tmp_path / "ck", every=100, keep=2, start_step=505)
    assert again.best_score == (0.0, 0.2, 100.0) and not again.due(599) and again.due(600)
    assert flag_rate_then_mean_x({"mean_x": 3}) is None


def test_best_counts_stages_cleared_before_flags(tmp_path: Path) -> None:
    """Over many stages the best checkpoint is the one that clears the most stages; a best
    recorded under the older (flag rate, mean x) key is scored again from its metrics."""
    sched = CheckpointSchedule(tmp_path / "ck", every=100, keep=2)
    final = sched.save_final(100, *_state(100))
    three = {"flag_rate": 0.4, "mean_x": 2000.0, "stages_cleared": 3}
    assert sched.consider_best(final, three, 100)
    assert not sched.consider_best(final, {**three, "flag_rate": 0.55, "stages_cleared": 2}, 200)
    assert sched.consider_best(final, {**three, "flag_rate": 0.3, "stages_cleared": 4}, 300)
    assert stages_then_flag_rate({"flag_rate": 0.5, "mean_x": 9.0}) == (0.0, 0.5, 9.0)
    assert stages_then_flag_rate({"flag_rate": 0.5}) is None
    # An old best (score of two numbers) against the new key: compared by its metrics.
    old = {"best": {"score": [0.9, 3000.0], "metrics": {**three, "flag_rate": 0.9}}}
    ck.promote_checkpoint(final, sched.best_path, old)
    again = CheckpointSchedule(tmp_path / "ck", every=100, keep=2, start_step=300)
    assert again.best_score == (3.0, 0.9, 2000.0)
    assert again.consider_best(final, {**three, "stages_cleared": 4}, 400)


# ---------------------------------------------------------------------------- eval process


def eval_by_behaviour(path: Path, scale: float = 1.0) -> dict:
    """Picklable evaluation stand-in: behaviour chosen by the checkpoint's meta."""
    meta = ck.read_meta(path)
    tag = meta["behaviour"]
    if tag == "raise":
        raise RuntimeError("emulator exploded")
    if tag == "exit":
        os._exit(7)
    if tag == "hang":
        time.sleep(60)
    step = meta["step"]
    return {"flag_rate": step / 1000 * scale, "mean_x": float(step), "episodes": 2}


def _wait_results(ev: EvalProcess, n: int, timeout: float = 20.0) -> list:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} results arrived"
        out += ev.poll()
        time.sleep(0.02)
    return out


def test_eval_process_results_errors_crash_timeout_close(tmp_path: Path) -> None:
    sched = CheckpointSchedule(tmp_path / "ck", every=100, keep=1)
    ev = EvalProcess(
        eval_by_behaviour, kwargs={"scale": 2.0}, schedule=sched, timeout_s=1.0, max_restarts=1
    )
    p100 = sched.save(100, *_state(100))
    ev.submit(p100, 100)
    sched.save(200, *_state(200))  # retention deletes ckpt-100 while it is evaluated
    assert not p100.exists()
    (r,) = _wait_results(ev, 1)
    assert (
        r.ok and r.step == 100 and r.metrics == {"flag_rate": 0.2, "mean_x": 100.0, "episodes": 2}
    )
    assert r.is_best and ck.read_meta(sched.best_path)["best"]["score"] == [0.0, 0.2, 100.0]

    ev.submit(sched.save(300, *_state(300, "raise")), 300)
    (r,) = _wait_results(ev, 1)
    assert (
        r.error == "evaluation raised RuntimeError: emulator exploded"
        and "Traceback" in r.traceback
    )

    ev.submit(sched.save(400, *_state(400, "hang")), 400)
    ev.submit(sched.save(500, *_state(500)), 500)  # waits behind the hung one
    ev.submit(sched.save(600, *_state(600)), 600)  # replaces 500: only the newest waits
    (r,) = _wait_results(ev, 1)
    assert r.error.startswith(
        "evaluation of ckpt-000000000400 at step 400 exceeded 1s and was stopped"
    )
    (r,) = _wait_results(ev, 1)  # a fresh child takes over
    assert r.ok and r.step == 600 and r.is_best and sched.best_score == (0.0, 1.2, 600.0)

    ev.submit(sched.save(700, *_state(700, "exit")), 700)
    (r,) = _wait_results(ev, 1)
    assert r.error.startswith(
        "evaluation process died (exit code 7) while evaluating ckpt-000000000700"
    )
    assert "evaluation disabled after 2 failures" in r.error
    assert not ev.busy and ev.submit(sched.save(800, *_state(800)), 800) is False
    ev.close()
    assert not any((tmp_path / "ck" / ".eval").iterdir())


def test_eval_process_close_stops_a_hung_child(tmp_path: Path) -> None:
    sched = CheckpointSchedule(tmp_path / "ck", every=100, keep=3)
    with EvalProcess(eval_by_behaviour) as ev:
        ev.submit(sched.save(100, *_state(100, "hang")), 100)
        deadline = time.monotonic() + 20
        while not ev._running.confirmed:  # the child is inside fn, sleeping
            assert time.monotonic() < deadline
            assert ev.poll() == []
            time.sleep(0.02)
        pid = ev._proc.pid
        start = time.monotonic()
        ev.close(timeout_s=2.0)
        assert time.monotonic() - start < 2.0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_signal_guard_duplicate_delivery_is_one_request_and_a_later_one_aborts() -> None:
    with SignalGuard(quiet=True, grace_s=0.5) as guard:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C, forwarded again by `uv run`
        assert guard.stop_requested
        time.sleep(0.6)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)


def test_training_evaluations_can_sample():
    from mario_rl.config.run import RunConfig
    from mario_rl.run.loop import eval_kwargs

    assert eval_kwargs("1-1", RunConfig())["sample"] is False
    assert eval_kwargs("1-1", RunConfig(eval_sample=True))["sample"] is True


def test_clearing_evaluation_stops_and_names_the_best_checkpoint(tmp_path: Path) -> None:
    from mario_rl.config.run import RunConfig
    from mario_rl.run.evaluator import EvalResult
    from mario_rl.run.loop import _Evaluations

    sched = CheckpointSchedule(tmp_path / "ck", every=100, keep=2)
    rows: list = []
    log = type("Log", (), {"log": lambda self, step, row: rows.append((step, row))})()
    out = io.StringIO()
    rc = RunConfig(eval_every=100, stop_at_clear_rate=0.8)
    evals = _Evaluations(None, sched, rc, 0, log, out)  # type: ignore[arg-type]

    def result(step: int, rate: float) -> EvalResult:
        path = sched.save(step, *_state(step))
        best = sched.consider_best(path, {"flag_rate": rate, "mean_x": 3000.0}, step)
        return EvalResult(step, path, {"flag_rate": rate, "mean_x": 3000.0}, is_best=best)

    assert evals._handle([result(100, 0.7)]) is None and evals.last == "70% @ 100"
    assert evals._handle([result(200, 0.9)]) == "stage cleared"
    said = evals.cleared or ""
    assert said.startswith("cleared: the evaluation of step 200 reached the flag in 90%")
    named = Path(said.split("best checkpoint ")[1].split(" ")[0])
    assert named == sched.best_path and named.exists()  # every path printed exists
    assert ck.read_meta(named)["step"] == 200
    assert [s for s, _ in rows] == [100, 200]
    # Without a target, a clear is logged and training goes on.
    assert _Evaluations(None, sched, RunConfig(), 0, log, out)._handle([result(300, 1.0)]) is None  # type: ignore[arg-type]


def test_progress_eta_is_a_bound_when_a_clear_can_stop_the_run() -> None:
    clock = type("C", (), {"t": 0.0, "__call__": lambda self: self.t})()
    out = io.StringIO()
    prog = Progress(1000, stream=out, interactive=False, clock=clock, eta_is_bound=True)
    clock.t = 10
    prog.update(500, eval="80% @ 500")
    assert "ETA <= 10s" in prog.line() and "eval 80% @ 500" in prog.line()


def test_episode_metrics_average_the_stages_cleared_per_episode() -> None:
    from mario_rl.rl.stats import episode_metrics

    eps = [
        {"r": 3.0, "l": 10, "x_max": 900, "flag": True, "stages_cleared": 2},
        {"r": 1.0, "l": 6, "x_max": 300, "flag": False, "stages_cleared": 0},
    ]
    m = episode_metrics(eps, [])
    assert m["charts/stages_cleared"] == 1.0 and m["charts/flag_rate"] == 0.5
    assert m["charts/episodes"] == 2.0 and m["charts/x_max"] == 600.0
