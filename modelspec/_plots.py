"""Histograms of parameter values, one PNG per tensor or per block (the ``plots`` extra).

matplotlib is optional: it is imported inside :func:`save_histograms`, never when this
module is imported, and its absence is a :class:`~modelspec.errors.ModelspecError` with
the install hint. Figures are drawn with matplotlib's object API on an Agg canvas, so
nothing touches pyplot's global state or the user's chosen backend.

Counts come from ``torch.histogram`` on the tensor itself (no copy to a Python list);
a block's tensors are binned over one shared range and stacked, so their shares of the
block read off the bars directly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn as nn

from ._errors import ModelspecError, UsageError
from ._files import make_folder
from ._fmt import fmt_float
from ._inventory import Report, TensorEntry

if TYPE_CHECKING:  # only for annotations; importing matplotlib here would defeat the optional extra
    from matplotlib.figure import Figure

__all__ = ["INSTALL_HINT", "save_histograms"]

INSTALL_HINT = "pip install 'torch-modelspec[plots]'"
_UNBLOCKED = "(no block)"
_MAX_LEGEND = 12


def _matplotlib() -> tuple[type[Figure], Any]:
    """(Figure, FigureCanvasAgg), or a ModelspecError that says how to install them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ModelspecError(
            f"plotting histograms needs matplotlib, which is not installed: {INSTALL_HINT}", code="missing-dependency"
        ) from e
    return Figure, FigureCanvasAgg


def _file_name(label: str, used: set[str]) -> str:
    """A portable file name for ``label``; clashes after cleaning get ``-2``, ``-3``, ..."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", label).strip(".") or "tensor"
    name, k = base, 2
    while name.lower() in used:  # lower(): two names differing in case clash on macOS/Windows
        name, k = f"{base}-{k}", k + 1
    used.add(name.lower())
    return name + ".png"


def _values(t: torch.Tensor) -> torch.Tensor:
    """The finite values of ``t`` as a flat float64 CPU tensor (histograms of ints are fine too)."""
    t = t.detach()
    if t.is_complex():  # real and imaginary parts alike; a cast would drop the imaginary part
        t = torch.view_as_real(t)
    flat = t.reshape(-1).to(device="cpu", dtype=torch.float64)
    return flat[torch.isfinite(flat)]


def _plot(
    fig_cls: type[Figure],
    canvas_cls: Any,
    path: Path,
    title: str,
    subtitle: str,
    series: Sequence[tuple[str, torch.Tensor]],
    bins: int,
) -> None:
    """One histogram PNG; several series are stacked over one shared range."""
    fig = fig_cls(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    canvas_cls(fig)
    ax = fig.add_subplot()
    finite = [(label, v) for label, v in series if v.numel()]
    if finite:
        lo = min(float(v.min()) for _, v in finite)
        hi = max(float(v.max()) for _, v in finite)
        if lo == hi:  # a constant tensor (a fresh LayerNorm weight): give the one bin some width
            lo, hi = lo - 0.5, hi + 0.5
        base = torch.zeros(bins, dtype=torch.float64)
        for label, v in finite:
            counts, edges = torch.histogram(v, bins=bins, range=(lo, hi))
            ax.stairs((base + counts).numpy(), edges.numpy(), baseline=base.numpy(), fill=True, alpha=0.8, label=label)
            base = base + counts
        if 1 < len(finite) <= _MAX_LEGEND:  # past that a legend hides the plot; the colours still stack
            ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(subtitle, fontsize=8)
    ax.set_ylabel("count")
    # No "Software" metadata: the same tensor gives the same bytes whatever matplotlib version.
    fig.savefig(path, format="png", metadata={"Software": None})


def _describe(e: TensorEntry) -> str:
    s = e.stats
    shape = "×".join(map(str, e.shape)) or "scalar"
    text = f"{shape} {e.dtype}, {e.numel:,} values"
    if s is not None:
        text += (
            f" · mean {fmt_float(s.mean)} · std {fmt_float(s.std)} · min {fmt_float(s.min)} · max {fmt_float(s.max)}"
        )
    return text


def save_histograms(
    module: nn.Module,
    report: Report,
    out_dir: str | Path,
    by: Literal["tensor", "block"] = "tensor",
    bins: int = 50,
) -> list[Path]:
    """Write histograms of parameter values as PNG files, one per tensor or one per block.

    Tensors are taken from ``module`` by the names in ``report`` (each unique parameter
    once, however many names reach it); buffers are not plotted. With ``by="block"``,
    tensors outside any named block are grouped as ``(no block)`` (file ``_no_block_.png``).

    Args:
        module: the model whose values are plotted (the one ``report`` describes).
        report: its inventory, e.g. ``modelspec.report(module)``.
        out_dir: folder for the PNG files; created if missing.
        by: ``"tensor"`` (``<tensor name>.png``) or ``"block"`` (``<block name>.png``, stacked by tensor).
        bins: number of histogram bins.

    Returns:
        The paths written, in inventory order.

    Raises:
        ModelspecError: matplotlib is not installed (with the install hint), ``by`` or
            ``bins`` is invalid, the module is on the ``meta`` device, or a tensor named
            in the report is missing from the module.

    Example:
        >>> save_histograms(net, modelspec.report(net), "plots", by="block")  # doctest: +SKIP
        [PosixPath('plots/_no_block_.png'), PosixPath('plots/shared.png')]
    """
    if by not in ("tensor", "block"):
        raise UsageError(f"by must be 'tensor' or 'block', got {by!r}", code="bad-option")
    if bins < 1:
        raise UsageError(f"bins must be at least 1, got {bins}", code="bad-option")
    fig_cls, canvas_cls = _matplotlib()
    params = dict(module.named_parameters(remove_duplicate=False))
    entries = [e for e in report.tensors if e.kind == "parameter"]
    tensors: dict[str, torch.Tensor] = {}
    for e in entries:
        t = params.get(e.name)
        if t is None:
            raise ModelspecError(
                f"the report lists {e.name!r}, which the module does not have; pass the matching report",
                code="report-mismatch",
            )
        if t.is_meta:
            raise UsageError(
                f"{e.name!r} is on the meta device and has no values to plot; build it on cpu", code="no-values"
            )
        tensors[e.name] = t

    out = Path(out_dir)
    make_folder(out)
    used: set[str] = set()
    written: list[Path] = []
    if by == "tensor":
        for e in entries:
            path = out / _file_name(e.name, used)
            title = e.name + (f"  (= {', '.join(e.aliases[1:])})" if len(e.aliases) > 1 else "")
            _plot(fig_cls, canvas_cls, path, title, _describe(e), [(e.name, _values(tensors[e.name]))], bins)
            written.append(path)
        return written

    groups: dict[str, list[TensorEntry]] = {}
    for e in entries:
        groups.setdefault(e.block or _UNBLOCKED, []).append(e)
    for block, members in groups.items():
        path = out / _file_name(block, used)
        numel = sum(e.numel for e in members)
        subtitle = f"{len(members)} tensors, {numel:,} values (stacked by tensor)"
        series = [(e.name, _values(tensors[e.name])) for e in members]
        _plot(fig_cls, canvas_cls, path, f"block {block}", subtitle, series, bins)
        written.append(path)
    return written
