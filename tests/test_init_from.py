"""--init-from: a new run starts from another checkpoint's network weights (fine-tuning), and
every checkpoint that cannot be used that way is refused in one line before a file is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mario_rl.cli import main
from mario_rl.io.checkpoint import load_checkpoint

TINY = [
    "--envs", "2", "--workers", "1", "--rollout-steps", "32", "--minibatch-size", "32",
    "--epochs", "1", "--total-steps", "64", "--eval-every", "0",
]  # fmt: skip


def model_tensors(path: Path) -> dict:
    tensors, _ = load_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("init") / "source"
    assert main(["train", *TINY, "--seed", "1", "--run-dir", str(run)]) == 0
    return run / "checkpoints" / "final"


def test_a_new_run_starts_from_the_given_weights(source: Path, tmp_path: Path) -> None:
    start = model_tensors(source)
    run = tmp_path / "tuned"
    # Another seed than the source's: only the weights can make the two networks alike.
    assert main(["train", *TINY, "--seed", "2", "--stages", "1-2", "--init-from", str(source),
                 "--run-dir", str(run)]) == 0  # fmt: skip
    tuned = model_tensors(run / "checkpoints" / "final")
    fresh_run = tmp_path / "fresh"
    assert (
        main(["train", *TINY, "--seed", "2", "--stages", "1-2", "--run-dir", str(fresh_run)]) == 0
    )
    fresh = model_tensors(fresh_run / "checkpoints" / "final")
    # Two updates at lr 2.5e-4 with clipped gradients move a weight by ~1e-3 at most; a network
    # initialised on its own differs from the source by far more.
    assert max((tuned[k] - start[k]).abs().max().item() for k in start) < 0.01
    assert max((fresh[k] - start[k]).abs().max().item() for k in start) > 0.05
    # Only the weights come along: counters start at zero, and the record says where from.
    _, meta = load_checkpoint(run / "checkpoints" / "final")
    assert meta["global_step"] == 64
    assert json.loads((run / "config.json").read_text())["run"]["init_from"] == str(source)


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--size", "84"], "obs_shape"),
        (["--algo", "ppo-lstm"], "recurrent"),
        (["--actions", "simple"], "n_actions"),
        (["--algo", "a3g", "--total-steps", "64", "--eval-every", "0"], "recurrent"),
    ],
)
def test_a_network_that_does_not_fit_is_refused_before_any_file(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expect: str
) -> None:
    run = tmp_path / "run"
    base = [] if "a3g" in flags else TINY  # A3G refuses the PPO options
    code = main(["train", *base, *flags, "--init-from", str(source), "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--init-from" in err and expect in err and "--network" in err
    assert not run.exists()


def test_init_from_refuses_files_that_are_not_checkpoints_and_resumes(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    for bad in (str(tmp_path / "missing"), str(pickle)):
        code = main(["train", *TINY, "--init-from", bad, "--run-dir", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert not (tmp_path / "r").exists()
    # A resumed run continues from its own checkpoint: a new --init-from is refused, unchanged.
    run = source.parent.parent
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    code = main(["train", *TINY, "--init-from", str(source), "--run-dir", str(run), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--init-from only starts a new run" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
