"""Issue 7's matrix, end to end: bad input to every command, stop signals for every algorithm,
SIGKILL mid-save, dying/raising env workers and A3G workers, NaN losses, hostile checkpoints.

docs/reliability.md lists what is tried here; keep the two in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from checkpoints import fresh_checkpoint
from mario_rl.algos.a3g import A3G
from mario_rl.algos.ppo import PPO
from mario_rl.algos.ppo_family import make_ppo
from mario_rl.cli import main
from mario_rl.config import RunConfig
from mario_rl.config.a3g import A3GConfig
from mario_rl.config.jobs import A3GJob, TrainJob
from mario_rl.config.ppo import PPOConfig
from mario_rl.envs import EnvConfig, action_meanings
from mario_rl.io.checkpoint import load_checkpoint, save_checkpoint
from mario_rl.run import checkpoints as ckpt_mod
from mario_rl.run.checkpoints import latest_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"
HANG_S = 300.0
"""Hang guard: far above what any stop takes on an idle machine (a few seconds), so a loaded
CI machine does not fail it, while a real hang still does."""


# ================================================================ fixtures: a world of inputs


class _Evil:
    """Unpickling this creates the file ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _edit_meta(path: Path, fn) -> Path:
    meta = json.loads((path / "meta.json").read_text())
    fn(meta)
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _tiny_ppo(algo: str = "ppo", network: str = "small") -> PPOConfig:
    return PPOConfig(
        algo=algo, network=network, num_envs=2, rollout_steps=16, minibatch_size=16,
        epochs=1, lstm_hidden=32, bptt_len=8, rnd_init_steps=4, total_steps=10**6,
    )  # fmt: skip


def trainer_checkpoint(
    path: Path, algo: str = "ppo", network: str = "small", actions: str = "simple"
) -> tuple[Path, TrainJob | A3GJob]:
    """A trainer checkpoint (as train() writes it, at step 0) and the job it belongs to."""
    env = EnvConfig(actions=actions)
    if algo == "a3g":
        job: TrainJob | A3GJob = A3GJob(
            env, A3GConfig(network=network, lstm_hidden=32, workers=1, rollout_steps=8), RunConfig()
        )
        tensors, meta = A3G(job.a3g, env).state_dict()
    else:
        job = TrainJob(env, _tiny_ppo(algo, network), RunConfig(), workers=1)
        n = len(action_meanings(actions))
        tensors, meta = make_ppo(job.ppo, obs_shape=(4, 84, 84), n_actions=n).state_dict()
    meta |= {"env_config": env.to_dict(), "job": job.to_dict(), "stats": {}, "step": 0}
    return save_checkpoint(path, tensors, meta), job


