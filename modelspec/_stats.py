"""Checksums and summary statistics of tensors: exact, fast, thread-count independent.

* The checksum is sha256 over the tensor's raw bytes in C order, read through a
  zero-copy view of its memory (no ``.numpy().tobytes()`` copy; works for bfloat16).
* Statistics are accumulated in float64 over fixed 1 Mi-element chunks split into
  4 Ki rows; the row partial sums are combined with ``math.fsum``. Every reduction
  therefore has a fixed order, so results are bitwise equal whatever
  ``torch.get_num_threads()`` is, and accurate (fp32 accumulation over tens of
  millions of elements is off in the third digit).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
from dataclasses import dataclass

import torch

__all__ = ["TensorSummary", "raw_bytes", "sha256_of", "summarize"]

_CHUNK = 1 << 20
_ROW = 1 << 12


@dataclass(frozen=True)
class TensorSummary:
    """mean/std/min/max/L2 of a tensor; non-finite values are counted, not averaged."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    l2: float | None
    nonfinite: int


def _cpu_contiguous(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous()


def raw_bytes(t: torch.Tensor) -> memoryview:
    """``t``'s bytes in C order (native byte order) as a zero-copy view of its memory.

    The view borrows the memory of a contiguous CPU tensor (``t`` itself when it is
    one, else a copy); it is valid while that tensor is alive, which the returned
    view guarantees by keeping a reference to it.
    """
    t = _cpu_contiguous(t)
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return memoryview(b"")
    buf = (ctypes.c_char * nbytes).from_address(t.data_ptr())
    buf._keepalive = t  # type: ignore[attr-defined]  # ctypes arrays accept attributes
    return memoryview(buf).cast("B")


def sha256_of(t: torch.Tensor) -> str:
    """sha256 of ``t``'s raw bytes in C order, read without copying them."""
    # hashlib releases the GIL for large buffers, so callers may hash in threads
    return hashlib.sha256(raw_bytes(t)).hexdigest()


def _row_sums(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sums of d and d**2 over fixed-length rows (a fixed reduction order)."""
    k = d.numel()
    full = k - k % _ROW
    parts_s, parts_q = [], []
    if full:
        rows = d[:full].view(-1, _ROW)
        parts_s.append(rows.sum(dim=1))
        parts_q.append(torch.linalg.vector_norm(rows, dim=1).square_())
    if k > full:  # shorter than a row: reduced by one thread
        tail = d[full:]
        parts_s.append(tail.sum().reshape(1))
        parts_q.append(tail.dot(tail).reshape(1))
    return torch.cat(parts_s), torch.cat(parts_q)


def summarize(t: torch.Tensor) -> TensorSummary:
    """Statistics of ``t`` computed in float64 (std with Bessel's correction)."""
    flat = _cpu_contiguous(t).reshape(-1)
    n = flat.numel()
    if n == 0:
        return TensorSummary(None, None, None, None, 0.0, 0)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    if flat.is_complex():
        flat = flat.abs()
    # Shift by the first value so the variance does not cancel when |mean| >> std.
    shift = float(flat[0].double())
    buf = torch.empty(min(n, _CHUNK), dtype=torch.float64)
    sums, squares = [], []
    for start in range(0, n, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        d = buf[: chunk.numel()]
        d.copy_(chunk)
        d.sub_(shift)
        s, q = _row_sums(d)
        sums.append(s)
        squares.append(q)
    total = math.fsum(torch.cat(sums).tolist())
    total_sq = math.fsum(torch.cat(squares).tolist())
    lo, hi = torch.aminmax(flat)
    lo_f, hi_f = float(lo), float(hi)
    if not (math.isfinite(total) and math.isfinite(total_sq) and math.isfinite(lo_f) and math.isfinite(hi_f)):
        bad = int((~torch.isfinite(flat)).sum()) if flat.is_floating_point() else 0
        return TensorSummary(None, None, _finite(lo_f), _finite(hi_f), None, bad)
    mean_shifted = total / n
    var = max(total_sq - total * mean_shifted, 0.0) / (n - 1) if n > 1 else 0.0
    l2_sq = total_sq + 2.0 * shift * total + n * shift * shift  # sum((y + shift)^2)
    return TensorSummary(
        mean=shift + mean_shifted,
        std=math.sqrt(var),
        min=lo_f,
        max=hi_f,
        l2=math.sqrt(max(l2_sq, 0.0)),
        nonfinite=0,
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
