"""Reading a ``report.json``: its schema, then whether it agrees with itself.

The schema (the pydantic models of :mod:`modelspec._inventory`) checks types and ranges.
A report can pass it and still contradict itself: a tensor listed twice, a ``numel``
that is not the product of its shape, totals that are not the sums over the tensors, a
tie group naming a tensor that is not there, a tie or a data-flow edge naming something
that is not there, NaN statistics. ``diff`` and ``report``
would then show numbers that mean nothing, or "no differences". :func:`read_report`
refuses such a file with every problem found, each at its JSON path
(``tensors[3].numel``), the way a spec's errors are reported.

Every check here restates how :func:`modelspec._inventory.inventory` derives a field,
so a report written by modelspec always passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pydantic
import torch

from ._errors import PathPart, ReportError, format_path
from ._inventory import Report, TensorEntry

__all__ = ["check_report", "read_report"]

#: element size of every dtype name a report may carry (``"float32"`` -> 4)
ITEMSIZE: dict[str, int] = {
    str(v).removeprefix("torch."): v.itemsize for v in vars(torch).values() if isinstance(v, torch.dtype)
}


def read_report(data: bytes | str, source: str = "report.json") -> Report:
    """Parse and check a ``report.json``.

    Types are strict (``1e3`` is not an integer, ``true`` is not a count).

    Raises:
        ReportError: code ``bad-report``, with ``.problems`` as ``(json path, message)``.
    """
    try:
        report = Report.model_validate_json(data, strict=True)
    except pydantic.ValidationError as e:
        problems = [(_loc(err["loc"]), err["msg"]) for err in e.errors(include_url=False)]
        raise ReportError.of(source, "is not a modelspec report.json", problems) from e
    check_report(report, source)
    return report


def _loc(loc: Sequence[object]) -> str:
    return format_path([p for p in loc if isinstance(p, int | str)]) if loc else "<root>"


def check_report(report: Report, source: str = "report") -> None:
    """Raise :class:`ReportError` (code ``bad-report``) if ``report`` contradicts itself."""
    problems = _Problems()
    _check_tensors(report, problems)
    _check_totals(report, problems)
    modules = _check_modules(report, problems)
    _check_tie_groups(report, modules, problems)
    _check_blocks(report, modules, problems)
    _check_children(report, modules, problems)
    _check_ties(report, problems)
    _check_flows(report, modules, problems)
    _check_transfers(report, problems)
    if problems.items:
        raise ReportError.of(source, "contradicts itself", problems.items)


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: Iterable[PathPart], message: str) -> None:
        self.items.append((format_path(list(path)), message))


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _under(e: TensorEntry, sites: Iterable[str]) -> bool:
    """Whether a name of ``e`` lies inside one of the modules ``sites`` ('' is the root)."""
    prefixes = tuple(f"{s}." if s else "" for s in sites)
    return bool(prefixes) and any(a.startswith(prefixes) for a in e.aliases)


def _check_tensors(report: Report, problems: _Problems) -> None:
    seen: dict[str, int] = {}
    for i, e in enumerate(report.tensors):
        at: tuple[PathPart, ...] = ("tensors", i)
        if not e.aliases or e.aliases[0] != e.name:
            problems.add((*at, "aliases"), f"must start with the canonical name '{e.name}'")
        for j, alias in enumerate(e.aliases):
            if alias in seen:
                problems.add((*at, "aliases", j), f"'{alias}' is also a name of tensors[{seen[alias]}]")
            else:
                seen[alias] = i
        if e.transposed_aliases and e.kind != "parameter":
            problems.add((*at, "transposed_aliases"), "only a parameter can be read transposed")
        if math.prod(e.shape) != e.numel:
            problems.add((*at, "numel"), f"{e.numel} but shape {e.shape} has {math.prod(e.shape)} elements")
        itemsize = ITEMSIZE.get(e.dtype)
        if itemsize is None:
            problems.add((*at, "dtype"), f"unknown dtype '{e.dtype}'")
        elif e.bytes != e.numel * itemsize:
            problems.add((*at, "bytes"), f"{e.bytes} but {e.numel} elements of {e.dtype} take {e.numel * itemsize}")
        if e.kind == "buffer" and e.requires_grad:
            problems.add((*at, "requires_grad"), "a buffer has no gradient")
        if e.kind == "parameter" and not e.persistent:
            problems.add((*at, "persistent"), "a parameter is always saved")
        if e.stats is not None:
            _check_stats(e, (*at, "stats"), problems)
    for i, e in enumerate(report.tensors):  # after every alias is known
        for j, name in enumerate(e.transposed_aliases):
            if name in seen:
                at = ("tensors", i, "transposed_aliases", j)
                problems.add(at, f"'{name}' is also a name of tensors[{seen[name]}]")
            else:
                seen[name] = i


def _check_stats(e: TensorEntry, at: tuple[PathPart, ...], problems: _Problems) -> None:
    s = e.stats
    assert s is not None
    values = {"mean": s.mean, "std": s.std, "min": s.min, "max": s.max, "l2": s.l2}
    finite = {}
    for key, v in values.items():
        if v is None:
            continue
        if not math.isfinite(v):
            problems.add((*at, key), f"{v}: statistics are finite numbers, or null")
        else:
            finite[key] = v
    for key in ("std", "l2"):
        if finite.get(key, 0.0) < 0:
            problems.add((*at, key), f"{finite[key]} is negative")
    if s.nonfinite > e.numel:
        problems.add((*at, "nonfinite"), f"{s.nonfinite} of only {e.numel} elements")
    lo, hi, mean = finite.get("min"), finite.get("max"), finite.get("mean")
    if lo is not None and hi is not None and lo > hi:
        problems.add((*at, "min"), f"min {lo} is above max {hi}")
    elif mean is not None:
        slack = 1e-9 * max(abs(lo or 0.0), abs(hi or 0.0), abs(mean))  # the mean's rounding
        if (lo is not None and mean < lo - slack) or (hi is not None and mean > hi + slack):
            problems.add((*at, "mean"), f"mean {mean} lies outside [min, max] = [{lo}, {hi}]")


def _check_totals(report: Report, problems: _Problems) -> None:
    params = [e for e in report.tensors if e.kind == "parameter"]
    buffers = [e for e in report.tensors if e.kind == "buffer"]
    unique = sum(e.numel for e in params)
    naive = sum(e.numel * (len(e.aliases) + len(e.transposed_aliases)) for e in params)
    trainable = sum(e.numel for e in params if e.requires_grad)
    expected = {
        "unique_params": unique,
        "naive_params": naive,
        "saved_by_sharing": naive - unique,
        "unique_tensors": len(report.tensors),
        "param_bytes": sum(e.bytes for e in params),
        "trainable_params": trainable,
        "frozen_params": unique - trainable,
        "buffer_numel": sum(e.numel for e in buffers),
        "buffer_bytes": sum(e.bytes for e in buffers),
        "training_bytes_adam": sum(e.bytes * (4 if e.requires_grad else 1) for e in params),
    }
    for key, want in expected.items():
        have = getattr(report.totals, key)
        if have != want:
            problems.add(("totals", key), f"{have:,} but the tensors give {want:,}")


def _check_modules(report: Report, problems: _Problems) -> dict[str, int]:
    """Every module name -> its index in ``modules``; checks names and direct parameter counts."""
    index: dict[str, int] = {}
    for i, m in enumerate(report.modules):
        if not m.aliases or m.aliases[0] != m.name:
            problems.add(("modules", i, "aliases"), f"must start with the canonical name '{m.name}'")
        for j, alias in enumerate(m.aliases):
            if alias in index:
                problems.add(("modules", i, "aliases", j), f"'{alias}' is also a name of modules[{index[alias]}]")
            else:
                index[alias] = i
    direct = [0] * len(report.modules)
    for i, e in enumerate(report.tensors):
        holders = set()
        for j, alias in enumerate(e.aliases):
            k = index.get(_parent(alias))
            if k is None:
                problems.add(("tensors", i, "aliases", j), f"no module '{_parent(alias)}' holds '{alias}'")
            else:
                holders.add(k)
        if e.kind == "parameter":
            for k in holders:
                direct[k] += e.numel
        for j, name in enumerate(e.transposed_aliases):  # read, not held: no count
            if _parent(name) not in index:
                problems.add(("tensors", i, "transposed_aliases", j), f"no module '{_parent(name)}' reads '{name}'")
    for i, m in enumerate(report.modules):
        if m.params != direct[i]:
            problems.add(("modules", i, "params"), f"{m.params:,} but its own parameters hold {direct[i]:,}")
    _check_block_names(report, problems)
    return index


def _check_block_names(report: Report, problems: _Problems) -> None:
    names = {b.name for b in report.blocks}
    if len(names) != len(report.blocks):
        dup = next(b.name for i, b in enumerate(report.blocks) if b.name in {c.name for c in report.blocks[:i]})
        problems.add(("blocks",), f"block '{dup}' is listed twice")
    owners = [("tensors", i, e.block) for i, e in enumerate(report.tensors)]
    owners += [("modules", i, m.block) for i, m in enumerate(report.modules)]
    owners += [("tie_groups", i, g.block) for i, g in enumerate(report.tie_groups)]
    for field, i, block in owners:
        if block is not None and block not in names:
            problems.add((field, i, "block"), f"no block '{block}' in blocks")


def _check_tie_groups(report: Report, modules: dict[str, int], problems: _Problems) -> None:
    by_name = {e.name: e for e in report.tensors}
    for i, g in enumerate(report.tie_groups):
        at: tuple[PathPart, ...] = ("tie_groups", i)
        found = []
        for j, name in enumerate(g.tensors):
            if name not in by_name:
                problems.add((*at, "tensors", j), f"no tensor '{name}' in tensors")
            else:
                found.append(by_name[name])
        if len(g.sites) < 2:
            problems.add((*at, "sites"), "a tie needs at least two sites")
        if g.kind == "module":
            for j, site in enumerate(g.sites):
                if site not in modules:
                    problems.add((*at, "sites", j), f"no module '{site}' in modules")
            expected = [e.name for e in report.tensors if _under(e, g.sites)]
            if len(found) == len(g.tensors) and sorted(g.tensors) != sorted(expected):
                problems.add((*at, "tensors"), f"the tensors under its sites are {expected}")
        elif len(g.tensors) != 1:
            problems.add((*at, "tensors"), f"a {g.kind} tie names exactly one tensor")
        elif found and g.kind == "parameter" and sorted(g.sites) != sorted(found[0].aliases):
            problems.add((*at, "sites"), f"the names of '{found[0].name}' are {found[0].aliases}")
        elif found and g.kind == "transposed":
            want = [found[0].name, *found[0].transposed_aliases]
            if g.sites != want:
                problems.add((*at, "sites"), f"'{found[0].name}' and the names reading it transposed are {want}")
        if len(found) == len(g.tensors) and g.numel != sum(e.numel for e in found):
            problems.add((*at, "numel"), f"{g.numel:,} but its tensors hold {sum(e.numel for e in found):,}")


def _check_blocks(report: Report, modules: dict[str, int], problems: _Problems) -> None:
    for i, b in enumerate(report.blocks):
        at: tuple[PathPart, ...] = ("blocks", i)
        for j, site in enumerate(b.sites):
            if site not in modules:
                problems.add((*at, "sites", j), f"no module '{site}' in modules")
        mine = [e for e in report.tensors if _under(e, b.sites)]
        if b.tensors != len(mine):
            problems.add((*at, "tensors"), f"{b.tensors} but {len(mine)} tensors lie under its sites")
        params = sum(e.numel for e in mine if e.kind == "parameter")
        if b.params != params:
            problems.add((*at, "params"), f"{b.params:,} but the parameters under its sites hold {params:,}")


def _check_children(report: Report, modules: dict[str, int], problems: _Problems) -> None:
    names = [c.name for c in report.children]
    reached: dict[str, set[str]] = {}  # tensor -> the children that reach it
    for e in report.tensors:
        reached[e.name] = {a.split(".", 1)[0] for a in e.aliases if "." in a} & set(names)
    for i, c in enumerate(report.children):
        at: tuple[PathPart, ...] = ("children", i)
        if c.name not in modules or "." in c.name or c.name == "":
            problems.add((*at, "name"), f"no top-level module '{c.name}' in modules")
        if c.name in names[:i]:
            problems.add((*at, "name"), f"child '{c.name}' is listed twice")
        mine = [e for e in report.tensors if c.name in reached[e.name]]
        params = [e for e in mine if e.kind == "parameter"]
        want = {
            "tensors": len(mine),
            "params": sum(e.numel for e in params),
            "shared_params": sum(e.numel for e in params if len(reached[e.name]) > 1),
        }
        for key, value in want.items():
            if getattr(c, key) != value:
                problems.add((*at, key), f"{getattr(c, key):,} but its tensors give {value:,}")


def _check_ties(report: Report, problems: _Problems) -> None:
    """Each tie is true of the tensors: ``same`` -> one tensor's names; ``transposed`` ->
    ``param`` reads ``to``'s tensor transposed; every transposed reader has its group."""
    owner = {a: e for e in report.tensors for a in e.aliases}
    reads = {a: e for e in report.tensors for a in e.transposed_aliases}
    params: dict[str, int] = {}
    for i, t in enumerate(report.ties):
        at: tuple[PathPart, ...] = ("ties", i)
        if t.param in params:
            problems.add((*at, "param"), f"'{t.param}' is also tied in ties[{params[t.param]}]")
        params.setdefault(t.param, i)
        source = owner.get(t.to)
        if source is None:
            problems.add((*at, "to"), f"no tensor '{t.to}' in tensors")
        elif t.kind == "same" and owner.get(t.param) is not source:
            problems.add((*at, "param"), f"'{t.param}' is not a name of '{source.name}'")
        elif t.kind == "transposed" and reads.get(t.param) is not source:
            problems.add((*at, "param"), f"'{t.param}' is not in the transposed_aliases of '{source.name}'")
    grouped = {g.tensors[0] for g in report.tie_groups if g.kind == "transposed" and g.tensors}
    for i, e in enumerate(report.tensors):
        if e.transposed_aliases and e.name not in grouped:
            problems.add(("tensors", i, "transposed_aliases"), "no tie group of kind 'transposed' lists them")


