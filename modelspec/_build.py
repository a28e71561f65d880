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
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parameter import UninitializedParameter

from . import _registry as registry
from ._errors import Collector, SpecPath, format_path
from ._resolve import Resolved
from ._rng import PortableInit
from ._spec import Children, Layer, Node, Seq, Spec, Use

__all__ = ["DTYPES", "BuildInfo", "build_module"]

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

    def owner(self, module_name: str) -> str | None:
        """The innermost block that contains the module named ``module_name``."""
        best: tuple[int, str] | None = None
        for block, sites in self.block_sites.items():
            for site in sites:
                if module_name == site or module_name.startswith(site + ".") or site == "":
                    if best is None or len(site) > best[0]:
                        best = (len(site), block)
        return best[1] if best else None


class _Builder:
    def __init__(self, spec: Spec, errors: Collector) -> None:
        self.spec = spec
        self.errors = errors
        self.blocks: dict[str, nn.Module] = {}
        self.paths: dict[int, SpecPath] = {}  # id(module) -> defining spec path

    def node(self, node: Node) -> nn.Module:
        if isinstance(node, Use):
            return self.blocks[node.block]
        if isinstance(node, Layer):
            module = self.layer(node)
        elif isinstance(node, Seq):
            module = nn.Sequential(*(self.node(n) for n in node.items))
        else:
            assert isinstance(node, Children)
            module = nn.Sequential(OrderedDict((k, self.node(v)) for k, v in node.children))
        self.paths.setdefault(id(module), node.path)
        return module

    def layer(self, node: Layer) -> nn.Module:
        entry = registry.get_layer(node.type)
        assert entry is not None  # the spec stage checked it
        try:
            return entry.cls(**node.values)
        except Exception as e:  # noqa: BLE001 - torch raises many types for bad values
            self.errors.add(
                "build-error", f"{node.type}(...) failed: {_first_line(e)}", node.path, hint="check the argument values"
            )
            return nn.Identity()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
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
        yield


def build_module(
    resolved: Resolved,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, BuildInfo]:
    """Construct, materialize and seed the modules of ``resolved``.

    Returns the module (an ``nn.ModuleDict`` keyed by model name for a multi-model
    spec) and its :class:`BuildInfo`. On ``device="meta"`` nothing is allocated:
    shapes and counts are real, values are not.
    """
    spec = resolved.spec
    device = torch.device(device)
    errors = Collector(file=spec.file, positions=spec.positions)
    builder = _Builder(spec, errors)
    with _seeded(spec.seed, device):
        for name in resolved.order:
            builder.blocks[name] = builder.node(spec.blocks[name])
        roots = {name: builder.node(node) for name, node in spec.roots.items()}
        errors.raise_if_errors()
        root: nn.Module = roots[""] if spec.models is None else nn.ModuleDict(roots)
        if spec.models is not None:
            builder.paths[id(root)] = ()
        _materialize(root, roots, spec, builder, device, errors)
    errors.raise_if_errors()
    if dtype is not None:
        root = root.to(dtype)  # keeps module and parameter ties (see TIES-IN-TORCH.md)
    return root, _info(root, spec, builder)


