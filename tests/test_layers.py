"""The redesign's small shared pieces: derived seeds keep their old values (a resumed run draws
what it drew before), the one-process collective is the plain local computation, and the
layers import downward only."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from mario_rl import seeding
from mario_rl.parallel.collective import LOCAL
from mario_rl.rl.stats import RunningMeanStd

SRC = Path(__file__).resolve().parents[1] / "src" / "mario_rl"


def test_derived_seeds_keep_the_values_of_earlier_versions() -> None:
    assert seeding.rank_seed(7, 0) == 7 and seeding.rank_seed(7, 3) == 7 + 3 * 104_729
    assert seeding.collect_seed(7) == 8
    assert seeding.group_seed(8, 0) == 8 and seeding.group_seed(8, 2) == 8 + 2 * 1_000_003
    assert seeding.resume_seed(7, 5) == 7 + 7919 * 5
    assert seeding.worker_seed(7, 3) == 10
    assert seeding.worker_seed(7, 3, base_step=640) == 7 + 7919 * 3 + 640
    assert seeding.EVAL_SEED == 1_000_003


def test_local_collective_is_the_local_computation() -> None:
    x = torch.arange(12, dtype=torch.float32) ** 1.5
    mean, std = LOCAL.mean_std(x)
    assert torch.equal(mean, x.mean()) and torch.equal(std, x.std())
    lo, hi = LOCAL.min_max(x)
    assert torch.equal(lo, x.min()) and torch.equal(hi, x.max())
    assert LOCAL.mean(torch.tensor(0.25)) == 0.25
    a, b = RunningMeanStd(()), RunningMeanStd(())
    LOCAL.update_running_stats(a, x)
    b.update(x)
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    cfg = object()
    assert LOCAL.rank_config(cfg) is cfg and LOCAL.is_main and LOCAL.world_size == 1
    assert LOCAL.agree_stop("why", 1) == ("why", 1)
    assert LOCAL.from_main(lambda: (1, 2)) == (1, 2)


# What each layer may import from the package (TYPE_CHECKING imports are type hints only).
ALLOWED = {
    "rl": set(),
    "io": {"io"},
    "config": {"config", "envs"},
    "models": {"config", "rl"},
    "parallel": {"parallel", "config", "rl", "seeding"},
    "algos": {
        "algos",
        "config",
        "devices",
        "envs",
        "errors",
        "io",
        "models",
        "parallel",
        "rl",
        "seeding",
    },
}


def _runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # type: ignore[assignment]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module
            if node.level:  # relative: resolve against the file's package
                parts = list(path.relative_to(SRC).parent.parts)[
                    : len(path.relative_to(SRC).parent.parts) - node.level + 1
                ]
                mod = ".".join([*parts, mod])
            elif mod.startswith("mario_rl."):
                mod = mod.removeprefix("mario_rl.")
            else:
                continue
            found.add(mod.split(".")[0])
    return found


def test_layers_import_downward_only() -> None:
    for layer, allowed in ALLOWED.items():
        files = (
            [SRC / f"{layer}.py"]
            if (SRC / f"{layer}.py").exists()
            else sorted((SRC / layer).rglob("*.py"))
        )
        for f in files:
            bad = _runtime_imports(f) - allowed - {layer}
            assert not bad, f"{f.relative_to(SRC)} imports {sorted(bad)} (a layer above it)"
