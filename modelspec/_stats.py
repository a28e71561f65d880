"""Checksums and summary statistics of tensors: exact, fast, the same bits on every machine.

* The checksum is sha256 over the tensor's raw bytes in C order, read through a
  zero-copy view of its memory (no ``.numpy().tobytes()`` copy; works for bfloat16).
* Statistics are accumulated in float64 and use only elementwise IEEE operations
  (conversion, subtraction, multiplication, addition), each correctly rounded whatever
  the SIMD width, plus ``math.fsum``. The values are taken in 128 Ki-element chunks
  (one chunk is padded with zeros to a power of two; a longer tensor's last chunk to
  the chunk size): position j of a running buffer adds position j of every chunk, in
  chunk order, with one elementwise addition per chunk; the buffer is then folded,
  right half onto left half, until 1024 partial sums are left, and those are combined
  with ``math.fsum`` (correctly rounded). A tensor of at most 1024 values goes to
  ``math.fsum`` directly. A position adds one term per chunk (about 7,600 for a
  billion values), each float64 addition off by at most half an ulp. No
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
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["TensorSummary", "one_intraop_thread", "raw_bytes", "sha256_of", "summarize", "usable_cores"]

_CHUNK = 1 << 17  # measured: 1 << 15 spends its time in per-op overhead, 1 << 18 in memory traffic
_LEAVES = 1 << 10


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


def _fold(x: torch.Tensor, leaves: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (left, right) views whose in-place additions ``left += right``, in order, fold
    each row of ``x`` (rows, 2**k) in halves until ``leaves`` partial sums are left.

    Every step is one elementwise addition of two blocks, so each partial sum is the
    same correctly rounded float64 on any CPU, SIMD level and thread count.
    """
    steps = []
    n = x.shape[-1]
    while n > leaves:
        n //= 2
        steps.append((x[..., :n], x[..., n : 2 * n]))
    return steps


@contextmanager
def one_intraop_thread() -> Iterator[None]:
    """Run torch ops on the calling thread only, as long as the block lasts.

    The statistics are many small elementwise ops; split over intra-op threads while
    report() hashes in worker threads, they wait on threads that do not get a core
    (five times slower on 2 cores). With OpenMP (torch's CPU builds) the setting
    belongs to the calling thread, so other threads are not affected; threads that
    start inside the block take its setting for their first torch op.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _sums(flat: torch.Tensor, shift: float) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """``fsum`` of ``flat - shift`` and of its squares, each term computed in float64;
    and the min and max of ``flat`` (each chunk's, taken while it is in the cache).

    Five torch ops per chunk: min/max, conversion, shift, square, and one addition into
    the running sums. Folding every chunk down to its leaves instead (seven halving
    additions and a copy per chunk) does the same number of additions at about 1.4x
    the cost, measured.
    """
    n = flat.numel()
    size = 1 << (min(n, _CHUNK) - 1).bit_length()  # a power of two: the sums fold in halves
    leaves = min(size, _LEAVES)
    # row 0: the values - shift, row 1: their squares; position j of ``acc`` sums position j
    # of every chunk, in chunk order (the first chunk is written there directly)
    acc = torch.empty(2, size, dtype=torch.float64)
    buf = torch.empty(2, size, dtype=torch.float64) if n > size else acc
    chunks = flat.split(size)
    lows = torch.empty(len(chunks), dtype=flat.dtype)
    highs = torch.empty(len(chunks), dtype=flat.dtype)
    for i, (chunk, low, high) in enumerate(zip(chunks, lows, highs, strict=True)):
        torch.aminmax(chunk, out=(low, high))  # min and max are exact in any order
        rows = buf if i else acc
        d, sq = rows[0], rows[1]
        k = chunk.numel()
        if k == size:
            d.copy_(chunk)  # exact for every float dtype (an int64 beyond 2**53 rounds once)
            d.sub_(shift)
        else:
            d[:k].copy_(chunk)
            d[:k].sub_(shift)
            d[k:].zero_()  # padding to the chunk size adds nothing
        torch.mul(d, d, out=sq)
        if i:
            acc.add_(buf)
    for left, right in _fold(acc, leaves):
        left.add_(right)
    s, q = acc[:, :leaves].tolist()
    lo, _ = torch.aminmax(lows)
    _, hi = torch.aminmax(highs)
    return math.fsum(s), math.fsum(q), lo, hi


def _small_sums(flat: torch.Tensor, shift: float) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """What ``_sums`` gives for at most ``_LEAVES`` values, in four torch ops instead of a dozen.

    ``_sums`` would pad them with zeros to one chunk of leaves and fold nothing: the sums
    are ``fsum`` of the same float64 terms (zeros add nothing to a correctly rounded sum),
    so the results are bitwise the same.
    """
    d = flat.to(torch.float64, copy=True)  # the same conversion as copy_ into a float64 buffer; never flat itself
    d.sub_(shift)
    lo, hi = torch.aminmax(flat)
    return math.fsum(d.tolist()), math.fsum(torch.mul(d, d).tolist()), lo, hi


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
    with one_intraop_thread():
        total, total_sq, lo, hi = (_small_sums if n <= _LEAVES else _sums)(flat, shift)
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


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which container limits narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
