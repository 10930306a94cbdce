"""Kickstarting (--teachers): every rollout sample knows its stage, teachers label their stages'
samples, the KL term pulls the model toward them, and every teacher that cannot teach the run is
refused in one line before a file is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mario_rl.algos.ppo_family import make_ppo
from mario_rl.algos.teachers import Teachers, load_teachers, teacher_kl
from mario_rl.cli import main
from mario_rl.config.ppo import PPOConfig
from mario_rl.devices import torch_threads
from mario_rl.envs import STAGES, EnvConfig, MarioVectorEnv
from mario_rl.envs.core import read_stage_mark
from mario_rl.io.checkpoint import load_checkpoint
from mario_rl.models import ActorCritic, ModelSpec
from tiny_runs import SMALL


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", *SMALL, "--total-steps", "64", "--stages", "1-1", "--seed", "5",
                 "--run-dir", str(run)]) == 0  # fmt: skip
    return run / "checkpoints" / "final"


@pytest.fixture(scope="module")
def sharp(teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher with a strong preference for action 2 (a fresh net is near-uniform, and so
    is a 64-step one: too close to any other fresh net to show a pull toward it)."""
    from mario_rl.io.checkpoint import save_checkpoint

    tensors, meta = load_checkpoint(teacher)
    bias = tensors["model.actor.bias"].clone()
    bias[:] = -2.0
    bias[2] = 3.0
    tensors["model.actor.bias"] = bias
    meta = {k: v for k, v in meta.items() if k != "checkpoint"}
    return save_checkpoint(tmp_path_factory.mktemp("sharp") / "ck", tensors, meta)


def tiny_ppo(env: MarioVectorEnv, **kw) -> PPOConfig:
    base = dict(num_envs=env.num_envs, rollout_steps=16, minibatch_size=32, epochs=2,
                total_steps=10_000, seed=3, torch_threads=1)  # fmt: skip
    return PPOConfig(**(base | kw))


def test_rollout_samples_carry_the_stage_their_observation_shows() -> None:
    # The stage marker writes the stage into each frame: the recorded stage must match it,
    # across episode ends (stall_steps 4 ends episodes within the rollout) and two env groups.
    cfg = EnvConfig(stages="1-1,2-1,4-2", size=36, stage_marker=True, stall_steps=4)
    env = MarioVectorEnv(cfg, 4, 2, seed=0)
    try:
        ppo = make_ppo(tiny_ppo(env), env)
        try:
            ended = 0
            for _ in range(2):
                ppo.collect()
                ended += len(ppo.episodes)
                buf = ppo.rollout
                assert (buf.stages >= 0).all()
                marks = {
                    (t, n): read_stage_mark(buf.obs[t, n, -1].numpy())
                    for t in range(buf.stages.shape[0])
                    for n in range(buf.stages.shape[1])
                }
                assert all(int(buf.stages[t, n]) == m for (t, n), m in marks.items())
            assert ended > 0 and len({int(s) for s in buf.stages.flatten()}) > 1
        finally:
            ppo.close()
    finally:
        env.close()


def test_the_kl_term() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)
    mask = torch.tensor([True, True, False, True, False, False])
    same = torch.log_softmax(logits.detach(), -1)
    term, mean = teacher_kl(logits, same, mask)
    assert term.item() == pytest.approx(0.0, abs=1e-6) and mean.item() == pytest.approx(0, abs=1e-6)
    other = torch.log_softmax(torch.randn(6, 5), -1)
    term, mean = teacher_kl(logits, other, mask)
    assert term.item() > 0 and term.item() == pytest.approx(mean.item() * 3 / 6, rel=1e-5)
    term.backward()
    assert logits.grad is not None
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).any()
    none, _ = teacher_kl(logits, other, torch.zeros(6, dtype=torch.bool))
    assert none.item() == 0.0


def _kl_to(ppo, teachers: Teachers, stage: str) -> float:
    """Mean KL(teacher || model) over the last rollout's samples of ``stage``."""
    buf = ppo.rollout
    obs = ppo._as_nchw(buf.obs_store.reshape(-1, *buf.obs_store.shape[2:]))
    stages = buf.stages.reshape(-1).long()
    logp, mask = teachers.log_probs(obs, stages)
    mask &= stages == STAGES.index(stage)
    with torch.no_grad():
        logits = ppo.model(obs).logits
    return float(teacher_kl(logits, logp, mask)[1])


