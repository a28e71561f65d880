"""The node grammar: every kind of node, defined once.

A *node* is one of:

=====================================  ==============================================
``ReLU``                               a layer without arguments (bare class name)
``{Linear: [20, 64]}``                 a layer with positional arguments
``{LazyLinear: {out_features: 8}}``    a layer with keyword arguments
``{Conv2d: [3, 16, {padding: 1}]}``    positional arguments, then keywords
``[node, node, ...]``                  ``nn.Sequential`` (children ``0``, ``1``, ...)
``{net: node, linear: node}``          named children, run in order (lowercase names)
``{use: shared}``                      the named block ``shared``: the same object
``{inputs: .., nodes: .., outputs: ..}``  a data-flow graph: a generated ``torch.fx.GraphModule``
=====================================  ==============================================

Inside a graph's ``nodes:`` an entry may also be an *op* (``{add: null, in: [a, b]}``,
see :mod:`modelspec._ops`) and any entry may name its inputs with ``in:``.

Each kind is a frozen dataclass here with, side by side: how it is recognised and
parsed (:class:`NodeParser`), its canonical data (``to_data``: what the spec hash is
computed from; v1 kinds keep v1's form, so v1 hashes are unchanged; ``entry_data``: the
same as an entry of a graph's ``nodes:``, a mapping that can take ``in``), the nodes it
contains (``subnodes``: what the resolver walks for ``use`` references) and its JSON
Schema (:func:`schema_defs`). Building is in ``_build`` (modules: one dispatch on these
classes) and ``_flow`` (graphs). A new kind is one class here, its case in
``NodeParser``, its schema entry and its case in the builder.

Mapping keys that start with an upper-case letter are layer types; lower-case keys are
child names. That keeps the two apart and lets a typo ``Lienar`` be reported as an
unknown layer with a suggestion instead of being taken for a child.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import torch.fx as fx
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from . import _registry as registry
from ._errors import Collector, SpecPath, closest, did_you_mean
from ._ops import OPS, OpType

__all__ = [
    "DTYPES",
    "GRAPH_KEYS",
    "Call",
    "Children",
    "FreeTensor",
    "Graph",
    "GraphInput",
    "GraphNode",
    "InputSpec",
    "Layer",
    "Node",
    "NodeParser",
    "Op",
    "Ref",
    "Seq",
    "Use",
    "iter_uses",
    "node_to_data",
    "schema_defs",
    "subnodes",
]

DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
CHILD = re.compile(r"^[a-z_][A-Za-z0-9_]*$")
#: Graph node names: identifiers; module nodes, params and buffers may be dotted
#: (``transformer.wte``: a container ``transformer`` holding ``wte``).
NODE_NAME = re.compile(r"^[a-z_][A-Za-z0-9_]*$")
DOTTED_NAME = re.compile(r"^[a-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)((?:\[-?[0-9]+\])*)$")
GRAPH_KEYS = ("inputs", "nodes", "outputs", "params", "buffers")
#: Names nn.Sequential / nn.ModuleDict / fx.GraphModule use themselves: no child,
#: model or graph node can take them.
RESERVED_CHILD_NAMES = frozenset(dir(nn.Sequential())) | {"use", "in", *GRAPH_KEYS}
RESERVED_GRAPH_NAMES = frozenset(dir(fx.GraphModule(nn.Module(), fx.Graph()))) | {"in"}
RESERVED_CONTAINER_NAMES = frozenset(dir(nn.ModuleDict()))
#: Keywords of later format versions -> what they will do, and what to write today.
RESERVED: dict[str, tuple[str, str]] = {
    "repeat": ("repeating a node", "write the copies out; a YAML anchor and aliases give independent copies"),
    "vars": ("variables", "write the values out"),
    "init": ("initialization settings", "set 'seed'; initialize further in Python after modelspec.build"),
    "trainable": ("freezing parameters", "call requires_grad_(False) in Python after modelspec.build"),
    "plugins": ("plugins", "remove it: layers come from torch.nn only"),
    "overrides": ("overriding parts of a spec", "edit the spec itself"),
}
_CONTAINER_HINTS = {
    "Sequential": "a YAML list builds nn.Sequential: write the layers as a list",
    "ModuleList": "a YAML list builds nn.Sequential: write the layers as a list",
    "ModuleDict": "a mapping of lower-case names builds named children",
}


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


# ---------------------------------------------------------------- the node IR
@dataclass(frozen=True)
class Layer:
    """One ``torch.nn`` layer. ``arguments`` are as written (JSON), bound by name;
    ``modules`` are the arguments that take a module (a node each)."""

    type: str
    arguments: dict[str, Any]
    values: dict[str, Any]  # the plain arguments, validated for the constructor (tuples, ...)
    path: SpecPath
    modules: tuple[tuple[str, Node], ...] = ()

    def to_data(self, ordered: bool = False) -> Any:
        arguments = self._arguments(ordered)
        return {self.type: arguments} if arguments else self.type

    def entry_data(self, ordered: bool = False) -> dict[str, Any]:
        return {self.type: self._arguments(ordered) or None}

    def _arguments(self, ordered: bool) -> dict[str, Any]:
        if not ordered or not self.modules:
            return dict(self.arguments)
        modules = dict(self.modules)
        return {k: modules[k].to_data(ordered) if k in modules else v for k, v in self.arguments.items()}

    def subnodes(self) -> Iterator[Node]:
        yield from (m for _, m in self.modules)


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]
    path: SpecPath

    def to_data(self, ordered: bool = False) -> Any:
        return [n.to_data(ordered) for n in self.items]

    def entry_data(self, ordered: bool = False) -> dict[str, Any]:
        return {"Sequential": self.to_data(ordered)}  # a graph entry: a mapping, so that it can take 'in'

    def subnodes(self) -> Iterator[Node]:
        yield from self.items


@dataclass(frozen=True)
class Children:
    children: tuple[tuple[str, Node], ...]
    path: SpecPath

    def to_data(self, ordered: bool = False) -> Any:
        # v1's form, also for the hash: v1 hashes must not change (so the order of named
        # children is not in the hash; see the README's note on hashes)
        return {k: v.to_data(ordered) for k, v in self.children}

    def entry_data(self, ordered: bool = False) -> dict[str, Any]:
        return self.to_data(ordered)

    def subnodes(self) -> Iterator[Node]:
        yield from (child for _, child in self.children)


@dataclass(frozen=True)
class Use:
    block: str
    path: SpecPath

    def to_data(self, ordered: bool = False) -> Any:
        return {"use": self.block}

    def entry_data(self, ordered: bool = False) -> dict[str, Any]:
        return self.to_data()

    def subnodes(self) -> Iterator[Node]:
        yield from ()


@dataclass(frozen=True)
class Ref:
    """A reference in ``in:``/``outputs:``: a name, then items picked from a tuple (``lstm[0]``)."""

    name: str
    index: tuple[int, ...]
    path: SpecPath

    def __str__(self) -> str:
        return self.name + "".join(f"[{i}]" for i in self.index)


@dataclass(frozen=True)
class Op:
    """A parameterless tensor operation in a graph (:mod:`modelspec._ops`)."""

    type: str
    arguments: dict[str, Any]
    values: dict[str, Any]
    path: SpecPath

    @property
    def entry(self) -> OpType:
        return OPS[self.type]

    def to_data(self, ordered: bool = False) -> Any:
        return {self.type: dict(self.arguments) or None}

    def entry_data(self, ordered: bool = False) -> dict[str, Any]:
        return self.to_data()


@dataclass(frozen=True)
class Call:
    """Calls the module of an earlier layer node of the same graph again, under its one
    name: ``emb_b: {call: trunk, in: b}`` (a siamese trunk; a ReLU used twice)."""

    target: str
    path: SpecPath

    def to_data(self, ordered: bool = False) -> Any:
        return {"call": self.target}

    def entry_data(self, ordered: bool = False) -> dict[str, Any]:
        return self.to_data()


@dataclass(frozen=True)
class GraphNode:
    """One entry of a graph's ``nodes:``: a module (any node) or an op, and its inputs."""

    name: str
    body: Node | Op | Call
    args: tuple[Ref, ...]
    kwargs: tuple[tuple[str, Ref], ...]
    path: SpecPath

    @property
    def refs(self) -> tuple[Ref, ...]:
        return (*self.args, *(r for _, r in self.kwargs))

    def to_data(self, ordered: bool = False) -> Any:
        data = self.body.entry_data(ordered)
        data["in"] = {k: str(r) for k, r in self.kwargs} if self.kwargs else [str(r) for r in self.args]
        return data


