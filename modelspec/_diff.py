"""Diff two parameter inventories: what was added, removed, renamed, reshaped, re-tied, changed.

Tensors are matched by name: an entry of A and an entry of B are the same tensor when
they share a name (canonical or alias). Entries with no name in common are added or
removed, unless an addition and a removal have the same shape, dtype and checksum:
that is a rename. Ties are compared as partitions of the names both sides have, and the
parameter ties by the tied parameter's name (added, removed, or changed in kind or target).
Everything is sorted, so the output is deterministic and ``diff(a, a)`` is empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from pydantic import Field

from ._inventory import DeclaredTie, FrozenModel, Report, TensorEntry, Totals

__all__ = ["KINDS", "Diff", "diff_reports"]

#: What ``--fail-on`` can name.
KINDS = ("added", "removed", "renamed", "shape", "dtype", "tie", "value", "trainable")
WeightSource = Callable[[str], torch.Tensor]


class TensorRef(FrozenModel):
    name: str
    aliases: list[str]
    shape: list[int]
    dtype: str
    numel: int


class Rename(FrozenModel):
    old: str
    new: str
    shape: list[int]


class Change(FrozenModel):
    """One attribute of one tensor that differs (shape, dtype or trainable flag)."""

    name: str
    before: str
    after: str


class ValueChange(FrozenModel):
    name: str
    sha256_before: str
    sha256_after: str
    rel_l2: float | None = Field(None, description="||after - before|| / ||before||, when both have weights")
    max_abs: float | None = Field(None, description="max |after - before|, when both have weights")


class TieChange(FrozenModel):
    """Names that were grouped one way and are now grouped another way.

    ``kind``: ``shared`` (separate tensors became one), ``unshared`` (one tensor became
    several), ``regrouped`` (both), ``alias-added`` / ``alias-removed`` (a tensor gained
    or lost a name that the other side does not have at all).
    """

    kind: Literal["shared", "unshared", "regrouped", "alias-added", "alias-removed"]
    before: list[list[str]]
    after: list[list[str]]


class DeclaredTieChange(FrozenModel):
    """A parameter tie that one side has and the other lacks (``added``/``removed``), or has
    with another kind (``kind``: same <-> transposed) or another source (``target``)."""

    change: Literal["added", "removed", "kind", "target"]
    param: str
    before: DeclaredTie | None
    after: DeclaredTie | None


class Diff(FrozenModel):
    """The differences between two reports, A (before) and B (after)."""

    added: list[TensorRef] = Field(default_factory=list)
    removed: list[TensorRef] = Field(default_factory=list)
    renamed: list[Rename] = Field(default_factory=list)
    shape: list[Change] = Field(default_factory=list)
    dtype: list[Change] = Field(default_factory=list)
    trainable: list[Change] = Field(default_factory=list)
    tie: list[TieChange] = Field(default_factory=list)
    declared_ties: list[DeclaredTieChange] = Field(
        default_factory=list, description="parameter ties added, removed or changed; counts as kind 'tie'"
    )
    value: list[ValueChange] = Field(default_factory=list)
    totals_before: Totals
    totals_after: Totals
    structure_only: bool = False
    values_compared: bool = Field(False, description="both sides had checksums and values were compared")

    def _has(self, kind: str) -> bool:
        return bool(getattr(self, kind)) or (kind == "tie" and bool(self.declared_ties))

    def kinds(self) -> list[str]:
        """The kinds of difference present, in KINDS order."""
        return [k for k in KINDS if self._has(k)]

    def is_empty(self, kinds: Iterable[str] = KINDS) -> bool:
        return not any(self._has(k) for k in kinds)


def _ref(e: TensorEntry) -> TensorRef:
    return TensorRef(name=e.name, aliases=e.aliases, shape=e.shape, dtype=e.dtype, numel=e.numel)


def _partition(entries: list[TensorEntry], names: set[str]) -> dict[str, frozenset[str]]:
    """name -> the set of names (restricted to ``names``) that reach the same tensor."""
    out: dict[str, frozenset[str]] = {}
    for e in entries:
        group = frozenset(a for a in e.aliases if a in names)
        for a in group:
            out[a] = group
    return out


def _ties(a: list[TensorEntry], b: list[TensorEntry]) -> list[TieChange]:
    names_a = {n for e in a for n in e.aliases}
    names_b = {n for e in b for n in e.aliases}
    common = names_a & names_b
    pa, pb = _partition(a, common), _partition(b, common)
    changes: dict[tuple[frozenset[frozenset[str]], frozenset[frozenset[str]]], str] = {}
    for name in sorted(common):
        if pa[name] == pb[name]:
            continue
        # the connected cluster of groups on both sides that contains `name`
        before, after = {pa[name]}, {pb[name]}
        while True:
            grown_b = {pb[n] for g in before for n in g} | after
            grown_a = {pa[n] for g in grown_b for n in g} | before
            if grown_a == before and grown_b == after:
                break
            before, after = grown_a, grown_b
        kind = "shared" if len(before) > 1 and len(after) == 1 else "unshared" if len(before) == 1 else "regrouped"
        changes[(frozenset(before), frozenset(after))] = kind
    out = [
        TieChange(kind=kind, before=sorted(sorted(g) for g in before), after=sorted(sorted(g) for g in after))  # type: ignore[arg-type]
        for (before, after), kind in changes.items()
    ]
    for e in a:  # names that only one side has, on a tensor both sides have
        kept = [n for n in e.aliases if n in common]
        gone = [n for n in e.aliases if n not in names_b]
        if kept and gone:
            out.append(TieChange(kind="alias-removed", before=[sorted(e.aliases)], after=[sorted(kept)]))
    for e in b:
        kept = [n for n in e.aliases if n in common]
        new = [n for n in e.aliases if n not in names_a]
        if kept and new:
            out.append(TieChange(kind="alias-added", before=[sorted(kept)], after=[sorted(e.aliases)]))
    return sorted(out, key=lambda c: (c.before, c.after, c.kind))


def _declared(a: list[DeclaredTie], b: list[DeclaredTie]) -> list[DeclaredTieChange]:
    """Parameter ties matched by the tied parameter's name, sorted by it."""
    before = {t.param: t for t in a}
    after = {t.param: t for t in b}
    out = []
    for param in sorted(before.keys() | after.keys()):
        x, y = before.get(param), after.get(param)
        if x == y:
            continue
        change = "added" if x is None else "removed" if y is None else "target" if x.to != y.to else "kind"
        out.append(DeclaredTieChange(change=change, param=param, before=x, after=y))  # type: ignore[arg-type]
    return out


