"""The pydantic models of the surface grammar: the reference for checking, and the JSON Schema.

What a spec writes outside its nodes (the top level, ``input:``, ties, a graph's free
tensors) is described here once. ``modelspec schema`` turns these models into the schema;
checking a spec uses them for every value the plain-Python checks of :mod:`modelspec._spec`
and :mod:`modelspec._nodes` do not accept outright, so every error message comes from here.
Importing pydantic and building these classes is a good part of a ``modelspec validate``
process, so this module is imported only when one of them is needed.

The checked values become the stages' own frozen dataclasses (``_nodes.InputSpec``,
``_nodes.TensorSpec``, ``_spec.Tie``), whichever way they were checked.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ._init_grammar import InitRule
from ._nodes import DTYPES
from ._spec import _NAME

__all__ = ["NODE_MARKER", "InputSpec", "NormalInit", "SpecFile", "TensorSpec", "TieSpec", "UniformInit"]

# Nodes are parsed by NodeParser, not pydantic; the schema module swaps this marker
# for a reference to the node grammar it generates from the registry.
NODE_MARKER = "x-modelspec-node"
_NodeJSON = Annotated[Any, WithJsonSchema({NODE_MARKER: True})]
_Name = Annotated[str, Field(pattern=_NAME)]
_PARAM = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"


class InputSpec(BaseModel):
    """An example input: sizes lazy layers at build time and drives ``grads``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "8" is not a size
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, description="e.g. [2, 4]: batch 2, 4 features")
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]


class _Normal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    mean: float = 0.0
    std: Annotated[float, Field(ge=0)] = 1.0


class _Uniform(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    low: float = 0.0
    high: float = 1.0


class NormalInit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    normal: _Normal


class UniformInit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    uniform: _Uniform


class TensorSpec(BaseModel):
    """A free parameter or buffer of a graph: a tensor that is not inside a layer."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="Tensor")
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="e.g. [1, 1, 768]")
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    init: Literal["zeros", "ones"] | NormalInit | UniformInit = Field(
        "zeros", description="zeros (default), ones, {normal: {mean, std}} or {uniform: {low, high}}"
    )
    persistent: bool = Field(True, description="buffers only: false keeps it out of state_dict")


class TieSpec(BaseModel):
    """One parameter tie: ``param`` is ``to`` (or ``to`` transposed) after building."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="Tie")
    param: str = Field(pattern=_PARAM, description="the parameter that becomes the other, e.g. lm_head.weight")
    to: str = Field(pattern=_PARAM, description="the parameter it is, e.g. transformer.wte.weight")
    transposed: bool = Field(
        False, description="true: 'param' reads 'to' with dims 0 and 1 swapped (a tied autoencoder's decoder)"
    )


class SpecFile(BaseModel):
    """A modelspec file: one model (``model``) or several sharing blocks (``models``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="modelspec")
    modelspec: Literal[1] = Field(description="format version of this file")
    name: str | None = Field(None, description="a name for reports")
    description: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict, description="variables (see _vars)")
    seed: Annotated[int, Field(ge=0, le=2**64 - 1)] = Field(0, description="seeds parameter initialization")
    input: InputSpec | None = Field(None, description="example input; needed for Lazy* layers")
    blocks: dict[_Name, _NodeJSON] = Field(
        default_factory=dict, description="named blocks: built once, the same object at every 'use'"
    )
    model: _NodeJSON | None = Field(None, description="the model (give this or 'models')")
    models: dict[_Name, _NodeJSON] | None = Field(
        None, description="several models, built into an nn.ModuleDict; they may share blocks"
    )
    ties: list[TieSpec] = Field(
        default_factory=list,
        description="parameter ties: each 'param' becomes 'to' (the same nn.Parameter), or reads it transposed",
    )
    init: list[InitRule] = Field(
        default_factory=list,
        description="init rules, applied in order after the default init; for each parameter the last match wins",
    )
