"""Reading configurations: TOML specs, dotted --set overrides coerced to the schema's types, and
the stored config.json of a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

from mirai_lab.config.schema import MAX_SPEC_DEPTH, SECTIONS, RunConfig
from mirai_lab.errors import UserError
from mirai_lab.presets import BUDGETS


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a TOML value or a --set string to the field's type, or say what was expected."""
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise UserError(f"{key}={value!r}: expected a list like [2.0, 1.0]") from None
            else:
                value = [v for v in text.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"{key}={value!r}: expected a list")
        return [_coerce(key, v, inner) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{key}={value!r}: expected true or false")
    if typ in (int, float):
        return _number(key, value, typ)
    if typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}={value!r}: expected a string")
    raise TypeError(f"unsupported config type {typ}")  # a bug in this module, not user input

def _number(key: str, value: Any, typ: type) -> int | float:
    """int fields accept integral floats (TOML `3.0`) and digit strings; floats accept any number."""
    expected = "an integer" if typ is int else "a finite number"
    if isinstance(value, str):
        try:
            value = typ(value)
        except ValueError:
            raise UserError(f"{key}={value!r}: expected {expected}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{key}={value!r}: expected {expected}")
    if not math.isfinite(value):  # nan compares false to every bound, so it would pass all range checks
        raise UserError(f"{key}={value!r}: expected {expected}")
    if typ is int and not float(value).is_integer():
        raise UserError(f"{key}={value!r}: expected {expected}")
    return typ(value)

def finite(value: float, name: str) -> float:
    """A CLI float option (e.g. --cfg): nan and inf are refused like in the config."""
    if not math.isfinite(value):
        raise UserError(f"{name} {value!r}: expected a finite number")
    return value

def check_budget(name: Any, where: str) -> str:
    """A budget name from --budget, a spec or --set: one of the presets (an empty name is not one)."""
    if not isinstance(name, str) or name not in BUDGETS:
        raise UserError(f"unknown budget {name!r} ({where}); expected one of {', '.join(BUDGETS)}")
    return name

def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> None:
    """Apply dotted `section.key = value` overrides in place, checking keys and types."""
    for dotted, value in overrides.items():
        if dotted == "budget":
            cfg.budget = _coerce("budget", value, str)
            continue
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise UserError(
                f"unknown config key {dotted!r}; expected section.key with section in {', '.join(SECTIONS)}"
            )
        obj = getattr(cfg, section)
        types_ = _field_types(type(obj))
        if key not in types_:
            raise UserError(f"unknown config key {dotted!r}; {section} has {', '.join(types_)}")
        setattr(obj, key, _coerce(dotted, value, types_[key]))

def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out

def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set a.b=c` strings -> dict; values stay strings and are coerced per field."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected section.key=value")
        out[key.strip()] = value.strip()
    return out

def read_toml(path: str | Path) -> dict[str, Any]:
    """A spec file as a dict; at most MAX_SPEC_DEPTH levels of nesting (tomllib recurses per level)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file {str(path)!r} does not exist")
    try:
        table = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"spec file {str(path)!r} is not valid TOML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise UserError(f"spec file {str(path)!r} is nested too deeply: expected at most {MAX_SPEC_DEPTH} "
                        "levels of tables and lists") from None
    if _deeper_than(table, MAX_SPEC_DEPTH):
        raise UserError(f"spec file {str(path)!r} is nested too deeply: expected at most {MAX_SPEC_DEPTH} "
                        "levels of tables and lists")
    return table

def _deeper_than(table: dict[str, Any], limit: int) -> bool:
    """Whether tables and lists nest more than `limit` levels (iterative: no recursion limit to hit)."""
    level: list[Any] = [table]
    for _ in range(limit):
        level = [c for x in level for c in (x.values() if isinstance(x, dict) else x) if isinstance(c, dict | list)]
    return bool(level)

def load_spec_file(path: str | Path) -> dict[str, Any]:
    """A train spec: run tables at top level (data, model, train, foresight, eval, budget)."""
    spec = read_toml(path)
    unknown = set(spec) - set(SECTIONS) - {"budget"}
    if unknown:
        raise UserError(f"spec {str(path)!r}: unknown table(s) {', '.join(sorted(unknown))}; "
                        f"expected {', '.join(SECTIONS)}, budget")
    return spec
