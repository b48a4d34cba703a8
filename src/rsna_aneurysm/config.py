"""Typed configs: dataclasses with commented defaults, set from JSON and ``--key value`` overrides.

Unknown keys and values of the wrong type fail at once with a message naming the key. Nested dataclasses are
addressed with dots (``--optim.lr 3e-4``). The resolved config is written beside a run's outputs.

Validation convention: every config dataclass checks its own values in ``__post_init__`` and raises
``ConfigError(reason, key="field")`` (``require`` is the one-line form). So a config is checked however it is
made (``from_dict``, ``load_config``, ``apply_overrides``, ``dataclasses.replace`` or a direct call), by every
command that builds it; ``from_dict`` puts the nesting path in front of the key (``cache.patch_size``). A class
checks only its own fields (a parent's ``__post_init__`` runs before ``from_dict`` sets its nested configs).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a wrong value; ``key`` (when known) is the
    offending key, relative to the config that raised it until ``within`` adds the nesting path."""

    def __init__(self, message: str, key: str | None = None) -> None:
        self.reason = message
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)

    def __reduce__(self) -> tuple:  # keep the key through pickling (worker processes)
        return (type(self), (self.reason, self.key))

    def within(self, prefix: str) -> ConfigError:
        """The same error for a config nested under ``prefix`` (e.g. ``"cache."``)."""
        if not prefix or self.key is None:
            return self
        return type(self)(self.reason, prefix + self.key)


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(message, key)`` unless ``ok``: one check of a config's ``__post_init__``."""
    if not ok:
        raise ConfigError(message, key)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected an object, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected an object, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly partial, possibly nested) dict; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)} for {cls.__name__}; "
                          f"known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:  # the class's own checks (__post_init__); nested configs were checked when _coerce built them
        base = cls(**{k: v for k, v in kwargs.items() if not dataclasses.is_dataclass(hints[k])})
    except ConfigError as e:
        raise e.within(prefix) from None
    for k, v in kwargs.items():
        if dataclasses.is_dataclass(hints[k]):
            setattr(base, k, v)
    return base


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: T, overrides: dict[str, Any], prefix: str = "") -> T:
    """Return a copy of ``cfg`` with dotted-key overrides (strings are parsed to the field's type); ``prefix``
    is put in front of the keys that errors name (``cfg`` is nested under it, e.g. ``"cache."``)."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config key '{prefix}{dotted}' for {type(cfg).__name__}")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key '{prefix}{dotted}' for {type(cfg).__name__}")
        node[parts[-1]] = value
    return from_dict(type(cfg), data, prefix=prefix)


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """``['--a.b', '1', '--c=x']`` -> ``{'a.b': '1', 'c': 'x'}``; a flag without a value is an error."""
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}: overrides look like --key value")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(f"override --{key} has no value")
            val = tokens[i + 1]
            i += 2
        out[key.replace("-", "_")] = val
    return out


def read_json_object(path: str | Path, error: type[Exception] = ConfigError, what: str = "config file") -> dict:
    """A JSON file holding an object; a missing file, bad JSON or another type raises ``error`` naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults, then the JSON file (if any), then overrides."""
    data: dict[str, Any] = {} if path is None else read_json_object(path)
    cfg = from_dict(cls, data)
    return apply_overrides(cfg, overrides or {})


def save_config(cfg: Any, path: str | Path) -> None:
    from .io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")
