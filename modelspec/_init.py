"""Init rules: the top-level ``init:`` list, applied after the build's default init.

A rule is selectors (AND-combined, at least one) and one method::

    init:
      - {layer: Linear, normal: {std: 0.02}}
      - {params: "*.bias", zeros}
      - {params: "*.c_proj.weight", normal: {std: 0.0028867513}}   # 0.02 / sqrt(2 * n_layer)
      - {block: trunk, from: ../trunk-build, rename: {trunk: ""}}    # see _transfer

Selectors: ``params`` (globs over qualified parameter names, ``fnmatch.fnmatchcase``: ``*``
crosses dots; a multi-model spec's names start with the model's name), ``layer`` (layer
type names: every module that is an instance of that class, at any depth, and all the
parameters inside it; a lazy layer's name selects the class it becomes), ``block`` (the
parameters inside a named block's object). Methods are ``torch.nn.init``'s, with its
defaults: ``normal``, ``uniform``, ``zeros``, ``ones``, ``constant``, ``xavier_uniform``,
``xavier_normal``, ``kaiming_uniform``, ``kaiming_normal``, ``orthogonal``,
``trunc_normal``; or ``from`` (a transfer).

Semantics: for each parameter the last rule that selects it wins. A tied tensor is one
parameter: a rule acts on it only where it selects the tensor's owner (its canonical
name, the first in ``named_parameters()`` order); a rule that selects only aliases is an
error naming the owner. Each unique parameter is then initialised once, in
``named_parameters()`` order, after the default init, the example pass and the ties.

Determinism: every draw comes from the build's generator through the portable
primitives of :mod:`modelspec._rng`, so a seed gives the same bits on every machine and
device, and the global RNG is untouched. ``trunc_normal`` redraws the values outside
[a, b] from the portable normal until none is left (torch's own uses ``erfinv``, whose
last bits vary between machines). ``orthogonal`` is the exception: a QR decomposition in
float64 of a portable normal matrix, rounded to the parameter's dtype; LAPACK may differ
in the last float64 bits between machines, so its values agree to about 1e-6, not
bitwise. On ``meta`` nothing is drawn or read.

This module holds the grammar and its parsing (no torch); :mod:`modelspec._initialize`
applies the rules to a built module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import Collector, SpecPath, closest

if TYPE_CHECKING:
    from ._init_grammar import InitRule

__all__ = ["FAN_METHODS", "METHODS", "SELECTORS", "Rule", "parse_rules", "with_defaults"]

#: method name -> its arguments and their defaults (REQUIRED: no default); the pydantic
#: models in _init_grammar have the same (a test checks it)
REQUIRED: Any = object()
NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu")  # fmt: skip
_NORMAL = {"mean": 0.0, "std": 1.0}
_GAIN = {"gain": 1.0}
_KAIMING = {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"}
METHODS: dict[str, dict[str, Any]] = {
    "normal": _NORMAL,
    "uniform": {"low": 0.0, "high": 1.0},
    "zeros": {},
    "ones": {},
    "constant": {"value": REQUIRED},
    "xavier_uniform": _GAIN,
    "xavier_normal": _GAIN,
    "kaiming_uniform": _KAIMING,
    "kaiming_normal": _KAIMING,
    "orthogonal": _GAIN,
    "trunc_normal": {**_NORMAL, "a": -2.0, "b": 2.0},
}
#: what each argument takes, in the quick parse: a finite number, a finite number >= 0, one of a set
_KINDS: dict[str, Any] = {"std": "std", "mode": ("fan_in", "fan_out"), "nonlinearity": NONLINEARITIES}
SELECTORS = ("params", "layer", "block")
FAN_METHODS = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal")
_MIN_MASS = 0.01  # trunc_normal: [a, b] must hold this much of N(mean, std), or the redraws never end
_RULE_KEYS = frozenset({*SELECTORS, "from", "rename", *METHODS})


def with_defaults(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """A rule's arguments with the method's defaults filled in."""
    return {name: args.get(name, default) for name, default in METHODS[method].items()}


@dataclass(frozen=True)
class Rule:
    """A validated init rule; ``method`` is ``"from"`` for a transfer (``source`` set)."""

    params: tuple[str, ...]
    layers: tuple[str, ...]
    block: str | None
    method: str
    args: dict[str, Any]  # the arguments as given (defaults not filled in)
    source: str | None
    renames: dict[str, str]
    path: SpecPath
    forms: dict[str, bool] = field(default_factory=dict, compare=False)  # selector -> given as a list

    def to_data(self) -> dict[str, Any]:
        """Canonical form: selectors as lists, then 'from'/'rename' or the method with the given arguments."""
        data: dict[str, Any] = {}
        if self.params:
            data["params"] = list(self.params)
        if self.layers:
            data["layer"] = list(self.layers)
        if self.block is not None:
            data["block"] = self.block
        if self.source is not None:
            data["from"] = self.source
            if self.renames:
                data["rename"] = dict(self.renames)
        else:
            data[self.method] = dict(self.args)
        return data


# ---------------------------------------------------------------- parsing
def parse_rules(raw: Any, errors: Collector) -> tuple[Rule, ...]:
    """Validate the top-level ``init`` list; every problem goes to ``errors``."""
    if not isinstance(raw, list):
        errors.add(
            "wrong-type",
            "'init' is a list of rules",
            ("init",),
            hint="e.g. 'init: [{layer: Linear, normal: {std: 0.02}}]'",
        )
        return ()
    rules = []
    for i, item in enumerate(raw):
        rule = _parse_rule(item, ("init", i), errors)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _parse_rule(item: Any, path: SpecPath, errors: Collector) -> Rule | None:
    return _quick_rule(item, path) or _checked_rule(item, path, errors)


def _quick_rule(item: Any, path: SpecPath) -> Rule | None:
    """The rule if ``item`` is plainly valid: what ``InitRule`` accepts and no check refuses,
    read without pydantic. None for anything else (then :func:`_checked_rule` says why)."""
    if type(item) is not dict or not item.keys() <= _RULE_KEYS or "from" in item or "rename" in item:
        return None
    given = [k for k in item if k in METHODS]
    if len(given) != 1 or not any(k in item for k in SELECTORS):
        return None
    for key in ("params", "layer"):
        value = item.get(key)
        if (
            key in item
            and not (type(value) is str and value)
            and not (type(value) is list and value and all(type(v) is str and v for v in value))
        ):
            return None
    if "block" in item and type(item["block"]) is not str:
        return None
    method = given[0]
    raw = {} if item[method] is None else item[method]
    defaults = METHODS[method]
    if type(raw) is not dict or not raw.keys() <= defaults.keys():
        return None
    args = {}
    for name, value in raw.items():
        kind = _KINDS.get(name)
        if isinstance(kind, tuple):
            if type(value) is not str or value not in kind:
                return None
            args[name] = value
            continue
        number = _finite(value)
        if number is None or (kind == "std" and not number >= 0):
            return None
        args[name] = number
    args = {k: args[k] for k in defaults if k in args}  # in the grammar's order, as its model_dump gives
    full = {**defaults, **args}
    if any(v is REQUIRED for v in full.values()):
        return None
    if method == "uniform" and full["low"] > full["high"]:
        return None
    if method == "trunc_normal" and (
        full["a"] >= full["b"] or _mass(full["mean"], full["std"], full["a"], full["b"]) < _MIN_MASS
    ):
        return None
    return Rule(
        params=_as_tuple(item.get("params")),
        layers=_as_tuple(item.get("layer")),
        block=item.get("block"),
        method=method,
        args=args,
        source=None,
        renames={},
        path=path,
        forms={k: isinstance(item.get(k), list) for k in ("params", "layer")},
    )


def _finite(value: Any) -> float | None:
    """``value`` as pydantic's strict finite float reads it; None when it may refuse it."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int and -(2**53) <= value <= 2**53:  # exactly a float (bigger ones: pydantic decides)
        return float(value)
    return None


