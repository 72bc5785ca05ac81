"""TOML configuration: files read with ``tomllib``, overridable from the command line.

A config file has one table per stage (``[data]``, ``[model]``, ``[train]``,
...). Each stage declares a frozen dataclass of its knobs (listed in
:data:`recfl.app.sections.SECTIONS`) and reads its table with :func:`section`, which rejects
unknown sections, unknown keys, wrong types and out-of-range values with one
clear line, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from recfl.core.errors import RecflError

T = TypeVar("T")



def load(path: str | Path | None, overrides: list[str] | None = None, known: Iterable[str] | None = None) -> dict:
    """The config document from ``path`` (or empty) with ``section.key=value`` overrides applied;
    with ``known`` (section names), any other section is refused."""
    doc: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecflError(f"{path}: config file not found")
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise RecflError(f"{path}: invalid TOML ({exc})") from None
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise RecflError(f"--set {item!r}: expected section.key=value")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # bare words are strings: --set data.format=taobao
        table = doc
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise RecflError(f"--set {item!r}: {part!r} is not a section")
        table[parts[-1]] = value
    unknown = sorted(set(doc) - set(known)) if known is not None else []
    if unknown:
        raise RecflError(f"config: unknown section(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for name, table in doc.items():
        if not isinstance(table, dict):
            raise RecflError(f"config: [{name}] must be a table of settings, got {table!r}")
    return doc


def section(cls: type[T], doc: dict, name: str, **explicit: Any) -> T:
    """Build dataclass ``cls`` from table ``doc[name]``; ``explicit`` (non-None) values win."""
    table = dict(doc.get(name, {}))  # load() has checked that every section is a table
    table.update({k: v for k, v in explicit.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise RecflError(f"config: unknown key(s) {', '.join(unknown)} in [{name}]; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in table.items()})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple annotation, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except RecflError:
                continue
        raise RecflError(f"config: {where} = {value!r} has the wrong type (expected {hint})")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecflError(f"config: {where} must be a list, got {value!r}")
        (inner, *_rest) = typing.get_args(hint)
        return tuple(_coerce(v, inner, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise RecflError(f"config: {where} = {value!r} must be {hint.__name__}")
    return value


def check_limits(obj: Any, name: str, **limits: str) -> None:
    """Refuse out-of-range settings of section ``name`` with one line.

    A limit is ``">= 1"``, ``"> 0"``, ``"<= 10"`` or an interval such as
    ``"[0, 1]"`` or ``"(0, 1)"``; a tuple-valued setting is checked element-wise.
    """
    for key, rule in limits.items():
        value = getattr(obj, key)
        if not all(_within(v, rule.replace(" ", "")) for v in (value if isinstance(value, tuple) else (value,))):
            raise RecflError(f"config: {name}.{key} = {value!r} must be {'in ' if rule[0] in '[(' else ''}{rule}")


def _within(value: float, rule: str) -> bool:
    if rule[0] in "[(":
        lo, hi = (float(x) for x in rule[1:-1].split(","))
        return (lo <= value if rule[0] == "[" else lo < value) and (value <= hi if rule[-1] == "]" else value < hi)
    for op, test in ((">=", lambda a, b: a >= b), ("<=", lambda a, b: a <= b), (">", lambda a, b: a > b), ("<", lambda a, b: a < b)):
        if rule.startswith(op):
            return test(value, float(rule[len(op):]))
    raise ValueError(f"bad limit {rule!r}")


def as_table(obj: Any) -> dict:
    """A dataclass as a TOML/JSON-friendly dict (for manifests and run records)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}
