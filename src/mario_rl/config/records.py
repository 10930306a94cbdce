"""Config dataclasses from JSON records (config.json, checkpoints, presets): one ``from_dict`` for
every config, refusing unknown keys and reading the old names of renamed knobs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

__all__ = ["NETWORKS", "RENAMED", "from_dict"]

NETWORKS = ("nature", "small", "impala")
"""Encoders a config may name (mario_rl.models builds each)."""

RENAMED = {"num_steps": "rollout_steps", "entropy_coef": "ent_coef", "value_coef": "vf_coef"}
"""Old name -> the one name a knob has now (A3G used to spell three PPO knobs its own way).
Records written before the rename still load; the old flags get a hint naming the new one."""


def from_dict[T](
    cls: type[T],
    data: Mapping[str, Any],
    *,
    renamed: Mapping[str, str] | None = None,
    convert: Mapping[str, Callable[[Any], Any]] | None = None,
) -> T:
    """``cls(**data)`` for a dataclass, with unknown keys refused so that typos never pass silently.

    ``renamed`` maps an old field name to its new one, so that records written before a rename
    (an old run's config.json) still load; ``convert`` turns JSON values back into the field's
    type (lists into tuples, say).
    """
    d = dict(data)
    for old, new in (renamed or {}).items():
        if old in d and new not in d:
            d[new] = d.pop(old)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} fields {unknown}; this version knows {sorted(known)}"
        )
    for name, fn in (convert or {}).items():
        if name in d:
            d[name] = fn(d[name])
    return cls(**d)