def _checked_rule(item: Any, path: SpecPath, errors: Collector) -> Rule | None:
    """:func:`_parse_rule` by the grammar's pydantic models: reports every problem."""
    import pydantic

    from ._init_grammar import InitRule, pydantic_errors

    if not isinstance(item, dict):
        errors.add(
            "wrong-type",
            "an init rule is a mapping of selectors and one method",
            path,
            hint="e.g. '{params: \"*.bias\", zeros}'",
        )
        return None
    ok = True
    if not any(k in item for k in SELECTORS):
        errors.add(
            "init-selector",
            "the rule selects nothing",
            path,
            hint="add 'params:' (globs over parameter names), 'layer:' or 'block:'",
        )
        ok = False
    given = [k for k in (*METHODS, "from") if k in item]
    slips = [k for k in item if k not in InitRule.model_fields and k != "from" and closest(str(k), METHODS)]
    if not given and slips:
        ok = False  # 'nromal': reported as an unknown key with its did-you-mean, not as a missing method
    elif not given:
        errors.add(
            "init-method",
            "the rule has no method",
            path,
            hint=f"add one of: {', '.join(METHODS)}; or 'from:' a build folder",
        )
        ok = False
    elif len(given) > 1:
        errors.add(
            "init-method",
            f"one method per rule: '{given[0]}' and '{given[1]}'",
            (*path, given[1]),
            hint="write a second rule; for each parameter the last rule that selects it wins",
        )
        ok = False
    if "rename" in item and "from" not in item:
        errors.add(
            "init-method",
            "'rename' maps names for 'from'",
            (*path, "rename"),
            hint="add 'from: FOLDER', or remove 'rename'",
        )
        ok = False
    try:
        rule = InitRule.model_validate(item)
    except pydantic.ValidationError as e:
        pydantic_errors(e, path, errors)
        return None
    checks = _value_problems(rule)
    for key, message, hint in checks:
        errors.add("init-value", message, (*path, *key), hint=hint)
    if not ok or checks:
        return None
    method = given[0]
    args = {} if method == "from" else getattr(rule, method).model_dump(exclude_unset=True)
    return Rule(
        params=_as_tuple(rule.params),
        layers=_as_tuple(rule.layer),
        block=rule.block,
        method=method,
        args=args,
        source=rule.from_,
        renames=dict(rule.rename or {}),
        path=path,
        forms={k: isinstance(item.get(k), list) for k in ("params", "layer")},
    )


