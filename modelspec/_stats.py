"""Checksums and summary statistics of tensors: exact, fast, the same bits on every machine.

* The checksum is sha256 over the tensor's raw bytes in C order, read through a
  zero-copy view of its memory (no ``.numpy().tobytes()`` copy; works for bfloat16).
* Statistics are accumulated in float64 and use only elementwise IEEE operations
  (conversion, subtraction, multiplication, addition), each correctly rounded whatever
  the SIMD width, plus ``math.fsum``. Each 256 Ki-element chunk (the last one padded
  with zeros to a power of two) is summed by a fixed pairwise tree: its right half is
  added to its left half until 256 partial sums are left; all partials are combined
  with ``math.fsum`` (correctly rounded). No
  torch reduction (``sum``, ``norm``, ``dot``) is used: their order depends on the
  vector width and the thread count, so their last digits differ between machines.
  The results are therefore bitwise equal under any ``ATEN_CPU_CAPABILITY`` and any
  ``torch.get_num_threads()``, and accurate (fp32 accumulation over tens of millions
  of elements is off in the third digit).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
from dataclasses import dataclass

import torch

__all__ = ["TensorSummary", "raw_bytes", "sha256_of", "summarize"]

_CHUNK = 1 << 18
_LEAVES = 1 << 8


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


def _pairwise_partials(x: torch.Tensor) -> list[float]:
    """Fold each row of ``x`` (rows, 2**k) in place by adding its right half to its left
    half until at most ``_LEAVES`` partial sums are left; return them, row after row.

    Every step is one elementwise addition of two blocks, so each partial sum is the
    same correctly rounded float64 on any CPU, SIMD level and thread count.
    """
    n = x.shape[1]
    while n > _LEAVES:
        n //= 2
        x[:, :n].add_(x[:, n : 2 * n])  # elementwise: no reduction order to vary
    return x[:, :n].tolist()


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
    size = 1 << (min(n, _CHUNK) - 1).bit_length()  # a power of two: the chunk folds in halves
    buf = torch.empty(2, size, dtype=torch.float64)  # row 0: values - shift, row 1: their squares
    sums: list[float] = []
    squares: list[float] = []
    for start in range(0, n, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        k = chunk.numel()
        used = 1 << (k - 1).bit_length()
        d = buf[0, :used]
        d[:k].copy_(chunk)  # exact for every float dtype (an int64 beyond 2**53 rounds once)
        d[:k].sub_(shift)
        d[k:].zero_()  # padding to a power of two adds nothing
        torch.mul(d, d, out=buf[1, :used])
        s, q = _pairwise_partials(buf[:, :used])
        sums += s
        squares += q
    total = math.fsum(sums)
    total_sq = math.fsum(squares)
    lo, hi = torch.aminmax(flat)
    lo_f, hi_f = float(lo) + 0.0, float(hi) + 0.0  # + 0.0: min(-0.0, 0.0) may be either zero
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