@pytest.mark.parametrize("algo", ["ppo", "ppo-rnd"])
def test_learning_with_a_teacher_moves_the_model_toward_it(sharp: Path, algo: str) -> None:
    cfg_env = EnvConfig(stages="1-1,1-2", size=36, actions="right-only")
    kls = {}
    for coef in (0.0, 5.0):
        env = MarioVectorEnv(cfg_env, 4, 1, seed=0)
        try:
            ppo = make_ppo(
                tiny_ppo(env, algo=algo, teachers=f"1-1={sharp}", teacher_coef=coef,
                         lr=1e-3, rnd_init_steps=2),
                env,
            )  # fmt: skip
            teachers = load_teachers(f"1-1={sharp}", cfg_env, (4, 36, 36), 5)
            assert teachers is not None
            ppo.set_teachers(teachers)
            try:
                ppo.collect()
                before = _kl_to(ppo, teachers, "1-1")
                for _ in range(4):
                    m = ppo.learn()
                    ppo.collect()
                kls[coef] = (before, _kl_to(ppo, teachers, "1-1"))
                if coef:
                    assert m["charts/teacher_coef"] == coef and 0 < m["charts/teacher_share"] < 1
                    assert m["losses/teacher_kl"] > 0
            finally:
                ppo.close()
        finally:
            env.close()
    # Same seeds, same start: with the teacher the model ends much closer to it than without.
    assert kls[0.0][0] == pytest.approx(kls[5.0][0], rel=1e-4)
    assert kls[5.0][1] < 0.5 * kls[5.0][0]
    assert kls[5.0][1] < 0.5 * kls[0.0][1]


def test_the_coefficient_decays_over_teacher_steps() -> None:
    ppo = make_ppo(
        PPOConfig(num_envs=2, rollout_steps=16, minibatch_size=32, teacher_coef=2.0,
                  teacher_steps=1000), obs_shape=(4, 36, 36), n_actions=5,
    )  # fmt: skip
    assert ppo.current_teacher_coef() == 2.0
    ppo.global_step = 250
    assert ppo.current_teacher_coef() == pytest.approx(1.5)
    ppo.global_step = 5000
    assert ppo.current_teacher_coef() == 0.0


