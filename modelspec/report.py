"""Rendering a :class:`~modelspec.inventory.Report` for people and programs.

Every renderer is a pure function ``Report -> str`` with deterministic output: the same
report gives the same bytes (floats are printed with a fixed number of significant
digits, rows in inventory order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .inventory import Report, TensorEntry

__all__ = ["fmt_float", "human_bytes", "human_count", "render_json", "render_md"]


def render_json(report: Report) -> str:
    """``report.json``: the inventory, field order fixed by the model, 2-space indent."""
    return report.model_dump_json(indent=2) + "\n"


def fmt_float(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def human_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def _names(e: TensorEntry) -> str:
    return "<br>".join(f"`{a}`" for a in e.aliases)


def render_md(report: Report) -> str:
    """``report.md``: totals, every unique tensor, tie groups and blocks as tables."""
    t = report.totals
    title = report.name or "model"
    lines = [f"# Parameter report: {title}", ""]
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
        ],
    )
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
    lines += ["", "## Tie groups", ""]
    if report.tie_groups:
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
    if report.blocks:
        lines += ["", "## Blocks", ""]
        lines += _md_table(
            ["block", "used at", "tensors", "parameters"],
            [
                [b.name, ", ".join(f"`{s}`" for s in b.sites) or "(unused)", str(b.tensors), f"{b.params:,}"]
                for b in report.blocks
            ],
        )
    return "\n".join(lines) + "\n"
