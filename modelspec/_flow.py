"""Graphs -> ``torch.fx.GraphModule``: a generated ``forward``, nothing interpreted per call.

A graph's layer nodes are built in the order they are written (so parameters are
initialized, and ``state_dict`` keys listed, in that order, as in a handwritten
``__init__``) and placed under their names; dotted names (``transformer.wte``) nest them
in ``nn.ModuleDict`` containers. The ``torch.fx.Graph`` is then written node by node
from the spec, in an order where each node follows the nodes it reads (the written
order wherever it allows). The model is never traced: tracing drops the second name of a
module used twice (see TIES-IN-TORCH.md), while a GraphModule built from a graph calls
each target by the name the spec gave it.

The GraphModule holds exactly the children built here (the very objects, so ``{use:
block}`` under two names is one module), its free parameters and buffers; ``print(
model.code)`` shows the generated forward.
"""

from __future__ import annotations

import copy
import itertools
import operator
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.fx as fx
import torch.nn as nn

from ._errors import UsageError
from ._memory import allocating, tensor_bytes
from ._nodes import Call, FreeTensor, Graph, GraphNode, Op, Ref, Repeat
from ._resolve import graph_order

if TYPE_CHECKING:
    from ._build import _Builder

__all__ = ["GraphInfo", "SpecGraphModule", "build_graph", "place"]


@dataclass(frozen=True)
class GraphInfo:
    """What a built GraphModule came from: its graph, and the spec node of each fx node."""

    graph: Graph
    nodes: dict[str, GraphNode]  # fx node name -> the spec's node it computes (ops: the last fx node)
    picks: dict[str, Ref]  # fx node name of an item picked from a tuple -> the reference that picks it


def place(root: nn.Module, name: str, value: nn.Module | torch.Tensor, *, buffer: bool = False,
          persistent: bool = True) -> None:  # fmt: skip
    """Put ``value`` at the dotted ``name`` under ``root``, creating containers on the way."""
    *prefix, last = name.split(".")
    owner = root
    for part in prefix:
        child = owner._modules.get(part)
        if child is None:
            child = nn.ModuleDict()
            owner.add_module(part, child)
        owner = child
    if isinstance(value, nn.Module):
        owner.add_module(last, value)
    elif buffer:
        owner.register_buffer(last, value, persistent=persistent)
    else:
        assert isinstance(value, nn.Parameter)
        owner.register_parameter(last, value)


def _free_tensor(t: FreeTensor) -> torch.Tensor:
    """A free parameter or buffer, initialized as the spec says (draws are portable: see _rng)."""
    spec = t.spec
    dtype = getattr(torch, spec.dtype)
    init = spec.init
    if init == "ones":
        value = torch.ones(spec.shape, dtype=dtype)
    elif init == "zeros":
        value = torch.zeros(spec.shape, dtype=dtype)
    elif "normal" in init:
        value = torch.empty(spec.shape, dtype=dtype).normal_(init["normal"]["mean"], init["normal"]["std"])
    else:
        value = torch.empty(spec.shape, dtype=dtype).uniform_(init["uniform"]["low"], init["uniform"]["high"])
    return nn.Parameter(value) if t.kind == "param" else value


class _NodeName(str):
    """A reference to an earlier fx node, by name, in :func:`_graph_rows`."""


def _graph_rows(g: fx.Graph) -> list[tuple[Any, ...]]:
    """The graph as plain picklable rows (op, name, target, args, kwargs), node references by name."""
    return [
        (n.op, n.name, n.target, fx.node.map_arg(n.args, lambda a: _NodeName(a.name)),
         fx.node.map_arg(n.kwargs, lambda a: _NodeName(a.name)))
        for n in g.nodes
    ]  # fmt: skip


def _graph_from_rows(rows: list[tuple[Any, ...]]) -> fx.Graph:
    g = fx.Graph()
    env: dict[str, fx.Node] = {}

    def arg(a: Any) -> Any:
        return env[a] if isinstance(a, _NodeName) else a

    for op, name, target, args, kwargs in rows:
        args, kwargs = fx.node.map_aggregate(args, arg), fx.node.map_aggregate(kwargs, arg)
        env[name] = g.create_node(op, target, args, kwargs, name=name)
    return g