def _as_tuple(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _value_problems(rule: InitRule) -> list[tuple[SpecPath, str, str | None]]:
    out: list[tuple[SpecPath, str, str | None]] = []
    for key in ("params", "layer"):
        value = getattr(rule, key)
        if value == []:
            out.append(((key,), f"'{key}' is an empty list", "name at least one, or remove the key"))
        for j, v in enumerate(_as_tuple(value)):
            if not v:
                out.append(((key, j) if isinstance(value, list) else (key,), f"an empty '{key}' selects nothing", None))
    if rule.from_ is not None and not rule.from_:
        out.append((("from",), "'from' names a build folder", "e.g. 'from: ../trunk'"))
    if rule.uniform is not None and rule.uniform.low > rule.uniform.high:
        u = rule.uniform
        out.append((("uniform",), f"low {u.low} is above high {u.high}", "swap them"))
    t = rule.trunc_normal
    if t is not None:
        if t.a >= t.b:
            out.append((("trunc_normal",), f"a {t.a} must be below b {t.b}", None))
        elif _mass(t.mean, t.std, t.a, t.b) < _MIN_MASS:
            out.append(
                (
                    ("trunc_normal",),
                    f"[{t.a}, {t.b}] holds {_mass(t.mean, t.std, t.a, t.b):.2g} of N({t.mean}, {t.std}^2): "
                    f"values outside are redrawn, so it must hold at least {_MIN_MASS}",
                    "a and b are absolute bounds, not multiples of std: e.g. a: -2 * std, b: 2 * std",
                )
            )
    return out


def _mass(mean: float, std: float, a: float, b: float) -> float:
    """The probability of [a, b] under N(mean, std^2)."""
    if std == 0:
        return 1.0 if a <= mean <= b else 0.0
    s = std * math.sqrt(2.0)
    return 0.5 * (math.erf((b - mean) / s) - math.erf((a - mean) / s))