@dataclass(frozen=True)
class FreeTensor:
    """A named parameter or buffer of a graph."""

    name: str
    kind: Literal["param", "buffer"]
    spec: TensorSpec
    path: SpecPath

    def to_data(self) -> Any:
        data = self.spec.model_dump(exclude_defaults=False)
        if self.kind == "param":
            data.pop("persistent")
        return data


@dataclass(frozen=True)
class GraphInput:
    name: str
    example: InputSpec | None
    path: SpecPath


@dataclass(frozen=True)
class Graph:
    """A data-flow graph: named inputs, nodes in order, outputs; built as a GraphModule."""

    inputs: tuple[GraphInput, ...]
    nodes: tuple[GraphNode, ...]
    outputs: tuple[Ref, ...]
    many: bool  # outputs written as a list: forward returns a tuple
    tensors: tuple[FreeTensor, ...]
    path: SpecPath

    def to_data(self, ordered: bool = False) -> Any:
        """``ordered``: for the hash, which sorts mapping keys, the mappings whose order
        means something (nodes and tensors: initialization and ``state_dict`` order;
        inputs: ``forward``'s signature) become lists of ``[name, value]`` pairs."""

        def mapping(pairs: list[tuple[str, Any]]) -> Any:
            return [list(p) for p in pairs] if ordered else dict(pairs)

        data: dict[str, Any] = {}
        if any(i.example is not None for i in self.inputs):
            data["inputs"] = mapping([(i.name, i.example.model_dump() if i.example else None) for i in self.inputs])
        else:
            data["inputs"] = [i.name for i in self.inputs]
        data["nodes"] = mapping([(n.name, n.to_data(ordered)) for n in self.nodes])
        data["outputs"] = [str(r) for r in self.outputs] if self.many else str(self.outputs[0])
        for kind, key in (("param", "params"), ("buffer", "buffers")):
            mine = [(t.name, t.to_data()) for t in self.tensors if t.kind == kind]
            if mine:
                data[key] = mapping(mine)
        return data

    def entry_data(self, ordered: bool = False) -> dict[str, Any]:
        return self.to_data(ordered)

    def subnodes(self) -> Iterator[Node]:
        yield from (n.body for n in self.nodes if not isinstance(n.body, (Op, Call)))

    def node(self, name: str) -> GraphNode | None:
        return next((n for n in self.nodes if n.name == name), None)


