"""The built model's names without building it: a skeleton of modules and tensor descriptions.

``ties:``, ``trainable:`` and ``init:`` name the built model's parameters, so checking them
needs every qualified name a parameter or buffer gets (all aliases: a shared block under
each use, ``repeat`` copies, graphs, named children, several models), its shape and dtype,
and which names are one tensor. Building on ``meta`` gives that at the cost of importing
torch. The skeleton gives the same without torch: the spec's nodes build themselves through
:class:`SkeletonBuilder` exactly as through the real builder (each node kind's ``build``
calls the builder's ``layer``/``sequential``/``named``/``graph``), and each layer's tensors
come from :mod:`modelspec._layer_tensors`. A :class:`Skel` answers the few ``nn.Module``
questions the checks ask (``named_parameters``, ``named_modules``, ``get_submodule``,
``state_dict``, ``_parameters``/``_modules``), so the checks are the very functions the
build runs: :func:`~modelspec._ties.apply_ties`, :func:`check_tied_params`,
:func:`apply_trainable` and :func:`~modelspec._init_select.plan_init`.

:func:`check_without_torch` returns False when the skeleton cannot answer (a layer not
described, a layer taking a module, plugins, a torch version the layer formulas were not
checked with, an init rule reading another build folder):
the caller then builds on ``meta``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import _registry as registry
from ._errors import Collector, SpecPath
from ._layer_tensors import LayerTensors, describe, formulas_hold
from ._nodes import Call, FreeTensor, Graph, InputSpec, Layer, Node, Op
from ._resolve import Resolved, unused_params
from ._spec import Spec
from ._ties import TransposedTie, apply_ties, links_of

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = [
    "BuilderBase",
    "Skel",
    "SkeletonBuilder",
    "Slot",
    "apply_trainable",
    "block_sites",
    "check_tied_params",
    "check_without_torch",
    "described_skeleton",
    "example_specs",
    "skeleton",
]

_FLOATING = frozenset({"float32", "float64", "float16", "bfloat16"})


class Slot:
    """A tensor as the checks see it: shape, dtype, device (``meta``: nothing is allocated)."""

    __slots__ = ("dtype", "requires_grad", "shape")
    device = "meta"
    is_meta = True

    def __init__(self, shape: tuple[int, ...], dtype: str = "float32") -> None:
        self.shape = tuple(shape)
        self.dtype = f"torch.{dtype}"  # as torch prints it in a message
        self.requires_grad = True

    def dim(self) -> int:
        return len(self.shape)

    def requires_grad_(self, flag: bool = True) -> Slot:
        self.requires_grad = flag
        return self


class Skel(TransposedTie):
    """A module of the skeleton: its parameters, buffers and children by name, in
    registration order, and the layer types it is an instance of (``isa``)."""

    def __init__(self, isa: frozenset[str] = frozenset()) -> None:
        self._parameters: dict[str, Slot | None] = {}
        self._buffers: dict[str, Slot | None] = {}
        self._non_persistent_buffers_set: set[str] = set()
        self._modules: dict[str, Skel] = {}
        self.isa = isa

    def named_modules(
        self, memo: set[Skel] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Skel]]:
        # nn.Module.named_modules, step for step
        if memo is None:
            memo = set()
        if self in memo:
            return
        if remove_duplicate:
            memo.add(self)
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(memo, prefix + ("." if prefix else "") + name, remove_duplicate)

    def modules(self) -> Iterator[Skel]:
        for _, m in self.named_modules():
            yield m

    def _members(self, store: str, remove_duplicate: bool) -> Iterator[tuple[str, Slot]]:
        seen: set[int] = set()
        for prefix, module in self.named_modules(remove_duplicate=remove_duplicate):
            for k, v in getattr(module, store).items():
                if v is None or id(v) in seen:
                    continue
                if remove_duplicate:
                    seen.add(id(v))
                yield prefix + ("." if prefix else "") + k, v

    def named_parameters(self, remove_duplicate: bool = True) -> Iterator[tuple[str, Slot]]:
        return self._members("_parameters", remove_duplicate)

    def named_buffers(self, remove_duplicate: bool = True) -> Iterator[tuple[str, Slot]]:
        return self._members("_buffers", remove_duplicate)

    def state_dict(self, keep_vars: bool = True) -> dict[str, Slot]:
        out: dict[str, Slot] = {}

        def walk(m: Skel, prefix: str) -> None:
            for k, p in m._parameters.items():
                if p is not None:
                    out[prefix + k] = p
            for k, b in m._buffers.items():
                if b is not None and k not in m._non_persistent_buffers_set:
                    out[prefix + k] = b
            for k, c in m._modules.items():
                walk(c, prefix + k + ".")

        walk(self, "")
        return out

    def get_submodule(self, target: str) -> Skel:
        module = self
        for part in target.split(".") if target else ():
            if part not in module._modules:
                raise AttributeError(f"no submodule '{part}'")
            module = module._modules[part]
        return module

    def get_parameter(self, target: str) -> Slot:
        owner, _, name = target.rpartition(".")
        p = self.get_submodule(owner)._parameters.get(name)
        if p is None:
            raise AttributeError(f"'{target}' is not a parameter")
        return p


def _skel(layer: LayerTensors) -> Skel:
    m = Skel(layer.isa)
    for t in layer.tensors:
        store = m._parameters if t.kind == "param" else m._buffers
        store[t.name] = None if t.shape is None else Slot(t.shape, t.dtype)
        if t.kind == "buffer" and not t.persistent:
            m._non_persistent_buffers_set.add(t.name)
    for name, child in layer.children:
        m._modules[name] = _skel(child)
    return m


class _Undescribed(Exception):
    """The skeleton cannot tell what the constructor would make: build on meta instead."""


class BuilderBase:
    """What both builders share: the blocks built once, and where each module comes from.
    Each node kind builds itself by calling back ``layer``/``sequential``/``named``/``graph``."""

    def __init__(self, spec: Spec, errors: Collector) -> None:
        self.spec = spec
        self.errors = errors
        self.blocks: dict[str, Any] = {}
        self.paths: dict[int, SpecPath] = {}  # id(module) -> defining spec path
        self.trainable: dict[int, tuple[bool, SpecPath]] = {}  # id(module) -> its 'trainable:' and where

    def node(self, node: Node) -> Any:
        module = node.build(self)  # type: ignore[arg-type]  # each kind builds itself (see _nodes)
        self.paths.setdefault(id(module), node.path)
        if getattr(node, "trainable", None) is not None:
            self.trainable[id(module)] = (bool(node.trainable), node.path)
        return module


class SkeletonBuilder(BuilderBase):
    """Builds a :class:`Skel` from a spec's nodes, as :class:`~modelspec._build._Builder`
    builds modules: lists and repeats are Sequentials with children ``0``..``n-1``, named
    children keep their names, a graph holds its free tensors then its nodes by their
    (dotted) names, a use is its block's one object."""

    def __init__(self, spec: Spec, errors: Collector) -> None:
        super().__init__(spec, errors)
        self.graphs: dict[int, Graph] = {}  # id(graph skeleton) -> its graph

    def layer(self, node: Layer) -> Skel:
        described = None if node.modules else describe(node.type, node.values)
        if described is None:
            raise _Undescribed(node.type)
        return _skel(described)

    def sequential(self, items: list[Skel]) -> Skel:
        return self.named([(str(i), m) for i, m in enumerate(items)])

    def named(self, children: list[tuple[str, Skel]]) -> Skel:
        m = Skel()
        m._modules.update(children)
        return m

    def graph(self, graph: Graph) -> Skel:
        root = Skel()
        for t in graph.tensors:
            if t.kind == "param" and t.spec.dtype not in _FLOATING:
                raise _Undescribed(t.name)  # torch refuses it: let the build say how
            _place(root, t.name, Slot(tuple(t.spec.shape), t.spec.dtype), t)
        for node in graph.nodes:  # written order, as _flow.build_graph places them
            if not isinstance(node.body, (Op, Call)):
                module = self.node(node.body)
                _place(root, node.name, module)
                self.paths.setdefault(id(module), node.path)
        self.graphs[id(root)] = graph
        return root


