"""Tests for mario_rl.io (checkpoint format, state codec) and run.checkpoints (retention): round trips, atomicity under SIGKILL, refusal of unsafe input."""

from __future__ import annotations

import json
import os
import pickle
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mario_rl.io import checkpoint as ck
from mario_rl.io import files
from mario_rl.io.checkpoint import (
    CheckpointError,
    load_checkpoint,
    prefixed,
    promote_checkpoint,
    save_checkpoint,
    strip_prefix,
)
from mario_rl.io.state_codec import (
    flatten_state,
    load_optimizer_state,
    optimizer_state_tensors,
    unflatten_state,
)
from mario_rl.run import checkpoints as ckpts
from mario_rl.run.checkpoints import (
    clean_checkpoint_dir,
    keep_last,
    latest_checkpoint,
    periodic_name,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "model/w": torch.randn(3, 4, generator=g),
        "model/b16": torch.randn(5, generator=g).to(torch.bfloat16),
        "counts": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "bytes": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
    }


def _meta(step: int = 10) -> dict:
    return {
        "step": step,
        "config": {"lr": 2.5e-4, "stages": ["1-1"]},
        "model_spec": {"arch": "cnn", "n_actions": 7},
    }


def _save(path: Path, step: int = 10) -> Path:
    return save_checkpoint(path, _tensors(), _meta(step))


def _edit_meta(path: Path, fn) -> None:
    meta = json.loads((path / "meta.json").read_text())
    fn(meta)
    (path / "meta.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------------------- round trips


def test_round_trip_exact(tmp_path: Path) -> None:
    out = _save(tmp_path / "c")
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "weights.safetensors"]
    tensors, meta = load_checkpoint(out)
    want = _tensors()
    assert tensors.keys() == want.keys()
    for k, v in want.items():
        assert tensors[k].dtype == v.dtype and torch.equal(tensors[k], v), k
    assert meta["step"] == 10 and meta["config"] == {"lr": 2.5e-4, "stages": ["1-1"]}
    assert meta["checkpoint"]["format_version"] == ck.FORMAT_VERSION
    assert meta["checkpoint"]["tensors"]["model/w"] == {"dtype": "float32", "shape": [3, 4]}
    # Either file also names its checkpoint.
    assert load_checkpoint(out / "meta.json")[1]["step"] == 10


def test_save_handles_shared_storage_and_grad(tmp_path: Path) -> None:
    w = torch.nn.Parameter(torch.randn(4, 4))
    tensors = {"a": w, "tied": w, "view": w.data[1]}  # safetensors alone refuses shared storage
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "c", tensors, {"step": 0}))
    assert torch.equal(loaded["tied"], w.detach()) and torch.equal(loaded["view"], w.detach()[1])


def test_save_validates_meta(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="integer 'step'"):
        save_checkpoint(tmp_path / "c", {}, {"config": {}})
    with pytest.raises(ValueError, match="reserved keys"):
        save_checkpoint(tmp_path / "c", {}, {"step": 1, "checkpoint": {}})
    # Callers keep names like "format"/"version" for their own state formats.
    save_checkpoint(tmp_path / "ok", {}, {"step": 1, "format": "ppo-trainer", "version": 2})
    with pytest.raises(ValueError, match=r"meta.best_x is nan"):
        save_checkpoint(tmp_path / "c", {}, {"step": 1, "best_x": float("nan")})
    with pytest.raises(ValueError, match="torch.Tensor"):
        save_checkpoint(tmp_path / "c", {"x": [1.0]}, {"step": 1})
    assert not (tmp_path / "c").exists()