def test_a_kickstarted_run_end_to_end(teacher: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["train", *SMALL, "--total-steps", "128", "--stages", "1-1,1-2",
                 "--teachers", f"1-1={teacher}", "--teacher-coef", "2", "--run-dir", str(run)])  # fmt: skip
    assert code == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("losses/teacher_kl" in r for r in rows)
    _, meta = load_checkpoint(run / "checkpoints" / "final")
    assert meta["config"]["teachers"] == f"1-1={teacher}" and meta["config"]["teacher_coef"] == 2
    # The student checkpoint holds no teacher weights: it is an ordinary PPO model.
    tensors, _ = load_checkpoint(run / "checkpoints" / "final")
    assert not any(k.startswith("teacher") for k in tensors)


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--stages", "1-2,1-3"], "not one of the run's stages"),
        (["--size", "40"], "cannot teach this run: it sees"),
        (["--actions", "simple"], "action set is 'right-only'"),
        (["--algo", "ppo-lstm"], "--teachers works with --algo ppo or ppo-rnd"),
        (["--teacher-coef", "-1"], "teacher_coef must be >= 0"),
        (["--teachers", "1-1"], "is not STAGE=CHECKPOINT"),
        (["--teachers", "1-1=nowhere/ckpt"], "does not exist"),
    ],
)
def test_a_teacher_that_cannot_teach_is_refused_before_any_file(
    teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list, expect: str
) -> None:
    run = tmp_path / "run"
    args = ["train", *SMALL, "--stages", "1-1,1-2", "--teachers", f"1-1={teacher}", *flags,
            "--run-dir", str(run)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err, err
    assert not run.exists()


def test_a_recurrent_or_pickled_teacher_is_refused(tmp_path: Path) -> None:
    from mario_rl.io.checkpoint import save_checkpoint

    spec = ModelSpec("small", (4, 36, 36), 5, recurrent=True, hidden_size=16)
    model = ActorCritic(spec)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    env = EnvConfig(stages="1-1", size=36, actions="right-only")
    path = save_checkpoint(
        tmp_path / "lstm",
        tensors,
        {"model_spec": spec.to_dict(), "env_config": env.to_dict(), "step": 0},
    )
    with pytest.raises(ValueError, match="recurrent"):
        load_teachers(f"1-1={path}", env, (4, 36, 36), 5)
    pickle = tmp_path / "pickle"
    pickle.mkdir()
    (pickle / "model.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError):
        load_teachers(f"1-1={pickle}", env, (4, 36, 36), 5)


def test_a_resumed_run_may_take_in_new_teachers(teacher: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["train", *SMALL, "--stages", "1-1,1-2", "--run-dir", str(run)]
    assert main([*base, "--total-steps", "64"]) == 0
    assert main([*base, "--resume", "--total-steps", "128", "--teachers", f"1-1={teacher}"]) == 0
    _, meta = load_checkpoint(run / "checkpoints" / "final")
    assert meta["global_step"] == 128 and meta["config"]["teachers"] == f"1-1={teacher}"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "losses/teacher_kl" in r] == [128]  # the resumed leg


def test_a_resumed_run_may_take_in_stages_and_steady_its_pace(
    teacher: Path, tmp_path: Path
) -> None:
    """A leg may add a stage (with its teacher), lower the learning rate, flatten the
    curriculum and take on the jump-unblock rule; a later plain resume keeps what the last leg
    set."""
    run = tmp_path / "run"
    base = ["train", *SMALL, "--curriculum", "--run-dir", str(run)]
    assert main([*base, "--stages", "1-2,1-3", "--total-steps", "64"]) == 0
    resume = ["train", "--run-dir", str(run), "--resume"]
    leg = ["--stages", "1-1,1-2,1-3", "--teachers", f"1-1={teacher}", "--lr", "1e-4"]
    leg += ["--curriculum-floor", "1", "--jump-unblock"]
    assert main([*resume, "--total-steps", "128", *leg]) == 0
    assert main([*resume, "--total-steps", "192"]) == 0
    _, meta = load_checkpoint(run / "checkpoints" / "final")
    assert meta["global_step"] == 192
    cfg = meta["config"]
    assert (cfg["lr"], cfg["curriculum_floor"], cfg["teachers"]) == (1e-4, 1.0, f"1-1={teacher}")
    assert meta["env_config"]["stages"] == "1-1,1-2,1-3" and meta["env_config"]["jump_unblock"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["charts/lr"] for r in rows if "charts/lr" in r][-1] == pytest.approx(1e-4)
    first = json.loads((run / "config.json").read_text())["env"]
    assert first["stages"] == "1-2,1-3" and not first["jump_unblock"]


def test_a_resume_checks_teachers_against_the_runs_own_stages(
    teacher: Path, tmp_path: Path
) -> None:
    """The resume command names only the run directory: a teacher for 1-2 fits the saved run
    (1-2,1-3) even though the command's own default stage is 1-1, and a later plain resume keeps
    the saved teachers."""
    run = tmp_path / "run"
    assert (
        main(["train", *SMALL, "--stages", "1-2,1-3", "--run-dir", str(run), "--total-steps", "64"])
        == 0
    )
    resume = ["train", "--run-dir", str(run), "--resume"]
    assert main([*resume, "--total-steps", "128", "--teachers", f"1-2={teacher}"]) == 0
    assert main([*resume, "--total-steps", "192"]) == 0
    _, meta = load_checkpoint(run / "checkpoints" / "final")
    assert meta["global_step"] == 192 and meta["config"]["teachers"] == f"1-2={teacher}"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "losses/teacher_kl" in r] == [128, 192]


def test_the_cpu_many_preset_names_teachers_that_can_teach_it(monkeypatch):
    """The preset's teachers are paths in the repository: each exists and fits its runs."""
    from mario_rl.cli import build_parser, train_job
    from mario_rl.envs import ACTION_SETS

    monkeypatch.chdir(Path(__file__).parents[1])
    job = train_job(build_parser().parse_args(["train", "--preset", "cpu-many"]))
    obs = (job.env.frame_stack, job.env.size, job.env.size)
    teachers = load_teachers(job.ppo.teachers, job.env, obs, len(ACTION_SETS[job.env.actions]))
    assert teachers is not None
    assert len(teachers.models) == len(job.env.stages.split(","))


def test_the_cpu_many_preset_is_the_recipe_of_the_shipped_many_stage_model(monkeypatch):
    """models/ppo-many's last leg trained with the preset's settings (the budget and one core's
    threads aside), --jump-unblock included."""
    from mario_rl.cli import build_parser, train_job
    from mario_rl.io.checkpoint import load_checkpoint

    monkeypatch.chdir(Path(__file__).parents[1])
    job = train_job(build_parser().parse_args(["train", "--preset", "cpu-many"]))
    _, meta = load_checkpoint("models/ppo-many")
    skip = {"torch_threads", "total_steps"}
    now = job.ppo.to_dict()
    assert {k: v for k, v in meta["config"].items() if k not in skip} == {
        k: now[k] for k in meta["config"] if k not in skip
    }
    assert meta["env_config"] == job.env.to_dict() and job.env.jump_unblock
