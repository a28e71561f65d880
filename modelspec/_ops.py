"""The parameterless tensor operations a graph may use between its layers.

An op is written in a graph's ``nodes:`` under a lower-case name, with arguments written
like a layer's (null, one value, a list of positional values with a mapping of keywords
last, or a mapping)::

    sum:   {add: null, in: [bn2, x]}
    heads: {unflatten: [-1, [12, 64]]}
    attn:  {attention: {is_causal: true}, in: [q, k, v]}

Each op is defined once, here: its arguments (checked like a layer's, from plain-data
annotations), how many inputs it takes, and how it is emitted into a ``torch.fx.Graph``.
Ops hold no tensors, so they add nothing to ``state_dict``; the generated ``forward``
calls the torch function or tensor method directly (``add = bn2 + x``,
``transpose = view.transpose(1, 2)``): no table lookups at run time.
"""

from __future__ import annotations

import functools
import importlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._registry import Param, arguments_schema

if TYPE_CHECKING:
    import torch.fx as fx

__all__ = ["OPS", "OpType", "op_names"]

_Emit = Callable[["fx.Graph", tuple[Any, ...], dict[str, Any]], "fx.Node"]
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class OpType:
    """One op: its arguments, the inputs it takes, and how it is emitted."""

    name: str
    doc: str
    params: tuple[Param, ...]
    inputs: tuple[int, int | None]  # (fewest, most); None: no limit
    input_names: tuple[str, ...]  # for messages: "add takes a, b"
    emit: _Emit
    tuple_output: bool = False  # returns a tuple: pick items with name[i]

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def arity(self) -> str:
        low, high = self.inputs
        if high == low:
            return f"{low} input{'s' if low != 1 else ''} ({', '.join(self.input_names)})"
        if high is None:
            return f"{low} or more inputs"
        return f"{low} to {high} inputs ({', '.join(self.input_names)})"

    def json_schema(self) -> dict[str, Any]:
        """Schema of the value under the op's key: null, one value, a list or a mapping."""
        description = f"{self.name}: {self.doc}; takes {self.arity()}"
        if not self.params:
            return {"type": "null", "description": description}
        description += f"; arguments: {', '.join(self.param_names)}"
        return arguments_schema(self.params, description, ["number", "string", "boolean", "array"])


def _p(
    name: str,
    annotation: Any,
    default: Any = ...,
) -> Param:
    required = default is ...
    return Param(name, required, None if required else default, annotation)


