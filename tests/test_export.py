"""`mario-rl export`: a checkpoint's network alone, as shipped under models/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mario_rl.cli import main
from mario_rl.devices import torch_threads
from mario_rl.evaluation.policy import load_policy
from mario_rl.io.checkpoint import load_checkpoint
from tiny_runs import SMALL


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", *SMALL, "--algo", "ppo-rnd", "--total-steps", "64", "--stages", "1-2",
                 "--seed", "3", "--run-dir", str(run)]) == 0  # fmt: skip
    return run / "checkpoints" / "final"


def test_export_keeps_the_network_and_its_records_only(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    assert (
        main(["export", "--checkpoint", str(trained), "--out", str(out), "--note", "a test"]) == 0
    )
    src_tensors, src_meta = load_checkpoint(trained)
    tensors, meta = load_checkpoint(out)
    assert sorted(tensors) == sorted(k for k in src_tensors if k.startswith("model."))
    assert len(tensors) < len(src_tensors)  # the optimizer and RND's networks are left out
    for k, v in tensors.items():
        assert torch.equal(v, src_tensors[k])
    assert meta["optimizer"] is None and meta["note"] == "a test"
    assert meta["global_step"] == src_meta["global_step"] == 64
    assert meta["env_config"] == src_meta["env_config"] and meta["job"] == src_meta["job"]
    # It plays exactly as the original does.
    a, b = load_policy(trained), load_policy(out)
    obs = torch.rand(3, *a.model.spec.obs_shape)
    with torch.no_grad():
        assert torch.equal(a.model(obs)[0], b.model(obs)[0])


def test_an_exported_model_teaches_and_starts_runs(trained: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    assert main(["export", "--checkpoint", str(trained), "--out", str(model)]) == 0
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--algo", "ppo-rnd", "--stages", "1-1,1-2", "--total-steps",
                 "64", "--teachers", f"1-2={model}", "--run-dir", str(run)]) == 0  # fmt: skip
    init = tmp_path / "init"
    assert main(["train", *SMALL, "--algo", "ppo-rnd", "--stages", "1-3", "--total-steps", "64",
                 "--init-from", str(model), "--run-dir", str(init)]) == 0  # fmt: skip


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_export_refuses_bad_input_and_replaces_nothing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    err = _refused(["export", "--checkpoint", str(trained), "--out", str(taken)], capsys)
    assert "already exists" in err and (taken / "keep.txt").read_text() == "mine"
    err = _refused(
        ["export", "--checkpoint", str(trained), "--out", str(tmp_path / "no" / "m")], capsys
    )
    assert "does not exist" in err
    not_ckpt = tmp_path / "notes"
    not_ckpt.mkdir()
    err = _refused(["export", "--checkpoint", str(not_ckpt), "--out", str(tmp_path / "m")], capsys)
    assert str(not_ckpt) in err and not (tmp_path / "m").exists()
