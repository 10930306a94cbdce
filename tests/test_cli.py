"""The command line end to end: one smoke run per command, and bad input refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mario_rl.cli import main
from shipped import assert_env_recipe

TINY = [
    "--envs", "2", "--workers", "2", "--rollout-steps", "32", "--minibatch-size", "32",
    "--epochs", "1", "--total-steps", "128", "--network", "small",
]  # fmt: skip


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mario_rl", *args], capture_output=True, text=True, timeout=timeout
    )


def test_train_smoke_writes_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "run"
    r = run_cli(
        "train",
        *TINY,
        "--eval-every",
        "64",
        "--eval-episodes",
        "1",
        "--checkpoint-every",
        "64",
        "--run-dir",
        str(run),
    )
    assert r.returncode == 0, r.stderr
    assert (run / "checkpoints" / "final" / "weights.safetensors").is_file()
    assert (run / "config.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("charts/SPS" in row for row in rows)
    assert any("eval/flag_rate" in row for row in rows)
    assert any(k.startswith("rewards/progress") for row in rows for k in row)
    # An existing run directory is never overwritten without --resume …
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    r = run_cli("train", *TINY, "--run-dir", str(run))
    assert r.returncode == 2 and "--resume" in r.stderr and r.stderr.count("\n") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    # A resumed run keeps its training settings: a different one is refused, not ignored …
    for changed in (["--gamma", "0.5"], ["--size", "84"], ["--reward-flag", "10"]):
        r = run_cli("train", *TINY, *changed, "--run-dir", str(run), "--resume")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert changed[0] in r.stderr and "new --run-dir" in r.stderr
        # Nothing lost (a resume only tidies away the evaluator's temporary snapshots).
        kept = [n for n in before if not n.startswith(".")]
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == kept
    # … and --resume continues the step count, with this command's threads and run options.
    meta = run / "checkpoints" / "final" / "meta.json"
    first_leg_s = json.loads(meta.read_text())["stats"]["train_seconds"]
    assert first_leg_s > 0
    r = run_cli(
        "train",
        *TINY,
        "--total-steps",
        "256",
        "--torch-threads",
        "1",
        "--workers",
        "1",
        "--eval-every",
        "0",
        "--run-dir",
        str(run),
        "--resume",
    )
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout and "step 128" in r.stdout
    leg = json.loads((run / "config.resume-1.json").read_text())
    assert (leg["ppo"]["torch_threads"], leg["workers"], leg["run"]["eval_every"]) == (1, 1, 0)
    assert json.loads((run / "config.json").read_text())["run"]["eval_every"] == 64
    assert not any("eval/flag_rate" in json.loads(line) and json.loads(line)["step"] > 128
                   for line in (run / "metrics.jsonl").read_text().splitlines())  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 256
    # Every update is in the log once, the one at the checkpoint the run resumed from included.
    sps_steps = [r["step"] for r in rows if "charts/SPS" in r]
    assert 128 in sps_steps and sps_steps == sorted(set(sps_steps))
    # Training time adds up over legs (not the time between them): a campaign's hours.
    assert json.loads(meta.read_text())["stats"]["train_seconds"] > first_leg_s
    hours = [r["charts/train_hours"] for r in rows if r["step"] > 128 and "charts/train_hours" in r]
    assert hours and min(hours) * 3600 >= first_leg_s


def test_bench_env_json():
    r = run_cli("bench", "env", "--envs", "2", "--workers", "2", "--seconds", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in (
        "raw_fps",
        "pipeline_fps",
        "steps_per_s",
        "ratio",
        "workers",
        "envs",
        "speedup_vs_one_worker",
        "grouped_speedup_vs_one_worker",
        "raw_speedup",
    ):
        assert key in out
    assert out["raw_fps"] > 0 and out["pipeline_fps"] > 0 and out["workers"] == 2
    assert out["grouped_fps"] > 0 and out["raw_fps_one_worker"] > 0


def test_presets_lists_the_shipped_files(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "lstm-seed" in out and "ppo-seed" in out
    assert "cpu-lstm" in out and "cpu-rnd" in out and "cpu-many" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--stages", "9-1"], "1-1 … 8-4"),
        (["train", "--stages", "1-1,"], "expected"),
        (["train", "--algo", "dqn"], "invalid choice"),
        (["train", "--preset", "nope"], "available"),
        (["train", "--preset", "lstm-seed", "--stages", "1-3"], "per stage"),
        (["train", "--actions", "jumpy"], "action set"),
        (["train", "--lr", "0"], "lr must be > 0"),
        (["train", "--lr", "fast"], "expects a number"),
        (["train", "--envs", "0"], "positive"),
        (["train", "--envs", "-3"], "positive"),
        (["train", "--total-steps", "many"], "integer"),
        (["train", "--minibatch-size", "300"], "must divide"),
        (["train", "--envs", "2", "--workers", "3", "--minibatch-size", "128"], "cannot exceed"),
        (["train", "--device", "tpu"], "device"),
        (
            ["train", "--run-dir", "x", "--resume", "--stages", "1-1", "--eval-every", "-1"],
            "eval-every",
        ),
        (["bench", "env", "--seconds", "0"], "> 0"),
        (["bench", "env", "--envs", "1", "--workers", "2"], "cannot exceed"),
        (["bench", "learn", "--precisions", "fp16"], "precisions are fp32, bf16 and auto"),
        (["bench", "learn", "--sizes", "84,x"], "sizes >= 8"),
        (["bench", "learn", "--algo", "a3g"], "PPO family"),
        (["bench", "learn", "--sizes", "32", "--epochs", "1"], "too small"),
        (["train", "--size", "20", "--run-dir", "r"], "too small"),
        (["train", "--algo", "a3g", "--size", "20", "--run-dir", "r"], "too small"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mario-rl: error:") and err.count("\n") == 1, err
    assert needle in err
    assert not any(Path(tmp_path).iterdir())  # nothing written


def test_bench_train_json():
    r = run_cli("bench", "train", *TINY, "--seconds", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("train_steps_per_s", "env_steps_per_s", "ratio", "shares"):
        assert key in out
    assert out["train_steps_per_s"] > 0 and out["ratio"] > 0
    assert set(out["shares"]) == {"env", "inference", "learn", "other"}


def test_bench_learn_json_rows_and_ratios():
    r = run_cli(
        "bench", "learn", *TINY, "--torch-threads", "1", "--sizes", "40,36",
        "--precisions", "fp32,bf16", "--repeats", "1", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = out["rows"]
    assert [(w["size"], w["precision"]) for w in rows] == [
        (40, "fp32"), (40, "bf16"), (36, "fp32"), (36, "bf16"),
    ]  # fmt: skip
    assert rows[0]["ratio"] == 1.0 and all(w["learn_samples_per_s"] > 0 for w in rows)
    assert [w["learns_in"] for w in rows[:2]] == ["float32", "bfloat16"]
    assert out["reference"] == "size 40, fp32" and out["command"].startswith("mario-rl bench learn")


def test_eval_writes_table_json_and_csv(tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", *TINY, "--eval-every", "0", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    ck = run / "checkpoints" / "final"
    r = run_cli(
        "eval",
        "--checkpoint",
        str(ck),
        "--episodes",
        "2",
        "--json",
        str(tmp_path / "e.json"),
        "--csv",
        str(tmp_path / "e.csv"),
    )
    assert r.returncode == 0, r.stderr
    assert "clear" in r.stdout and "1-1" in r.stdout
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["episodes"] == 2 and set(doc["stages"]) == {"1-1"}
    row = doc["stages"]["1-1"]
    for key in ("clear_rate", "mean_x", "max_x", "deaths", "mean_steps_to_flag"):
        assert key in row
    assert row["episodes"] == 2 and 0 <= row["clear_rate"] <= 1
    lines = (tmp_path / "e.csv").read_text().splitlines()
    assert lines[0].startswith("stage,episodes,clear_rate") and lines[1].startswith("1-1,2,")
    r = run_cli("eval", "--checkpoint", str(ck), "--episodes", "1", "--json", "-")
    assert r.returncode == 0 and json.loads(r.stdout)["checkpoint"] == str(ck)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "--checkpoint", "does/not/exist"], "does not exist"),
        (["eval", "--checkpoint", "."], "checkpoint"),
        (["eval", "--checkpoint", "x", "--episodes", "0"], "> 0"),
        (["eval", "--checkpoint", "x", "--noop-max", "-1"], ">= 0"),
    ],
)
def test_eval_bad_input(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mario-rl: error:") and err.count("\n") == 1 and needle in err, err


def test_eval_refuses_a_pickle(tmp_path, capsys):
    import pickle

    evil = tmp_path / "model.pth"
    marker = tmp_path / "pwned"
    evil.write_bytes(pickle.dumps(_Boom(str(marker))))
    assert main(["eval", "--checkpoint", str(evil)]) == 2
    assert not marker.exists()
    assert "mario-rl: error:" in capsys.readouterr().err


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_every_preset_loads_and_validates():
    from mario_rl.cli import build_parser, train_job
    from mario_rl.config import list_presets, load_preset

    for name in list_presets():
        preset = load_preset(name)
        # A per-stage table needs one of its stages; otherwise the preset's own (a curriculum
        # preset needs its set of stages).
        own = preset.get("env", {}).get("stages", "1-1")
        stages = next(iter(preset.get("stage", {own: {}})))
        ns = build_parser().parse_args(["train", "--preset", name, "--stages", stages])
        job = train_job(ns)
        (job.a3g if job.algo == "a3g" else job.ppo).validate()
        job.env.validate()
        assert job.env.stages == stages


def test_plain_train_defaults_to_the_cpu_preset_and_flags_still_win():
    from mario_rl.cli import DEFAULT_PPO_PRESET, build_parser, train_job
    from mario_rl.config import load_preset

    preset = load_preset(DEFAULT_PPO_PRESET)
    job = train_job(build_parser().parse_args(["train"]))
    assert job.env.actions == preset["env"]["actions"]
    assert job.ppo.rollout_steps == preset["ppo"]["rollout_steps"]
    # It evaluates while it trains and stops once the stage is cleared.
    assert job.run.stop_at_clear_rate == 0.8 and job.run.eval_every > 0
    assert job.run.stop_at_clear_rate == preset["run"]["stop_at_clear_rate"]
    job = train_job(build_parser().parse_args(["train", "--actions", "simple", "--epochs", "3"]))
    assert (job.env.actions, job.ppo.epochs) == ("simple", 3)
    # Other algorithms keep their own defaults.
    job = train_job(build_parser().parse_args(["train", "--algo", "ppo-lstm"]))
    assert job.env.actions == "simple"


def _cloned(stage: str) -> list[str]:
    """The flags of a model cloned from its stage's committed demo (models/ppo-1-3, ppo-2-1, ...)."""
    flags = f"--stages {stage} --demos demos/{stage}.json --demo-starts 0.5 --demo-bc 1"
    return (flags + " --stop-at-clear-rate 0.9").split()