def _check_transfers(report: Report, problems: _Problems) -> None:
    """Each transferred tensor is a parameter of the report, named canonically, once."""
    params = {e.name for e in report.tensors if e.kind == "parameter"}
    seen: set[str] = set()
    for i, t in enumerate(report.transfers):
        for j, x in enumerate(t.tensors):
            at: tuple[PathPart, ...] = ("transfers", i, "tensors", j, "name")
            if x.name not in params:
                problems.add(at, f"no parameter '{x.name}' in tensors")
            elif x.name in seen:
                problems.add(at, f"'{x.name}' is transferred twice")
            seen.add(x.name)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_flows(report: Report, modules: dict[str, int], problems: _Problems) -> None:
    """Each flow belongs to a module, names each node once, and its edges and targets exist."""
    tensor_names = {a for e in report.tensors for a in e.aliases}
    seen: dict[str, int] = {}
    for i, f in enumerate(report.flows):
        at: tuple[PathPart, ...] = ("flows", i)
        k = modules.get(f.module)
        if k is None or report.modules[k].name != f.module:
            problems.add((*at, "module"), f"no module with the canonical name '{f.module}' in modules")
        elif f.module in seen:
            problems.add((*at, "module"), f"module '{f.module}' also has flows[{seen[f.module]}]")
        seen.setdefault(f.module, i)
        names: dict[str, int] = {}
        for j, n in enumerate(f.nodes):
            if n.name in names:
                problems.add((*at, "nodes", j, "name"), f"'{n.name}' is also nodes[{names[n.name]}]")
            names.setdefault(n.name, j)
            full = _join(f.module, n.target)
            if n.kind == "module" and full not in modules:
                problems.add((*at, "nodes", j, "target"), f"no module '{full}' in modules")
            if n.kind == "tensor" and full not in tensor_names:
                problems.add((*at, "nodes", j, "target"), f"no tensor '{full}' in tensors")
        if sum(n.kind == "output" for n in f.nodes) != 1:
            problems.add((*at, "nodes"), "a flow has exactly one output node")
        kinds = {n.name: n.kind for n in f.nodes}
        for j, edge in enumerate(f.edges):
            for end in ("src", "dst"):
                if getattr(edge, end) not in kinds:
                    problems.add((*at, "edges", j, end), f"no node '{getattr(edge, end)}' in this flow")
            if kinds.get(edge.src) == "output" or kinds.get(edge.dst) in ("input", "tensor", "constant"):
                problems.add((*at, "edges", j), f"{edge.src} -> {edge.dst} runs against the flow")
