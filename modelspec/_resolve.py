"""Stage 3: a Spec -> a Resolved spec whose references are known to be sound.

Checks that every ``use`` names a declared block, that no block uses itself (directly
or through others: the cycle is spelled out), and warns about blocks never used. The
result orders blocks so that each is built after the blocks it uses.

Inside every graph: each ``in:`` and ``outputs:`` name is an input, a node, a param or a
buffer of that graph; nodes do not feed themselves (the cycle is spelled out); every
node, input and free tensor is read by something (nothing computed for nobody); names
do not collide (``a`` and ``a.b`` cannot both be layers).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, replace

from . import _registry as registry
from ._errors import Collector, did_you_mean, format_path
from ._nodes import (
    Call,
    Children,
    FreeTensor,
    Graph,
    GraphNode,
    Layer,
    Node,
    Op,
    Repeat,
    Seq,
    Use,
    iter_uses,
    subnodes,
)
from ._spec import Spec

__all__ = ["Resolved", "graph_order", "iter_graphs", "iter_uses", "resolve", "unused_params"]


@dataclass(frozen=True)
class Resolved:
    """A spec whose references resolve; ``order`` lists blocks dependencies-first."""

    spec: Spec
    order: tuple[str, ...]


def iter_graphs(node: Node) -> Iterator[Graph]:
    """Every graph inside ``node`` (itself included), outermost first."""
    if isinstance(node, Graph):
        yield node
    for sub in subnodes(node):
        yield from iter_graphs(sub)


def graph_order(graph: Graph) -> list[GraphNode] | list[str]:
    """The nodes in an order where each comes after the nodes it reads: the written
    order wherever it allows. A cycle is returned as the list of names around it."""
    by_name = {n.name: n for n in graph.nodes}
    done: set[str] = set()
    order: list[GraphNode] = []
    on_path: list[str] = []

    def visit(node: GraphNode) -> list[str] | None:
        if node.name in done:
            return None
        if node.name in on_path:
            return [*on_path[on_path.index(node.name) :], node.name]
        on_path.append(node.name)
        for ref in node.refs:
            if ref.name in by_name:
                cycle = visit(by_name[ref.name])
                if cycle:
                    return cycle
        on_path.pop()
        done.add(node.name)
        order.append(node)
        return None

    for node in graph.nodes:
        cycle = visit(node)
        if cycle:
            return cycle
    return order


def _forward(node: Node | Op, blocks: dict[str, Node]) -> inspect.Signature | None:
    """The inputs a graph node's module takes: its ``forward`` without ``self``."""
    seen: set[str] = set()
    while isinstance(node, Use) and node.block in blocks and node.block not in seen:
        seen.add(node.block)
        node = blocks[node.block]
    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    if isinstance(node, Repeat):  # one input: an nn.Sequential; several: the copies in a chain
        return _forward(node.body, blocks)
    if isinstance(node, (Seq, Children)):
        return inspect.Signature([inspect.Parameter("input", plain)])
    if isinstance(node, Graph):
        return inspect.Signature([inspect.Parameter(i.name, plain) for i in node.inputs])
    entry = registry.get_layer(node.type) if isinstance(node, Layer) else None
    if entry is None:
        return None
    return entry.forward_signature()


