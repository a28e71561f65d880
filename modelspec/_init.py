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
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._errors import Collector, SpecPath, closest, did_you_mean

__all__ = ["FAN_METHODS", "METHODS", "SELECTORS", "InitRule", "Rule", "parse_rules"]

_Num = Annotated[float, Field(allow_inf_nan=False)]
_Std = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Nonlinearity = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]
#: a ``rename`` prefix: a module path, or "" for every name
_PREFIX = r"^([A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*)?$"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoArgs(_Args):
    """No arguments: ``zeros`` or ``zeros: {}``."""


class NormalArgs(_Args):
    mean: _Num = 0.0
    std: _Std = 1.0


class UniformArgs(_Args):
    low: _Num = 0.0
    high: _Num = 1.0


class ConstantArgs(_Args):
    value: _Num


class GainArgs(_Args):
    gain: _Num = 1.0


class KaimingArgs(_Args):
    a: _Num = Field(0.0, description="the negative slope of the rectifier after this layer (leaky_relu)")
    mode: Literal["fan_in", "fan_out"] = "fan_in"
    nonlinearity: _Nonlinearity = "leaky_relu"


class TruncNormalArgs(_Args):
    mean: _Num = 0.0
    std: _Std = 1.0
    a: _Num = Field(-2.0, description="lower bound (absolute, not in units of std)")
    b: _Num = Field(2.0, description="upper bound")


#: method name -> its arguments
METHODS: dict[str, type[_Args]] = {
    "normal": NormalArgs,
    "uniform": UniformArgs,
    "zeros": NoArgs,
    "ones": NoArgs,
    "constant": ConstantArgs,
    "xavier_uniform": GainArgs,
    "xavier_normal": GainArgs,
    "kaiming_uniform": KaimingArgs,
    "kaiming_normal": KaimingArgs,
    "orthogonal": GainArgs,
    "trunc_normal": TruncNormalArgs,
}
SELECTORS = ("params", "layer", "block")
FAN_METHODS = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal")
_MIN_MASS = 0.01  # trunc_normal: [a, b] must hold this much of N(mean, std), or the redraws never end


class InitRule(BaseModel):
    """One init rule: selectors (AND-combined, at least one) and one method, or ``from``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="InitRule")
    params: str | list[str] | None = Field(
        None, description="glob(s) over qualified parameter names; '*' crosses dots, e.g. '*.c_proj.weight'"
    )
    layer: str | list[str] | None = Field(
        None, description="layer type name(s), e.g. Linear: every parameter inside such a layer"
    )
    block: str | None = Field(None, description="a named block: every parameter inside it")
    from_: str | None = Field(
        None, alias="from", description="a build folder (relative to the spec's folder) to take the values from"
    )
    rename: dict[Annotated[str, Field(pattern=_PREFIX)], Annotated[str, Field(pattern=_PREFIX)]] | None = Field(
        None, description="with 'from': our name prefix -> the source's ('' for every name)"
    )
    normal: NormalArgs | None = Field(None, description="N(mean, std^2); default mean 0, std 1")
    uniform: UniformArgs | None = Field(None, description="U(low, high); default 0, 1")
    zeros: NoArgs | None = None
    ones: NoArgs | None = None
    constant: ConstantArgs | None = None
    xavier_uniform: GainArgs | None = None
    xavier_normal: GainArgs | None = None
    kaiming_uniform: KaimingArgs | None = None
    kaiming_normal: KaimingArgs | None = None
    orthogonal: GainArgs | None = Field(None, description="equal across machines to about 1e-6, not bitwise")
    trunc_normal: TruncNormalArgs | None = Field(None, description="N(mean, std^2) redrawn until inside [a, b]")

    @model_validator(mode="before")
    @classmethod
    def _bare_methods(cls, data: Any) -> Any:
        """``{params: '*.bias', zeros}`` (YAML: zeros is null) means zeros with its defaults."""
        if isinstance(data, dict):
            return {k: ({} if k in METHODS and v is None else v) for k, v in data.items()}
        return data


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
        _pydantic_errors(e, path, errors)
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


_UNION_TAGS = frozenset({"str", "list[str]"})


def _pydantic_errors(e: pydantic.ValidationError, path: SpecPath, errors: Collector) -> None:
    seen: set[tuple[Any, ...]] = set()
    keys = [*SELECTORS, "from", "rename", *METHODS]
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if p not in _UNION_TAGS and p != "[key]")
        if loc in seen:  # one message per place: a union reports each of its members
            continue
        seen.add(loc)
        code = {"missing": "missing-key", "extra_forbidden": "unknown-key"}.get(err["type"], "wrong-type")
        message, hint = err["msg"], None
        if code == "unknown-key" and len(loc) == 1:
            message = f"unknown key '{loc[0]}' in an init rule"
            hint = did_you_mean(str(loc[0]), keys) or f"a rule has selectors ({', '.join(SELECTORS)}) and one method"
        elif code == "unknown-key":
            message = f"unknown argument '{loc[-1]}' of {loc[0]}"
            fields = METHODS[str(loc[0])].model_fields if loc[0] in METHODS else {}
            hint = did_you_mean(str(loc[-1]), fields) or (f"{loc[0]} takes: {', '.join(fields)}" if fields else None)
        elif err["type"] == "string_type" and len(loc) == 1 and loc[0] in ("params", "layer"):
            message = f"'{loc[0]}' is a name or a list of names (got {type(err.get('input')).__name__})"
        errors.add(code, message, (*path, *loc), hint=hint)