Node = Layer | Seq | Children | Use | Graph


def node_to_data(node: Node, ordered: bool = False) -> Any:
    """The node in canonical surface form (arguments by name); valid input itself.
    ``ordered``: the form the spec hash is computed from (see :meth:`Graph.to_data`)."""
    return node.to_data(ordered)


def subnodes(node: Node) -> Iterator[Node]:
    """The nodes directly inside ``node`` (module arguments and graph entries included)."""
    return node.subnodes()


def iter_uses(node: Node) -> Iterator[Use]:
    """Every ``use`` inside ``node``, in document order."""
    if isinstance(node, Use):
        yield node
    for sub in subnodes(node):
        yield from iter_uses(sub)


# ---------------------------------------------------------------- parsing
def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def reserved(errors: Collector, key: str, path: SpecPath, *, as_name: bool = False) -> None:
    purpose, instead = RESERVED[key]
    if as_name:
        hint = "choose another name"
    elif len(path) > 1:  # a node key: meant as the keyword, or as a child's name
        hint = f"{instead}; to name a child, choose another name"
    else:
        hint = instead
    errors.add(
        "reserved",
        f"'{key}' is not supported yet: the keyword is reserved for {purpose} in a later version of modelspec",
        path,
        hint=hint,
    )


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _split_args(value: Any) -> tuple[list[Any], dict[str, Any]]:
    """A layer's or op's value -> (positional, keywords): null, one value, a list, a mapping."""
    if value is None:
        return [], {}
    if isinstance(value, list):
        args = list(value)
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        return args, kwargs
    if isinstance(value, dict):
        return [], value
    return [value], {}


