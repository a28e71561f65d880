"""Stage 4: a Resolved spec -> plain ``torch.nn`` modules, materialized and seeded.

Each named block is constructed exactly once and that object is placed at every
``use`` (no ``deepcopy`` anywhere), so ``net[2] is net[4]``. Lists become
``nn.Sequential`` and named children an ``nn.Sequential`` of an ordered mapping, so
``state_dict`` keys are those of the equivalent handwritten module and ``forward`` is
PyTorch's own: nothing interprets the spec at run time.

Initialization draws from one generator seeded from the spec through portable
``uniform_``/``normal_`` (see ``_rng``), so a build gives the same bits on every machine
and the caller's global RNG state is left as it was.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.parameter import UninitializedParameter, UninitializedTensorMixin

from . import _registry as registry
from ._errors import Collector, SpecPath, first_line, format_path
from ._flow import GraphInfo, build_graph, generate_code
from ._fmt import human_bytes
from ._initialize import apply_init
from ._memory import allocating, is_out_of_memory, tensor_bytes
from ._nodes import Children, Graph, InputSpec, Layer, Node, Op, Repeat, Seq, Use, iter_uses
from ._resolve import Resolved
from ._rng import PortableInit
from ._skeleton import BuilderBase, apply_trainable, block_sites, check_tied_params, example_specs
from ._spec import Spec
from ._ties import apply_ties
from ._transfer import Transfer

__all__ = ["DTYPES", "BuildInfo", "build_module", "construct_on_meta", "example_specs"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class BuildInfo:
    """What a built module came from: its spec and where each block was placed.

    ``block_sites`` maps a block name to the qualified module names that hold it,
    e.g. ``{"shared": ("2", "4")}``; ``origins`` maps qualified module names to the
    spec path that defined them (``"model[0]"``, ``"blocks.shared"``).
    """

    spec: Spec
    block_sites: dict[str, tuple[str, ...]]
    origins: dict[str, str]
    transfers: tuple[Transfer, ...] = ()  # what init rules with 'from:' took (see _transfer)

    def owner(self, module_name: str) -> str | None:
        """The innermost block that contains the module named ``module_name``."""
        best: tuple[int, str] | None = None
        for block, sites in self.block_sites.items():
            for site in sites:
                if module_name == site or module_name.startswith(site + ".") or site == "":
                    if best is None or len(site) > best[0]:
                        best = (len(site), block)
        return best[1] if best else None


class _Builder(BuilderBase):
    """Builds modules; :class:`~modelspec._skeleton.SkeletonBuilder` builds their skeleton
    from the same nodes (the walk, ``node``, is theirs in common)."""

    def __init__(self, spec: Spec, errors: Collector) -> None:
        super().__init__(spec, errors)
        self.blocks: dict[str, nn.Module] = {}
        self.graphs: dict[int, GraphInfo] = {}  # id(GraphModule) -> its graph

    def sequential(self, items: list[nn.Module]) -> nn.Module:
        return nn.Sequential(*items)

    def named(self, children: list[tuple[str, nn.Module]]) -> nn.Module:
        return nn.Sequential(OrderedDict(children))

    def graph(self, graph: Graph) -> nn.Module:
        return build_graph(graph, self)

    def layer(self, node: Layer) -> nn.Module:
        entry = registry.get_layer(node.type)
        assert entry is not None  # the spec stage checked it
        modules = {name: self.node(arg) for name, arg in node.modules}
        try:
            built = entry.cls(**node.values, **modules)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad values
            return self.failed(node, entry, e)
        self.guard_identity(node, built)
        return built

    def guard_identity(self, node: Layer, built: nn.Module) -> None:
        """A block given to a constructor must be in what it built: a copy would break rule 1."""
        inside = {id(m) for m in built.modules()}
        for name, arg in node.modules:
            for use in iter_uses(arg):
                block = self.blocks.get(use.block)
                if block is not None and id(block) not in inside:
                    self.errors.add(
                        "copied-block",
                        f"{node.type} copies its argument '{name}': the built module holds copies of block "
                        f"'{use.block}', not the block itself, so its uses would not share parameters",
                        use.path,
                        hint=f"write the layer inline under '{name}' (the copies are then independent, as "
                        f"{node.type} makes them), or place the block's uses yourself in a list or graph",
                    )

    def failed(self, node: Layer, entry: registry.LayerType, e: Exception) -> nn.Module:
        if is_out_of_memory(e):  # a size the spec states but this machine cannot hold
            spec = self.spec.file if self.spec.file != "<spec>" else "SPEC"
            message = f"{node.type}(...) needs {_size_on_meta(entry.cls, node.values)}, more than can be allocated"
            hint = f"see the sizes without allocating: modelspec report {spec} --device meta"
            self.errors.add("too-large", message, node.path, hint=hint)
            return nn.Identity()
        self.errors.add(
            "build-error", f"{node.type}(...) failed: {first_line(e)}", node.path, hint="check the argument values"
        )
        return nn.Identity()


def _size_on_meta(cls: type[nn.Module], values: dict[str, Any]) -> str:
    """What a layer's tensors take, found by constructing it on ``meta`` (no memory)."""
    try:
        with torch.device("meta"):
            m = cls(**values)
    except Exception:  # noqa: BLE001 - the size is a courtesy; the error is reported anyway
        return "more memory"
    return human_bytes(sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[torch.Generator]:
    """Initialize from one generator seeded with ``seed``, the same bits on every machine.

    ``uniform_``/``normal_`` (what every layer's default init ends in) draw from that one
    CPU generator through :class:`~modelspec._rng.PortableInit`, whatever the SIMD level,
    thread count or device. The global RNG is forked and seeded too, so anything else a
    layer might draw stays deterministic on one machine and the caller's state is untouched.
    """
    devices = [device] if device.type == "cuda" else []
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=devices), torch.device(device), PortableInit(generator):
        torch.manual_seed(seed)
        yield generator