def run_dir(path: Path, job: TrainJob | A3GJob, ckpt_kwargs: dict) -> Path:
    """A run directory recorded with ``job`` whose latest checkpoint is made by ``ckpt_kwargs``."""
    (path / "tb").mkdir(parents=True)  # as every run directory has
    (path / "config.json").write_text(json.dumps(job.to_dict()))
    trainer_checkpoint(path / "checkpoints" / "ckpt-000000000000", **ckpt_kwargs)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every file a bad-input case points at; the cases run with it as the working directory."""
    w = tmp_path_factory.mktemp("world")
    ck = fresh_checkpoint(w / "CK")
    weights = (ck / "weights.safetensors").read_bytes()

    t = _copy(ck, w / "TRUNCATED")
    (t / "weights.safetensors").write_bytes(weights[: len(weights) // 2])
    c = _copy(ck, w / "CORRUPT")
    flipped = bytearray(weights)
    flipped[len(flipped) // 2] ^= 0xFF
    (c / "weights.safetensors").write_bytes(bytes(flipped))
    (_copy(ck, w / "BADMETA") / "meta.json").write_bytes(b'{"step": 0, "checkpoint": ')
    (_copy(ck, w / "NOMETA") / "meta.json").unlink()
    (w / "EMPTY").mkdir()
    (w / "FILE").write_text("not json, not a checkpoint")

    evil = pickle.dumps(_Evil(str(w / "PWNED")))
    (w / "evil.pkl").write_bytes(evil)
    disguised = _copy(ck, w / "PICKLE_DIR")
    (disguised / "weights.safetensors").write_bytes(evil)
    _edit_meta(
        disguised,
        lambda m: m["checkpoint"].update(
            weights_bytes=len(evil), weights_sha256=hashlib.sha256(evil).hexdigest()
        ),
    )
    torch.save({"model.w": torch.zeros(2)}, w / "model.pth")

    # Unexpected tensors: declared in meta.json (a consistent but foreign file) or not.
    tensors, meta = load_checkpoint(ck)
    meta = {k: v for k, v in meta.items() if k != "checkpoint"}
    save_checkpoint(w / "EXTRA", {**tensors, "model.evil": torch.ones(3)}, meta)
    und = save_checkpoint(w / "UNDECLARED", {**tensors, "model.evil": torch.ones(3)}, meta)
    _edit_meta(und, lambda m: m["checkpoint"]["tensors"].pop("model.evil"))
    # The model's two halves disagree: 7 outputs, a 12-button action set; another network.
    _edit_meta(_copy(ck, w / "ACTIONS"), lambda m: m["env_config"].update(actions="complex"))
    _edit_meta(_copy(ck, w / "ARCH"), lambda m: m["model_spec"].update(network="nature"))

    # Run directories to --resume: the latest checkpoint does not fit the run's record.
    _, ppo_job = trainer_checkpoint(w / "scratch-ppo")
    shutil.rmtree(w / "scratch-ppo")
    run_dir(w / "RUN_ARCH", ppo_job, {"network": "nature"})
    run_dir(w / "RUN_ACTIONS", ppo_job, {"actions": "complex"})
    run_dir(w / "RUN_LSTM", ppo_job, {"algo": "ppo-lstm"})
    bad = run_dir(w / "RUN_TRUNCATED", ppo_job, {})
    wfile = bad / "checkpoints" / "ckpt-000000000000" / "weights.safetensors"
    wfile.write_bytes(wfile.read_bytes()[:100])
    evil_run = run_dir(w / "RUN_PICKLE", ppo_job, {})
    _edit_meta(
        evil_run / "checkpoints" / "ckpt-000000000000",
        lambda m: m["checkpoint"].update(
            weights_bytes=len(evil), weights_sha256=hashlib.sha256(evil).hexdigest()
        ),
    )
    (evil_run / "checkpoints" / "ckpt-000000000000" / "weights.safetensors").write_bytes(evil)
    _, a3g_job = trainer_checkpoint(w / "scratch-a3g", algo="a3g")
    shutil.rmtree(w / "scratch-a3g")
    run_dir(w / "RUN_A3G_PPOCKPT", a3g_job, {})  # an A3G run holding a PPO checkpoint
    run_dir(w / "RUN_A3G_ARCH", a3g_job, {"algo": "a3g", "network": "nature"})
    extra_run = run_dir(w / "RUN_EXTRA", ppo_job, {})
    t, m = load_checkpoint(extra_run / "checkpoints" / "ckpt-000000000000")
    m = {k: v for k, v in m.items() if k != "checkpoint"}
    save_checkpoint(
        extra_run / "checkpoints" / "ckpt-000000000000", {**t, "model.evil": torch.ones(1)}, m
    )
    (w / "RUN_EMPTY_RESUME").mkdir()  # no config.json: not a run directory
    (w / "EVAL_BAD.json").write_text(json.dumps({"stages": {"1-1": {"clear_rate": None}}}))
    (w / "EVAL_LIST.json").write_text(json.dumps([1, 2]))
    # Demos: the committed 1-3 demo, one found with another action set, one that stops short.
    demo = json.loads((SRC.parent / "demos" / "1-3.json").read_text())
    (w / "D13.json").write_text(json.dumps(demo))
    (w / "D13_COMPLEX.json").write_text(json.dumps(demo | {"actions": "complex"}))
    (w / "D13_SHORT.json").write_text(json.dumps(demo | {"steps": demo["steps"][:100]}))
    (w / "R13-n05.json").write_text(json.dumps(demo))  # a route `explore --cover` would write
    (w / "DEMOS").mkdir()
    (w / "DEMOS" / "1-3.json").write_text(json.dumps(demo))
    return w


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mtime and content hash."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns, digest)
    return out


class _Reached(BaseException):
    """Bad input got as far as real work (BaseException: the CLI must not swallow it)."""


@pytest.fixture
def no_real_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A case that wrongly passes every check fails at once instead of training for hours."""
    from mario_rl import bench
    from mario_rl.envs import demos
    from mario_rl.evaluation import evaluate, media

    def reached(*a, **k):
        raise _Reached("bad input was accepted and real work started")

    monkeypatch.setattr(PPO, "collect", reached)
    monkeypatch.setattr(A3G, "start", reached)
    monkeypatch.setattr(bench, "_pipeline", reached)
    monkeypatch.setattr(bench, "_raw_fps", reached)
    monkeypatch.setattr(evaluate, "evaluate", reached)
    monkeypatch.setattr(media, "record", reached)
    monkeypatch.setattr(demos, "explore", reached)
    monkeypatch.delenv("DISPLAY", raising=False)


# ================================================================ bad input: the table


@dataclass(frozen=True)
class Case:
    argv: str
    """The command line after ``mario-rl`` (split on spaces)."""
    wrong: str
    """Regex the message must match: what is wrong."""
    right: str
    """Regex the message must match: what would be right."""


STAGES_RIGHT = r"1-1 … 8-4"
NO_CUDA_OR_NO_GPU = r"CUDA is not available|does not exist"