def _place(root: Skel, name: str, value: Skel | Slot, tensor: FreeTensor | None = None) -> None:
    """:func:`modelspec._flow.place` on a skeleton: dotted names nest in ModuleDicts."""
    *prefix, last = name.split(".")
    owner = root
    for part in prefix:
        owner = owner._modules.setdefault(part, Skel())
    if isinstance(value, Skel):
        owner._modules[last] = value
    elif tensor is not None and tensor.kind == "buffer":
        owner._buffers[last] = value
        if not tensor.spec.persistent:
            owner._non_persistent_buffers_set.add(last)
    else:
        owner._parameters[last] = value


def skeleton(resolved: Resolved) -> tuple[Skel, SkeletonBuilder] | None:
    """The skeleton of ``resolved``'s model and its builder; None when a layer is not described."""
    spec = resolved.spec
    builder = SkeletonBuilder(spec, Collector(file=spec.file, positions=spec.positions))
    try:
        for name in resolved.order:
            builder.blocks[name] = builder.node(spec.blocks[name])
        roots = {name: builder.node(node) for name, node in spec.roots.items()}
    except _Undescribed:
        return None
    return (roots[""] if spec.models is None else builder.named(list(roots.items()))), builder


def described_skeleton(resolved: Resolved) -> tuple[Skel, SkeletonBuilder] | None:
    """:func:`skeleton`, when it can stand in for the constructed model: None with plugins
    (their classes are read), with a torch the layer formulas were not checked with, or
    when a layer is not described."""
    if registry._described() is None or not formulas_hold() or not _default_float32():
        return None
    return skeleton(resolved)