@functools.cache
def _torch(where: str) -> Any:
    """``"torch.nn.functional.gelu"`` -> the function. The table names torch's functions by
    where they live, so that reading it (to validate a spec) does not import torch; only
    emitting a graph does."""
    module, _, name = where.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _function(fn: Callable[..., Any] | str, keywords: tuple[str, ...] = ()) -> _Emit:
    """``fn(*inputs, **arguments)`` (``fn`` a function, or where torch keeps it); arguments
    named in ``keywords`` go by keyword."""

    def emit(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
        target = _torch(fn) if isinstance(fn, str) else fn
        return g.call_function(target, inputs, {k: v for k, v in args.items() if k in keywords or not keywords})

    return emit


def _chain(fn: Callable[[Any, Any], Any]) -> _Emit:
    """``a + b + c``: a binary operator folded over the inputs."""

    def emit(g: fx.Graph, inputs: tuple[Any, ...], _args: dict[str, Any]) -> fx.Node:
        out = g.call_function(fn, (inputs[0], inputs[1]))
        for more in inputs[2:]:
            out = g.call_function(fn, (out, more))
        return out

    return emit


def _method(name: str, positional: tuple[str, ...] = (), star: str | None = None) -> _Emit:
    """``x.name(*positional values, **other arguments)``; ``star`` spreads a list (``x.permute(0, 2, 1)``)."""

    def emit(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
        pos = [args[k] for k in positional if k in args]
        if star is not None:
            pos += list(args[star])
        kw = {k: v for k, v in args.items() if k not in positional and k != star}
        return g.call_method(name, (*inputs, *pos), kw)

    return emit


def _sequence(fn: str) -> _Emit:
    """``torch.cat([a, b], dim=1)``: the inputs as one list."""

    def emit(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
        return g.call_function(_torch(fn), (list(inputs),), args)

    return emit


def _size(g: fx.Graph, x: fx.Node, dim: int) -> tuple[fx.Node, fx.Node]:
    return g.call_method("size", (x, dim)), g.call_function(getattr, (x, "device"))


def _arange(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
    size, device = _size(g, inputs[0], args.get("dim", 1))
    return g.call_function(_torch("torch.arange"), (size,), {"device": device})


def _causal_mask(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
    size, device = _size(g, inputs[0], args.get("dim", 1))
    import torch

    ones = g.call_function(torch.ones, (size, size), {"dtype": torch.bool, "device": device})
    return g.call_method("tril", (ones,))


def _to(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
    return g.call_method("to", (inputs[0],), {"dtype": _torch(f"torch.{args['dtype']}")})


def _attention(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
    q, k, v, *mask = inputs
    kw = dict(args)
    if mask:
        kw["attn_mask"] = mask[0]
    if kw.get("dropout_p"):  # as nn.MultiheadAttention does: dropout only while training
        kw["dropout_p"] = g.call_function(operator.mul, (kw["dropout_p"], g.get_attr("training")))
    return g.call_function(_torch("torch.nn.functional.scaled_dot_product_attention"), (q, k, v), kw)


def _select(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
    return g.call_method("select", (inputs[0], args["dim"], args["index"]))


def _slice(g: fx.Graph, inputs: tuple[Any, ...], args: dict[str, Any]) -> fx.Node:
    dim = args["dim"]
    part = slice(args.get("start"), args.get("end"), args.get("step"))
    if dim >= 0:  # x[:, 2:5]
        return g.call_function(operator.getitem, (inputs[0], (*([slice(None)] * dim), part)))
    return g.call_function(operator.getitem, (inputs[0], (Ellipsis, part, *([slice(None)] * (-dim - 1)))))


_Int = int
_Dim = int | None
_Sizes = list[int]


def _ops() -> dict[str, OpType]:
    one, two = (1, 1), (2, 2)
    x, ab = ("x",), ("a", "b")
    table = [
        OpType("add", "a + b (+ c ...)", (), (2, None), ab, _chain(operator.add)),
        OpType("sub", "a - b", (), two, ab, _chain(operator.sub)),
        OpType("mul", "a * b (* c ...)", (), (2, None), ab, _chain(operator.mul)),
        OpType("div", "a / b", (), two, ab, _chain(operator.truediv)),
        OpType("matmul", "a @ b", (), two, ab, _chain(operator.matmul)),
        OpType("neg", "-x", (), one, x, _function(operator.neg)),
        OpType("abs", "torch.abs(x)", (), one, x, _function("torch.abs")),
        OpType("exp", "torch.exp(x)", (), one, x, _function("torch.exp")),
        OpType("relu", "torch.relu(x)", (), one, x, _function("torch.relu")),
        OpType("sigmoid", "torch.sigmoid(x)", (), one, x, _function("torch.sigmoid")),
        OpType("tanh", "torch.tanh(x)", (), one, x, _function("torch.tanh")),
        OpType(
            "gelu",
            "F.gelu(x, approximate=...)",
            (_p("approximate", Literal["none", "tanh"], "none"),),
            one,
            x,
            _function("torch.nn.functional.gelu", ("approximate",)),
        ),
        OpType("cat", "torch.cat([a, b, ...], dim)", (_p("dim", _Int, 0),), (2, None), ab, _sequence("torch.cat")),
        OpType(
            "stack", "torch.stack([a, b, ...], dim)", (_p("dim", _Int, 0),), (2, None), ab, _sequence("torch.stack")
        ),
        OpType(
            "split",
            "x.split(split_size, dim): a tuple, pick items with name[i]",
            (_p("split_size", int | list[int]), _p("dim", _Int, 0)),
            one,
            x,
            _method("split", ("split_size",)),
            tuple_output=True,
        ),
        OpType(
            "chunk",
            "x.chunk(chunks, dim): a tuple, pick items with name[i]",
            (_p("chunks", int), _p("dim", _Int, 0)),
            one,
            x,
            _method("chunk", ("chunks",)),
            tuple_output=True,
        ),
        OpType("reshape", "x.reshape(shape)", (_p("shape", _Sizes),), one, x, _method("reshape", star="shape")),
        OpType("view", "x.view(shape)", (_p("shape", _Sizes),), one, x, _method("view", star="shape")),
        OpType(
            "flatten",
            "x.flatten(start_dim, end_dim)",
            (_p("start_dim", _Int, 0), _p("end_dim", _Int, -1)),
            one,
            x,
            _method("flatten", ("start_dim", "end_dim")),
        ),
        OpType(
            "unflatten",
            "x.unflatten(dim, sizes)",
            (_p("dim", _Int), _p("sizes", _Sizes)),
            one,
            x,
            _method("unflatten", ("dim", "sizes")),
        ),
        OpType(
            "transpose",
            "x.transpose(dim0, dim1)",
            (_p("dim0", _Int), _p("dim1", _Int)),
            one,
            x,
            _method("transpose", ("dim0", "dim1")),
        ),
        OpType("permute", "x.permute(dims)", (_p("dims", _Sizes),), one, x, _method("permute", star="dims")),
        OpType("contiguous", "x.contiguous()", (), one, x, _method("contiguous")),
        OpType("squeeze", "x.squeeze(dim)", (_p("dim", _Int),), one, x, _method("squeeze", ("dim",))),
        OpType("unsqueeze", "x.unsqueeze(dim)", (_p("dim", _Int),), one, x, _method("unsqueeze", ("dim",))),
        OpType("softmax", "x.softmax(dim)", (_p("dim", _Int),), one, x, _method("softmax")),
        OpType("log_softmax", "x.log_softmax(dim)", (_p("dim", _Int),), one, x, _method("log_softmax")),
        OpType(
            "mean",
            "x.mean(dim, keepdim)",
            (_p("dim", _Dim | list[int], None), _p("keepdim", bool, False)),
            one,
            x,
            _method("mean"),
        ),
        OpType(
            "sum",
            "x.sum(dim, keepdim)",
            (_p("dim", _Dim | list[int], None), _p("keepdim", bool, False)),
            one,
            x,
            _method("sum"),
        ),
        OpType(
            "select",
            "x.select(dim, index): one position, e.g. the last token with [1, -1]",
            (_p("dim", _Int), _p("index", _Int)),
            one,
            x,
            _select,
        ),
        OpType(
            "slice",
            "x[..., start:end:step] along dim",
            (_p("dim", _Int), _p("start", _Dim, None), _p("end", _Dim, None), _p("step", _Dim, None)),
            one,
            x,
            _slice,
        ),
        OpType("to", "x.to(dtype)", (_p("dtype", Literal[_DTYPE_NAMES]),), one, x, _to),
        OpType(
            "arange",
            "torch.arange(x.size(dim)) on x's device: positions 0..n-1",
            (_p("dim", _Int, 1),),
            one,
            x,
            _arange,
        ),
        OpType(
            "causal_mask",
            "a [n, n] boolean lower-triangular mask, n = x.size(dim): True where attention may look",
            (_p("dim", _Int, 1),),
            one,
            x,
            _causal_mask,
        ),
        OpType(
            "attention",
            "F.scaled_dot_product_attention(q, k, v, mask); dropout_p only in training",
            (_p("is_causal", bool, False), _p("dropout_p", float, 0.0), _p("scale", float | None, None)),
            (3, 4),
            ("q", "k", "v", "mask"),
            _attention,
        ),
        OpType(
            "masked_fill",
            "x.masked_fill(mask, value)",
            (_p("value", float),),
            two,
            ("x", "mask"),
            _method("masked_fill", ("value",)),
        ),
        OpType(
            "pairwise_distance",
            "F.pairwise_distance(a, b, p)",
            (_p("p", float, 2.0),),
            two,
            ab,
            _function("torch.nn.functional.pairwise_distance"),
        ),
        OpType(
            "cosine_similarity",
            "F.cosine_similarity(a, b, dim)",
            (_p("dim", _Int, 1),),
            two,
            ab,
            _function("torch.nn.functional.cosine_similarity"),
        ),
    ]
    return {op.name: op for op in table}


OPS: dict[str, OpType] = _ops()


@functools.cache
def op_names() -> list[str]:
    return sorted(OPS)