CASES: dict[str, list[Case]] = {
    "train": [
        Case("train --stages 9-1", r"unknown stage '9-1'", STAGES_RIGHT),
        Case("train --stages 1-1,", r"unknown stage ''", STAGES_RIGHT),
        Case("train --stages 1-1,1-1", r"listed twice", STAGES_RIGHT),
        Case("train --stages all,game", r"cannot be part of a list", STAGES_RIGHT),
        Case("train --stages 1-1:0", r"bad weight '0'", r"number > 0"),
        Case("train --stages 1-1:x,1-2", r"bad weight 'x'", r"number > 0"),
        Case("train --algo dqn", r"invalid choice: 'dqn'", r"choose from"),
        Case("train --preset nope", r"unknown preset 'nope'", r"available: .*cpu-1-1"),
        Case("train --preset lstm-seed --stages 1-3", r"per stage", r"one of its stages"),
        Case("train --actions jumpy", r"unknown action set 'jumpy'", r"one of right-only"),
        Case("train --progress-cells", r"progress_cells needs progress_starts", r"e\.g\. 0\.5"),
        Case("train --demo-starts 0.5", r"demo_starts needs demos", r"--demos demos/1-3\.json"),
        Case("train --demos D13.json", r"demos need demo_starts > 0", r"--demo-starts 0\.25"),
        Case("train --demo-bc 0.5", r"demo_bc needs demos", r"--demos demos/1-3\.json"),
        Case("train --demo-bc -1", r"got -1\.0", r"finite number >= 0"),
        Case("train --demo-bc-batch 0", r"got 0", r"positive integer"),
        Case("train --demos D13.json --demo-starts 1.5", r"got 1\.5", r"\[0, 1\)"),
        Case("train --demos NOPE.json --demo-starts 0.5", r"no such file", r"mario-rl explore"),
        Case("train --demos FILE --demo-starts 0.5", r"not JSON", r"mario-rl explore"),
        Case("train --demos D13.json --demo-starts 0.5", r"stage 1-3, which this run", r"run's"),
        Case(
            "train --stages 1-3 --demos D13_COMPLEX.json --demo-starts 0.5",
            r"found with actions 'complex' but this run has 'right-only'",
            r"explore again",
        ),
        Case(
            "train --stages 1-3 --demos D13_SHORT.json --demo-starts 0.5",
            r"its 100 steps end at x \d+, short of the flag",
            r"explore",
        ),
        Case(
            "train --stages 1-3 --demos D13.json,D13.json --demo-starts 0.5",
            r"D13.json is listed twice",
            r"give each demo once",
        ),
        Case(
            "train --stages 2-1 --demos DEMOS --demo-starts 0.5",
            r"no demo in DEMOS is of the run's stages \(2-1\)",
            r"mario-rl explore --stage",
        ),
        Case("train --envs 0", r"num_envs .* got 0", r"positive integer"),
        Case("train --envs -3", r"num_envs .* got -3", r"positive integer"),
        Case("train --envs two", r"got 'two'", r"--envs expects an integer"),
        Case("train --total-steps 0", r"total_steps .* got 0", r"positive integer"),
        Case("train --total-steps many", r"got 'many'", r"expects an integer"),
        Case("train --rollout-steps 1.5", r"got '1.5'", r"expects an integer"),
        Case("train --epochs 0", r"epochs .* got 0", r"positive integer"),
        Case("train --minibatch-size 0", r"minibatch_size .* got 0", r"positive integer"),
        Case("train --minibatch-size 300", r"300 must divide .* = 2048", r"e\.g\. one of"),
        Case("train --lr 0", r"got 0", r"lr must be > 0"),
        Case("train --lr -0.0001", r"got -0.0001", r"lr must be > 0"),
        Case("train --lr fast", r"got 'fast'", r"expects a number"),
        Case("train --lr inf", r"got 'inf'", r"finite number"),
        Case("train --ent-coef nan", r"got 'nan'", r"finite number"),
        Case("train --gamma 1.5", r"gamma .* got 1.5", r"in \[0, 1\]"),
        Case("train --workers 0", r"got '0'", r"whole number > 0"),
        Case("train --envs 2 --workers 3 --minibatch-size 128", r"\(3\) cannot exceed", r"--envs"),
        Case("train --collect-threads -1", r"got -1", r"collect_threads must be >= 0"),
        Case("train --device tpu", r"'tpu'", r"'cpu', 'cuda\[:i\]' or 'mps'"),
        Case(
            "train --device cuda:99", r"cuda:99: (" + NO_CUDA_OR_NO_GPU + ")", r"--device cpu|has"
        ),
        Case("train --device cuda:x", r"'cuda:x' is not a torch device", r"cuda:<index>"),
        Case("train --checkpoint-every 0", r"got 0", r"--checkpoint-every must be >= 1"),
        Case("train --keep-checkpoints 0", r"got 0", r"--keep-checkpoints must be >= 1"),
        Case("train --eval-every -1", r"got -1", r"--eval-every must be >= 0"),
        Case("train --stop-at-clear-rate 2", r"got 2", r"in \[0, 1\]"),
        Case("train --run-dir CK", r"run directory CK exists", r"--resume .* another --run-dir"),
        Case("train --run-dir FILE", r"run directory FILE exists", r"another --run-dir"),
        Case("train --run-dir NOPE --resume", r"NOPE does not exist", r"drop --resume"),
        Case("train --resume", r"--resume needs --run-dir", r"naming the run"),
        Case("train --run-dir RUN_EMPTY_RESUME --resume", r"no config.json", r"earlier run"),
        Case("train --run-dir FILE/run", r"cannot create run directory", r"writable --run-dir"),
        Case("train --run-dir RUN_ARCH --resume", r"network: checkpoint has 'nature'", r"needs"),
        Case("train --run-dir RUN_ACTIONS --resume", r"n_actions: checkpoint has 12", r"needs 7"),
        Case("train --run-dir RUN_LSTM --resume", r"algo 'ppo-lstm'", r"this run is 'ppo'"),
        Case("train --run-dir RUN_TRUNCATED --resume", r"truncated", r"another checkpoint"),
        Case("train --run-dir RUN_PICKLE --resume", r"refusing .* pickle", r"arbitrary code"),
        Case("train --run-dir RUN_EXTRA --resume", r"Unexpected key.*evil", r"same settings"),
    ],
    "train ppo-lstm": [
        Case("train --algo ppo-lstm --bptt-len 7", r"bptt_len 7 must divide", r"whole sequences"),
        Case(
            "train --algo ppo-lstm --rollout-steps 32 --bptt-len 32 --minibatch-size 16",
            r"minibatch_size 16",
            r"multiple of bptt_len 32",
        ),
        Case("train --algo ppo-lstm --lstm-hidden 0", r"lstm_hidden .* got 0", r"positive"),
        Case("train --algo ppo-lstm --demo-bc 1", r"not ppo-lstm", r"--algo ppo or ppo-rnd"),
    ],
    "train ppo-rnd": [
        Case("train --algo ppo-rnd --rnd-update-proportion 0", r"got 0", r"in \(0, 1\]"),
        Case("train --algo ppo-rnd --rnd-gamma-int 2", r"rnd_gamma_int .* got 2", r"\[0, 1\]"),
        Case("train --algo ppo-rnd --rnd-init-steps -1", r"got -1", r"must be >= 0"),
    ],
    "train a3g": [
        Case("train --algo a3g --workers 0", r"got '0'", r"whole number > 0"),
        Case("train --algo a3g --rollout-steps 0", r"rollout_steps .* got 0", r"positive integer"),
        Case("train --algo a3g --lr 0", r"got 0", r"lr must be > 0"),
        Case("train --algo a3g --stages 0-1", r"unknown stage '0-1'", STAGES_RIGHT),
        Case("train --algo a3g --gpu-ids 99", NO_CUDA_OR_NO_GPU, r"--gpu-ids -1|this machine"),
        Case("train --algo a3g --gpu-ids x", r"got 'x'", r"-1 \(CPU\) or GPU indices"),
        Case("train --algo a3g --gpu-ids -2", r"got '-2'", r"GPU indices >= 0"),
        Case("train --algo a3g --optimizer sgd", r"got 'sgd'", r"'adam' or 'rmsprop'"),
        Case("train --algo a3g --minibatch-size 64", r"PPO option", r"A3G options"),
        Case("train --algo a3g --num-steps 20", r"--num-steps was renamed", r"use --rollout-steps"),
        Case("train --algo a3g --preset ppo-seed", r"no \[a3g\] table", r"PPO family"),
        Case("train --algo a3g --run-dir CK --workers 1", r"CK exists", r"--resume"),
        Case("train --algo a3g --run-dir RUN_ARCH --resume", r"'ppo' run", r"--algo ppo"),
        Case("train --algo a3g --run-dir RUN_A3G_PPOCKPT --resume", r"not an A3G", r"expected"),
        Case("train --algo a3g --run-dir RUN_A3G_ARCH --resume", r"'nature'", r"needs 'small'"),
    ],
    "eval": [
        Case("eval --checkpoint NOPE", r"NOPE does not exist", r"checkpoint directory"),
        Case("eval --checkpoint EMPTY", r"missing weights.safetensors and meta.json", r"holds"),
        Case("eval --checkpoint NOMETA", r"missing meta.json", r"holds weights"),
        Case("eval --checkpoint TRUNCATED", r"truncated", r"another checkpoint"),
        Case("eval --checkpoint CORRUPT", r"does not match the sha256", r"another one"),
        Case("eval --checkpoint BADMETA", r"not valid JSON", r"use another one"),
        Case("eval --checkpoint FILE", r"is a file, not a checkpoint", r"pass a directory"),
        Case("eval --checkpoint evil.pkl", r"refusing .*evil.pkl.* pickle", r"only checkpoint"),
        Case("eval --checkpoint PICKLE_DIR", r"refusing .* pickle", r"arbitrary code"),
        Case("eval --checkpoint model.pth", r"refusing .*model.pth.*zip", r"only checkpoint"),
        Case("eval --checkpoint EXTRA", r"Unexpected key.*evil", r"saved by mario-rl"),
        Case("eval --checkpoint UNDECLARED", r"not declared: model.evil", r"different"),
        Case("eval --checkpoint ACTIONS", r"7 actions .* 'complex' has 12", r"saved by"),
        Case("eval --checkpoint ARCH", r"do not fit the recorded model", r"saved by"),
        Case("eval --checkpoint RUN_ARCH", r"looks like a run", r"latest_checkpoint"),
        Case("eval --checkpoint CK --episodes 0", r"got '0'", r"whole number > 0"),
        Case("eval --checkpoint CK --noop-max -1", r"got '-1'", r"whole number >= 0"),
        Case("eval --checkpoint CK --stages 9-1", r"unknown stage '9-1'", STAGES_RIGHT),
        Case("eval --checkpoint CK --workers 0", r"got '0'", r"whole number > 0"),
        Case("eval --checkpoint CK --json NODIR/e.json", r"NODIR does not exist", r"--json"),
    ],
    "record": [
        Case("record --checkpoint NOPE --out v", r"NOPE does not exist", r"checkpoint dir"),
        Case("record --checkpoint TRUNCATED --out v", r"truncated", r"another checkpoint"),
        Case("record --checkpoint evil.pkl --out v", r"refusing .* pickle", r"only checkpoint"),
        Case("record --checkpoint ACTIONS --out v", r"7 actions", r"saved by mario-rl"),
        Case("record --checkpoint CK --out FILE", r"FILE is a file", r"pass a directory"),
        Case("record --checkpoint CK --out v --format avi", r"invalid choice: 'avi'", r"gif"),
        Case("record --checkpoint CK --out v --every 0", r"got '0'", r"whole number > 0"),
        Case("record --checkpoint CK --out v --fps 0", r"got '0'", r"finite number > 0"),
        Case("record --checkpoint CK --out v --stages 1-1,1-1", r"twice", STAGES_RIGHT),
        Case("record --checkpoint CK --out v --tile-shrink 3", r"invalid choice: 3", r"1, 2, 4"),
    ],
    "export": [
        Case("export --checkpoint NOPE --out m", r"NOPE does not exist", r"checkpoint directory"),
        Case("export --checkpoint evil.pkl --out m", r"refusing .* pickle", r"only checkpoint"),
        Case("export --checkpoint CORRUPT --out m", r"sha256", r"another one"),
        Case("export --checkpoint ACTIONS --out m", r"7 actions", r"saved by mario-rl"),
        Case("export --checkpoint CK --out CK", r"CK already exists", r"name a new directory"),
        Case("export --checkpoint CK --out NODIR/m", r"NODIR does not exist", r"--out"),
    ],
    "plot": [
        Case("plot NOPE", r"NOPE does not exist", r"run directory .* or an eval JSON"),
        Case("plot EMPTY", r"metrics.jsonl is missing", r"run directory"),
        Case("plot FILE", r"is not JSON", r"eval JSON"),
        Case("plot EVAL_LIST.json", r"no 'stages' table", r"eval JSON"),
        Case("plot EVAL_BAD.json", r"'1-1' has no clear_rate in \[0, 1\]", r"eval JSON"),
        Case("plot EVAL_BAD.json --out FILE", r"FILE is a file", r"pass a directory"),
    ],
    "play": [
        Case("play --checkpoint NOPE", r"NOPE does not exist", r"checkpoint directory"),
        Case("play --checkpoint evil.pkl", r"refusing .* pickle", r"only checkpoint"),
        Case("play --checkpoint CORRUPT", r"sha256", r"another one"),
        Case("play --checkpoint CK --stage 1-1,1-2", r"got '1-1,1-2'", r"one stage"),
        Case("play --checkpoint CK --stage 9-1", r"unknown stage '9-1'", STAGES_RIGHT),
        Case("play --checkpoint CK --scale 0", r"got '0'", r"whole number > 0"),
        Case("play --checkpoint CK --fps -1", r"got '-1'", r"finite number > 0"),
    ],
    "explore": [
        Case("explore --stage 9-1 --out d.json", r"'9-1' is not a stage", STAGES_RIGHT),
        Case("explore --stage 1-3 --out D13.json", r"D13.json already exists", r"a new file"),
        Case("explore --stage 1-3 --out NODIR/d.json", r"NODIR does not exist", r"--out"),
        Case("explore --stage 1-3 --out d.json --budget 0", r"got '0'", r"whole number > 0"),
        Case("explore --stage 1-3 --out d.json --x-bias -1", r"got '-1'", r"number >= 0"),
        Case("explore --stage 1-3 --out d.json --noops -1", r"got '-1'", r"whole number >= 0"),
        Case("explore --stage 1-3 --out d.json --noops 300", r"300 is too many", r"0-255"),
        Case("explore --stage 1-3 --out d.json --preset nope", r"unknown preset", r"available"),
        Case("explore --stage 1-3 --out d.json --actions x", r"unknown action set", r"one of"),
        Case("explore --stage 1-3 --out R13.json --cover", r"R13-n05.json already", r"new --out"),
        Case("explore --stage 1-3 --out d.json --starts 0", r"got '0'", r"whole number > 0"),
        Case("explore --stage 1-3 --out d.json --noops 250 --starts 9", r"past 255", r"at most 6"),
    ],
    "presets": [
        Case("presets extra", r"unrecognized arguments: extra", r"arguments"),
    ],
    "bench env": [
        Case("bench env --envs 0", r"got '0'", r"whole number > 0"),
        Case("bench env --workers x", r"got 'x'", r"whole number > 0"),
        Case("bench env --seconds 0", r"got '0'", r"finite number > 0"),
        Case("bench env --seconds inf", r"got 'inf'", r"finite number > 0"),
        Case("bench env --stages 9-9", r"unknown stage '9-9'", STAGES_RIGHT),
        Case("bench env --actions x", r"unknown action set 'x'", r"one of"),
        Case("bench env --envs 1 --workers 2", r"\(2\) cannot exceed", r"--envs \(1\)"),
    ],
    "bench train": [
        Case("bench train --lr 0", r"got 0", r"lr must be > 0"),
        Case("bench train --minibatch-size 300", r"300 must divide", r"e\.g\. one of"),
        Case("bench train --device cuda:99", NO_CUDA_OR_NO_GPU, r"--device cpu|has"),
        Case("bench train --preset nope", r"unknown preset", r"available"),
        Case("bench train --seconds -1", r"got '-1'", r"finite number > 0"),
        Case("bench train --algo a3g --gpu-ids 99", NO_CUDA_OR_NO_GPU, r"--gpu-ids -1|machine"),
    ],
    "(no command)": [
        Case("fly", r"invalid choice: 'fly'", r"choose from"),
    ],
}
ALL_CASES = [
    pytest.param(case, id=f"{group}: {case.argv}")
    for group, cases in CASES.items()
    for case in cases
]


