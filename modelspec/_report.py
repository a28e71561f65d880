"""Rendering a :class:`~modelspec.inventory.Report` for people and programs.

Every renderer is a pure function ``Report -> str`` with deterministic output: the same
report gives the same bytes (floats are printed with a fixed number of significant
digits, rows in inventory order).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._fmt import clip, fmt_float, human_bytes, text_table
from ._graph import to_mermaid
from ._inventory import Report, TensorEntry
from ._memory import MemoryEstimate, estimate_from_entries

__all__ = [
    "CSV_COLUMNS",
    "Fold",
    "fold",
    "memory_estimate",
    "render_csv",
    "render_json",
    "render_md",
    "render_text",
    "summary_line",
]


def render_json(report: Report) -> str:
    """``report.json``: the inventory, field order fixed by the model, 2-space indent."""
    # 'transfers' only when there are some: every other report.json stays as it was
    return report.model_dump_json(indent=2, exclude=None if report.transfers else {"transfers"}) + "\n"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def esc(cell: str) -> str:  # keep one row per line whatever a name contains
        return cell.replace("|", "\\|").replace("\r", " ").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def _site(name: str) -> str:
    """A module name as people read it; the root has the empty name."""
    return name or "(root)"


def _names(e: TensorEntry) -> str:
    return "<br>".join([*(f"`{a}`" for a in e.aliases), *(f"`{a}` (transposed)" for a in e.transposed_aliases)])


def _tie_text(kind: str) -> str:
    """How a declared tie reads: ``decoder.weight = encoder.weight`` + this."""
    return " transposed (dims 0 and 1 swapped)" if kind == "transposed" else " (the same parameter)"


def render_md(report: Report, depth: int | None = None) -> str:
    """``report.md``: totals, the architecture (Mermaid, renders on GitHub), every unique
    tensor (or, with ``depth``, subtotals per module at that depth), tie groups, blocks."""
    t = report.totals
    title = report.name or "model"
    lines = [f"# Parameter report: {html.escape(title)}", ""]
    if report.spec_sha256:
        lines += [
            f"Spec sha256 `{report.spec_sha256}` · modelspec {report.modelspec_version} · device `{report.device}`",
            "",
        ]
    lines += ["## Totals", ""]
    lines += _md_table(
        ["", "count"],
        [
            ["unique parameters", f"{t.unique_params:,}"],
            ["naive count (every name)", f"{t.naive_params:,}"],
            ["saved by sharing", f"{t.saved_by_sharing:,}"],
            ["trainable / frozen", f"{t.trainable_params:,} / {t.frozen_params:,}"],
            ["unique tensors", f"{t.unique_tensors:,}"],
            ["parameter bytes", f"{t.param_bytes:,} ({human_bytes(t.param_bytes)})"],
            ["buffer elements / bytes", f"{t.buffer_numel:,} / {t.buffer_bytes:,}"],
            ["training memory, Adam", f"{human_bytes(t.training_bytes_adam)} (weights + grads + 2 moments)"],
        ],
    )
    lines += ["", "## Memory estimate", "", _MEMORY_NOTE, ""]
    lines += _md_table(["dtype", "weights", "gradients", "Adam moments", "training with Adam"], _memory_rows(report))
    lines += ["", "## Architecture", "", "Shared blocks are drawn once, with an edge from every use.", ""]
    lines += ["```mermaid", to_mermaid(report, depth=depth).rstrip("\n"), "```"]
    if depth is not None:
        lines += ["", f"## Modules at depth {depth}", "", "A shared tensor counts in each module that reaches it.", ""]
        lines += _md_table(
            ["module", "type", "tensors", "parameters", "shared", "buffers"],
            [[f"`{f.name or '(root)'}`" + "".join(f"<br>`{a}`" for a in f.also), f.type, str(f.tensors),
              f"{f.params:,}", f"{f.shared:,}", f"{f.buffers:,}"] for f in fold(report, depth)],
        )  # fmt: skip
        return "\n".join([*lines, *_md_tail(report)]) + "\n"
    lines += ["", "## Tensors", ""]
    rows = []
    for e in report.tensors:
        s = e.stats
        rows.append(
            [
                _names(e),
                e.kind,
                e.block or "",
                "×".join(map(str, e.shape)) or "scalar",
                e.dtype,
                f"{e.numel:,}",
                "yes" if e.requires_grad else "no",
                fmt_float(s.mean if s else None),
                fmt_float(s.std if s else None),
                fmt_float(s.min if s else None),
                fmt_float(s.max if s else None),
                f"`{e.sha256[:12]}`" if e.sha256 else "—",
            ]
        )
    lines += _md_table(
        ["names", "kind", "block", "shape", "dtype", "numel", "grad", "mean", "std", "min", "max", "sha256"], rows
    )
    lines += _md_tail(report)
    return "\n".join(lines) + "\n"


_MEMORY_NOTE = "Each tensor counted once; activations not included (they depend on the batch)."


def memory_estimate(report: Report) -> MemoryEstimate:
    """The memory a report's model takes per dtype: weights, gradients, Adam's moments."""
    return estimate_from_entries((e.numel, e.dtype, e.kind == "parameter", e.requires_grad) for e in report.tensors)


def _memory_rows(report: Report) -> list[list[str]]:
    return [
        ["float16 / bfloat16" if f.dtype == "bfloat16" else f.dtype, human_bytes(f.weights), human_bytes(f.gradients),
         human_bytes(f.adam), human_bytes(f.training)]
        for f in memory_estimate(report).rows
    ]  # fmt: skip


def _md_tail(report: Report) -> list[str]:
    """Parameter ties, tie groups, top-level children and blocks."""
    lines: list[str] = []
    if report.transfers:
        lines += ["", "## Transferred parameters", ""]
        lines += _md_table(
            ["rule", "from", "source checkpoint", "parameters"],
            [[f"init[{t.rule}]", f"`{t.source}`", f"`{t.checkpoint_sha256[:12]}`",
              "<br>".join(f"`{x.name}` ← `{x.source_name}`" for x in t.tensors)] for t in report.transfers],
        )  # fmt: skip
    if report.ties:
        lines += ["", "## Parameter ties", ""]
        lines += _md_table(["parameter", "is", "kind"], [[f"`{t.param}`", f"`{t.to}`", t.kind] for t in report.ties])
    lines += ["", "## Tie groups", ""]
    if report.tie_groups:
        lines += [
            "Kinds: `module`, one block placed at several sites; `parameter`, one parameter held by several "
            "modules; `transposed`, one parameter, the sites after the first read it transposed.",
            "",
        ]
        lines += _md_table(
            ["kind", "block", "sites", "tensors", "numel stored once"],
            [
                [
                    g.kind,
                    g.block or "",
                    ", ".join(f"`{s}`" for s in g.sites),
                    ", ".join(f"`{x}`" for x in g.tensors),
                    f"{g.numel:,}",
                ]
                for g in report.tie_groups
            ],
        )
    else:
        lines.append("No tensor is shared.")
    if report.children:
        lines += ["", "## Top-level children", ""]
        lines += _md_table(
            ["child", "type", "parameters", "shared with other children"],
            [[f"`{c.name}`", c.type, f"{c.params:,}", f"{c.shared_params:,}"] for c in report.children],
        )
    if report.blocks:
        lines += ["", "## Blocks", ""]
        lines += _md_table(
            ["block", "used at", "tensors", "parameters"],
            [
                [b.name, ", ".join(f"`{_site(s)}`" for s in b.sites) or "(unused)", str(b.tensors), f"{b.params:,}"]
                for b in report.blocks
            ],
        )
    return lines


# ------------------------------------------------------------------ depth folding
@dataclass(frozen=True)
class Fold:
    """The tensors reachable from one module at a given depth, each counted once.

    A shared tensor counts in every fold that reaches it (as in the top-level children
    section), so the folds' ``params`` may add up to more than the unique total.
    """

    name: str  # module path ('' for the root's own tensors)
    type: str
    tensors: int
    params: int  # parameter elements reachable from this fold
    buffers: int
    shared: int  # of ``params``, elements also reachable under a name outside this fold
    also: tuple[str, ...] = ()  # other names of this module when it is shared


def _prefix(name: str, depth: int) -> str:
    parts = name.split(".")[:-1]  # drop the tensor's own name
    return ".".join(parts[:depth])


def fold(report: Report, depth: int) -> list[Fold]:
    """Group tensors by the modules at ``depth`` that reach them (0: the whole model).

    A module shared under several names is one fold; folds come in the order in which
    the report's tensors first reach them.
    """
    types = {alias: m.type for m in report.modules for alias in m.aliases}
    aliases = {alias: m.aliases for m in report.modules for alias in m.aliases}
    groups: dict[str, list[TensorEntry]] = {}
    for e in report.tensors:
        for prefix in dict.fromkeys(aliases.get(p, [p])[0] for p in (_prefix(a, depth) for a in e.aliases)):
            groups.setdefault(prefix, []).append(e)
    out = []
    for prefix, entries in groups.items():
        params = [e for e in entries if e.kind == "parameter"]
        shared = [e for e in params if any(_prefix(a, depth) != prefix for a in e.aliases)]
        out.append(Fold(
            name=prefix, type=types.get(prefix, ""), tensors=len(entries), params=sum(e.numel for e in params),
            buffers=sum(e.numel for e in entries if e.kind == "buffer"), shared=sum(e.numel for e in shared),
            also=tuple(a for a in aliases.get(prefix, [prefix]) if a != prefix),
        ))  # fmt: skip
    return out


# ------------------------------------------------------------------ plain text
def _totals_lines(report: Report) -> list[str]:
    t = report.totals
    pairs = [
        ("unique parameters", f"{t.unique_params:,}"),
        ("naive count (every name)", f"{t.naive_params:,}"),
        ("saved by sharing", f"{t.saved_by_sharing:,}"),
        ("trainable / frozen", f"{t.trainable_params:,} / {t.frozen_params:,}"),
        ("weights", human_bytes(t.param_bytes)),
        ("buffers", f"{t.buffer_numel:,} elements, {human_bytes(t.buffer_bytes)}"),
        (
            "training memory, Adam",
            f"{human_bytes(t.training_bytes_adam)} (weights + grads + 2 moments; no activations)",
        ),
    ]
    return [f"  {k:<26}{v}" for k, v in pairs]


def summary_line(report: Report) -> str:
    """``121 parameters in 6 tensors (naive count 193; sharing saves 72)``."""
    t = report.totals
    n_params = sum(e.kind == "parameter" for e in report.tensors)
    n_buffers = len(report.tensors) - n_params
    tensors = f"{n_params} tensor{'' if n_params == 1 else 's'}"
    if n_buffers:
        tensors += f" and {n_buffers} buffer{'' if n_buffers == 1 else 's'}"
    return (f"{t.unique_params:,} parameters in {tensors}"
            f" (naive count {t.naive_params:,}; sharing saves {t.saved_by_sharing:,})")  # fmt: skip


def render_text(report: Report, depth: int | None = None) -> str:
    """An aligned table for a terminal (fits 100 columns), then ties, blocks and totals."""
    out = [f"{report.name or 'model'}: {summary_line(report)}", ""]
    if depth is None:
        rows = []
        for e in report.tensors:
            s = e.stats
            extra = f" (+{len(e.aliases) - 1})" if len(e.aliases) > 1 else ""
            extra += f" (+{len(e.transposed_aliases)}ᵀ)" if e.transposed_aliases else ""
            rows.append([
                clip(e.name, 36 - len(extra)) + extra, "×".join(map(str, e.shape)) or "scalar", e.dtype,
                f"{e.numel:,}", ("yes" if e.requires_grad else "no") if e.kind == "parameter" else "buf",
                fmt_float(s.mean if s else None), fmt_float(s.std if s else None), e.block or "",
            ])  # fmt: skip
        out.append(text_table(["tensor", "shape", "dtype", "numel", "grad", "mean", "std", "block"], rows,
                              right={3, 5, 6}, max_width={0: 36, 1: 16, 7: 12}))  # fmt: skip
    else:
        rows = []
        for f in fold(report, depth):
            label = (f.name or "(root)") + (f" (={', '.join(f.also)})" if f.also else "")
            rows.append([label, f.type, str(f.tensors), f"{f.params:,}", f"{f.shared:,}", f"{f.buffers:,}"])
        out.append(text_table(["module", "type", "tensors", "params", "shared", "buffers"], rows,
                              right={2, 3, 4, 5}, max_width={0: 48, 1: 20}))  # fmt: skip
    if report.children:
        out += ["", "top-level children (a shared tensor counts in each child that reaches it):"]
        for c in report.children:
            shared = f", {c.shared_params:,} shared with other children" if c.shared_params else ""
            out.append(clip(f"  {c.name:<12} {c.type:<14} {c.params:>14,} parameters{shared}", 100))
    if report.ties:
        out += ["", "parameter ties:"]
        out += [clip(f"  {t.param} = {t.to}{_tie_text(t.kind)}", 100) for t in report.ties]
    if report.tie_groups:
        out += ["", "tie groups (stored once):"]
        for g in report.tie_groups:
            n = len(g.tensors)
            if g.kind == "transposed":
                where = f"transposed: {g.sites[0]}, read transposed at {', '.join(g.sites[1:])}"
            else:
                where = f"{f'block {g.block!r}' if g.block else g.kind} at {', '.join(g.sites)}"
            out.append(clip(f"  {where}: {g.numel:,} elements in {n} tensor{'' if n == 1 else 's'}", 100))
    if report.blocks:
        out += ["", "blocks:"]
        for b in report.blocks:
            used = ", ".join(map(_site, b.sites)) or "nowhere (unused)"
            out.append(clip(f"  {b.name}: {b.params:,} parameters, used at {used}", 100))
    if report.transfers:
        out += ["", "transferred (init rules with 'from:'):"]
        for t in report.transfers:
            digest = t.checkpoint_sha256[:12]
            out.append(clip(f"  init[{t.rule}]: {len(t.tensors)} tensor(s) from {t.source} (checkpoint {digest})", 100))
    out += ["", "totals:", *_totals_lines(report)]
    out += ["", "memory estimate (each tensor once; no activations):"]
    header = ["dtype", "weights", "gradients", "Adam moments", "training with Adam"]
    table = text_table(header, _memory_rows(report), right={1, 2, 3, 4}, max_width={})
    out += ["  " + line for line in table.splitlines()]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ csv
CSV_COLUMNS = ["name", "aliases", "kind", "block", "shape", "dtype", "numel", "bytes", "requires_grad",
               "persistent", "mean", "std", "min", "max", "l2", "nonfinite", "sha256"]  # fmt: skip


def render_csv(report: Report) -> str:
    """One row per unique tensor; aliases separated by spaces, shape as ``8x4``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in report.tensors:
        s = e.stats
        stats = [s.mean, s.std, s.min, s.max, s.l2, s.nonfinite] if s else [None] * 6
        writer.writerow([
            e.name, " ".join(e.aliases), e.kind, e.block or "", "x".join(map(str, e.shape)), e.dtype, e.numel,
            e.bytes, e.requires_grad, e.persistent, *("" if v is None else repr(v) for v in stats), e.sha256 or "",
        ])  # fmt: skip
    return buf.getvalue()