def _default_float32() -> bool:
    """Whether layers would make float32 tensors (the formulas' dtype): always, unless this
    process imported torch and changed its default (``torch.set_default_dtype``)."""
    torch = sys.modules.get("torch")
    return torch is None or torch.get_default_dtype() == torch.float32


def check_without_torch(resolved: Resolved) -> bool:
    """Run the checks a build on ``meta`` runs on the names, shapes and dtypes of its tensors
    (ties, unused params, trainable, init rules), on the skeleton, in the build's order.

    Returns False, having checked nothing, when the skeleton cannot stand in for the build.

    Raises:
        SpecError: the diagnostics the build would raise.
    """
    spec = resolved.spec
    if any(r.source is not None for r in spec.init):
        return False  # 'from:' reads a build folder
    made = described_skeleton(resolved)
    if made is None:
        return False
    from ._init_select import plan_init

    root, builder = made
    errors = Collector(file=spec.file, positions=spec.positions)
    for name in spec.roots:
        example_specs(spec, name, errors)
    errors.raise_if_errors()
    apply_ties(root, spec.ties, errors)  # type: ignore[arg-type]
    check_tied_params(root, builder.graphs, spec, errors)
    errors.raise_if_errors()
    apply_trainable(root, builder.trainable, errors)
    errors.raise_if_errors()
    plan_init(root, spec.init, block_sites(root, builder.blocks), errors)
    errors.raise_if_errors()
    return True