def build_module(
    resolved: Resolved,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    transfer: bool = True,
) -> tuple[nn.Module, BuildInfo]:
    """Construct, materialize and seed the modules of ``resolved``, then apply its init rules.

    Returns the module (an ``nn.ModuleDict`` keyed by model name for a multi-model
    spec) and its :class:`BuildInfo`. On ``device="meta"`` nothing is allocated:
    shapes and counts are real, values are not. ``transfer=False`` reads no init
    rule's ``from:`` folder (for a model whose values come from its own checkpoint).
    """
    spec = resolved.spec
    device = torch.device(device)
    errors = Collector(file=spec.file, positions=spec.positions)
    builder = _Builder(spec, errors)
    with _seeded(spec.seed, device) as generator:
        for name in resolved.order:
            builder.blocks[name] = builder.node(spec.blocks[name])
        roots = {name: builder.node(node) for name, node in spec.roots.items()}
        errors.raise_if_errors()
        root: nn.Module = roots[""] if spec.models is None else nn.ModuleDict(roots)
        if spec.models is not None:
            builder.paths[id(root)] = ()
        _materialize(root, roots, spec, builder, device, errors)
    errors.raise_if_errors()
    apply_ties(root, spec.ties, errors)
    check_tied_params(root, {k: v.graph for k, v in builder.graphs.items()}, spec, errors)
    errors.raise_if_errors()
    apply_trainable(root, builder.trainable, errors)
    errors.raise_if_errors()
    info = _info(root, spec, builder)
    # init rules last: after the default init, the example pass, the ties and freezing (see _init)
    transfers = apply_init(root, spec.init, spec_file=spec.file, block_sites=info.block_sites,
                           generator=generator, errors=errors, transfer=transfer)  # fmt: skip
    errors.raise_if_errors()
    if dtype is not None:
        root = root.to(dtype)  # keeps module and parameter ties (see TIES-IN-TORCH.md)
    if device.type != "meta":  # on meta (counted, reported, estimated) forwards wait for a first call
        generate_code(root)
    return root, replace(info, transfers=transfers)


def construct_on_meta(resolved: Resolved) -> tuple[nn.Module, dict[int, SpecPath]]:
    """The modules of ``resolved`` constructed on ``meta``, and nothing more: no example pass
    (lazy layers stay unsized), no ties, no init rules. What a size estimate needs, for the
    cost of the constructors alone. Also returns where in the spec each module comes from
    (``id(module)`` -> spec path)."""
    spec = resolved.spec
    errors = Collector(file=spec.file, positions=spec.positions)
    builder = _Builder(spec, errors)
    with _seeded(spec.seed, torch.device("meta")):
        for name in resolved.order:
            builder.blocks[name] = builder.node(spec.blocks[name])
        roots = {name: builder.node(node) for name, node in spec.roots.items()}
    errors.raise_if_errors()
    return (roots[""] if spec.models is None else nn.ModuleDict(roots)), builder.paths