def _materialize(
    root: nn.Module, roots: dict[str, nn.Module], spec: Spec, builder: _Builder, device: torch.device, errors: Collector
) -> None:
    """Run the example input once through each model: lazy layers take their shapes and
    every layer's sizes are checked against the input before anyone trains.

    Lazy layers need a real pass (they initialize on their first call, as in the
    handwritten seed code). Without them the pass runs on ``meta`` copies of every
    tensor: the same shape checks, no arithmetic, so building costs what
    constructing the modules costs.
    """
    lazy = [(n, m) for n, m in root.named_modules() if _is_lazy(m)]
    if spec.input is None and not lazy:
        return
    if spec.input is None:
        name, module = lazy[0]
        errors.add(
            "missing-input",
            f"{type(module).__name__} at '{name}' is sized lazily but the spec has no 'input'",
            builder.paths.get(id(module), ()),
            hint="add 'input: {shape: [batch, features]}'",
        )
        return
    x = example_input(spec, device)
    modes = {m: m.training for m in root.modules()}
    stack: list[nn.Module] = []  # modules entered and not yet left: the last one failed

    def enter(mod: nn.Module, _args: Any) -> None:
        stack.append(mod)

    def leave(_mod: nn.Module, _args: Any, _out: Any) -> None:  # must return None
        stack.pop()

    hooks = []
    for m in modes:
        hooks.append(m.register_forward_pre_hook(enter))
        hooks.append(m.register_forward_hook(leave))
    root.eval()  # no running-stat updates, no dropout: the pass must not change state
    try:
        with torch.no_grad():
            for name, model in roots.items():
                # Fast path without lazy layers: the same pass on meta stand-ins costs no
                # arithmetic. Any failure there is re-run for real, so a missing meta kernel
                # or an op that bypasses the swap can never produce a false error.
                if not lazy and device.type != "meta" and _passes_on_meta(model, x):
                    continue
                stack.clear()
                try:
                    model(x)
                except Exception as e:  # noqa: BLE001 - report any failure at its layer
                    failing = stack[-1] if stack else model
                    where = builder.paths.get(id(failing), ("input",))
                    label = f"model '{name}'" if name else "the model"
                    errors.add(
                        "build-error",
                        f"the example input {list(x.shape)} failed in {label} at {format_path(where)}: "
                        f"{_first_line(e)}",
                        where,
                        hint="check the layer sizes against 'input.shape'",
                    )
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    for name, module in root.named_modules():
        if any(isinstance(p, UninitializedParameter) for p in module.parameters(recurse=False)):
            errors.add(
                "missing-input",
                f"{type(module).__name__} at '{name}' was not reached by the example input",
                builder.paths.get(id(module), ()),
                hint="every lazy layer must run in the forward pass",
            )


def _passes_on_meta(model: nn.Module, x: torch.Tensor) -> bool:
    """Run ``model`` on a meta copy of ``x`` with every tensor swapped for a meta stand-in
    (one per unique tensor, so ties hold); put the real tensors back whatever happens."""
    stand_ins: dict[int, torch.Tensor] = {}
    saved: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    try:
        for m in model.modules():
            for store in (m._parameters, m._buffers):
                for key, t in store.items():
                    if t is not None:
                        saved.append((store, key, t))
                        store[key] = stand_ins.setdefault(id(t), torch.empty_like(t, device="meta"))
        model(x.to("meta"))
        return True
    except Exception:  # noqa: BLE001 - the real pass reports it, or shows it was a false alarm
        return False
    finally:
        for store, key, t in reversed(saved):
            store[key] = t


def _is_lazy(module: nn.Module) -> bool:
    return any(isinstance(t, UninitializedParameter) for t in module.parameters(recurse=False)) or any(
        isinstance(t, torch.nn.parameter.UninitializedBuffer) for t in module.buffers(recurse=False)
    )


def _info(root: nn.Module, spec: Spec, builder: _Builder) -> BuildInfo:
    block_ids = {id(m): name for name, m in builder.blocks.items()}
    sites: dict[str, list[str]] = {name: [] for name in builder.blocks}
    origins: dict[str, str] = {}
    for qual, module in root.named_modules(remove_duplicate=False):
        if id(module) in block_ids:
            block = block_ids[id(module)]
            # a block nested in a shared block appears under each use of the outer one
            sites[block].append(qual)
        path = builder.paths.get(id(module))
        if path is not None:
            origins[qual] = format_path(path)
    return BuildInfo(spec=spec, block_sites={k: tuple(v) for k, v in sites.items()}, origins=origins)


def example_input(spec: Spec, device: Any = "cpu") -> torch.Tensor:
    """Zeros shaped like the spec's example input, for the sizing pass.

    Modules are constructed in float32 and converted to the build's dtype afterwards,
    so a floating input takes part in the pass as float32 (the pass is about shapes).
    """
    assert spec.input is not None
    dtype = DTYPES[spec.input.dtype]
    return torch.zeros(spec.input.shape, dtype=torch.float32 if dtype.is_floating_point else dtype, device=device)
