"""Turn parsed YAML into typed dataclasses, with errors that name the file, the field and the fix.

One small validator serves task files and submission files alike: each config is a dataclass,
each field's type hint is the schema, each field's comment is its documentation.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad config file. The message names the file, the field and how to fix it."""

    def __init__(self, path: Path | str | None, field: str, problem: str, fix: str = ""):
        self.path, self.field, self.problem, self.fix = path, field, problem, fix
        where = f"{path}: " if path else ""
        super().__init__(f"{where}field '{field}': {problem}" + (f". Fix: {fix}" if fix else ""))


def did_you_mean(name: str, allowed: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(describe(a) for a in typing.get_args(tp))}]"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, path: Path | None, field: str) -> Any:
    """Check `value` against the type hint `tp`, converting only where it is lossless."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, field)
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, field, f"{value!r} is not allowed",
                              f"{did_you_mean(str(value), map(str, args))}use one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path, field)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(path, field, f"{value!r} is not {describe(tp)}", f"give {describe(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, field, f"expected a list, got {type(value).__name__} {value!r}",
                              f"write it as a YAML list of {describe(args[0])}")
        return [coerce(v, args[0], path, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, field, f"expected a mapping, got {type(value).__name__}",
                              "write it as a YAML mapping of key: value")
        return {coerce(k, args[0], path, field): coerce(v, args[1], path, f"{field}.{k}")
                for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(path, field, f"expected {describe(tp)}, got {type(value).__name__} {value!r}",
                      f"give {describe(tp)}")


def from_dict(cls: type, data: Any, path: Path | None = None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys, missing keys and bad types are errors."""
    where = prefix or "<top level>"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, where, f"expected a mapping, got {type(data).__name__}",
                          "write it as a YAML mapping of key: value")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            name = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(path, name, "unknown key",
                              f"{did_you_mean(str(key), fields)}allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], path, full)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(path, full, "missing required key", f"add '{name}: <{describe(hints[name])}>'")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:  # a cross-field rule of the dataclass itself
            raise ConfigError(path, f"{prefix}.{e.field}" if prefix else e.field, e.problem, e.fix) from None
    return obj


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