def _materialize(
    root: nn.Module, roots: dict[str, nn.Module], spec: Spec, builder: _Builder, device: torch.device, errors: Collector
) -> None:
    """Run the example input once through each model: lazy layers take their shapes and
    every layer's sizes and dtypes are checked against the input before anyone trains.

    Lazy layers need a real pass (they initialize on their first call, as in the
    handwritten seed code). Without them the pass runs on ``meta`` copies of every
    tensor: the same shape checks, no arithmetic, so building costs what
    constructing the modules costs. Meta kernels do not check dtypes, so a non-floating
    input (token ids) also runs for real on one example of the batch.
    """
    lazy = [(n, m) for n, m in root.named_modules() if _is_lazy(m)]
    examples: dict[str, list[tuple[InputSpec, str]]] = {}
    for name, model in roots.items():
        found = example_specs(spec, name, errors)
        if found is not None:
            examples[name] = found
            continue
        mine = [(n, m) for n, m in model.named_modules() if _is_lazy(m)] if lazy else []
        if mine:
            where, module = mine[0]
            node = spec.roots[name]
            fix = "add 'input: {shape: [batch, features]}'"
            if isinstance(node, Graph) and len(node.inputs) > 1:
                fix = "give each input an example: 'inputs: {" + ", ".join(
                    f"{i.name}: {{shape: [...]}}" for i in node.inputs) + "}'"  # fmt: skip
            errors.add(
                "missing-input",
                f"{type(module).__name__} at '{where}' is sized lazily but the spec has no example input"
                + (f" for model '{name}'" if name else ""),
                builder.paths.get(id(module), ()),
                hint=fix,
            )
    if not examples:
        return
    modes = {m: m.training for m in root.modules()}
    tracer = _Tracer()
    hooks = []
    for m in modes:
        hooks.append(m.register_forward_pre_hook(tracer.enter))
        hooks.append(m.register_forward_hook(tracer.leave))
    root.eval()  # no running-stat updates, no dropout: the pass must not change state
    try:
        with torch.no_grad():
            for name, model in roots.items():
                if name not in examples:
                    continue
                xs = tuple(example_tensor(e, device, where) for e, where in examples[name])
                # Fast paths without lazy layers. Floating inputs: the same pass on meta
                # stand-ins costs no arithmetic. Token ids and masks: meta kernels do not check
                # dtypes, so one example of the batch runs for real instead. Any failure is
                # re-run for real on the whole example, so a missing meta kernel, an op that
                # bypasses the swap or a size that needs the whole batch never gives a false error.
                # A small model with floating inputs runs for real first (on CPU stand-ins when
                # it is on meta): PyTorch's meta kernels are Python, and their first use in a
                # process imports sympy and dynamo (2-4 s), far more than a small pass costs.
                # If that pass fails, the paths below run as they would have, so every
                # diagnostic stays theirs.
                if not lazy and all(x.is_floating_point() for x in xs) and _cheap(model, examples[name]):
                    if device.type == "meta" and _passes_on_cpu(model, examples[name], tracer):
                        continue
                    if device.type != "meta" and _passes(model, xs, tracer):
                        continue
                if not lazy and device.type != "meta":
                    if all(x.is_floating_point() for x in xs):
                        if _passes_on_meta(model, xs):
                            continue
                    elif _passes(model, tuple(x[:1] for x in xs), tracer):
                        continue
                tracer.reset()
                steps: list[_Step] = []
                try:
                    with _stepping(model, builder, steps):
                        model(*xs)
                except Exception as e:  # noqa: BLE001 - report any failure at its layer
                    if steps:
                        _report_graph_failure(e, name, xs, spec, tracer, steps[-1], builder, errors)
                    else:
                        _report_failure(e, name, xs[0], spec, tracer, errors)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    for name, module in root.named_modules() if lazy else ():
        if any(isinstance(p, UninitializedParameter) for p in module._parameters.values()):
            errors.add(
                "missing-input",
                f"{type(module).__name__} at '{name}' was not reached by the example input",
                builder.paths.get(id(module), ()),
                hint="every lazy layer must run in the forward pass",
            )