@pytest.mark.parametrize(
    ("preset", "model", "extra"),
    [
        ("cpu-1-1", "ppo-1-1-small", []),
        ("cpu-lstm", "ppo-lstm-1-1", []),
        ("cpu-lstm", "ppo-lstm-1-4", ["--stages", "1-4", "--no-jump-repress"]),
        ("cpu-rnd", "ppo-rnd-1-1", []),
        ("cpu-1-1", "ppo-1-2", ["--stages", "1-2"]),
        ("cpu-1-1", "ppo-1-4", ["--stages", "1-4"]),
        ("cpu-1-1", "ppo-4-1", ["--stages", "4-1"]),
        ("cpu-1-1", "ppo-6-1", ["--stages", "6-1"]),
        ("cpu-1-1", "ppo-1-3", _cloned("1-3")),
        ("cpu-1-1", "ppo-2-1", _cloned("2-1")),
        ("cpu-1-1", "ppo-3-2", _cloned("3-2")),
        ("cpu-1-1", "ppo-4-2", _cloned("4-2")),
    ],
)
def test_cpu_presets_are_the_recipes_of_the_shipped_models(preset, model, extra):
    """The shipped models were trained with flags on top of cpu-1-1 (ppo-lstm-1-1 with
    cpu-lstm); the presets hold the same settings (one core's --torch-threads 1 and the budget
    aside)."""
    from mario_rl.cli import build_parser, train_job
    from mario_rl.io.checkpoint import load_checkpoint

    job = train_job(build_parser().parse_args(["train", "--preset", preset, *extra]))
    _, meta = load_checkpoint(Path(__file__).parents[1] / "models" / model)
    assert meta["optimizer"] is None  # weights only
    skip = {"torch_threads", "total_steps"}
    now = job.ppo.to_dict()
    assert {k: v for k, v in meta["config"].items() if k not in skip} == {
        k: now[k] for k in meta["config"] if k not in skip
    }
    # Options added after the models were trained stay off in the presets.
    assert not job.ppo.curriculum and set(now) - set(meta["config"]) <= {
        "curriculum",
        "curriculum_floor",
        "curriculum_decay",
        "curriculum_frontier",
        "curriculum_master",
        "teachers",
        "teacher_coef",
        "teacher_steps",
        "demo_bc",
        "demo_bc_batch",
        "demo_bc_steps",
        "ema_decay",
    }
    assert not job.ppo.ema_decay
    if "demo_bc" not in meta["config"]:
        assert not job.ppo.demo_bc
    assert_env_recipe(job.env.to_dict(), meta["env_config"])
    # A resumed leg may set its own run options (ppo-lstm-1-1's second leg stopped at 19 of 20
    # episodes to pick a checkpoint that clears reliably); the first leg ran the preset's.
    if not meta["job"]["run"]["resume"]:
        assert meta["job"]["run"]["stop_at_clear_rate"] == job.run.stop_at_clear_rate