class NodeParser:
    """Plain data -> node IR, collecting every problem with its path."""

    def __init__(self, errors: Collector) -> None:
        self.errors = errors

    # -- any node
    def node(self, raw: Any, path: SpecPath) -> Node:
        if isinstance(raw, str):
            return self.layer(raw, None, path, path)
        if isinstance(raw, list):
            if not raw:
                self.errors.add("empty-node", "an empty list builds nothing", path, hint="list at least one layer")
            return Seq(tuple(self.node(item, (*path, i)) for i, item in enumerate(raw)), path)
        if isinstance(raw, dict):
            return self.mapping(raw, path)
        self.errors.add(
            "wrong-type",
            f"expected a layer, a list or a mapping, got {kind_of(raw)} {raw!r}",
            path,
            hint="write a layer as 'ReLU' or '{Linear: [20, 64]}'",
        )
        return Seq((), path)

    def mapping(self, raw: dict[str, Any], path: SpecPath) -> Node:
        if not raw:
            self.errors.add("empty-node", "an empty mapping builds nothing", path)
            return Seq((), path)
        if any(k in RESERVED for k in raw):
            for key in raw:
                if key in RESERVED:
                    reserved(self.errors, key, (*path, key))
            raw = {k: v for k, v in raw.items() if k not in RESERVED}  # check what is left
            if not raw:
                return Seq((), path)
        if "in" in raw:
            self.errors.add(
                "misplaced-in",
                "'in' names a node's inputs, which only nodes of a graph have",
                (*path, "in"),
                hint="make the enclosing block a graph ('inputs:', 'nodes:', 'outputs:'), or remove 'in'",
            )
            raw = {k: v for k, v in raw.items() if k != "in"}
            if not raw:
                return Seq((), path)
        if any(k in GRAPH_KEYS for k in raw):
            return self.graph(raw, path)
        if "use" in raw:
            if len(raw) > 1:
                others = ", ".join(k for k in raw if k != "use")
                self.errors.add(
                    "bad-use",
                    f"'use' stands alone; also found: {others}",
                    path,
                    hint="to combine a block with other layers, put both in a list",
                )
            if not isinstance(raw["use"], str):
                self.errors.add("wrong-type", f"'use' takes a block name, got {kind_of(raw['use'])}", (*path, "use"))
                return Use("", (*path, "use"))
            return Use(raw["use"], (*path, "use"))
        types = [k for k in raw if k[:1].isupper()]
        if types:
            slipped = self.misindented(raw, types, path)
            if slipped is not None:
                return slipped
            if len(raw) > 1:
                self.errors.add(
                    "bad-layer",
                    f"a layer is a mapping with one key, the layer type; found {', '.join(raw)}",
                    path,
                    hint="put several layers in a list, or give children lower-case names",
                )
            return self.layer(types[0], raw[types[0]], path, (*path, types[0]))
        children = []
        for name, value in raw.items():
            if name in RESERVED_CHILD_NAMES:
                self.errors.add(
                    "bad-name",
                    f"'{name}' cannot name a child: nn.Sequential, which holds the children, has an attribute '{name}'",
                    (*path, name),
                    hint=f"choose another name, e.g. '{name.strip('_')}_layer'",
                )
            elif not CHILD.match(name):
                self.errors.add(
                    "bad-name",
                    f"'{name}' is not a valid child name",
                    (*path, name),
                    hint=did_you_mean(name, registry.layer_names())
                    or "child names are lower-case identifiers, e.g. 'encoder'",
                )
            children.append((name, self.node(value, (*path, name))))
        return Children(tuple(children), path)

    def misindented(self, raw: dict[str, Any], types: list[str], path: SpecPath) -> Node | None:
        """The classic slip: a layer's arguments at the indent of its type, not under it::

            - Linear:
              in_features: 20      # YAML reads {Linear: null, in_features: 20, ...}

        One error at the layer with the fix, then the arguments are checked as meant.
        """
        entry = registry.get_layer(types[0])
        others = [k for k in raw if k != types[0]]
        if (
            len(types) != 1
            or raw[types[0]] is not None
            or not others
            or entry is None
            or not all(CHILD.match(k) for k in others)
            or not any(k in entry.param_names for k in others)
        ):
            return None
        names = _and([f"'{k}'" for k in others])
        type_at = self.errors.positions.get((*path, types[0]))
        arg_at = self.errors.positions.get((*path, others[0]))
        more = type_at[1] + 2 - arg_at[1] if type_at and arg_at and type_at[0] < arg_at[0] else 0
        fix = f"indent {names} {more} more spaces, under '{types[0]}:'" if more > 0 else None
        self.errors.add(
            "bad-indent",
            f"the arguments of '{types[0]}' are not indented under it: YAML reads {names} "
            f"as keys beside '{types[0]}', which then has no arguments",
            path,
            hint=fix or f"write them as '{types[0]}: {{{', '.join(f'{k}: ...' for k in others)}}}'",
            at=type_at,
        )
        return self.layer(types[0], {k: raw[k] for k in others}, path, path)

    # -- layers
    def layer(self, type_name: str, value: Any, path: SpecPath, arg_path: SpecPath) -> Layer:
        entry = registry.get_layer(type_name)
        if entry is None:
            hint = _CONTAINER_HINTS.get(type_name) or did_you_mean(type_name, registry.layer_names())
            if hint is None and type_name[:1].islower():
                hint = "layer types are torch.nn class names, e.g. 'ReLU'; named children go in a mapping"
            at = self.errors.position(arg_path)  # the type name the user typed
            self.errors.add("unknown-layer", f"unknown layer type '{type_name}'", path, hint=hint,
                            at=at if at[0] is not None else None)  # fmt: skip
            return Layer(type_name, {}, {}, path)
        args, kwargs = _split_args(value)
        # Arguments that take a module are nodes: parsed here, built before the layer.
        modules: list[tuple[str, Node]] = []
        written: dict[str, Any] = {}
        for i, p in enumerate(entry.params):
            if not p.takes_module:
                continue
            where: tuple[str | int, ...] | None = None
            if i < len(args) and args[i] is not None:
                given, where = args[i], (i,)
            elif kwargs.get(p.name) is not None:
                given, where = kwargs[p.name], (p.name,)
            if where is not None:
                if isinstance(where[0], int) or not isinstance(value, list):
                    full = (*arg_path, *where)
                else:
                    full = (*arg_path, len(value) - 1, *where)
                module = self.node(given, full)
                modules.append((p.name, module))
                written[p.name] = node_to_data(module)
        skip = frozenset(name for name, _ in modules)
        values, problems = registry.bind_arguments(entry, args, kwargs, modules=skip)
        for prob in problems:
            where = prob.where
            if where and isinstance(where[0], str) and isinstance(value, list):
                where = (len(value) - 1, *where)  # keywords sit in the list's last item
            self.errors.add(prob.code, prob.message, (*arg_path, *where), hint=prob.hint)
        arguments = {}
        for name in entry.param_names:
            if name in written:
                arguments[name] = written[name]
            elif name in values:
                i = entry.param_names.index(name)
                arguments[name] = args[i] if i < len(args) else kwargs[name]
        return Layer(type_name, arguments, values, path, tuple(modules))

    # -- graphs
    def graph(self, raw: dict[str, Any], path: SpecPath) -> Graph:
        for key in raw:
            if key not in GRAPH_KEYS:
                hint = did_you_mean(key, GRAPH_KEYS) or f"a graph takes {', '.join(GRAPH_KEYS)}"
                if key[:1].isupper() or key == "use":
                    hint = "put the layer under 'nodes:' with a name, e.g. 'nodes: {fc: {Linear: [4, 2]}}'"
                self.errors.add("unknown-key", f"unknown key '{key}' in a graph", (*path, key), hint=hint)
        inputs = self.graph_inputs(raw.get("inputs"), (*path, "inputs"), "inputs" in raw)
        tensors = [
            *self.tensors(raw.get("params"), (*path, "params"), "param"),
            *self.tensors(raw.get("buffers"), (*path, "buffers"), "buffer"),
        ]
        raw_nodes = raw.get("nodes")
        entries: list[tuple[str, Any, SpecPath]] = []
        if "nodes" not in raw:
            self.errors.add("missing-key", "a graph needs 'nodes'", path, hint="name its layers under 'nodes:'")
        elif not isinstance(raw_nodes, dict) or not raw_nodes:
            self.errors.add(
                "wrong-type",
                f"'nodes' is a mapping of names to layers or ops, got {kind_of(raw_nodes)}"
                + (" (empty)" if raw_nodes == {} else ""),
                (*path, "nodes"),
                hint="e.g. 'nodes: {fc: {Linear: [4, 2]}, act: ReLU}'",
            )
        else:
            entries = [(name, value, (*path, "nodes", name)) for name, value in raw_nodes.items()]
        nodes: list[GraphNode] = []
        previous: Ref | None = Ref(inputs[0].name, (), (*path, "inputs")) if len(inputs) == 1 else None
        for name, value, where in entries:
            node = self.graph_node(name, value, where, previous, inputs)
            nodes.append(node)
            previous = Ref(name, (), where)
        outputs, many = self.outputs(raw, path, nodes)
        return Graph(tuple(inputs), tuple(nodes), outputs, many, tuple(tensors), path)

    def graph_inputs(self, raw: Any, path: SpecPath, given: bool) -> list[GraphInput]:
        if not given:
            return [GraphInput("x", None, path)]
        out: list[GraphInput] = []
        if isinstance(raw, list) and raw:
            for i, name in enumerate(raw):
                if not isinstance(name, str) or not NODE_NAME.match(name):
                    self.errors.add("bad-name", f"input name {name!r} is not a lower-case identifier", (*path, i))
                    continue
                out.append(GraphInput(name, None, (*path, i)))
        elif isinstance(raw, dict) and raw:
            for name, example in raw.items():
                where = (*path, name)
                if not NODE_NAME.match(name):
                    self.errors.add("bad-name", f"input name {name!r} is not a lower-case identifier", where)
                    continue
                spec = None
                if example is not None:
                    try:
                        spec = InputSpec.model_validate(example)
                    except pydantic.ValidationError as e:
                        self.pydantic_errors(e, where)
                out.append(GraphInput(name, spec, where))
        else:
            self.errors.add(
                "wrong-type",
                f"'inputs' lists input names, got {kind_of(raw)}",
                path,
                hint="e.g. 'inputs: [x]', or with example inputs 'inputs: {ids: {shape: [2, 16], dtype: int64}}'",
            )
        if not out:
            out.append(GraphInput("x", None, path))
        return out

    def tensors(self, raw: Any, path: SpecPath, kind: Literal["param", "buffer"]) -> list[FreeTensor]:
        if raw is None:
            return []
        if not isinstance(raw, dict):
            self.errors.add("wrong-type", f"'{path[-1]}' maps names to {{shape: [...]}}, got {kind_of(raw)}", path)
            return []
        out = []
        for name, value in raw.items():
            where = (*path, name)
            if not DOTTED_NAME.match(name):
                self.errors.add("bad-name", f"'{name}' is not a valid {kind} name", where,
                                hint="lower-case identifiers, e.g. 'cls_token'")  # fmt: skip
                continue
            try:
                spec = TensorSpec.model_validate(value)
            except pydantic.ValidationError as e:
                self.pydantic_errors(e, where)
                continue
            if kind == "param" and "persistent" in (value or {}):
                self.errors.add("unknown-key", "'persistent' is for buffers; a parameter is always saved",
                                (*where, "persistent"))  # fmt: skip
            if kind == "param" and spec.dtype not in ("float32", "float64", "float16", "bfloat16"):
                self.errors.add("wrong-type", f"a parameter must be floating point, not {spec.dtype}",
                                (*where, "dtype"), hint="make it a buffer, or use float32")  # fmt: skip
            out.append(FreeTensor(name, kind, spec, where))
        return out

    def pydantic_errors(self, e: pydantic.ValidationError, where: SpecPath) -> None:
        for err in e.errors():
            code = {"missing": "missing-key", "extra_forbidden": "unknown-key"}.get(err["type"], "wrong-type")
            loc = tuple(p for p in err["loc"] if p not in ("NormalInit", "UniformInit", "literal['zeros','ones']"))
            self.errors.add(code, err["msg"], (*where, *loc))

    def graph_node(
        self, name: str, raw: Any, path: SpecPath, previous: Ref | None, inputs: list[GraphInput]
    ) -> GraphNode:
        body: Node | Op | Call
        in_raw: Any = None
        explicit = False
        if isinstance(raw, dict) and "in" in raw:
            explicit, in_raw = True, raw["in"]
            raw = {k: v for k, v in raw.items() if k != "in"}
        if isinstance(raw, str) and raw[:1].islower():
            body = self.op(raw, None, path, path)
        elif isinstance(raw, dict) and len(raw) == 1 and _looks_like_op(next(iter(raw)), raw[next(iter(raw))]):
            key = next(iter(raw))  # an op, or a slip for one ({trnspose: [1, 2]}): not a named child
            body = self.op(key, raw[key], path, (*path, key))
        elif isinstance(raw, dict) and "call" in raw:
            if len(raw) > 1 or not isinstance(raw["call"], str):
                self.errors.add(
                    "bad-call",
                    "'call' takes the name of a layer node of this graph and stands alone (with 'in')",
                    (*path, "call"),
                    hint="e.g. 'emb_b: {call: trunk, in: b}'",
                )
            body = Call(raw["call"] if isinstance(raw["call"], str) else "", (*path, "call"))
        elif isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) == "Sequential":
            items = raw["Sequential"]
            if not isinstance(items, list) or not items:
                self.errors.add("wrong-type", "'Sequential' takes a list of layers", (*path, "Sequential"))
                items = []
            body = Seq(tuple(self.node(v, (*path, "Sequential", i)) for i, v in enumerate(items)), path)
        elif isinstance(raw, dict) and not raw:
            self.errors.add("empty-node", f"node '{name}' has only 'in': it needs a layer or an op", path)
            body = Seq((), path)
        else:
            body = self.node(raw, path)
        is_module = not isinstance(body, (Op, Call))
        pattern = DOTTED_NAME if is_module else NODE_NAME
        if not pattern.match(name):
            self.errors.add(
                "bad-name",
                f"'{name}' is not a valid node name"
                + (" (only layer nodes may be dotted)" if DOTTED_NAME.match(name) else ""),
                path,
                hint="node names are lower-case identifiers, e.g. 'conv1'; dotted names like 'transformer.wte' "
                "nest a layer in a container",
            )
        elif is_module and name.split(".")[0] in RESERVED_GRAPH_NAMES:
            first = name.split(".")[0]
            self.errors.add(
                "bad-name",
                f"'{first}' cannot name a layer node: the generated torch.fx.GraphModule has an attribute '{first}'",
                path,
                hint=f"choose another name, e.g. '{first.strip('_')}_layer'",
            )
        elif is_module and any(part in RESERVED_CONTAINER_NAMES for part in name.split(".")[1:]):
            self.errors.add("bad-name", f"'{name}': the container nn.ModuleDict has an attribute of that name", path,
                            hint="choose another name")  # fmt: skip
        args: list[Ref] = []
        kwargs: list[tuple[str, Ref]] = []
        in_path = (*path, "in")
        if not explicit:
            if previous is None:
                names = ", ".join(i.name for i in inputs)
                self.errors.add(
                    "missing-in",
                    f"node '{name}' needs 'in': the graph has several inputs ({names}) and no node before it",
                    path,
                    hint=f"e.g. 'in: {inputs[0].name}'",
                )
            else:
                args.append(previous)
        elif isinstance(in_raw, str):
            args.append(self.ref(in_raw, in_path))
        elif isinstance(in_raw, list) and in_raw and all(isinstance(r, str) for r in in_raw):
            args.extend(self.ref(r, (*in_path, i)) for i, r in enumerate(in_raw))
        elif isinstance(in_raw, dict) and in_raw and all(isinstance(r, str) for r in in_raw.values()):
            if isinstance(body, Op):
                self.errors.add("wrong-type", f"the op '{body.type}' takes its inputs as a list, not by name",
                                in_path, hint=f"{body.type} takes {body.entry.arity()}")  # fmt: skip
            kwargs.extend((k, self.ref(r, (*in_path, k))) for k, r in in_raw.items())
        else:
            self.errors.add(
                "wrong-type",
                f"'in' takes a node or input name, a list of them, or a mapping of argument names to them; "
                f"got {kind_of(in_raw)}",
                in_path,
                hint="e.g. 'in: x' or 'in: [bn2, x]'",
            )
        if isinstance(body, Op) and body.type in OPS:
            low, high = body.entry.inputs
            n = len(args)
            if (n < low or (high is not None and n > high)) and not kwargs and (explicit or previous is not None):
                self.errors.add(
                    "bad-arity",
                    f"the op '{body.type}' takes {body.entry.arity()}, got {n}",
                    in_path if explicit else path,
                    hint=f"list them: 'in: [{', '.join(body.entry.input_names[: max(low, 1)])}]'",
                )
        return GraphNode(name, body, tuple(args), tuple(kwargs), path)

    def ref(self, text: str, path: SpecPath) -> Ref:
        m = _REF.match(text)
        if not m:
            self.errors.add("bad-reference", f"'{text}' is not a node name (optionally with [i] to pick an item)",
                            path, hint="e.g. 'conv1', or 'lstm[0]' for the first item of a tuple output")  # fmt: skip
            return Ref(text, (), path)
        index = tuple(int(i) for i in re.findall(r"-?[0-9]+", m.group(2)))
        return Ref(m.group(1), index, path)

    def outputs(self, raw: dict[str, Any], path: SpecPath, nodes: list[GraphNode]) -> tuple[tuple[Ref, ...], bool]:
        where = (*path, "outputs")
        value = raw.get("outputs")
        if value is None:
            if nodes:
                return (Ref(nodes[-1].name, (), nodes[-1].path),), False
            return (), False
        if isinstance(value, str):
            return (self.ref(value, where),), False
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(self.ref(v, (*where, i)) for i, v in enumerate(value)), True
        self.errors.add("wrong-type", f"'outputs' takes a node name or a list of them, got {kind_of(value)}", where)
        return (), False

    def op(self, type_name: str, value: Any, path: SpecPath, arg_path: SpecPath) -> Op:
        entry = OPS.get(type_name)
        if entry is None:
            hint = did_you_mean(type_name, [*OPS, *registry.layer_names()]) or f"ops: {', '.join(sorted(OPS))}"
            at = self.errors.position(arg_path)
            self.errors.add("unknown-op", f"unknown op '{type_name}'", path, hint=hint,
                            at=at if at[0] is not None else None)  # fmt: skip
            return Op(type_name, {}, {}, path)
        args, kwargs = _split_args(value)
        if len(entry.params) == 1 and isinstance(value, list) and typing_is_list(entry.params[0]):
            args, kwargs = [value], {}  # {reshape: [-1, 768]}: the one argument is the list
        values, problems = registry.bind_arguments(entry, args, kwargs)
        for prob in problems:
            where = prob.where
            if where and isinstance(where[0], str) and isinstance(value, list):
                where = (len(value) - 1, *where)
            self.errors.add(prob.code, prob.message, (*arg_path, *where), hint=prob.hint)
        arguments = {}
        for name in entry.param_names:
            if name in values:
                i = entry.param_names.index(name)
                arguments[name] = args[i] if i < len(args) else kwargs[name]
        return Op(type_name, arguments, values, path)


