"""Scalars under YAML 1.2 core rules, and the plain forms that YAML 1.1 reads differently.

YAML 1.1, which PyYAML and many other tools follow, reads ``off``/``yes`` as booleans,
``010`` as octal 8 and ``1:00`` as 60. A spec is read with the YAML 1.2 core schema
instead (https://yaml.org/spec/1.2.2/#1032-tag-resolution), and a plain scalar that the two
versions read differently gets the private tag ``AMBIGUOUS``: an error, never a guess.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import yaml

__all__ = [
    "AMBIGUOUS",
    "MERGE",
    "MISFIT",
    "SCALAR_TAGS",
    "SINGLE_LETTERS",
    "STR",
    "ambiguity",
    "construct",
    "dump",
    "kind",
    "misfit_hint",
    "resolve_plain",
    "show",
    "yaml11_reading",
]

_CORE = "tag:yaml.org,2002:"
STR, _INT, _FLOAT, _BOOL, _NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
SCALAR_TAGS = frozenset({STR, _INT, _FLOAT, _BOOL, _NULL})
MERGE = _CORE + "merge"
#: Private tag for plain scalars that YAML 1.1 and YAML 1.2 read differently.
AMBIGUOUS = "tag:modelspec,2026:ambiguous"

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), except that
# integers with a leading zero are ambiguous (octal in YAML 1.1) rather than decimal.
_NULL_RE = re.compile(r"~|null|Null|NULL|")
_BOOL_RE = re.compile(r"true|True|TRUE|false|False|FALSE")
_INT_RE = re.compile(r"[-+]?(?:0|[1-9][0-9]*)|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT_RE = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_LEADING_ZERO_RE = re.compile(r"[-+]?0[0-9]+")
# YAML 1.1 (https://yaml.org/type/): what PyYAML's defaults and many other tools read.
_YAML11_BOOL = {w: True for w in "y Y yes Yes YES on On ON true True TRUE".split()} | {
    w: False for w in "n N no No NO off Off OFF false False FALSE".split()
}
#: YAML 1.1 booleans that are common names: accepted as keys, rejected as values.
SINGLE_LETTERS = frozenset("yYnN")
_YAML11_NUMBER_RE = re.compile(
    r"[-+]?0b[01_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+"
    r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+"
    r"|[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*"
)


@functools.lru_cache(maxsize=4096)  # specs repeat their words ('Linear', 'in_features', '64') many times
def resolve_plain(value: str) -> str:
    """The tag of an untagged plain scalar under YAML 1.2 core (or ``AMBIGUOUS``)."""
    for regex, tag in ((_NULL_RE, _NULL), (_BOOL_RE, _BOOL), (_INT_RE, _INT), (_FLOAT_RE, _FLOAT)):
        if regex.fullmatch(value):
            return tag
    if value == "<<":
        return MERGE
    if value in _YAML11_BOOL or _YAML11_NUMBER_RE.fullmatch(value) or _LEADING_ZERO_RE.fullmatch(value):
        return AMBIGUOUS
    return STR


MISFIT = object()
_MISFIT_HINTS = {
    _BOOL: "write true or false",
    _INT: "write a whole number, e.g. 8, -3, 0o17 or 0x1F (no leading zeros, no '_')",
    _FLOAT: "write a number, e.g. 0.5, 1e-3, .inf or .nan",
    _NULL: "write null or ~, or leave the value empty",
}


def construct(tag: str, value: str) -> Any:
    """The value of a core-tagged scalar under YAML 1.2 rules, or ``MISFIT``."""
    if tag == _NULL:
        return None if _NULL_RE.fullmatch(value) else MISFIT
    if tag == _BOOL:
        return value.lower() == "true" if _BOOL_RE.fullmatch(value) else MISFIT
    if tag == _INT:
        if not _INT_RE.fullmatch(value):
            return MISFIT
        try:
            if value.startswith(("0o", "0x")):
                return int(value[2:], 8 if value[1] == "o" else 16)
            return int(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return MISFIT
    if _INT_RE.fullmatch(value) and not value.startswith(("0o", "0x")):  # !!float 1 -> 1.0
        return float(value)
    if not _FLOAT_RE.fullmatch(value):
        return MISFIT
    lowered = value.lower()
    if lowered.endswith(".inf"):
        return -math.inf if value.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(value)


def kind(tag: str) -> str:
    return {_BOOL: "boolean", _INT: "integer", _FLOAT: "float", _NULL: "null"}.get(tag, "text")


def yaml11_reading(value: str) -> str:
    """What YAML 1.1 (PyYAML's default) makes of a plain scalar, in words."""
    if value in _YAML11_BOOL:
        return str(_YAML11_BOOL[value]).lower()
    if len(value) > 40:
        return "a number"
    if _LEADING_ZERO_RE.fullmatch(value) and not set(value.lstrip("+-")) <= set("01234567"):
        return f"the text {value!r}"
    try:
        number = yaml.safe_load(value)  # PyYAML implements YAML 1.1; value is one plain token
    except (yaml.YAMLError, ValueError):  # pragma: no cover - the token matched a YAML 1.1 number form
        return f"the text {value!r}"
    return repr(number) if isinstance(number, int | float) and not isinstance(number, bool) else f"the text {value!r}"


def _yaml12_reading(value: str) -> str:
    if _LEADING_ZERO_RE.fullmatch(value):
        return str(int(value, 10)) if len(value) <= 40 else "a decimal number"
    return f"the text {show(value)}"


def show(value: str) -> str:
    """``value`` quoted for a message, shortened if long."""
    return repr(value) if len(value) <= 40 else repr(value[:37] + "...")


def misfit_hint(tag: str) -> str:
    """How to write a value that fits the core ``tag``."""
    return _MISFIT_HINTS[tag]


def ambiguity(value: str) -> tuple[str, str]:
    """(message, hint) for a plain scalar tagged ``AMBIGUOUS``."""
    if value in _YAML11_BOOL:
        hint = f"write {str(_YAML11_BOOL[value]).lower()}, or quote it ('{value}') to mean the text"
    elif len(value) > 40:
        hint = "write the number without leading zeros or '_', or quote it to mean the text"
    elif _LEADING_ZERO_RE.fullmatch(value):
        hint = f"write {int(value, 10)} without the leading zero"
        if set(value.lstrip("+-")) <= set("01234567"):
            hint += f" (0o{value.lstrip('+-0') or 0} for octal)"
    else:
        hint = f"write {yaml11_reading(value)} if you mean that number, or quote it ('{value}') to mean the text"
    message = (
        f"{show(value)} means {yaml11_reading(value)} in YAML 1.1 but "
        f"{_yaml12_reading(value)} in YAML 1.2; modelspec does not guess"
    )
    return message, hint


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, but a text that would read back as anything else under these rules
    (``N``, ``1e5``, ``0o17``: plain under PyYAML's YAML 1.1 rules) is quoted."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if resolve_plain(value) != STR else None
    return dumper.represent_scalar(STR, value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(data: Any) -> str:
    """``data`` as YAML that reads back as the same data with these rules."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