# ---------------------------------------------------------------- the checks both builds run
def block_sites(root: nn.Module | Skel, blocks: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Every qualified module name each block sits at (a block inside a shared block: under each use)."""
    block_ids = {id(m): name for name, m in blocks.items()}
    sites: dict[str, list[str]] = {name: [] for name in blocks}
    for qual, module in root.named_modules(remove_duplicate=False):
        if id(module) in block_ids:
            sites[block_ids[id(module)]].append(qual)
    return {k: tuple(v) for k, v in sites.items()}


def check_tied_params(root: nn.Module | Skel, graphs: dict[int, Graph], spec: Spec, errors: Collector) -> None:
    """A free param that no node of its graph reads is used only if a tie names it, by its
    qualified name at some place the graph sits (the resolver could only match name endings).
    ``graphs``: id(built graph) -> the graph it was built from."""
    if not spec.ties:
        return
    tied = {name for t in spec.ties for name in (t.param, t.to)}
    unused: dict[int, tuple[FreeTensor, bool]] = {}
    for qual, module in root.named_modules(remove_duplicate=False):
        graph = graphs.get(id(module))
        if graph is None:
            continue
        for t in unused_params(graph):
            named = f"{qual}.{t.name}" if qual else t.name
            seen = unused.get(id(t), (t, False))[1]
            unused[id(t)] = (t, seen or named in tied)
    for t, named in unused.values():
        if not named:
            errors.add("unused-param", f"param '{t.name}' is never read", t.path,
                       hint=f"read it in a node's 'in:' (e.g. 'in: [x, {t.name}]'), tie it, or remove it")  # fmt: skip


def apply_trainable(root: nn.Module | Skel, flags: dict[int, tuple[bool, SpecPath]], errors: Collector) -> None:
    """``trainable: false`` freezes a node's parameters; an inner ``trainable: true`` wins.

    A parameter reached under several names (a shared block, a tie) must get one setting:
    one tensor cannot be frozen at one use and trained at another."""
    if not flags:
        return
    found: dict[int, tuple[Any, dict[bool, tuple[str, SpecPath | None]]]] = {}

    def visit(module: Any, prefix: str, flag: bool, where: SpecPath | None) -> None:
        if id(module) in flags:
            flag, where = flags[id(module)]
        held = [(name, p) for name, p in module._parameters.items() if p is not None]
        # a transposed tie reads another module's parameter: that tensor is this module's too
        held += [(name, source._parameters[attr]) for name, (source, attr) in links_of(module).items()
                 if source._parameters.get(attr) is not None]  # fmt: skip
        for name, p in held:
            seen = found.setdefault(id(p), (p, {}))[1]
            seen.setdefault(flag, (prefix + name, where))
        for name, child in module._modules.items():
            if child is not None:
                visit(child, f"{prefix}{name}.", flag, where)

    visit(root, "", True, None)
    conflicts: dict[SpecPath, list[tuple[str, str]]] = {}
    for p, seen in found.values():
        if len(seen) > 1:
            (frozen, at), (trained, there) = seen[False], seen[True]
            conflicts.setdefault(at or there or (), []).append((frozen, trained))
        else:
            p.requires_grad_(next(iter(seen)))
    for at, pairs in conflicts.items():
        frozen, trained = pairs[0]
        more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
        errors.add(
            "trainable-conflict",
            f"parameter '{frozen}'{more} is frozen here but the same tensor is trainable as '{trained}' "
            "(a shared block or a tie): one tensor cannot be both",
            at,
            hint="set 'trainable' alike at every place that holds it (on the block's definition, or both ends "
            "of the tie)",
        )


def example_specs(spec: Spec, model: str, errors: Collector) -> list[tuple[InputSpec, str]] | None:
    """The example inputs of one model, in its forward's order, or None.

    A graph's ``inputs:`` may give each input an example; otherwise a model with one
    input takes the top-level ``input``."""
    node = spec.roots[model]
    if isinstance(node, Graph):
        given = [i.example for i in node.inputs]
        if all(g is not None for g in given):
            return [(g, f"inputs.{i.name}.shape") for g, i in zip(given, node.inputs, strict=True)]  # type: ignore[misc]
        if any(g is not None for g in given):
            missing = [i for i in node.inputs if i.example is None]
            errors.add(
                "missing-input",
                f"input '{missing[0].name}' has no example while other inputs have one",
                missing[0].path,
                hint=f"give it one: '{missing[0].name}: {{shape: [...], dtype: ...}}'",
            )
            return None
        if len(node.inputs) > 1:
            return None
    return [(spec.input, "input.shape")] if spec.input is not None else None