@dataclass
class _Frame:
    """One module call in progress during the example pass."""

    module: nn.Module
    args: tuple[Any, ...]
    key: str | None  # its name in the nn.Sequential that called it; None inside a layer
    calls: int = 0  # children it has called so far
    names: list[str] | None = None  # its children's names, if it is an nn.Sequential


class _Tracer:
    """Follows the example pass through forward hooks: the chain of calls in progress
    (after an exception, the failing module is last) and the modules that returned tuples."""

    def __init__(self) -> None:
        self.stack: list[_Frame] = []
        self.tuples: list[tuple[Any, tuple[str, ...], str]] = []  # (output, its producer's keys and type)
        self.paused = False

    def reset(self) -> None:
        self.stack.clear()
        self.tuples.clear()

    def enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.paused:
            return
        key = None
        if self.stack:
            parent = self.stack[-1]
            parent.calls += 1
            if parent.names is None:
                parent.names = list(parent.module._modules) if type(parent.module) is nn.Sequential else []
            # nn.Sequential calls each child once, in order: the n-th call is the n-th child
            if parent.calls <= len(parent.names):
                key = parent.names[parent.calls - 1]
        self.stack.append(_Frame(module, args, key))

    def leave(self, module: nn.Module, _args: Any, out: Any) -> None:  # must return None
        if self.paused:
            return
        if isinstance(out, (tuple, list)):
            self.tuples.append((out, self.keys(), type(module).__name__))
        self.stack.pop()

    def keys(self) -> tuple[str, ...]:
        """Names from the model down to the innermost call, up to the first unnamed one."""
        out: list[str] = []
        for frame in self.stack[1:]:
            if frame.key is None:
                break
            out.append(frame.key)
        return tuple(out)


def _passes(model: nn.Module, xs: tuple[torch.Tensor, ...], tracer: _Tracer) -> bool:
    tracer.reset()
    try:
        model(*xs)
    except Exception:  # noqa: BLE001 - the full pass reports it, or shows it was a false alarm
        return False
    return True


@dataclass(frozen=True)
class _Site:
    """Where in the spec a module of a model comes from."""

    node: Node  # the innermost spec node (a layer, or a list or mapping of children)
    uses: tuple[Use, ...]  # the 'use' nodes passed on the way, outermost first

    @property
    def path(self) -> SpecPath:
        """The path to report: the outermost use site, else the node itself."""
        if self.uses:
            use = self.uses[0].path
            return use[:-1] if use and use[-1] == "use" else use
        return self.node.path

    def describe(self) -> str:
        where = format_path(self.path)
        if self.uses:
            blocks = " > ".join(f"block '{u.block}'" for u in self.uses)
            where += f", in {blocks} (at {format_path(self.node.path)})"
        return where


def _locate(spec: Spec, model: str, keys: tuple[str, ...]) -> _Site:
    """Follow qualified module names (``("2", "0")``) through the spec, across uses."""
    node = spec.roots[model]
    uses: list[Use] = []
    for key in (*keys, None):
        while isinstance(node, Use) and node.block in spec.blocks:
            uses.append(node)
            node = spec.blocks[node.block]
        if key is None:
            break
        if isinstance(node, Seq) and key.isdigit() and int(key) < len(node.items):
            node = node.items[int(key)]
        elif isinstance(node, Repeat) and key.isdigit() and int(key) < node.count:
            node = node.body
        elif isinstance(node, Children) and key in dict(node.children):
            node = dict(node.children)[key]
        else:
            break  # inside a layer: the layer is the place in the spec
    return _Site(node, tuple(uses))


@dataclass
class _Step:
    """The graph node being computed when the example pass failed, and what it got."""

    module: fx.GraphModule
    node: fx.Node
    args: tuple[Any, ...] = ()


