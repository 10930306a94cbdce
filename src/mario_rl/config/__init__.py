"""Typed configuration dataclasses and the preset files shipped with the package.

A preset is a TOML file in ``presets/`` with optional tables ``[env]``, ``[reward]``, ``[ppo]``,
``[a3g]`` and ``[run]``, and per-stage overrides ``[stage."W-S"]`` (algorithm fields) that apply
when training on that one stage. Values are applied over the defaults; flags given on the
command line are applied over the preset.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

from .run import RunConfig

SECTIONS = ("env", "reward", "ppo", "a3g", "run")


def _preset_files() -> dict[str, Any]:
    root = resources.files(__package__) / "presets"
    return {p.name.removesuffix(".toml"): p for p in root.iterdir() if p.name.endswith(".toml")}


def list_presets() -> dict[str, str]:
    """Preset name → its one-line description, sorted by name."""
    out = {}
    for name, path in sorted(_preset_files().items()):
        out[name] = tomllib.loads(path.read_text()).get("description", "")
    return out


def load_preset(name: str) -> dict[str, Any]:
    """The parsed preset; ValueError naming the available ones if there is none of that name."""
    files = _preset_files()
    if name not in files:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(files))}")
    data = tomllib.loads(files[name].read_text())
    unknown = set(data) - {*SECTIONS, "stage", "description"}
    if unknown:
        raise ValueError(f"preset {name!r} has unknown tables {sorted(unknown)}")
    return data


def preset_sections(name: str, stages: list[str], algo_section: str = "ppo") -> dict[str, dict]:
    """Values per section for training on ``stages``, per-stage overrides merged in."""
    data = load_preset(name)
    out = {s: dict(data.get(s, {})) for s in SECTIONS}
    per_stage = data.get("stage", {})
    if per_stage:
        if len(stages) != 1 or stages[0] not in per_stage:
            have = ", ".join(per_stage)
            raise ValueError(
                f"preset {name!r} is per stage: train one of its stages with --stages (it has {have})"
            )
        out[algo_section].update(per_stage[stages[0]])
    return out


__all__ = ["SECTIONS", "RunConfig", "list_presets", "load_preset", "preset_sections"]