def _check_inputs(node: GraphNode, blocks: dict[str, Node], errors: Collector) -> None:
    """A module node's inputs must fit its forward: ``bad-arity`` before anything runs."""
    signature = _forward(node.body, blocks)
    if signature is None:
        return
    kinds = {p.kind for p in signature.parameters.values()}
    names = [p.name for p in signature.parameters.values() if p.kind != p.VAR_POSITIONAL]
    body = node.body
    what = body.type if isinstance(body, Layer) else f"block '{body.block}'" if isinstance(body, Use) else "it"
    for key, ref in node.kwargs:
        if key not in names and inspect.Parameter.VAR_KEYWORD not in kinds:
            hint = did_you_mean(key, names) or f"name one of {', '.join(names)}"
            errors.add("bad-arity", f"{what} has no input '{key}': its forward takes {', '.join(names)}", ref.path,
                       hint=hint)  # fmt: skip
            return
    try:
        signature.bind(*node.args, **dict(node.kwargs))
    except TypeError:
        required = [p.name for p in signature.parameters.values() if p.default is p.empty and p.kind in
                    (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
        count = len(node.args) + len(node.kwargs)
        errors.add(
            "bad-arity",
            f"{what} takes {len(required)} input{'s' if len(required) != 1 else ''} ({', '.join(required)})"
            + (f", up to {len(names)}" if len(names) > len(required) else "")
            + f"; the node gives {count}",
            (*node.path, "in"),
            hint=f"e.g. 'in: [{', '.join(required)}]'" if len(required) > 1 else "give it one input",
        )


def unused_params(graph: Graph) -> list[FreeTensor]:
    """The graph's free params that no node reads and no output returns. A ``ties:`` entry
    may still give one to a layer (``cls.predictions.bias`` is BERT's decoder bias): the build
    checks that against the qualified names (:func:`check_tied_params`)."""
    read = {r.name for n in graph.nodes for r in n.refs} | {r.name for r in graph.outputs}
    return [t for t in graph.tensors if t.kind == "param" and t.name not in read]


def _check_graph(graph: Graph, errors: Collector, blocks: dict[str, Node], tied: frozenset[str] = frozenset()) -> None:
    """``tied``: the parameter names of the spec's ``ties:``. An unread free param that a tie may
    name (its name ends the tie's) is left to the build, which knows the qualified names."""
    names: dict[str, tuple[str, object]] = {}
    for kind, name, path in [
        *(("input", i.name, i.path) for i in graph.inputs),
        *(("param" if t.kind == "param" else "buffer", t.name, t.path) for t in graph.tensors),
        *(("node", n.name, n.path) for n in graph.nodes),
    ]:
        if name in names:
            errors.add("duplicate-name", f"'{name}' names both {names[name][0]} and {kind}", path,
                       hint="give each input, node, param and buffer of a graph its own name")  # fmt: skip
        names.setdefault(name, (kind, path))
    layers = [n.name for n in graph.nodes if not isinstance(n.body, (Op, Call))]
    attributes = layers + [t.name for t in graph.tensors]
    for node in graph.nodes:
        if isinstance(node.body, Call) and node.body.target not in layers:
            kind = names[node.body.target][0] if node.body.target in names else None
            what = {None: "not a node", "node": "not a layer node", "input": "an input"}.get(kind, f"a {kind}")
            errors.add(
                "unknown-layer-node",
                f"'call: {node.body.target}': '{node.body.target}' is {what} of this graph; "
                "'call' runs a layer node's module again",
                node.body.path,
                hint=did_you_mean(node.body.target, layers) or f"layer nodes: {', '.join(layers) or 'none'}",
            )
    for name in attributes:
        for other in attributes:
            if other.startswith(name + "."):
                errors.add("name-conflict", f"'{other}' would nest inside '{name}', which is a layer or tensor",
                           names[other][1], hint=f"rename '{name}' or '{other}'")  # fmt: skip
                break
    read = {t.name for t in unused_params(graph) if any(n == t.name or n.endswith(f".{t.name}") for n in tied)}
    for ref in [*(r for n in graph.nodes for r in n.refs), *graph.outputs]:
        read.add(ref.name)
        if ref.name not in names:
            errors.add(
                "unknown-input",
                f"'{ref.name}' is not an input, node, param or buffer of this graph",
                ref.path,
                hint=did_you_mean(ref.name, names) or f"it has: {', '.join(names)}",
            )
    for node in graph.nodes:
        chained = (isinstance(node.body, Call) and node.body.times > 1) or isinstance(node.body, Repeat)
        if chained and node.kwargs and not node.args:
            errors.add("bad-repeat", "a repeat passes its first input from one copy to the next: give the inputs "
                       "as a list", (*node.path, "in"), hint="e.g. 'in: [h, mask]'")  # fmt: skip
        if isinstance(node.body, Call):  # the called layer's forward decides what it takes
            target = graph.node(node.body.target)
            if target is not None and not isinstance(target.body, (Op, Call)):
                _check_inputs(replace(node, body=target.body), blocks, errors)
        elif not isinstance(node.body, Op):
            _check_inputs(node, blocks, errors)
        if names[node.name][0] == "node" and any(r.name == node.name for r in node.refs):
            errors.add("graph-cycle", f"node '{node.name}' reads its own output", node.path,
                       hint="read an earlier node or an input")  # fmt: skip
    order = graph_order(graph)
    if order and isinstance(order[0], str) and len(order) > 2:
        cycle = [str(n) for n in order]
        at = next(n.path for n in graph.nodes if n.name == cycle[0])
        errors.add("graph-cycle", f"nodes read each other in a circle: {' -> '.join(cycle)}", at,
                   hint="data flows one way: one of these must read an earlier node")  # fmt: skip
    for kind, name, path in [
        *(("node", n.name, n.path) for n in graph.nodes),
        *(("input", i.name, i.path) for i in graph.inputs),
        *((t.kind, t.name, t.path) for t in graph.tensors),
    ]:
        if name not in read:
            fix = {
                "node": "read it in a later node's 'in:', list it in 'outputs:', or remove it",
                "input": f"read it in a node's 'in:' (e.g. 'in: {name}'), or remove it from 'inputs'",
            }.get(kind, f"read it in a node's 'in:' (e.g. 'in: [x, {name}]'), or remove it")
            errors.add(f"unused-{kind}", f"{kind} '{name}' is never read: nothing uses what it computes"
                       if kind == "node" else f"{kind} '{name}' is never read", path, hint=fix)  # fmt: skip


# ---------------------------------------------------------------- connections without an example
_D, _CONV = (1, 2, 3), ("Conv", "ConvTranspose")
#: layer type -> (the axis it reads and writes, its input size argument, its output size argument)
_SIZES: dict[str, tuple[str, str | None, str]] = {
    "Linear": ("features", "in_features", "out_features"),
    "LazyLinear": ("features", None, "out_features"),
    "Embedding": ("features", None, "embedding_dim"),
    **{f"{kind}{d}d": ("channels", "in_channels", "out_channels") for kind in _CONV for d in _D},
    **{f"Lazy{kind}{d}d": ("channels", None, "out_channels") for kind in _CONV for d in _D},
    **{f"BatchNorm{d}d": ("channels", "num_features", "num_features") for d in _D},
}  # fmt: skip
#: layers and ops whose output has the size of their input
_KEEPS = frozenset(
    {"ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "SELU", "Mish", "Softplus",
     "Hardtanh", "Hardswish", "Softmax", "LogSoftmax", "Dropout", "Identity", "neg", "abs", "exp", "relu", "gelu",
     "sigmoid", "tanh", "contiguous", "softmax", "log_softmax"}
)  # fmt: skip
#: layers that keep the channels (dim 1) but not the last dim
_KEEPS_CHANNELS = frozenset(
    {f"{kind}{d}d" for kind in ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "Dropout") for d in _D}
)


@dataclass(frozen=True)
class _Size:
    axis: str  # "features" (the last dim) or "channels" (dim 1)
    size: int
    by: str  # what gives it, for the message: "Linear(out_features=3) at model[0]"


class _Connections:
    """Without an example input the build runs no pass, so sizes that cannot meet would go
    unnoticed until the first forward: follow the sizes the spec states (a Linear's
    ``in_features`` after the ``out_features`` before it, a convolution's channels) along
    every edge, through layers that keep them, and report where they disagree."""

    def __init__(self, spec: Spec, errors: Collector) -> None:
        self.spec, self.errors = spec, errors
        self.reported: set[object] = set()

    def node(self, node: Node, incoming: _Size | None) -> _Size | None:
        if isinstance(node, Use):
            block = self.spec.blocks.get(node.block)
            return self.node(block, incoming) if block is not None else None
        if isinstance(node, Seq):
            for item in node.items:
                incoming = self.node(item, incoming)
            return incoming
        if isinstance(node, Children):
            for _, child in node.children:
                incoming = self.node(child, incoming)
            return incoming
        if isinstance(node, Graph):
            return self.graph(node, incoming)
        if isinstance(node, Repeat):  # the same body again: twice shows whether it fits itself
            for _ in range(min(node.count, 2)):
                incoming = self.node(node.body, incoming)
            return incoming
        return self.layer(node, incoming)

    def layer(self, node: Layer, incoming: _Size | None) -> _Size | None:
        if node.type in _KEEPS:
            return incoming
        if node.type in _KEEPS_CHANNELS:
            return incoming if incoming is not None and incoming.axis == "channels" else None
        if node.type not in _SIZES:
            return None
        axis, takes, gives = _SIZES[node.type]
        want = node.values.get(takes) if takes else None
        if (
            incoming is not None
            and incoming.axis == axis
            and isinstance(want, int)
            and want != incoming.size
            and node.path not in self.reported
        ):
            self.reported.add(node.path)
            self.errors.add(
                "cannot-connect",
                f"{node.type}({takes}={want}) cannot take what comes before it: {incoming.by} gives "
                f"{incoming.size} {axis}",
                node.path,
                hint=f"make the sizes agree ({takes}: {incoming.size}?); with 'input: {{shape: [...]}}' the build "
                "also checks every shape",
            )
        out = node.values.get(gives)
        by = f"{node.type}({gives}={out}) at {format_path(node.path)}"
        return _Size(axis, out, by) if isinstance(out, int) else None

    def graph(self, graph: Graph, incoming: _Size | None) -> _Size | None:
        order = graph_order(graph)
        if order and isinstance(order[0], str):
            return None  # a cycle: reported by the graph checks
        sizes: dict[str, _Size | None] = {i.name: incoming if len(graph.inputs) == 1 else None for i in graph.inputs}
        for gn in order:
            assert isinstance(gn, GraphNode)
            first = gn.args[0] if len(gn.args) == 1 and not gn.kwargs else None
            given = sizes.get(first.name) if first is not None and not first.index else None
            if isinstance(gn.body, Op):
                sizes[gn.name] = given if gn.body.type in _KEEPS else None
            elif isinstance(gn.body, Call):  # the called layer's output again
                sizes[gn.name] = sizes.get(gn.body.target)
            else:
                sizes[gn.name] = self.node(gn.body, given)
        out = graph.outputs[0] if len(graph.outputs) == 1 and not graph.many else None
        return sizes.get(out.name) if out is not None and not out.index else None


def _has_example(spec: Spec, node: Node) -> bool:
    if isinstance(node, Graph) and any(i.example is not None for i in node.inputs):
        return True
    return spec.input is not None


def resolve(spec: Spec) -> Resolved:
    """Check block references; raise :class:`SpecError` on unknown or cyclic ones."""
    errors = Collector(file=spec.file, positions=spec.positions)
    errors.items.extend(spec.warnings)
    deps = {name: [u for u in iter_uses(node)] for name, node in spec.blocks.items()}
    used: set[str] = set()
    for node in [*spec.roots.values(), *spec.blocks.values()]:
        for use in iter_uses(node):
            if use.block in spec.blocks:
                used.add(use.block)
            else:  # also `use: ''`: the parser only checks that it is a string
                errors.add(
                    "unknown-block",
                    f"unknown block '{use.block}'",
                    use.path,
                    hint=did_you_mean(use.block, spec.blocks)
                    or (f"declared blocks: {', '.join(spec.blocks)}" if spec.blocks else "declare it under 'blocks:'"),
                )

    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            where = next(u.path for u in deps[trail[-1]] if u.block == name)
            errors.add(
                "block-cycle",
                f"block '{name}' uses itself: {' -> '.join(cycle)}",
                where,
                hint="a block cannot contain itself; use a different block inside it",
            )
            return
        state[name] = 1
        for use in deps[name]:
            if use.block in spec.blocks:
                visit(use.block, [*trail, name])
        state[name] = 2
        order.append(name)

    for name in spec.blocks:
        visit(name, [])
    for name in spec.blocks:
        if name not in used:
            errors.add(
                "unused-block",
                f"block '{name}' is declared but never used",
                ("blocks", name),
                hint=f"remove it, or place it with '{{use: {name}}}'",
                severity="warning",
            )
    tied = frozenset(name for t in spec.ties for name in (t.param, t.to))
    for root in [*spec.blocks.values(), *spec.roots.values()]:
        for graph in iter_graphs(root):
            _check_graph(graph, errors, spec.blocks, tied)
    errors.raise_if_errors()  # the sizes below follow only sound references
    connections = _Connections(spec, errors)
    for root in spec.roots.values():
        if not _has_example(spec, root):
            connections.node(root, None)
    errors.raise_if_errors()
    return Resolved(spec=_with_warnings(spec, errors), order=tuple(order))


def _with_warnings(spec: Spec, errors: Collector) -> Spec:
    from dataclasses import replace

    return replace(spec, warnings=tuple(errors.warnings))