class _Stepper(fx.Interpreter):
    """Runs a GraphModule node by node, recording the node in progress (the generated
    forward is used everywhere else; this is only for saying where a pass failed)."""

    def __init__(self, module: fx.GraphModule, steps: list[_Step]) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.steps = steps

    def run_node(self, n: fx.Node) -> Any:
        step = _Step(self.module, n)  # type: ignore[arg-type]
        self.steps.append(step)
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            step.args = (*args, *kwargs.values())
            out = getattr(self, n.op)(n.target, args, kwargs)
        self.steps.pop()
        return out


@contextlib.contextmanager
def _stepping(model: nn.Module, builder: _Builder, steps: list[_Step]) -> Iterator[None]:
    """Run every graph of ``model`` through :class:`_Stepper` (hooks still fire)."""
    graphs = [m for m in model.modules() if id(m) in builder.graphs]
    for gm in graphs:
        names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]

        def forward(*args: Any, _gm: fx.GraphModule = gm, _names: list[Any] = names, **kwargs: Any) -> Any:
            bound = list(args) + [kwargs[n] for n in _names[len(args) :]]
            return _Stepper(_gm, steps).run(*bound)

        gm.forward = forward  # an instance attribute: __call__ and its hooks use it
    try:
        yield
    finally:
        for gm in graphs:
            del gm.forward


def _report_graph_failure(
    e: Exception,
    model: str,
    xs: tuple[torch.Tensor, ...],
    spec: Spec,
    tracer: _Tracer,
    step: _Step,
    builder: _Builder,
    errors: Collector,
) -> None:
    """Report a failure inside a graph at the graph node that failed: an op with the shapes
    it got, or a layer node with the layer's own diagnosis."""
    info = builder.graphs[id(step.module)]
    node = info.nodes.get(step.node.name)
    label = f"model '{model}'" if model else "the model"
    tensors = [a for a in step.args if isinstance(a, torch.Tensor)]
    shapes = ", ".join(
        str(list(a.shape)) + ("" if a.dtype == torch.float32 else f" {str(a.dtype).removeprefix('torch.')}")
        for a in tensors
    ) or "no tensor"  # fmt: skip
    given = " and ".join(str(list(x.shape)) for x in xs)
    if node is None:  # an fx node of our own (an item picked from a tuple)
        pick = info.picks.get(step.node.name)
        path = pick.path if pick is not None else info.graph.path
        where = f"'{pick.name}' ({format_path(path)})" if pick is not None else format_path(path)
        hint = f"it got {shapes}"
        if pick is not None and step.args:
            got, base = step.args[0], pick.name[: pick.name.rindex("[")]
            if isinstance(got, (tuple, list)):
                hint = f"'{base}' gives a tuple of {len(got)} items: pick one of {base}[0] to {base}[{len(got) - 1}]"
            elif isinstance(got, torch.Tensor):
                hint = f"'{base}' gives a tensor of shape {list(got.shape)}, not a tuple: remove the last [i]"
    elif isinstance(node.body, Op):
        where, path = format_path(node.path), node.path
        hint = f"{node.body.type} gets {shapes}: make the shapes of {', '.join(map(str, node.refs))} agree"
        if any(a.dtype != torch.float32 for a in tensors):
            hint = f"{node.body.type} gets {shapes}: check the shapes and dtypes of {', '.join(map(str, node.refs))}"
        if node.body.entry.tuple_output is False and any(isinstance(a, (tuple, list)) for a in step.args):
            hint = "an input is a tuple: pick an item with name[i], e.g. 'lstm[0]'"
    else:
        where, path = format_path(node.path), node.path
        hint = f"check the layer sizes against the example input {given}"
        frame = tracer.stack[-1] if tracer.stack else None
        tuples = [(ref, a) for ref, a in zip(node.refs, step.args, strict=False) if isinstance(a, (tuple, list))]
        if tuples:
            ref, got = tuples[0]
            hint = (f"'{ref}' gives a tuple of {len(got)} items (an LSTM gives its output and its state): "
                    f"pick one with '{ref}[0]'")  # fmt: skip
        elif frame is not None and id(frame.module) not in builder.graphs:
            site = _Site(node.body, ())
            i = next((i for i, x in enumerate(xs) for a in step.args if a is x), 0)  # the model input it reads
            tracer.paused = True
            try:
                hint = _diagnose(frame, site, model, xs[i], spec, tracer)
            finally:
                tracer.paused = False
            root = spec.roots[model]
            if isinstance(root, Graph) and root.inputs[i].example is not None:  # 'inputs.ids.dtype', not 'input.dtype'
                key = f"inputs.{root.inputs[i].name}"
                hint = hint.replace("input.dtype", f"{key}.dtype").replace("input.shape", f"{key}.shape")
    errors.add("build-error", f"the example input {given} failed in {label} at {where}: {first_line(e)}", path,
               hint=hint)  # fmt: skip


