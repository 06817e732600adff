"""Typed option sections: YAML/CLI values checked against a dataclass, with messages naming the key.

Used by the generic config and by every task's and backend's own section (``qa:``, ``hf:``), so all of
them accept and refuse values the same way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from qatune.errors import ConfigError


def type_error(key: str, value: Any, kind: str) -> ConfigError:
    return ConfigError(f"config key '{key}': {value!r} is not a valid {kind}")


def convert(key: str, value: Any, kind: str) -> Any:
    """``value`` as ``kind`` (bool, int, float or str); bools are never numbers, 2.5 is never an int."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in {"true", "1", "yes", "on"}:
            return True
        if str(value).lower() in {"false", "0", "no", "off"}:
            return False
        raise type_error(key, value, "bool (true or false)")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise type_error(key, value, kind)
        try:
            number = float(value)
        except ValueError:
            raise type_error(key, value, kind) from None
        if kind == "float":
            if not math.isfinite(number):
                raise type_error(key, value, "finite number")
            return number
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise type_error(key, value, kind) from None
        if not number.is_integer():
            raise type_error(key, value, kind)
        return int(number)
    if kind == "str":
        if isinstance(value, (dict, list)):
            raise type_error(key, value, "string")
        return str(value)
    return value


def field_kind(field: dataclasses.Field) -> tuple[str | None, bool]:
    """(bool/int/float/str or None, optional) from the field's annotation, e.g. 'int | None' -> ('int', True)."""
    annotation = str(field.type)
    optional = "None" in annotation
    base = annotation.replace(" | None", "").strip()
    return (base if base in ("bool", "int", "float", "str") else None), optional


def coerce(field: dataclasses.Field, key: str, value: Any, default: Any = None) -> Any:
    """Coerce a YAML/CLI value to the field's type, with a message naming ``key``."""
    kind, optional = field_kind(field)
    if value is None:
        if optional or kind is None:
            return None
        raise ConfigError(f"config key '{key}' needs a value (a {kind}); remove the key to use the default "
                          f"({default!r})")
    return convert(key, value, kind) if kind else value


def section_values(cls: type, values: dict[str, Any], section: str, source: str) -> dict[str, Any]:
    """Checked values of an options section (``qa: {doc_stride: 64}``): known keys, right types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    out: dict[str, Any] = {}
    for key, value in values.items():
        norm = str(key).replace("-", "_")
        if norm not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{source}: unknown option '{section}.{key}'. Options of '{section}': {known}")
        out[norm] = coerce(fields[norm], f"{section}.{norm}", value, getattr(defaults, norm))
    return out
