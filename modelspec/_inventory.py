"""Stage 5: a module -> its parameter inventory (:class:`Report`).

Works on any ``nn.Module``; when the module was built by modelspec its block names
label owners and tie groups. Tensors are grouped by object identity (never by storage
pointer: on ``meta`` every pointer is 0): a tensor reachable under several names is
listed once, with every alias, and its canonical name is the first one in PyTorch's
own traversal order (the name ``named_parameters()`` shows).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import torch
import torch.fx as fx
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from ._build import BuildInfo
from ._stats import one_intraop_thread, sha256_of, summarize, usable_cores
from ._ties import transposed_map
from ._transfer import Transfer
from ._version import __version__

__all__ = [
    "REPORT_VERSION",
    "BlockSummary",
    "ChildSummary",
    "DeclaredTie",
    "Flow",
    "FlowEdge",
    "FlowNode",
    "ModuleEntry",
    "Report",
    "TensorEntry",
    "TensorStats",
    "TieGroup",
    "Totals",
    "inventory",
]

REPORT_VERSION = 1

#: One tensor's element count or size: never negative, at most int64 as in PyTorch.
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
#: A byte count or a sum of element counts: never negative; 2^96 leaves room for sums
#: of int64 sizes times itemsize, aliases and Adam's copies, and refuses absurd numbers.
Total = Annotated[int, Field(ge=0, le=2**96)]
#: A sha256 hex digest as ``hashlib`` writes it.
SHA256 = r"^[0-9a-f]{64}$"


class FrozenModel(BaseModel):
    """Base of every report model: immutable, and unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorStats(FrozenModel):
    """Summary statistics in float64; ``None`` where non-finite values make them meaningless."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    l2: float | None = Field(description="L2 norm")
    nonfinite: Count = Field(0, description="number of NaN/inf elements")


class TensorEntry(FrozenModel):
    """One unique tensor (a parameter or a buffer), listed once however many names reach it."""

    name: str = Field(description="canonical name: the first in PyTorch's traversal order")
    aliases: list[str] = Field(description="every qualified name that reaches this tensor, canonical first")
    transposed_aliases: list[str] = Field(
        default_factory=list,
        description="names that read this tensor with dims 0 and 1 swapped (transposed ties); not parameters",
    )
    kind: Literal["parameter", "buffer"]
    block: str | None = Field(description="the innermost named block that owns it")
    shape: list[Count]
    dtype: str
    numel: Count
    bytes: Total
    requires_grad: bool
    persistent: bool = Field(True, description="buffers only: saved in state_dict")
    stats: TensorStats | None = Field(description="None on the meta device")
    sha256: str | None = Field(pattern=SHA256, description="sha256 of the raw bytes in C order; None on meta")


class TieGroup(FrozenModel):
    """Tensors that are one object under several names.

    ``kind="module"``: one module placed at several ``sites`` (a named block);
    ``kind="parameter"``: one parameter held by several different modules (``sites`` are its names);
    ``kind="transposed"``: one parameter read transposed elsewhere (``sites``: its canonical
    name, then every name that reads it transposed).
    """

    kind: Literal["module", "parameter", "transposed"]
    block: str | None
    sites: list[str]
    tensors: list[str] = Field(description="canonical names of the tied tensors")
    numel: Total = Field(description="elements stored once for the group")


class BlockSummary(FrozenModel):
    """A named block: where it is used and everything it holds, nested blocks included,
    each tensor counted once. ``''`` in ``sites`` is the root: the model is the block."""

    name: str
    sites: list[str]
    tensors: Count
    params: Total


class Totals(FrozenModel):
    """Model-wide counts; ``naive_params - unique_params == saved_by_sharing``."""

    unique_params: Total = Field(description="parameter elements, each tensor counted once")
    naive_params: Total = Field(description="the sum over every name: what double-counting tools show")
    saved_by_sharing: Total
    unique_tensors: Count
    param_bytes: Total
    trainable_params: Total
    frozen_params: Total
    buffer_numel: Total
    buffer_bytes: Total
    training_bytes_adam: Total = Field(
        description="weights + gradients + Adam's two moment buffers (activations not included)"
    )


class ModuleEntry(FrozenModel):
    """One unique module; a shared one is listed once with every name that reaches it."""

    name: str = Field(description="canonical name ('' for the root)")
    aliases: list[str]
    type: str = Field(description="class name, e.g. 'Linear'")
    block: str | None = Field(description="the named block this module is (or lies inside)")
    params: Total = Field(description="parameter elements held directly (not by children)")


class ChildSummary(FrozenModel):
    """A top-level child of the model (a model of a multi-model spec, or a layer)."""

    name: str
    type: str
    params: Total = Field(description="parameter elements inside, each tensor counted once")
    tensors: Count
    shared_params: Total = Field(description="of those, elements also reachable from another top-level child")


class DeclaredTie(FrozenModel):
    """A parameter tie: ``param`` is ``to`` (``same``) or reads it transposed (``transposed``)."""

    param: str
    to: str
    kind: Literal["same", "transposed"]


class FlowNode(FrozenModel):
    """One node of a data-flow graph (a ``torch.fx`` node).

    ``kind`` and ``target``: ``input`` (the input's name), ``module`` (the submodule's
    name relative to the graph module, dotted), ``function`` / ``method`` (the function
    or tensor method, e.g. ``add``, ``cat``, ``transpose``), ``tensor`` (a free parameter
    or buffer of the graph module, relative name), ``constant`` (any other attribute a
    traced graph reads, e.g. ``_tensor_constant0``), ``output``.
    """

    name: str = Field(description="the node's name in the generated forward (dots as underscores)")
    kind: Literal["input", "module", "function", "method", "tensor", "constant", "output"]
    target: str
    args: str = Field("", description="the constant arguments, e.g. 'dim=1'; inputs are in edges")


class FlowEdge(FrozenModel):
    """The value of node ``src`` is read by node ``dst``."""

    src: str
    dst: str


class Flow(FrozenModel):
    """The data flow of one graph module (a ``torch.fx.GraphModule``), listed once however
    many names reach it; nodes in the order the generated forward runs them."""

    module: str = Field(description="canonical name of the graph module ('' for the root)")
    nodes: list[FlowNode]
    edges: list[FlowEdge]


class Report(FrozenModel):
    """The parameter inventory of a model (``report.json``)."""

    format: Literal["modelspec-report"] = "modelspec-report"
    version: Literal[1] = REPORT_VERSION
    modelspec_version: str = __version__
    name: str | None
    spec_sha256: str | None = Field(pattern=SHA256)
    device: str
    totals: Totals
    tensors: list[TensorEntry]
    tie_groups: list[TieGroup]
    blocks: list[BlockSummary]
    children: list[ChildSummary]
    modules: list[ModuleEntry]
    ties: list[DeclaredTie] = Field(
        default_factory=list, description="parameter ties: declared in the spec, or found in the module"
    )
    flows: list[Flow] = Field(default_factory=list, description="the data flow of every graph module")
    transfers: list[Transfer] = Field(
        default_factory=list,
        description="parameters initialised from other build folders (init rules with 'from:'); absent when none",
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _group(named: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[torch.Tensor, list[str]]]:
    """Group (name, tensor) pairs by tensor identity, keeping first-seen order."""
    by_id: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, t in named:
        if t is None:
            continue
        by_id.setdefault(id(t), (t, []))[1].append(name)
    return list(by_id.values())


def _values(
    everything: list[tuple[torch.Tensor, list[str], str]],
    known: dict[str, str],
    threads: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[str | None], list[TensorStats | None]]:
    """Checksums and statistics of every tensor, computed by ``threads`` worker threads.

    Each tensor's checksum and its statistics are two independent tasks (a checksum the
    caller already knows is not computed); the workers take them largest first, so they
    all finish at about the same time whatever the mix: no thread waits for another kind
    of work, and with fewer free cores than threads (another process busy) the work is
    shared rather than serialized behind one slow thread. hashlib and torch release the
    GIL. Every torch op runs on its worker's thread alone (no intra-op threads competing
    for the same cores), and each task's result does not depend on which thread runs it.

    The workers take tasks from one shared counter and write results in place: no future
    per task, and the calling thread sleeps until they finish (it wakes per finished task
    only to report ``progress``). A pool of futures cost the calling thread about 0.1 ms
    of CPU per task, time taken from the workers' cores (measured: 30 ms for GPT-2).
    """
    sizes = [t.numel() * t.element_size() for t, _, _ in everything]
    tasks = [(size, i, "stats") for i, size in enumerate(sizes)]
    tasks += [(size, i, "sha256") for i, size in enumerate(sizes) if everything[i][1][0] not in known]
    tasks.sort(key=lambda task: (-task[0], task[1], task[2]))
    hashes: list[str | None] = [known.get(names[0]) for _, names, _ in everything]
    stats: list[TensorStats | None] = [None] * len(everything)
    total = sum(size for size, _, _ in tasks)
    taken = itertools.count()  # next() on it is atomic: each task is taken by one worker
    failed: list[BaseException] = []  # a task's error, or the caller's (progress), stops every worker
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()  # sizes of finished tasks; -1: a worker stopped

    def work() -> None:
        try:
            torch.set_num_threads(1)
            for j in taken:
                if j >= len(tasks) or failed:
                    return
                size, i, kind = tasks[j]
                if kind == "sha256":
                    hashes[i] = sha256_of(everything[i][0])
                else:
                    stats[i] = TensorStats(**vars(summarize(everything[i][0])))
                if progress is not None:
                    finished.put(size)
        except Exception as e:  # noqa: BLE001 - raised again, unchanged, by the calling thread
            failed.append(e)
        finally:
            finished.put(-1)

    # one intra-op thread until the workers are done: torch gives a thread, at its first op,
    # the setting last made by any thread (see one_intraop_thread), so keep it at 1 meanwhile
    with one_intraop_thread():
        count = max(1, min(threads, len(tasks)))
        workers = [threading.Thread(target=work, name=f"modelspec-values-{k}") for k in range(count)]
        for w in workers:
            w.start()
        try:
            if progress is not None:
                done, running = 0, len(workers)
                while running:
                    size = finished.get()
                    if size < 0:
                        running -= 1
                        continue
                    done += size
                    if 0 < size and done < total:  # an empty tensor moves nothing
                        progress(done, total)
        except BaseException as e:
            failed.append(e)
            raise
        finally:
            for w in workers:
                w.join()
    if failed:
        raise failed[0]
    if progress is not None:
        progress(total, total)
    return hashes, stats


def inventory(
    module: nn.Module,
    info: BuildInfo | None = None,
    *,
    values: bool = True,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    known_hashes: dict[str, str] | None = None,
) -> Report:
    """Inventory every unique parameter and buffer of ``module``.

    Checksums and statistics are computed by one worker thread per usable core
    (``threads`` overrides it), each tensor's two tasks taken largest first. With
    ``values=False`` (and always on ``meta``) only structure is reported: no
    statistics, no checksums. ``progress(done_bytes, total_bytes)`` is called as
    tensors are finished. ``known_hashes`` (canonical name -> sha256) are checksums
    the caller has just verified, e.g. while loading a checkpoint: not computed again.
    """
    params = _group(list(module.named_parameters(remove_duplicate=False)))
    buffers = _group(list(module.named_buffers(remove_duplicate=False)))
    non_persistent = {
        (f"{mod_name}.{b}" if mod_name else b)
        for mod_name, m in module.named_modules(remove_duplicate=False)
        for b in getattr(m, "_non_persistent_buffers_set", ())
    }
    everything = [(t, names, "parameter") for t, names in params] + [(t, names, "buffer") for t, names in buffers]
    on_meta = not values or any(t.is_meta for t, _, _ in everything)
    hashes: list[str | None]
    stats: list[TensorStats | None]
    if on_meta:
        hashes = [None] * len(everything)
        stats = [None] * len(everything)
    else:
        hashes, stats = _values(everything, known_hashes or {}, threads or usable_cores(), progress)

    transposed = transposed_map(module)
    readers: dict[str, list[str]] = {}  # a source's canonical name -> the names that read it transposed
    for reader, source in transposed.items():
        readers.setdefault(source, []).append(reader)
    entries = []
    for (t, names, kind), digest, st in zip(everything, hashes, stats, strict=True):
        entries.append(
            TensorEntry(
                name=names[0],
                aliases=names,
                transposed_aliases=[r for a in names for r in readers.get(a, [])] if kind == "parameter" else [],
                kind=kind,  # type: ignore[arg-type]
                block=_owner(info, names[0]),
                shape=list(t.shape),
                dtype=_dtype_name(t.dtype),
                numel=t.numel(),
                bytes=t.numel() * t.element_size(),
                requires_grad=bool(t.requires_grad) if kind == "parameter" else False,
                persistent=kind == "parameter" or names[0] not in non_persistent,
                stats=st,
                sha256=digest,
            )
        )
    p_entries = [e for e in entries if e.kind == "parameter"]
    b_entries = [e for e in entries if e.kind == "buffer"]
    unique = sum(e.numel for e in p_entries)
    naive = sum(e.numel * (len(e.aliases) + len(e.transposed_aliases)) for e in p_entries)
    trainable = sum(e.numel for e in p_entries if e.requires_grad)
    totals = Totals(
        unique_params=unique,
        naive_params=naive,
        saved_by_sharing=naive - unique,
        unique_tensors=len(entries),
        param_bytes=sum(e.bytes for e in p_entries),
        trainable_params=trainable,
        frozen_params=unique - trainable,
        buffer_numel=sum(e.numel for e in b_entries),
        buffer_bytes=sum(e.bytes for e in b_entries),
        training_bytes_adam=sum(e.bytes + (3 * e.bytes if e.requires_grad else 0) for e in p_entries),
    )
    device = str(everything[0][0].device) if everything else "cpu"
    spec = info.spec if info else None
    return Report(
        name=spec.name if spec else None,
        spec_sha256=spec.sha256 if spec else None,
        device=device,
        totals=totals,
        tensors=entries,
        tie_groups=_tie_groups(module, entries, info),
        blocks=_blocks(entries, info),
        children=_children(module, entries),
        modules=_modules(module, info),
        ties=_declared_ties(info, transposed),
        flows=_flows(module),
        transfers=list(info.transfers) if info else [],
    )


def _owner(info: BuildInfo | None, tensor_name: str) -> str | None:
    if info is None:
        return None
    return info.owner(tensor_name.rpartition(".")[0])


def _tie_groups(module: nn.Module, entries: list[TensorEntry], info: BuildInfo | None) -> list[TieGroup]:
    groups: list[TieGroup] = []
    modules = dict(module.named_modules(remove_duplicate=False))
    by_id: dict[int, list[str]] = {}
    for name, m in modules.items():
        by_id.setdefault(id(m), []).append(name)
    shared = {i: names for i, names in by_id.items() if len(names) > 1}

    def slot(name: str) -> tuple[int, str]:  # (the parent object, the key it holds the module under)
        parent, _, key = name.rpartition(".")
        return id(modules[parent]), key

    for names in shared.values():
        # A module reached under several names only because its parent is shared sits in
        # one slot; one that sits in two slots is placed twice: a tie of its own.
        if len({slot(n) for n in names}) < 2:
            continue
        prefixes = tuple(n + "." for n in names)
        tensors = [e for e in entries if any(a.startswith(prefixes) for a in e.aliases)]
        block = info.owner(names[0]) if info else None
        groups.append(
            TieGroup(
                kind="module",
                block=block,
                sites=names,
                tensors=[e.name for e in tensors],
                numel=sum(e.numel for e in tensors),
            )
        )
    for e in entries:  # parameters shared by different modules (e.g. a tied output head)
        owners = {id(modules[a.rpartition(".")[0]]) for a in e.aliases}
        if len(owners) > 1:
            groups.append(
                TieGroup(kind="parameter", block=None, sites=list(e.aliases), tensors=[e.name], numel=e.numel)
            )
    for e in entries:  # parameters read transposed by other modules (a tied autoencoder's decoder)
        if e.transposed_aliases:
            sites = [e.name, *e.transposed_aliases]
            groups.append(TieGroup(kind="transposed", block=None, sites=sites, tensors=[e.name], numel=e.numel))
    return groups


def _declared_ties(info: BuildInfo | None, transposed: dict[str, str]) -> list[DeclaredTie]:
    """The spec's ties in the spec's order; for a module modelspec did not build, its transposed ties."""
    if info is not None and info.spec.ties:
        return [DeclaredTie(param=t.param, to=t.to, kind=t.kind) for t in info.spec.ties]  # type: ignore[arg-type]
    return [DeclaredTie(param=reader, to=source, kind="transposed") for reader, source in transposed.items()]


def _const(value: object) -> str | None:
    """A constant argument of an fx node as short, machine-independent text; None for a node."""
    if isinstance(value, fx.Node):
        return None
    if isinstance(value, list | tuple):
        items = [_const(v) for v in value]
        if value and all(i is None for i in items):
            return None  # a list of inputs (torch.cat([a, b])): shown as edges
        inner = ", ".join("_" if i is None else i for i in items)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(items) == 1 else ''})"
    if isinstance(value, slice):
        parts = ["" if v is None else (_const(v) or "_") for v in (value.start, value.stop, value.step)]
        return ":".join(parts[:2] if value.step is None else parts)
    if value is Ellipsis:
        return "..."
    if isinstance(value, torch.dtype):
        return _dtype_name(value)
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)  # float repr is the shortest round trip: the same on every machine
    return type(value).__name__


def _holds_tensor(module: nn.Module, target: str) -> bool:
    """Whether ``target`` (a get_attr's dotted name) is a parameter or buffer of ``module``."""
    *path, attr = target.split(".")
    for name in path:
        module = module._modules.get(name)  # type: ignore[assignment]
        if module is None:
            return False
    return module._parameters.get(attr) is not None or module._buffers.get(attr) is not None


def _flow_node(node: fx.Node, module: nn.Module) -> FlowNode:
    kind = {"placeholder": "input", "call_module": "module", "call_function": "function",
            "call_method": "method", "get_attr": "tensor", "output": "output"}[node.op]  # fmt: skip
    if kind == "tensor" and not _holds_tensor(module, str(node.target)):
        kind = "constant"
    target = node.target
    if node.op == "call_function":
        name = getattr(target, "__name__", None)
        target = name if isinstance(name, str) else type(target).__name__
    args = [] if node.op in ("placeholder", "output") else [_const(a) for a in node.args]
    args += [f"{k}={c}" for k, c in ((k, _const(v)) for k, v in node.kwargs.items()) if c is not None]
    return FlowNode(name=node.name, kind=kind, target=str(target), args=", ".join(a for a in args if a is not None))  # type: ignore[arg-type]


def _flows(module: nn.Module) -> list[Flow]:
    """The data flow of each graph module, read from its ``torch.fx`` graph (built or loaded alike)."""
    flows = []
    seen: set[int] = set()
    for name, m in module.named_modules(remove_duplicate=False):
        if not isinstance(m, fx.GraphModule) or id(m) in seen:
            continue
        seen.add(id(m))
        nodes = list(m.graph.nodes)
        edges = [FlowEdge(src=i.name, dst=n.name) for n in nodes for i in n.all_input_nodes]
        flows.append(Flow(module=name, nodes=[_flow_node(n, m) for n in nodes], edges=edges))
    return flows


def _blocks(entries: list[TensorEntry], info: BuildInfo | None) -> list[BlockSummary]:
    if info is None:
        return []
    out = []
    for name, sites in info.block_sites.items():
        prefixes = tuple(f"{site}." if site else "" for site in sites)  # '' : the root is the block
        mine = [e for e in entries if prefixes and any(a.startswith(prefixes) for a in e.aliases)]
        out.append(
            BlockSummary(
                name=name,
                sites=list(sites),
                tensors=len(mine),
                params=sum(e.numel for e in mine if e.kind == "parameter"),
            )
        )
    return out


def _children(module: nn.Module, entries: list[TensorEntry]) -> list[ChildSummary]:
    tops = [(k, m) for k, m in module._modules.items() if m is not None]  # a shared child under each name
    reach: dict[str, list[TensorEntry]] = {name: [] for name, _ in tops}
    reached_from: dict[str, set[str]] = {}  # tensor name -> the top-level children that reach it
    for e in entries:
        tops_of_e = {a.split(".", 1)[0] for a in e.aliases if "." in a} & reach.keys()
        reached_from[e.name] = tops_of_e
        for name in tops_of_e:
            reach[name].append(e)
    out = []
    for name, child in tops:
        mine = [e for e in reach[name] if e.kind == "parameter"]
        shared = [e for e in mine if len(reached_from[e.name]) > 1]
        out.append(
            ChildSummary(
                name=name,
                type=type(child).__name__,
                params=sum(e.numel for e in mine),
                tensors=len(reach[name]),
                shared_params=sum(e.numel for e in shared),
            )
        )
    return out


def _modules(module: nn.Module, info: BuildInfo | None) -> list[ModuleEntry]:
    grouped: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, m in module.named_modules(remove_duplicate=False):
        grouped.setdefault(id(m), (m, []))[1].append(name)
    return [
        ModuleEntry(
            name=names[0],
            aliases=names,
            type=type(m).__name__,
            block=info.owner(names[0]) if info else None,
            # parameters(recurse=False), without its per-call set-up (thousands of modules)
            params=sum(p.numel() for p in {id(p): p for p in m._parameters.values() if p is not None}.values()),
        )
        for m, names in grouped.values()
    ]
