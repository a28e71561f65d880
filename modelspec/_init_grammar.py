"""The pydantic models of an init rule (see :mod:`modelspec._init`): the JSON Schema's source,
and the checker that words every error. A rule that is plainly valid is parsed without them
(:func:`modelspec._init._quick_rule`), so a spec's ``init:`` does not import pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._errors import Collector, SpecPath, did_you_mean
from ._init import METHODS, SELECTORS

__all__ = ["ARGS", "InitRule", "pydantic_errors"]

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


#: method name -> its arguments (the same names and defaults as _init.METHODS: a test checks it)
ARGS: dict[str, type[_Args]] = {
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


_UNION_TAGS = frozenset({"str", "list[str]"})


def pydantic_errors(e: pydantic.ValidationError, path: SpecPath, errors: Collector) -> None:
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
            fields = ARGS[str(loc[0])].model_fields if loc[0] in ARGS else {}
            hint = did_you_mean(str(loc[-1]), fields) or (f"{loc[0]} takes: {', '.join(fields)}" if fields else None)
        elif err["type"] == "string_type" and len(loc) == 1 and loc[0] in ("params", "layer"):
            message = f"'{loc[0]}' is a name or a list of names (got {type(err.get('input')).__name__})"
        errors.add(code, message, (*path, *loc), hint=hint)