def _report_failure(e: Exception, model: str, x: torch.Tensor, spec: Spec, tracer: _Tracer, errors: Collector) -> None:
    """Report a failed example pass at the failing layer's place in the model, with the
    hint that fits: a dtype, a tuple between layers, several inputs, or sizes."""
    frame = tracer.stack[-1] if tracer.stack else None
    site = _locate(spec, model, tracer.keys())
    label = f"model '{model}'" if model else "the model"
    hint = "check the layer sizes against 'input.shape'"
    if frame is not None:
        tracer.paused = True  # the diagnosis calls the module again
        try:
            hint = _diagnose(frame, site, model, x, spec, tracer)
        finally:
            tracer.paused = False
    errors.add(
        "build-error",
        f"the example input {list(x.shape)} failed in {label} at {site.describe()}: {first_line(e)}",
        site.path,
        hint=hint,
    )


def _diagnose(frame: _Frame, site: _Site, model: str, x: torch.Tensor, spec: Spec, tracer: _Tracer) -> str:
    """Why a layer's forward failed, found by looking at what it got (never by reading the
    exception's text): a tuple, too few inputs, a dtype it does not take, or sizes."""
    module, args = frame.module, frame.args
    name = type(module).__name__
    for arg in args:
        if isinstance(arg, (tuple, list)):
            producer = next(((keys, kind) for out, keys, kind in tracer.tuples if out is arg), None)
            source = "the layer before it returns a tuple (e.g. an LSTM's output and state)"
            if producer is not None:
                source = f"{producer[1]} at {_locate(spec, model, producer[0]).describe()} returns a tuple"
            return f"{source}, which a plain list cannot pass on to {name}: data-flow graphs come in a later version"
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):  # pragma: no cover - a forward Python cannot inspect
        signature = inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)])
    try:
        signature.bind(*args)
    except TypeError:
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        wanted = [
            p.name
            for p in signature.parameters.values()
            if p.default is inspect.Parameter.empty and p.kind in positional
        ]
        return (
            f"{name} needs several inputs ({', '.join(wanted)}), which a list of layers cannot give "
            "yet: data-flow graphs come in a later version"
        )
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    from_input = any(a is x for a in args)
    if tensors and _works_with_other_dtype(module, args):
        got = str(tensors[0].dtype).removeprefix("torch.")
        if tensors[0].is_floating_point():
            fix = "set 'input.dtype: int64'" if from_input else "the layer before it returns floats"
            return f"{name} takes integer indices but gets {got}: {fix}"
        fix = "the layer before it returns integers"
        if from_input:
            fix = "set 'input.dtype' to a floating type such as float32"
            if tensors[0].dtype != torch.bool:
                fix += ", or start the model with an Embedding to take token ids"
        return f"{name} takes floating-point input but gets {got}: {fix}"
    shapes = ", ".join(str(list(t.shape)) for t in tensors) or "no tensor"
    sizes = ""
    if isinstance(site.node, Layer) and site.node.type == name and site.node.arguments:
        sizes = f"({', '.join(f'{k}={v}' for k, v in site.node.arguments.items())})"
    given = "which is input.shape" if from_input else f"input.shape is {list(x.shape)}"
    return f"{name}{sizes} gets shape {shapes} ({given}): make its sizes agree with that shape"


def _works_with_other_dtype(module: nn.Module, args: tuple[Any, ...]) -> bool:
    """Whether ``module`` runs once its tensor arguments swap floating point for integers
    (zeros: valid indices) or integers for float32: then the dtype was the problem."""
    swapped = [
        (torch.zeros_like(a, dtype=torch.int64) if a.is_floating_point() else a.to(torch.float32))
        if isinstance(a, torch.Tensor)
        else a
        for a in args
    ]
    try:
        module(*swapped)
    except Exception:  # noqa: BLE001 - it fails either way: not (only) a dtype problem
        return False
    return True


