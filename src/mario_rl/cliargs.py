"""argparse plumbing for the ``mario-rl`` commands: typed config dataclasses as flags (with their
field docstrings as help), value checks, and the one-line :class:`UsageError`.

argparse rather than a CLI framework so that every bad input ends as one line on stderr and
exit code 2, and so that presets can tell the flags a user gave from the defaults.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import math
import textwrap
import types
import typing
from functools import cache
from typing import Any, NoReturn

from .envs import parse_stages


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message.replace("\n", " "))


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (CleanRL-style field docs)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional?) of an annotation like ``float | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _number(kind: type, optional: bool, flag: str):
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "off", ""):
            return None
        try:
            value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{flag} expects {what}, got {text!r}") from None
        if not math.isfinite(value):
            # inf/nan pass every range check below (nan compares false) and poison training.
            raise argparse.ArgumentTypeError(f"{flag} expects a finite number, got {text!r}")
        return value

    return parse


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls: type,
    dest_prefix: str,
    flag_prefix: str = "",
    rename: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
    notes: dict[str, str] | None = None,
) -> None:
    """Add one flag per field of ``cls``; values land in ``dest_prefix.field`` only when given.

    ``notes`` appends text to some fields' help (e.g. another algorithm's default)."""
    rename = rename or {}
    notes = notes or {}
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, optional = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            continue
        flag = "--" + rename.get(f.name, flag_prefix + f.name.replace("_", "-"))
        dest = f"{dest_prefix}.{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else None
        note = f"; {notes[f.name]}" if f.name in notes else ""
        help_text = f"{docs.get(f.name, '')} (default: {default}{note})"
        if tp is bool:
            parser.add_argument(
                flag,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif tp in (int, float):
            parser.add_argument(
                flag,
                dest=dest,
                type=_number(tp, optional, flag),
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=tp.__name__.upper(),
            )
        else:
            parser.add_argument(
                flag, dest=dest, type=str, default=argparse.SUPPRESS, help=help_text, metavar="TEXT"
            )


def given(ns: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The fields of one dataclass that the user set on the command line."""
    prefix = dest_prefix + "."
    return {k[len(prefix) :]: v for k, v in vars(ns).items() if k.startswith(prefix)}


def apply(obj: Any, values: dict[str, Any], where: str) -> None:
    """Set fields on a dataclass instance, refusing unknown names (e.g. from a preset file)."""
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"unknown {where} option {key!r}; known: {', '.join(sorted(names))}")
        setattr(obj, key, value)


# -- value checks ----------------------------------------------------------------------------
def whole_number(flag: str, minimum: int):
    """An argparse type: a whole number >= ``minimum``."""
    bound = "> 0" if minimum == 1 else f">= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} expects a whole number {bound}, got {text!r}")
        return value

    return parse


def positive_int(flag: str):
    """An argparse type: a whole number > 0."""
    return whole_number(flag, 1)


def nonnegative_int(flag: str):
    """An argparse type: a whole number >= 0."""
    return whole_number(flag, 0)


def _finite_float(flag: str, zero_ok: bool):
    """An argparse type: a finite number > 0 (>= 0 with ``zero_ok``)."""
    bound = ">= 0" if zero_ok else "> 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} expects a number {bound}, got {text!r}"
            ) from None
        if not (value >= 0 if zero_ok else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"{flag} expects a finite number {bound}, got {text!r}"
            )
        return value

    return parse


def positive_float(flag: str):
    """An argparse type: a finite number > 0."""
    return _finite_float(flag, zero_ok=False)


def nonnegative_float(flag: str):
    """An argparse type: a finite number >= 0."""
    return _finite_float(flag, zero_ok=True)


def stage_spec(text: str | None) -> str | None:
    """The normalised stage selection of a --stages value (None when not given)."""
    return None if text is None else parse_stages(text).spec


def stage_list(stages: str) -> tuple[str, ...]:
    """The stages a selection names."""
    return parse_stages(stages).stages