def test_overwrite_is_atomic_and_refuses_foreign_dirs(tmp_path: Path) -> None:
    best = _save(tmp_path / "best", step=1)
    _save(best, step=2)
    assert load_checkpoint(best)[1]["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no temp/old leftovers
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        _save(foreign)
    assert (foreign / "todo.txt").read_text() == "keep me"


def test_fallback_replace_and_crash_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "exchange", lambda a, b: False)  # platform without renameat2
    best = _save(tmp_path / "best", step=1)
    _save(best, step=2)
    assert load_checkpoint(best)[1]["step"] == 2

    # Crash between the two renames of the fallback: only ".best.old-*" is left.
    real_rename = os.rename
    calls = []

    def rename_then_die(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for a kill between the renames
        real_rename(a, b)

    monkeypatch.setattr(ck.os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        _save(best, step=3)
    monkeypatch.setattr(ck.os, "rename", real_rename)
    with pytest.raises(CheckpointError, match=r"interrupted save left \.best\.old-"):
        load_checkpoint(best)
    actions = clean_checkpoint_dir(tmp_path)
    assert any(a.startswith("restored best") for a in actions)
    assert load_checkpoint(best)[1]["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_failure_while_writing_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    best = _save(tmp_path / "best", step=1)

    def boom(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(files, "write_file_synced", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(best, step=2)
    assert load_checkpoint(best)[1]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


_KILL_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np  # numpy, not torch: the child starts in a fraction of a second
    from mario_rl.io.checkpoint import save_checkpoint
    from mario_rl.run.checkpoints import keep_last, periodic_name
    run = sys.argv[1]
    x = np.zeros(1_000_000, dtype=np.float32)  # 4 MB, so a kill often lands mid-save
    i = 0
    while True:
        i += 1
        x.fill(i)
        save_checkpoint(f"{run}/checkpoints/{periodic_name(i)}", {"x": x}, {"step": i})
        save_checkpoint(f"{run}/checkpoints/best", {"x": x}, {"step": i})
        keep_last(run, 2)
        print(i, flush=True)
    """
)


def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_KILL_CHILD)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run)], stdout=subprocess.PIPE, env=env, text=True
    )
    last = 0
    try:
        deadline = time.monotonic() + 60
        while last < 4:
            assert time.monotonic() < deadline, "child never saved"
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                assert line, f"child exited early with {proc.poll()}"
                last = int(line)
        time.sleep(random.Random(0).uniform(0.0, 0.03))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    for line in proc.stdout.readlines() if not proc.stdout.closed else []:
        last = int(line)
    latest = latest_checkpoint(run)
    assert latest is not None
    tensors, meta = load_checkpoint(latest)
    assert meta["step"] >= last and torch.all(tensors["x"] == meta["step"])
    tensors, meta = load_checkpoint(run / "checkpoints" / "best")
    assert meta["step"] >= last and torch.all(tensors["x"] == meta["step"])
    clean_checkpoint_dir(run)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert all(not n.startswith(".") for n in names), names


# ---------------------------------------------------------------------------- refusals


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_pickle_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(marker)))
    for name in ("evil.pkl", "evil", "evil.safetensors"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CheckpointError, match="refusing|not a checkpoint"):
            load_checkpoint(tmp_path / name)
    # Disguised as the weights of a checkpoint whose meta even matches its sha256.
    disguised = _save(tmp_path / "ckpt")
    (disguised / "weights.safetensors").write_bytes(payload)
    _edit_meta(
        disguised,
        lambda m: m["checkpoint"].update(
            weights_bytes=len(payload),
            weights_sha256=__import__("hashlib").sha256(payload).hexdigest(),
        ),
    )
    with pytest.raises(CheckpointError, match="refusing .*pickle"):
        load_checkpoint(disguised)
    (disguised / "meta.json").write_bytes(payload)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(disguised)
    assert not marker.exists()


def test_torch_save_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch_load(*a, **k):
        raise AssertionError("torch.load must never be called")

    pth = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, pth)
    monkeypatch.setattr(torch, "load", no_torch_load)
    with pytest.raises(CheckpointError, match=r"refusing .*model\.pth.*zip archive"):
        load_checkpoint(pth)
    renamed = tmp_path / "model"
    pth.rename(renamed)
    with pytest.raises(CheckpointError, match="zip archive"):
        load_checkpoint(renamed)
    (tmp_path / "x.pt").write_bytes(b"whatever")
    with pytest.raises(CheckpointError, match=r"refusing .*\.pt file"):
        load_checkpoint(tmp_path / "x.pt")


def test_missing_and_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist; pass a checkpoint directory"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        CheckpointError, match=r"not a checkpoint: missing weights\.safetensors and meta\.json"
    ):
        load_checkpoint(tmp_path / "empty")
    run = tmp_path / "run"
    _save(run / "checkpoints" / periodic_name(5))
    with pytest.raises(CheckpointError, match="latest_checkpoint"):
        load_checkpoint(run)
    c = _save(tmp_path / "c")
    (c / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights.safetensors"):
        load_checkpoint(c)
    (tmp_path / "plain.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint"):
        load_checkpoint(tmp_path / "plain.txt")


def test_truncated_and_corrupt_weights(tmp_path: Path) -> None:
    c = _save(tmp_path / "c")
    w = c / "weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(c)
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    w.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(c)
    # Garbage whose size and hash were recorded: the safetensors parser itself must refuse it.
    junk = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"
    w.write_bytes(junk)
    _edit_meta(
        c,
        lambda m: m["checkpoint"].update(
            weights_bytes=len(junk), weights_sha256=__import__("hashlib").sha256(junk).hexdigest()
        ),
    )
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(c)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"step": 1, "format": ', "not valid JSON"),
        (b"[1, 2]", "JSON list; it must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_bad_meta_json(tmp_path: Path, content: bytes, match: str) -> None:
    c = _save(tmp_path / "c")
    (c / "meta.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(c)


def test_meta_keys_and_version(tmp_path: Path) -> None:
    c = _save(tmp_path / "c")
    _edit_meta(c, lambda m: m["checkpoint"].pop("weights_sha256"))
    with pytest.raises(
        CheckpointError, match=r"lacks required keys \['checkpoint.weights_sha256'\]"
    ):
        load_checkpoint(c)
    c = _save(tmp_path / "c")
    _edit_meta(c, lambda m: m["checkpoint"].update(format_version=99))
    with pytest.raises(CheckpointError, match="format_version 99, this code reads 1; .*upgrade"):
        load_checkpoint(c)
    c = _save(tmp_path / "c")
    _edit_meta(c, lambda m: m["checkpoint"].update(format="something-else"))
    with pytest.raises(
        CheckpointError, match="no 'checkpoint' record of format 'mario-rl-checkpoint'"
    ):
        load_checkpoint(c)
    c = _save(tmp_path / "c")
    _edit_meta(
        c, lambda m: m["checkpoint"].update(tensors={"x": {"dtype": "float32", "shape": "big"}})
    )
    with pytest.raises(CheckpointError, match="'checkpoint.tensors' must map"):
        load_checkpoint(c)


def test_tensor_declarations_must_match(tmp_path: Path) -> None:
    c = _save(tmp_path / "c")
    _edit_meta(c, lambda m: m["checkpoint"]["tensors"].pop("counts"))
    with pytest.raises(CheckpointError, match="present but not declared: counts"):
        load_checkpoint(c)
    c = _save(tmp_path / "c")
    _edit_meta(
        c,
        lambda m: m["checkpoint"]["tensors"].update(
            {"model/extra": {"dtype": "float32", "shape": [1]}}
        ),
    )
    with pytest.raises(CheckpointError, match="declared but missing: model/extra"):
        load_checkpoint(c)
    c = _save(tmp_path / "c")
    _edit_meta(
        c,
        lambda m: m["checkpoint"]["tensors"].update(
            {"model/w": {"dtype": "float32", "shape": [4, 3]}}
        ),
    )
    with pytest.raises(
        CheckpointError,
        match=r"'model/w' is float32\[3, 4\] but meta.json declares float32\[4, 3\]",
    ):
        load_checkpoint(c)
    c = _save(tmp_path / "c")
    _edit_meta(
        c,
        lambda m: m["checkpoint"]["tensors"].update(
            {"model/w": {"dtype": "float16", "shape": [3, 4]}}
        ),
    )
    with pytest.raises(CheckpointError, match="declares float16"):
        load_checkpoint(c)
    # Weights of one checkpoint next to the meta of another.
    other = save_checkpoint(tmp_path / "o", {"model/w": torch.zeros(3, 4)}, {"step": 1})
    (c / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="from another checkpoint"):
        load_checkpoint(c)


# ---------------------------------------------------------------------------- directories


def test_latest_keep_last_and_final(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert latest_checkpoint(run) is None
    for step in (100, 200, 300, 400):
        _save(run / "checkpoints" / periodic_name(step), step)
    _save(run / "checkpoints" / "best", 200)
    assert latest_checkpoint(run) == run / "checkpoints" / periodic_name(400)
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / periodic_name(400)
    removed = keep_last(run, 2)
    assert [p.name for p in removed] == [periodic_name(100), periodic_name(200)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best",
        periodic_name(300),
        periodic_name(400),
    ]
    _save(run / "checkpoints" / "final", 400)
    assert latest_checkpoint(run).name == "final"  # same step: final was written later
    # A broken newest candidate is skipped.
    _save(run / "checkpoints" / periodic_name(500), 500)
    (run / "checkpoints" / periodic_name(500) / "meta.json").write_text("{")
    assert latest_checkpoint(run).name == "final"
    assert keep_last(run, 0) and not ckpts.list_periodic(run)


def test_promote_and_snapshot(tmp_path: Path) -> None:
    src = _save(tmp_path / periodic_name(7), 7)
    best = promote_checkpoint(src, tmp_path / "best", {"best": {"score": [0.5, 1200.0]}})
    tensors, meta = load_checkpoint(best)
    assert meta["best"]["score"] == [0.5, 1200.0] and meta["step"] == 7
    assert (
        os.stat(best / "weights.safetensors").st_ino == os.stat(src / "weights.safetensors").st_ino
    )
    assert "best" not in load_checkpoint(src)[1]
    snap = ck.snapshot_checkpoint(src, tmp_path / ".eval" / "x")
    keep_last(tmp_path, 0)  # retention deletes the source; the snapshot survives
    assert load_checkpoint(snap)[1]["step"] == 7
    with pytest.raises(ValueError, match="strict JSON"):
        promote_checkpoint(snap, tmp_path / "best", {"best": {"score": [float("inf")]}})
    assert load_checkpoint(best)[1]["best"]["score"] == [0.5, 1200.0]


# ---------------------------------------------------------------------------- state helpers


def test_flatten_state_round_trip() -> None:
    t = torch.arange(3)
    obj = {
        "a": (1, 2.5, None, True),
        "b": {0: t, "x": [float("inf"), float("-inf"), "s"]},
        "__tricky__": 2**70,
        "arr": np.arange(4, dtype=np.uint32),
        "npint": np.int64(5),
    }
    tensors, spec = flatten_state(obj, "p/")
    json.dumps(spec, allow_nan=False)
    back = unflatten_state(json.loads(json.dumps(spec)), tensors)
    assert back["a"] == (1, 2.5, None, True)
    assert back["b"][0] is t and back["b"]["x"][:2] == [float("inf"), float("-inf")]
    assert back["__tricky__"] == 2**70
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2, 3]
    assert back["npint"] == 5
    with pytest.raises(CheckpointError, match="does not hold"):
        unflatten_state({"__tensor__": "nope"}, {})


def _train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int, n: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(8, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.95), amsgrad=True),
        lambda p: torch.optim.RMSprop(p, lr=1e-2, alpha=0.9, momentum=0.5, centered=True),
    ],
)
def test_optimizer_round_trip_is_bit_identical(tmp_path: Path, make_opt) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = make_opt(model.parameters())
    _train_steps(model, opt, seed=1, n=3)
    opt_t, opt_spec = optimizer_state_tensors(opt)
    c = save_checkpoint(
        tmp_path / "c",
        {**prefixed(model.state_dict(), "model/"), **opt_t},
        {"step": 3, "optim": opt_spec},
    )

    tensors, meta = load_checkpoint(c)
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model2.load_state_dict(strip_prefix(tensors, "model/"))
    opt2 = make_opt(model2.parameters())
    load_optimizer_state(opt2, tensors, meta["optim"])
    assert opt2.param_groups[0] == {**opt.param_groups[0], "params": opt2.param_groups[0]["params"]}

    _train_steps(model, opt, seed=2, n=2)
    _train_steps(model2, opt2, seed=2, n=2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_restore_keeps_shared_memory_state(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    _train_steps(torch.nn.Sequential(model), opt, seed=0, n=2)
    opt_t, spec = optimizer_state_tensors(opt)
    tensors, meta = load_checkpoint(
        save_checkpoint(tmp_path / "c", opt_t, {"step": 2, "optim": spec})
    )

    model2 = torch.nn.Linear(4, 2)
    shared_opt = torch.optim.Adam(model2.parameters())
    for p in model2.parameters():  # what a shared-memory Adam (A3G) sets up front
        shared_opt.state[p] = {
            "step": torch.zeros(()).share_memory_(),
            "exp_avg": torch.zeros_like(p).share_memory_(),
            "exp_avg_sq": torch.zeros_like(p).share_memory_(),
        }
    before = {(id(p), k): v for p, st in shared_opt.state.items() for k, v in st.items()}
    load_optimizer_state(shared_opt, tensors, meta["optim"])
    for p, st in shared_opt.state.items():
        for k, v in st.items():
            assert v is before[(id(p), k)] and v.is_shared()
    ref = list(opt.state.values())[0]
    got = list(shared_opt.state.values())[0]
    assert torch.equal(ref["exp_avg"], got["exp_avg"]) and torch.equal(ref["step"], got["step"])