@contextlib.contextmanager
def _stand_ins(
    model: nn.Module, make: Callable[[torch.Tensor], torch.Tensor], only_meta: bool = False
) -> Iterator[None]:
    """Swap every parameter and buffer of ``model`` (only the meta ones with ``only_meta``) for
    ``make(tensor)``, one stand-in per unique tensor so that ties hold; put the tensors back
    whatever happens."""
    made: dict[int, torch.Tensor] = {}
    saved: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    try:
        for m in model.modules():
            for store in (m._parameters, m._buffers):
                for key, t in store.items():
                    if t is not None and (t.is_meta or not only_meta):
                        saved.append((store, key, t))
                        store[key] = made.setdefault(id(t), make(t))
        yield
    finally:
        for store, key, t in reversed(saved):
            store[key] = t


def _passes_on_meta(model: nn.Module, xs: tuple[torch.Tensor, ...]) -> bool:
    """Run ``model`` on a meta copy of ``x`` with every tensor swapped for a meta stand-in."""
    try:
        with _stand_ins(model, lambda t: torch.empty_like(t, device="meta")):
            model(*(x.to("meta") for x in xs))
        return True
    except Exception:  # noqa: BLE001 - the real pass reports it, or shows it was a false alarm
        return False


#: A model is run for real (not on meta) when it holds at most this many elements and each
#: example input at most ``_CHEAP_INPUT``: such a pass costs milliseconds to a few tenths of
#: a second (ResNet-18 on one 224x224 image), a cold meta pass seconds of imports.
_CHEAP_TENSORS = 1 << 25
_CHEAP_INPUT = 1 << 20


def _cheap(model: nn.Module, examples: list[tuple[InputSpec, str]]) -> bool:
    """Whether a real pass of the example through ``model`` costs little (see ``_CHEAP_TENSORS``)."""
    if any(math.prod(e.shape) > _CHEAP_INPUT for e, _ in examples):
        return False
    total = 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        total += t.numel()
        if total > _CHEAP_TENSORS:
            return False
    return True


def _passes_on_cpu(model: nn.Module, examples: list[tuple[InputSpec, str]], tracer: _Tracer) -> bool:
    """Run a model built on ``meta`` for real on CPU, with zero-filled stand-ins for its
    tensors (one per unique tensor, so ties hold); put the meta tensors back whatever happens.
    Zeros are valid indices and finite values, so only shapes and dtypes can make it fail."""
    with _stand_ins(model, lambda t: torch.zeros(t.shape, dtype=t.dtype, device="cpu"), only_meta=True):
        return _passes(model, tuple(example_tensor(e, "cpu", where) for e, where in examples), tracer)


def _is_lazy(module: nn.Module) -> bool:
    """Whether ``module`` holds a parameter or buffer still to be sized by a first call. (Read
    from its own dicts: ``parameters(recurse=False)`` costs more than the test, on 70B's 2,000 modules.)"""
    held = itertools.chain(module._parameters.values(), module._buffers.values())
    return any(isinstance(t, UninitializedTensorMixin) for t in held)


def _info(root: nn.Module, spec: Spec, builder: _Builder) -> BuildInfo:
    origins: dict[str, str] = {}
    for qual, module in root.named_modules(remove_duplicate=False):
        path = builder.paths.get(id(module))
        if path is not None:
            origins[qual] = format_path(path)
    return BuildInfo(spec=spec, block_sites=block_sites(root, builder.blocks), origins=origins)


def example_tensor(example: InputSpec, device: Any = "cpu", where: str = "input.shape") -> torch.Tensor:
    """Zeros shaped like an example input, for the sizing pass.

    Modules are constructed in float32 and converted to the build's dtype afterwards,
    so a floating input takes part in the pass as float32 (the pass is about shapes).
    """
    dtype = DTYPES[example.dtype]
    device = torch.device(device)
    dtype = torch.float32 if dtype.is_floating_point else dtype
    fix = f"make {where} smaller (it only sizes the layers: a batch of 2 is enough)"
    if device.type != "meta":
        fix += ", or use '--device meta'"
    with allocating(tensor_bytes(example.shape, dtype), device, f"the example input {list(example.shape)}", fix):
        return torch.zeros(example.shape, dtype=dtype, device=device)