def _looks_like_op(key: str, value: Any) -> bool:
    """Whether a one-key lower-case entry of a graph's nodes is an op (or meant as one)
    rather than one named child: an op's name, a name close to one, or a value that no
    node can be (a number, null, a list of plain values)."""
    if key in OPS:
        return True
    if not key[:1].islower():
        return False
    return (not _node_like(value) and closest(key, OPS) is not None) or _plain(value)


def _plain(value: Any) -> bool:
    """A value no node can be: null, a number, a list of numbers."""
    if isinstance(value, list):
        return not any(isinstance(v, (str, dict, list)) for v in value)
    return value is None or isinstance(value, (int, float, bool))


def _node_like(value: Any) -> bool:
    """A layer name, a layer, ``{use: ...}`` or a list of those: what a named child holds."""
    if isinstance(value, str):
        return value[:1].isupper()
    if isinstance(value, dict):
        return any(k[:1].isupper() or k == "use" for k in value)
    return isinstance(value, list) and bool(value) and all(_node_like(v) for v in value)


def typing_is_list(p: registry.Param) -> bool:
    import typing

    return typing.get_origin(p.annotation) is list


# ---------------------------------------------------------------- JSON Schema
def schema_defs() -> dict[str, Any]:
    """``$defs`` for nodes: one entry per layer type and op, and the node kinds."""
    # One object schema lists every layer (and, in graphs, every op) as a property: editors
    # complete the names from it, and a validator looks up only the key that is there
    # (an anyOf of one schema per layer made validating a GPT-2 spec take a minute).
    names = registry.layer_names()
    defs: dict[str, Any] = {}
    layers: dict[str, Any] = {}
    for name in names:
        entry = registry.get_layer(name)
        assert entry is not None
        defs[f"layer.{name}"] = entry.json_schema()
        layers[name] = {"$ref": f"#/$defs/layer.{name}"}
    ops: dict[str, Any] = {}
    for name, op in sorted(OPS.items()):
        defs[f"op.{name}"] = op.json_schema()
        ops[name] = {"$ref": f"#/$defs/op.{name}"}
    defs["Layer"] = {
        "type": "object",
        "description": "a layer: its torch.nn class name, then its arguments",
        "properties": layers,
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
    }
    defs["Node"] = {
        "description": "a layer, a list (nn.Sequential), named children, {use: block}, or a graph",
        "anyOf": [
            {"type": "string", "enum": names, "description": "a layer without arguments"},
            {"$ref": "#/$defs/Layer"},
            {"$ref": "#/$defs/Use"},
            {
                "type": "array",
                "items": {"$ref": "#/$defs/Node"},
                "minItems": 1,
                "description": "layers run in order: nn.Sequential",
            },
            {"$ref": "#/$defs/Children"},
            {"$ref": "#/$defs/Graph"},
        ],
    }
    defs["Use"] = {
        "type": "object",
        "properties": {"use": {"type": "string", "description": "a block declared under 'blocks:'"}},
        "required": ["use"],
        "additionalProperties": False,
    }
    defs["Children"] = {
        "type": "object",
        "description": "named children, run in order; names are lower-case identifiers",
        "minProperties": 1,
        "patternProperties": {CHILD.pattern: {"$ref": "#/$defs/Node"}},
        "additionalProperties": False,
        "propertyNames": {"not": {"enum": _taken(RESERVED_CHILD_NAMES, "^[a-z_]")}},
    }
    ref = {"type": "string", "pattern": _REF.pattern, "description": "a node, input, param or buffer name; "
           "name[i] picks item i of a tuple"}  # fmt: skip
    defs["Ref"] = ref
    defs["In"] = {
        "description": "the node's inputs (default: the previous node): a name, a list, or argument name -> name",
        "anyOf": [
            {"$ref": "#/$defs/Ref"},
            {"type": "array", "items": {"$ref": "#/$defs/Ref"}, "minItems": 1},
            {"type": "object", "additionalProperties": {"$ref": "#/$defs/Ref"}, "minProperties": 1},
        ],
    }
    entry_keys = {
        **layers,
        **ops,
        "use": {"type": "string", "description": "a block declared under 'blocks:': the same object"},
        "call": {"type": "string", "description": "a layer node of this graph, called again (no second name)"},
        "Sequential": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "minItems": 1,
                       "description": "layers run in order, as a list would, but with 'in:'"},
        "in": {"$ref": "#/$defs/In"},
    }  # fmt: skip
    defs["GraphEntry"] = {
        "description": "a layer or any node (a submodule of that name), an op, 'use' or 'call', each with "
        "'in:' naming its inputs (default: the previous node)",
        "anyOf": [
            {"type": "string", "enum": [*names, *sorted(OPS)]},
            {
                "type": "object",
                "properties": entry_keys,
                "minProperties": 1,
                "maxProperties": 2,
                "additionalProperties": False,
                "if": {"minProperties": 2},  # a layer, op, use or call, and at most 'in' beside it
                "then": {"required": ["in"]},
            },
            {"type": "array", "items": {"$ref": "#/$defs/Node"}, "minItems": 1},
            {"$ref": "#/$defs/Graph"},
            {"$ref": "#/$defs/Children"},
        ],
    }
    tensor = TensorSpec.model_json_schema(ref_template="#/$defs/{model}")
    for key, value in tensor.pop("$defs", {}).items():
        defs[key] = value
    defs["Tensor"] = tensor
    defs["Graph"] = {
        "type": "object",
        "description": "a data-flow graph: named nodes, each reading earlier nodes or inputs; a torch.fx.GraphModule",
        "properties": {
            "inputs": {
                "description": "input names (default [x]); for a model, a mapping name -> example input",
                "anyOf": [
                    {"type": "array", "items": {"type": "string", "pattern": NODE_NAME.pattern}, "minItems": 1},
                    {"type": "object", "minProperties": 1, "propertyNames": {"pattern": NODE_NAME.pattern},
                     "additionalProperties": {"anyOf": [{"$ref": "#/$defs/InputSpec"}, {"type": "null"}]}},
                ],
            },
            "nodes": {
                "type": "object",
                "minProperties": 1,
                "description": "name -> layer or op, in order; each reads the previous one unless it says 'in:'",
                "propertyNames": {"pattern": DOTTED_NAME.pattern, "not": {"enum": sorted(
                    n for n in RESERVED_GRAPH_NAMES if NODE_NAME.match(n))}},
                "additionalProperties": {"$ref": "#/$defs/GraphEntry"},
            },
            "outputs": {
                "description": "what forward returns: a node name, or a list of them (a tuple); default: the last node",
                "anyOf": [{"$ref": "#/$defs/Ref"}, {"type": "array", "items": {"$ref": "#/$defs/Ref"}, "minItems": 1}],
            },
            "params": {"type": "object", "description": "free parameters: name -> {shape, dtype, init}",
                       "propertyNames": {"pattern": DOTTED_NAME.pattern},
                       "additionalProperties": {"$ref": "#/$defs/Tensor"}},
            "buffers": {"type": "object", "description": "free buffers: name -> {shape, dtype, init, persistent}",
                        "propertyNames": {"pattern": DOTTED_NAME.pattern},
                        "additionalProperties": {"$ref": "#/$defs/Tensor"}},
        },
        "required": ["nodes"],
        "additionalProperties": False,
    }  # fmt: skip
    return defs


def _taken(names: frozenset[str], start: str) -> list[str]:
    """Reserved keywords and the given attribute names that a name pattern would admit."""
    return sorted(n for n in {*RESERVED, *names} if re.match(start, n))
