"""Nested training state <-> (tensors, JSON), exactly, and the optimizer-state codec built on it.

Checkpoints hold only tensors and JSON (:mod:`mario_rl.io.checkpoint`); an optimizer's
``state_dict`` or a numpy generator's state has tuples, int keys and arrays, which this module
tags so that they come back exactly. Nothing here touches files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mario_rl.io.checkpoint import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = ["flatten_state", "load_optimizer_state", "optimizer_state_tensors", "unflatten_state"]

_MAX_EXACT_JSON_INT = 2**53  # larger ints lose precision in many JSON readers


def flatten_state(obj: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tuples, numbers, tensors) into tensors + JSON, exactly.

    Tensors go into the returned dict under names starting with ``prefix``; the JSON side keeps
    the structure, with tags for what plain JSON would lose (tuples, non-string keys,
    non-finite floats, huge ints, numpy arrays). :func:`unflatten_state` inverts it.
    """
    import numpy as np
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def name_for(path: str) -> str:
        name = f"{prefix}{path}"
        n = 1
        while name in tensors:
            n += 1
            name = f"{prefix}{path}#{n}"
        return name

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            name = name_for(path)
            tensors[name] = x
            return {"__tensor__": name}
        if isinstance(x, np.ndarray):
            # Stored widened to int64/float64 where torch lacks the dtype, restored exactly.
            name = name_for(path)
            wide = x.astype(np.int64) if x.dtype.kind in "ui" and x.dtype.itemsize <= 4 else x
            tensors[name] = torch.from_numpy(np.ascontiguousarray(wide).copy())
            return {"__ndarray__": [name, x.dtype.str]}
        if isinstance(x, np.generic):
            x = x.item()
        if x is None or isinstance(x, bool | str):
            return x
        if isinstance(x, int):
            return {"__int__": str(x)} if abs(x) >= _MAX_EXACT_JSON_INT else x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}.{i}") for i, v in enumerate(x)]
        if isinstance(x, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v, f"{path}.{k}" if path else k) for k, v in x.items()}
            return {
                "__dict__": [
                    [enc(k, f"{path}.key"), enc(v, f"{path}.{k}" if path else str(k))]
                    for k, v in x.items()
                ]
            }
        raise TypeError(f"cannot store a {type(x).__name__} at {prefix}{path} in a checkpoint")

    return tensors, enc(obj, "")


def unflatten_state(spec: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Rebuild the object :func:`flatten_state` split; raises CheckpointError on bad references."""
    import numpy as np

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if len(x) == 1:
                ((tag, val),) = x.items()
                if tag == "__tensor__":
                    if not isinstance(val, str) or val not in tensors:
                        raise CheckpointError(
                            f"state refers to tensor {val!r}, which the checkpoint does not hold"
                        )
                    return tensors[val]
                if tag == "__ndarray__":
                    name, dtype = val
                    return dec({"__tensor__": name}).numpy().astype(np.dtype(dtype))
                if tag == "__tuple__":
                    return tuple(dec(v) for v in val)
                if tag == "__float__":
                    return float(val)
                if tag == "__int__":
                    return int(val)
                if tag == "__dict__":
                    return {dec(k): dec(v) for k, v in val}
            return {k: dec(v) for k, v in x.items()}
        return x

    return dec(spec)


def optimizer_state_tensors(
    optimizer: torch.optim.Optimizer, prefix: str = "optim/"
) -> tuple[dict[str, torch.Tensor], Any]:
    """Flatten ``optimizer.state_dict()`` (Adam, RMSprop, shared-memory variants) to tensors + JSON.

    The tensors are contiguous copies: the live state keeps changing with later steps, and
    state of channels-last parameters is not contiguous (safetensors refuses that).
    """
    tensors, spec = flatten_state(optimizer.state_dict(), prefix)
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}, spec


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], spec: Any
) -> None:
    """Restore an optimizer from what :func:`optimizer_state_tensors` produced.

    State tensors are copied in place where the optimizer already holds state of the same
    shape, which keeps shared-memory state (A3G's shared optimizers) shared across processes.
    """
    import torch

    state_dict = unflatten_state(spec, tensors)
    if (
        not isinstance(state_dict, dict)
        or "param_groups" not in state_dict
        or "state" not in state_dict
    ):
        raise CheckpointError(
            "optimizer state in the checkpoint is malformed; expected 'state' and 'param_groups'"
        )
    shared = _shared_state_tensors(optimizer)
    try:
        optimizer.load_state_dict(state_dict)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(
            f"optimizer state does not fit this optimizer ({e}); was it saved for another model?"
        ) from None
    if shared:
        # load_state_dict replaced the tensors; put the values back into the shared ones.
        with torch.no_grad():
            for (param, key), old in shared.items():
                new = optimizer.state[param][key]
                if isinstance(new, torch.Tensor) and new.shape == old.shape:
                    old.copy_(new.to(old.dtype))
                    optimizer.state[param][key] = old


def _shared_state_tensors(optimizer: torch.optim.Optimizer) -> dict[tuple[Any, str], torch.Tensor]:
    import torch

    out = {}
    for param, st in optimizer.state.items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor) and v.is_shared():
                out[(param, key)] = v
    return out