@pytest.mark.usefixtures("no_real_work")
@pytest.mark.parametrize("case", ALL_CASES)
def test_bad_input_is_refused_in_one_line_exit_2_nothing_changed(
    case: Case, world: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(world)
    before = snapshot(world)
    assert main(case.argv.split(" ")) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    assert err.startswith("mario-rl: error: ") and err.count("\n") == 1, err
    assert re.search(case.wrong, err), f"{err!r} does not say what is wrong ({case.wrong})"
    assert re.search(case.right, err), f"{err!r} does not say what is right ({case.right})"
    assert snapshot(world) == before
    assert not (world / "PWNED").exists()


def test_the_table_covers_every_command() -> None:
    covered = {c.argv.split(" ")[0] for cases in CASES.values() for c in cases}
    covered |= {" ".join(c.argv.split(" ")[:2]) for c in CASES["bench env"] + CASES["bench train"]}
    algos = {g.removeprefix("train ").strip() for g in CASES if g.startswith("train ")}
    commands = {"train", "eval", "record", "export", "plot", "play", "presets", "explore"}
    assert commands | {"bench env", "bench train"} <= covered
    assert algos == {"ppo-lstm", "ppo-rnd", "a3g"}  # and plain ppo under "train"


def test_bad_input_in_a_fresh_process_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, not only main(): exit status 2 and one line on stderr."""
    r = subprocess.run(
        [sys.executable, "-m", "mario_rl", "train", "--lr", "nan"],
        capture_output=True, text=True, cwd=tmp_path, timeout=HANG_S,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "--lr expects a finite number" in r.stderr
    assert not any(tmp_path.iterdir())


# ================================================================ hostile checkpoints


def test_a_pickle_is_never_loaded_by_any_command(
    world: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Each way a pickle can be handed over, to each command; torch.load is never even called."""

    def no_torch_load(*a, **k):
        raise AssertionError("torch.load must never be called on a checkpoint")

    monkeypatch.setattr(torch, "load", no_torch_load)
    monkeypatch.setattr(pickle, "load", no_torch_load)
    monkeypatch.setattr(pickle, "loads", no_torch_load)
    monkeypatch.chdir(world)
    tried = 0
    for source in ("evil.pkl", "PICKLE_DIR", "model.pth"):
        for argv in (
            ["eval", "--checkpoint", source],
            ["record", "--checkpoint", source, "--out", "v"],
            ["play", "--checkpoint", source],
        ):
            assert main(argv) == 2, argv
            assert "refusing" in capsys.readouterr().err
            tried += 1
    assert main(["train", "--run-dir", "RUN_PICKLE", "--resume"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert tried == 9 and not (world / "PWNED").exists()
    # The payload is live: unpickling it really would have created the file.
    pickle._loads((world / "evil.pkl").read_bytes()).close()  # pure-Python loader, unpatched
    assert (world / "PWNED").exists()
    (world / "PWNED").unlink()


def test_paths_in_a_checkpoint_json_are_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A resumed run whose config.json and checkpoint meta point elsewhere writes only into the
    --run-dir it was given; eval of such a checkpoint reads nothing from those paths."""
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    job = TrainJob(EnvConfig(), _tiny_ppo(), RunConfig(run_dir=str(elsewhere)), workers=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(job.to_dict()))
    ck = run / "checkpoints" / "ckpt-000000000000"
    tensors, meta = PPO(job.ppo, obs_shape=(4, 84, 84), n_actions=7).state_dict()
    meta |= {
        "env_config": job.env.to_dict(), "job": job.to_dict(), "stats": {}, "step": 0,
        "run_dir": str(elsewhere), "path": str(elsewhere / "ck"), "checkpoint_dir": str(elsewhere),
    }  # fmt: skip
    save_checkpoint(ck, tensors, meta)
    args = ["train", "--run-dir", str(run), "--resume", "--total-steps", "32", "--eval-every", "0"]
    assert main(args) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "final").is_dir() and not elsewhere.exists()
    from mario_rl.evaluation.policy import load_policy

    assert load_policy(ck).env_config.stages == "1-1" and not elsewhere.exists()


# ================================================================ signals


PPO_TINY = [
    "--envs", "2", "--workers", "1", "--rollout-steps", "16", "--minibatch-size", "16",
    "--epochs", "1", "--lstm-hidden", "32", "--bptt-len", "8", "--rnd-init-steps", "4",
]  # fmt: skip
A3G_TINY = [
    "--workers",
    "1",
    "--rollout-steps",
    "8",
    "--lstm-hidden",
    "32",
    "--log-interval-s",
    "0.2",
]
ENDLESS = ["--total-steps", "1000000000", "--checkpoint-every", "1000000000", "--eval-every", "0"]


def _rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def _train_until_it_learns(args: list[str], run: Path, after_step: int) -> subprocess.Popen:
    """Start `mario-rl train` in its own session; return once it logged an update past
    ``after_step``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mario_rl", "train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 900  # start-up alone takes minutes on a starved CPU
    while not any(r["step"] > after_step and "losses/policy" in r for r in _rows(run)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"training never got going (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen, how: str) -> tuple[str, str, float]:
    """Send the stop signal; (stdout, stderr, seconds until exit). ``ctrl-c`` is SIGINT to the
    whole process group, as a terminal delivers it (workers and the eval child get it too)."""
    t0 = time.monotonic()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"no exit within {HANG_S}s of {how}")
    return out, err, time.monotonic() - t0


@pytest.mark.parametrize("algo", ["ppo", "ppo-lstm", "ppo-rnd", "a3g"])
def test_sigint_then_resume_then_sigterm_keep_every_step(algo: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny = A3G_TINY if algo == "a3g" else PPO_TINY
    args = ["--algo", algo, *tiny, *ENDLESS, "--run-dir", str(run)]
    final = run / "checkpoints" / "final"

    proc = _train_until_it_learns(args, run, after_step=0)
    out, err, took = _stop(proc, "ctrl-c")
    assert proc.returncode == 0, err
    assert "SIGINT received" in err and "stop requested (signal): final checkpoint" in out
    # Every path it prints exists (an earlier version printed one that did not).
    said = out.split("stop requested (signal): final checkpoint ")[1].splitlines()[0]
    assert Path(said) == final and final.is_dir()
    assert Path(out.split("run directory: ")[1].splitlines()[0]) == run
    first = load_checkpoint(final)[1]["step"]
    assert first >= max(r["step"] for r in _rows(run)) > 0
    assert took < HANG_S

    proc = _train_until_it_learns([*args, "--resume"], run, after_step=first)
    out, err, took = _stop(proc, "sigterm")
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err and f"at step {first}" in out
    assert load_checkpoint(final)[1]["step"] > first
    assert took < HANG_S


# ================================================================ SIGKILL in the middle of a save


_SAVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mario_rl.io import files
    from mario_rl.algos.ppo import PPO
    from mario_rl.config.ppo import PPOConfig
    from mario_rl.run.checkpoints import CheckpointSchedule

    run, target = Path(sys.argv[1]), sys.argv[2]
    cfg = PPOConfig(num_envs=2, rollout_steps=16, minibatch_size=16)
    ppo = PPO(cfg, obs_shape=(4, 84, 84), n_actions=7)
    schedule = CheckpointSchedule(run / "checkpoints", every=1, keep=2)
    real_write = files.write_file_synced
    saved = 0

    def write(path, data):
        if saved == 3 and path.name == "meta.json":
            with open(path, "xb") as f:  # half of the file reaches the disk, then the kill
                f.write(data[: len(data) // 2])
                f.flush()
            print("mid-save", flush=True)
            time.sleep(600)
        real_write(path, data)

    files.write_file_synced = write
    for step in (1, 2, 3, 4):
        ppo.global_step = step
        with __import__("torch").no_grad():
            for p in ppo.model.parameters():
                p.fill_(step)
        tensors, meta = ppo.state_dict()
        if target == "final":
            schedule.save_final(step, tensors, meta)
        else:
            schedule.save(step, tensors, meta)
        saved += 1
        print("saved", step, flush=True)
    """
)


@pytest.mark.parametrize("target", ["periodic", "final"])
def test_sigkill_mid_save_keeps_the_previous_checkpoint_resumable(
    target: str, tmp_path: Path
) -> None:
    """Deterministic: the child is killed while the 4th checkpoint's meta.json is half written
    (tests/test_checkpoint.py kills save_checkpoint at random moments)."""
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run), target], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )  # fmt: skip
    lines = []
    try:
        deadline = time.monotonic() + 600
        while "mid-save" not in lines:
            assert time.monotonic() < deadline, f"child never reached the 4th save: {lines}"
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline().strip()
                assert line, f"child exited early ({proc.poll()}): {lines}"
                lines.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(HANG_S)
        proc.stdout.close()
    assert lines == ["saved 1", "saved 2", "saved 3", "mid-save"]
    ckdir = run / "checkpoints"
    leftovers = [p.name for p in ckdir.iterdir() if p.name.startswith(".")]
    assert leftovers, "the kill did not land inside a save"
    latest = latest_checkpoint(run)
    assert latest is not None and latest.name == (
        "final" if target == "final" else "ckpt-" + "3".zfill(12)
    )
    tensors, meta = load_checkpoint(latest)
    assert meta["step"] == 3
    fresh = PPO(
        PPOConfig(num_envs=2, rollout_steps=16, minibatch_size=16),
        obs_shape=(4, 84, 84),
        n_actions=7,
    )
    fresh.load_state_dict(tensors, meta)
    assert fresh.global_step == 3 and all(bool((p == 3).all()) for p in fresh.model.parameters())
    # Resuming tidies what the kill left (RunDir(resume=True) calls this).
    ckpt_mod.clean_checkpoint_dir(run)
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".")]
    assert load_checkpoint(latest)[1]["step"] == 3


# ================================================================ faults


def _train_in_process(argv: list[str]) -> tuple[int, float]:
    t0 = time.monotonic()
    code = main(["train", *argv])
    return code, time.monotonic() - t0


@pytest.mark.parametrize("async_collect", [False, True], ids=["sync", "async-collect"])
def test_an_env_worker_thread_that_raises_stops_training_with_a_clear_message(
    async_collect: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from mario_rl.envs.core import EmulatorGroup

    real_step = EmulatorGroup.step
    pool_steps = 0

    def step(self, actions):
        nonlocal pool_steps
        # Only the env pool's threads: not the main thread, not PPO's collector thread.
        if threading.current_thread().name.startswith("ThreadPoolExecutor"):
            pool_steps += 1
            if pool_steps == 40:  # in the third rollout: two updates are done
                raise RuntimeError("injected env fault")
        return real_step(self, actions)

    monkeypatch.setattr(EmulatorGroup, "step", step)
    run = tmp_path / "run"
    args = [
        "--envs", "2", "--workers", "2", "--rollout-steps", "16", "--minibatch-size", "32",
        "--epochs", "1", "--total-steps", "100000", "--checkpoint-every", "32",
        "--eval-every", "0", "--run-dir", str(run),
        "--async-collect" if async_collect else "--no-async-collect",
    ]  # fmt: skip
    code, took = _train_in_process(args)
    err = capsys.readouterr().err
    assert code == 1 and took < HANG_S
    last = err.strip().splitlines()[-1]
    assert last.startswith("mario-rl: error: an environment worker failed: RuntimeError: "), err
    assert "injected env fault" in last and "final checkpoint" in last
    tensors, meta = load_checkpoint(run / "checkpoints" / "final")
    assert meta["step"] in (32, 64) and all(torch.isfinite(t).all() for t in tensors.values())


def test_nan_loss_stops_ppo_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from mario_rl.algos import ppo as ppo_mod

    real_losses = ppo_mod.ppo_losses
    calls = 0

    def losses(*a, **k):
        nonlocal calls
        calls += 1
        terms = real_losses(*a, **k)
        if calls == 3:  # the third update (one minibatch each)
            terms["policy"] = terms["policy"] * float("nan")
        return terms

    monkeypatch.setattr(ppo_mod, "ppo_losses", losses)
    run = tmp_path / "run"
    args = [*PPO_TINY, "--minibatch-size", "32", "--total-steps", "100000",
            "--checkpoint-every", "32", "--eval-every", "0", "--run-dir", str(run)]  # fmt: skip
    code, took = _train_in_process(args)
    err = capsys.readouterr().err
    assert code == 1 and took < HANG_S
    assert "non-finite training values at step 96" in err and "last good checkpoint" in err
    assert not (run / "checkpoints" / "final").exists()
    latest = latest_checkpoint(run)
    tensors, meta = load_checkpoint(latest)
    assert meta["step"] == 64
    assert all(torch.isfinite(t).all() for t in tensors.values())


def _a3g_with(
    worker: str, run: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str] = ()
) -> tuple[int, float]:
    import faulty_workers
    from mario_rl.algos import a3g as a3g_mod

    monkeypatch.setattr(a3g_mod, "worker_main", getattr(faulty_workers, worker))
    monkeypatch.setenv("MARIO_RL_TEST_ARM_AFTER", str(run))
    args = ["--algo", "a3g", *A3G_TINY, "--total-steps", "1000000", "--eval-every", "0",
            "--checkpoint-every", "16", "--run-dir", str(run), *extra]  # fmt: skip
    return _train_in_process(args)


def test_an_a3g_worker_that_raises_stops_training(tmp_path: Path, monkeypatch, capsys) -> None:
    run = tmp_path / "run"
    code, took = _a3g_with("raising_worker_main", run, monkeypatch)
    err = capsys.readouterr().err
    assert code == 1 and took < HANG_S
    assert "mario-rl: error: A3G worker 0 failed: RuntimeError: injected worker fault" in err
    assert load_checkpoint(run / "checkpoints" / "final")[1]["step"] >= 16


def test_an_a3g_worker_that_dies_stops_training(tmp_path: Path, monkeypatch, capsys) -> None:
    """Two workers, one SIGKILLed (as by the OOM killer): the other must not train on alone."""
    run = tmp_path / "run"
    code, took = _a3g_with("dying_worker_main", run, monkeypatch, ["--workers", "2"])
    err = capsys.readouterr().err
    assert code == 1 and took < HANG_S
    assert "mario-rl: error: A3G worker 0 died (killed by SIGKILL)" in err, err
    assert load_checkpoint(run / "checkpoints" / "final")[1]["step"] >= 16


def test_nan_loss_stops_a3g_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    code, took = _a3g_with("nan_worker_main", run, monkeypatch)
    err = capsys.readouterr().err
    assert code == 1 and took < HANG_S
    assert "A3G worker 0: non-finite loss=nan" in err and "last good checkpoint is kept" in err
    assert not (run / "checkpoints" / "final").exists()
    tensors, meta = load_checkpoint(latest_checkpoint(run))
    assert meta["step"] >= 16
    assert all(torch.isfinite(t).all() for t in tensors.values())