def _value_delta(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """(relative L2 change, max abs change), accumulated in float64 chunk by chunk."""
    x, y = before.reshape(-1), after.reshape(-1)
    diff_sq = base_sq = 0.0
    max_abs = 0.0
    step = 1 << 20
    for i in range(0, x.numel(), step):
        xa, ya = x[i : i + step].double(), y[i : i + step].double()
        d = ya - xa
        diff_sq += float(d.dot(d))
        base_sq += float(xa.dot(xa))
        if d.numel():
            max_abs = max(max_abs, float(d.abs().max()))
    rel = math.sqrt(diff_sq) / math.sqrt(base_sq) if base_sq > 0 else (0.0 if diff_sq == 0 else math.inf)
    return rel, max_abs


def diff_reports(
    a: Report,
    b: Report,
    *,
    structure_only: bool = False,
    weights_a: WeightSource | None = None,
    weights_b: WeightSource | None = None,
) -> Diff:
    """Compare report ``a`` (before) with ``b`` (after).

    Args:
        structure_only: ignore values (checksums), report structure only.
        weights_a, weights_b: optional loaders ``canonical name -> tensor``; when both
            are given, value changes carry the relative L2 and max abs change.
    """
    by_name_b = {n: e for e in b.tensors for n in e.aliases}
    names_a = {n for e in a.tensors for n in e.aliases}
    by_name_a = {n: e for e in a.tensors for n in e.aliases}
    matched: list[tuple[TensorEntry, TensorEntry]] = []
    removed: list[TensorEntry] = []
    for e in a.tensors:
        other = by_name_b.get(e.name) or next((by_name_b[n] for n in e.aliases if n in by_name_b), None)
        if other is None:
            removed.append(e)
        else:
            matched.append((e, other))
    # A tensor of B whose canonical name belonged to another A tensor (e.g. '4.weight' after
    # an untie) is compared with that tensor too, so its values are not left unchecked.
    seen = {(x.name, y.name) for x, y in matched}
    for e in b.tensors:
        other = by_name_a.get(e.name)
        if other is not None and (other.name, e.name) not in seen:
            matched.append((other, e))
    added = [e for e in b.tensors if not any(n in names_a for n in e.aliases)]

    renamed: list[Rename] = []
    if not structure_only:
        # Same kind, dtype, shape and checksum; among equal candidates prefer the same last
        # name part ('bn1.bias' -> 'x1.bias'), then report order.
        pool: dict[tuple[object, ...], list[TensorEntry]] = {}
        for e in added:
            if e.sha256:
                pool.setdefault((e.kind, e.sha256, e.dtype, tuple(e.shape)), []).append(e)
        for old in list(removed):
            candidates = pool.get((old.kind, old.sha256, old.dtype, tuple(old.shape)), []) if old.sha256 else []
            if not candidates:
                continue
            leaf = old.name.rpartition(".")[2]
            new = next((c for c in candidates if c.name.rpartition(".")[2] == leaf), candidates[0])
            candidates.remove(new)
            renamed.append(Rename(old=old.name, new=new.name, shape=old.shape))
            removed.remove(old)
            added.remove(new)

    shape, dtype, trainable, value = [], [], [], []
    for x, y in matched:
        if x.shape != y.shape:
            shape.append(Change(name=y.name, before=_dims(x.shape), after=_dims(y.shape)))
        if x.dtype != y.dtype:
            dtype.append(Change(name=y.name, before=x.dtype, after=y.dtype))
        if x.requires_grad != y.requires_grad and x.kind == y.kind == "parameter":
            trainable.append(Change(name=y.name, before=str(x.requires_grad), after=str(y.requires_grad)))
        if structure_only or not (x.sha256 and y.sha256) or x.sha256 == y.sha256:
            continue
        rel = max_abs = None
        if weights_a and weights_b and x.shape == y.shape:
            rel, max_abs = _value_delta(weights_a(x.name), weights_b(y.name))
        value.append(ValueChange(name=y.name, sha256_before=x.sha256, sha256_after=y.sha256, rel_l2=rel,
                                 max_abs=max_abs))  # fmt: skip

    by_name = lambda item: item.name  # noqa: E731
    return Diff(
        added=sorted(map(_ref, added), key=by_name),
        removed=sorted(map(_ref, removed), key=by_name),
        renamed=sorted(renamed, key=lambda r: (r.old, r.new)),
        shape=sorted(shape, key=by_name),
        dtype=sorted(dtype, key=by_name),
        trainable=sorted(trainable, key=by_name),
        tie=_ties(a.tensors, b.tensors),
        declared_ties=_declared(a.ties, b.ties),
        value=sorted(value, key=by_name),
        totals_before=a.totals,
        totals_after=b.totals,
        structure_only=structure_only,
        values_compared=not structure_only and any(e.sha256 for e in a.tensors) and any(e.sha256 for e in b.tensors),
    )


def _dims(shape: list[int]) -> str:
    return "×".join(map(str, shape)) or "scalar"


# ------------------------------------------------------------------ rendering
def _totals_rows(d: Diff) -> list[tuple[str, int, int]]:
    a, b = d.totals_before, d.totals_after
    keys = ["unique_params", "naive_params", "saved_by_sharing", "unique_tensors", "trainable_params", "param_bytes"]
    return [(k, getattr(a, k), getattr(b, k)) for k in keys if getattr(a, k) != getattr(b, k)]


def _lines(d: Diff, code: Callable[[str], str]) -> list[str]:
    """Change lines shared by the text and markdown forms; ``code`` quotes a name."""
    out: list[str] = []
    out += [f"+ added     {code(e.name)}  {_dims(e.shape)} {e.dtype} ({e.numel:,})" for e in d.added]
    out += [f"- removed   {code(e.name)}  {_dims(e.shape)} {e.dtype} ({e.numel:,})" for e in d.removed]
    out += [f"~ renamed   {code(r.old)} -> {code(r.new)}  {_dims(r.shape)}" for r in d.renamed]
    out += [f"~ shape     {code(c.name)}  {c.before} -> {c.after}" for c in d.shape]
    out += [f"~ dtype     {code(c.name)}  {c.before} -> {c.after}" for c in d.dtype]
    out += [f"~ trainable {code(c.name)}  {c.before} -> {c.after}" for c in d.trainable]
    for t in d.tie:
        fmt = lambda groups: " | ".join(" = ".join(code(n) for n in g) for g in groups)  # noqa: E731
        out.append(f"~ tie       {t.kind}: {fmt(t.before)}  ->  {fmt(t.after)}")
    for c in d.declared_ties:
        mark = {"added": "+", "removed": "-"}.get(c.change, "~")
        sides = [f"{code(t.param)} = {code(t.to)} ({t.kind})" if t else "none" for t in (c.before, c.after)]
        what = sides[1] if c.change == "added" else sides[0] if c.change == "removed" else "  ->  ".join(sides)
        out.append(f"{mark} tie       {c.change}: {what}")
    for v in d.value:
        extra = f"  rel L2 {v.rel_l2:.3g}, max abs {v.max_abs:.3g}" if v.rel_l2 is not None else ""
        out.append(f"~ value     {code(v.name)}  {v.sha256_before[:12]} -> {v.sha256_after[:12]}{extra}")
    return out


def render_diff_text(d: Diff) -> str:
    """One line per change (``+`` added, ``-`` removed, ``~`` changed), then changed totals."""
    note = "" if d.values_compared else " (structure only: values not compared)"
    if d.is_empty():
        return f"no differences{note}\n"
    out = ([note.strip(" ()")] if note else []) + _lines(d, str)
    rows = _totals_rows(d)
    if rows:
        out += ["", "totals:"] + [f"  {k:<18}{a:>16,} -> {b:,}" for k, a, b in rows]
    return "\n".join(out) + "\n"


def render_diff_md(d: Diff) -> str:
    """The diff as a markdown list and a table of changed totals."""
    note = "" if d.values_compared else "Structure only: values not compared.\n"
    if d.is_empty():
        return "No differences. " + note if note else "No differences.\n"
    out = ["## Parameter diff", "", *([note] if note else [])] + [f"- {line}" for line in _lines(d, lambda n: f"`{n}`")]
    rows = _totals_rows(d)
    if rows:
        out += ["", "| total | before | after |", "|---|---:|---:|"]
        out += [f"| {k} | {a:,} | {b:,} |" for k, a, b in rows]
    return "\n".join(out) + "\n"


def render_diff_json(d: Diff) -> str:
    return d.model_dump_json(indent=2) + "\n"