def _restore(state: dict[str, Any], rows: list[tuple[Any, ...]]) -> SpecGraphModule:
    """Unpickle a :class:`SpecGraphModule`: the same children, tensors and generated code."""
    module = SpecGraphModule.__new__(SpecGraphModule)
    module.__dict__.update(state)
    module.graph = _graph_from_rows(rows)  # generates forward
    type(module).__name__ = "GraphModule"
    return module


class SpecGraphModule(fx.GraphModule):
    """A GraphModule that keeps, through ``copy.deepcopy`` and pickling, exactly what the
    build gave it: every child under every name (a block used as ``a`` and ``b`` stays one
    object under both), non-persistent buffers, and its graph as built.

    ``fx.GraphModule`` itself copies by re-running its ``__init__`` (which keeps only the
    children its graph calls, in call order, and forgets which buffers are persistent)
    and pickles by re-tracing the generated code (which calls a module used twice by its
    first name only)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> SpecGraphModule:
        copied = SpecGraphModule.__new__(SpecGraphModule)
        memo[id(self)] = copied
        state = {k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k != "_graph"}
        copied.__dict__.update(state)
        copied.graph = copy.deepcopy(self.graph, memo)  # generates forward
        type(copied).__name__ = type(self).__name__
        return copied

    #: TorchScript compiles properties unless told not to
    __jit_unused_properties__: ClassVar[list[str]] = [*fx.GraphModule.__jit_unused_properties__, "code"]

    def recompile(self) -> Any:
        if getattr(_MAKING, "one", False):
            # a graph module build_graph makes generates its forward when it is first needed
            # (called, inspected, moved off meta): a model built to be counted or reported
            # (a 70B spec on meta: 241 graphs) never needs the code
            type(self).forward = _forward_on_first_call
            return None
        return self._generate()

    def _generate(self) -> Any:
        code = super().recompile()
        # fx wraps __call__ to print the generated source to stderr when forward raises;
        # a library does not print (the traceback still shows the generated line).
        type(self).__call__ = nn.Module.__call__
        return code

    def _recompile_submodules(self) -> list[Any]:
        # each graph module generates its own forward (when its graph is set, or when first
        # needed): fx would generate every descendant's again, once per level above it
        return []

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        out = super()._apply(fn, recurse)
        # moved off meta (to_empty, .to, .cuda): it is about to run, perhaps under torch.compile,
        # which must see the generated forward, not the one that generates it
        waits = "_code" not in self.__dict__  # checked first: a generated one walks no tensors
        if waits and not any(t.is_meta for t in itertools.chain(self.parameters(), self.buffers())):
            self._generate()
        return out

    def ensure_code(self) -> None:
        """Generate the forward now if it waits for its first call."""
        if "_code" not in self.__dict__:
            self._generate()

    @property
    def code(self) -> str:
        self.ensure_code()
        return super().code

    def __str__(self) -> str:
        self.ensure_code()
        return super().__str__()

    def __reduce__(self) -> tuple[Any, ...]:
        state = {k: v for k, v in self.__dict__.items() if k != "_graph"}
        return (_restore, (state, _graph_rows(self.graph)))


#: per thread: set while build_graph makes a SpecGraphModule (its forward can wait)
_MAKING = threading.local()


def _forward_on_first_call(self: SpecGraphModule, *args: Any, **kwargs: Any) -> Any:
    """The forward of a graph module whose code is not generated yet: generate, then run it."""
    self._generate()
    return self.forward(*args, **kwargs)


def generate_code(module: nn.Module) -> None:
    """Generate the forward of every graph module in ``module`` that waits for its first call
    (before anything inspects ``forward`` itself: ``torch.compile``, ``torch.export``)."""
    for m in module.modules():
        if isinstance(m, SpecGraphModule):
            m.ensure_code()


def _chain(g: fx.Graph, targets: list[str], args: tuple[Any, ...], kwargs: dict[str, Any], node: GraphNode,
           sources: dict[str, GraphNode]) -> fx.Node:  # fmt: skip
    """Call ``targets`` one after another: the first with ``args``, each next one with the
    previous output in place of the first argument."""
    out: fx.Node | None = None
    for i, target in enumerate(targets):
        out = g.call_module(target, args if out is None else (out, *args[1:]), kwargs)
        if i < len(targets) - 1:
            out._rename(f"{node.name.replace('.', '_')}_{i}")
            sources[out.name] = node
    assert out is not None
    return out


def build_graph(graph: Graph, builder: _Builder) -> fx.GraphModule:
    """Build ``graph``'s modules and tensors, then generate its forward."""
    root = nn.Module()
    for t in graph.tensors:
        dtype = getattr(torch, t.spec.dtype)
        try:
            what = f"{t.kind} '{t.name}' {t.spec.shape}"
            with allocating(tensor_bytes(t.spec.shape, dtype), torch.get_default_device(), what, "make it smaller"):
                value = _free_tensor(t)
        except UsageError as e:  # a size the spec states but this machine cannot hold
            builder.errors.add("too-large", str(e).split(";")[0], t.path,
                               hint="see the sizes without allocating: --device meta")  # fmt: skip
            value = torch.empty(t.spec.shape if e.code != "too-large" else [0], dtype=dtype, device="meta")
            value = nn.Parameter(value) if t.kind == "param" else value
        place(root, t.name, value, buffer=t.kind == "buffer", persistent=t.spec.persistent)
    for node in graph.nodes:  # written order: initialization and state_dict order
        if not isinstance(node.body, (Op, Call)):
            module = builder.node(node.body)
            place(root, node.name, module)
            builder.paths.setdefault(id(module), node.path)

    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    picked: dict[str, fx.Node] = {}
    for i in graph.inputs:
        env[i.name] = g.placeholder(i.name)
    for t in graph.tensors:
        env[t.name] = g.get_attr(t.name)

    picks: dict[str, Ref] = {}

    def value(ref: Ref) -> Any:
        out = env[ref.name]
        for k in range(len(ref.index)):
            key = f"{ref.name}{''.join(f'[{i}]' for i in ref.index[: k + 1])}"
            if key not in picked:  # lstm_0 = lstm[0]
                picked[key] = g.call_function(operator.getitem, (out, ref.index[k]))
                picked[key]._rename(re.sub(r"\W+", "_", key.replace("-", "m")).strip("_"))
                picks[picked[key].name] = Ref(key, (), ref.path)
            out = picked[key]
        return out

    sources: dict[str, GraphNode] = {}
    order = graph_order(graph)
    for node in order:
        assert isinstance(node, GraphNode)  # the resolver refused cycles
        args = tuple(value(r) for r in node.args)
        kwargs = {k: value(r) for k, r in node.kwargs}
        if isinstance(node.body, Op):
            out = node.body.entry.emit(g, args, dict(node.body.values))
        elif isinstance(node.body, Call):
            out = _chain(g, [node.body.target] * node.body.times, args, kwargs, node, sources)
        elif isinstance(node.body, Repeat) and len(args) + len(kwargs) > 1:
            # several inputs: the copies cannot run as an nn.Sequential; each gets the one before's output
            # as its first input and the other inputs as they are (a transformer layer and its mask)
            out = _chain(g, [f"{node.name}.{i}" for i in range(node.body.count)], args, kwargs, node, sources)
        else:
            out = g.call_module(node.name, args, kwargs)
        out._rename(node.name.replace(".", "_"))
        env[node.name] = out
        sources[out.name] = node
    if graph.many:
        g.output(tuple(value(r) for r in graph.outputs))
    else:
        g.output(value(graph.outputs[0]))
    g.lint()
    _MAKING.one = True
    try:
        module = SpecGraphModule(root, g, class_name="GraphModule")
    finally:
        _MAKING.one = False
    # fx copied the targets it needs, with plain nn.Module() containers: hold exactly the
    # objects built here instead, in the written order.
    module._modules = OrderedDict(root._modules)
    module._parameters = OrderedDict(root._parameters)
    module._buffers = OrderedDict(root._buffers)
    module._non_persistent_buffers_set = set(root._non_persistent_buffers_set)
    builder.graphs[id(module)] = GraphInfo(graph, sources, picks)
    return module
