"""Formatting of numbers and plain-text tables, shared by every renderer."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MARKER", "clip", "fmt_float", "human_bytes", "human_count", "text_table"]

#: The comment SVG (``<!-- ... -->``) and Mermaid (``%% ...``) output carry, so that
#: ``-o FILE`` can tell a file modelspec wrote from a user's (see :mod:`modelspec._outfile`).
MARKER = "written by modelspec"


def fmt_float(x: float | None, digits: int = 4) -> str:
    """``x`` with ``digits`` significant digits; an em dash for None."""
    return "—" if x is None else f"{x:.{digits}g}"


def human_count(n: int) -> str:
    """``1234567`` -> ``1.23M``."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """``2048`` -> ``2.00 KiB``."""
    units = (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
    for unit, size in units:
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def clip(text: str, width: int) -> str:
    """Shorten ``text`` to ``width`` by eliding its middle (names differ at both ends)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int], max_width: dict[int, int]) -> str:
    """An aligned table; columns in ``right`` are right-aligned, others clipped to ``max_width``."""
    rows = [[clip(c, max_width.get(i, 10_000)) for i, c in enumerate(r)] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
