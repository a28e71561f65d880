"""Portable random initialization: the same weights for the same seed on every machine.

torch's CPU ``Tensor.uniform_`` and ``Tensor.normal_`` use vectorized kernels whose last
bits depend on the SIMD level (``ATEN_CPU_CAPABILITY``: FMA contraction in uniform,
vector log/sin/cos in normal), so a freshly built model's weights, checksums and report
differed between machines. While a spec is built, :class:`PortableInit` replaces those
two primitives, which every ``torch.nn.init`` function and every layer's default
initialization end in, with the functions below. They use only:

* integer draws (``random_`` on an integer tensor: torch's serial generator, exact), and
* elementwise IEEE operations, each one correctly rounded whatever the vector width or
  thread count: conversion, ``+``, ``-``, ``*``, ``/``, ``sqrt``, comparisons and
  integer bit operations; never a fused multiply-add, a reduction or a libm function.

Uniform on [lo, hi): k = 24 random bits (53 for float64), and
``x = lo + k * ((hi - lo) * 2**-24)``: the product and the sum each rounded once in
float32 (float64 for a float64 tensor); for symmetric bounds [-h, h), as every default
init uses, ``x = k * (h * 2**-23)`` with k in [-2**23, 2**23): one rounding. float16
and bfloat16 round that float32 again.

Normal: Box-Muller on pairs, from one 63-bit draw (``random_`` on int64) per pair, pairs
in C order. float32, float16 and bfloat16 tensors compute in float32 from bits 0-23
``j`` (``u = (j + 1) / 2**24`` in (0, 1]), bits 24-47 an angle ``y`` in [0, pi/4) and
bits 48-50, which pick one of eight octants (swap cos/sin, two signs) so that the angle
is uniform on the circle. float64 tensors compute in float64 from bits 0-31 (``u =
(j + 1) / 2**32``), 28 angle bits (32-59) and bits 60-62. ``log u`` is the exponent
times ln 2 plus ``2 atanh((m-1)/(m+1))`` for the mantissa ``m`` in [sqrt(1/2), sqrt(2)),
and sin is its Taylor series on [0, pi/4), both evaluated by Horner's rule (5 and 6
terms in float32, about 1e-7 relative error; 10 and 9 in float64, about 1e-16); cos is
``sqrt((1 - sin) * (1 + sin))``. Then ``mean + std * sqrt(-2 log u) * cos y`` is rounded
to the tensor's dtype (16-bit types through float32). Every constant is a literal or a
correctly rounded division (rounded once more to float32 for the float32 path), so no
platform's libm is involved; the octant's swap and signs are integer bit operations.

Example::

    g = torch.Generator().manual_seed(0)
    with PortableInit(g):
        layer = torch.nn.Linear(4, 3)  # kaiming_uniform_ -> portable uniform_
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["RANDOM_OPS", "PortableInit", "normal_", "uniform_"]

_aten = torch.ops.aten

#: Values per step of the elementwise arithmetic: below torch's parallel grain size
#: (32768), so each op runs on the calling thread. Forking intra-op threads thousands
#: of times costs more than the arithmetic, and much more on a busy machine.
_CHUNK = 1 << 15

_LN2 = 0.6931471805599453  # ln 2 rounded to float64 (0x1.62e42fefa39efp-1)
_SQRT2 = 1.4142135623730951  # sqrt(2) rounded to float64
_ANGLE_STEP = 0.7853981633974483 * 2.0**-28  # (pi/4 rounded) / 2**28: 28-bit angle -> [0, pi/4)
# Horner coefficients, highest power first; 1/n and 1/n! are correctly rounded divisions.
_ATANH = tuple(1.0 / (2 * k + 1) for k in range(10))[::-1]  # atanh(s)/s = sum s^2k/(2k+1); |s| <= 0.1716
_SIN = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(9))[::-1]  # sin(y)/y in y^2
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52  # float64 exponent field of 1.0


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32, device="cpu")


def _i32(x: int) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int32, device="cpu")


# Constants of the float32 path as 0-dim CPU tensors: a Python number would be wrapped and
# converted on every call, which costs more than the arithmetic on a chunk.
_ATANH32 = tuple(_f32(-4.0 / (2 * k + 1)) for k in range(5))[::-1]  # -2 ln m = s * sum(-4 s^2k/(2k+1))
_SIN32 = tuple(_f32(c) for c in _SIN[-6:])  # the 6 lowest powers: enough on [0, pi/4) in float32
_MINUS_2LN2 = _f32(-2.0 * _LN2)
_ANGLE_STEP32 = _f32(0.7853981633974483 * 2.0**-24)  # (pi/4 rounded) / 2**24
_ONE32 = _f32(1.0)
_TWO24 = _f32(2.0**24)
_LOW24 = torch.tensor((1 << 24) - 1, dtype=torch.int64, device="cpu")
_SIGN_BIT = _i32(-(1 << 31))
_SQRT_HALF_2_24 = _i32(0x3F3504F3 + (24 << 23))  # float32 bits of sqrt(1/2) (0x3F3504F3) times 2**24
_I32 = {k: _i32(k) for k in (23, 29, 30, 31)}
_I64 = {k: torch.tensor(k, dtype=torch.int64, device="cpu") for k in (24, 48)}
_I32_MASK24 = _i32((1 << 24) - 1)
_I64_MASK53 = torch.tensor((1 << 53) - 1, dtype=torch.int64, device="cpu")

#: Random aten ops that :class:`PortableInit` does not replace; seen during a build they
#: are recorded in ``PortableInit.unportable`` (no torch layer's default init uses one).
RANDOM_OPS = frozenset(
    {
        "aten::bernoulli",
        "aten::bernoulli_",
        "aten::cauchy_",
        "aten::exponential_",
        "aten::geometric_",
        "aten::log_normal_",
        "aten::multinomial",
        "aten::normal",
        "aten::poisson",
        "aten::rand",
        "aten::rand_like",
        "aten::randint",
        "aten::randint_like",
        "aten::randn",
        "aten::randn_like",
        "aten::random_",
        "aten::randperm",
        "aten::uniform",
    }
)


class PortableInit(TorchDispatchMode):
    """While active, ``Tensor.uniform_`` and ``Tensor.normal_`` draw portably from ``generator``.

    Intercepts the aten ops, below Python: ``nn.init.kaiming_uniform_`` and friends
    (which check for torch-function overrides and would hide the inner call from a
    ``TorchFunctionMode``) reach them too. A call that passes its own CPU generator
    draws from that one. Other random ops (and these two on complex tensors or with a
    CUDA generator) run unchanged and are listed, by aten name, in ``unportable``.
    """

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator
        self.unportable: set[str] = set()

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # TorchDispatchMode wraps a subclass's __torch_dispatch__ in torch._disable_dynamo,
        # which imports torch._dynamo (and sympy: 2-4 s) on the first call. A build is never
        # traced by dynamo, so opt out (the hook torch's own docstring gives for this).
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is _aten.uniform_.default or func is _aten.normal_.default:
            t = args[0]
            gen = kwargs.get("generator")
            gen = self.generator if gen is None else gen
            if t.is_floating_point() and gen.device.type == "cpu":
                uniform = func is _aten.uniform_.default
                names, defaults = (("from", "to"), (0.0, 1.0)) if uniform else (("mean", "std"), (0.0, 1.0))
                a, b = (
                    args[i + 1] if len(args) > i + 1 else kwargs.get(name, default)
                    for i, (name, default) in enumerate(zip(names, defaults, strict=True))
                )
                return (uniform_ if uniform else normal_)(t, a, b, generator=gen)
            self.unportable.add(func._schema.name)  # complex or integer tensor, or a CUDA generator
        elif func._schema.name in RANDOM_OPS:
            self.unportable.add(func._schema.name)
        return func(*args, **kwargs)


def uniform_(t: torch.Tensor, lo: float = 0.0, hi: float = 1.0, *, generator: torch.Generator) -> torch.Tensor:
    """Fill floating ``t`` in place with values uniform on [lo, hi), the same bits on every machine.

    Draws ``t.numel()`` values from ``generator`` (a CPU generator) in C order, also for a
    tensor on another device (drawn on the CPU, then copied); a ``meta`` tensor draws nothing.

    Raises:
        ValueError: if a bound is not finite or ``lo > hi``.
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"uniform_ expects finite bounds with lo <= hi, got [{lo}, {hi})")
    if t.is_meta or t.numel() == 0:
        return t
    wide = t.dtype == torch.float64
    calc, bits = (torch.float64, 53) if wide else (torch.float32, 24)
    # Symmetric bounds (every kaiming/xavier/bias init) draw k in [-2**(bits-1), 2**(bits-1))
    # and need one product; others draw k in [0, 2**bits) and add lo.
    symmetric = lo == -hi
    width = torch.tensor(hi if symmetric else hi - lo, dtype=calc, device="cpu")  # rounded once
    step = width * 2.0 ** -(bits - 1 if symmetric else bits)  # exact: a power of two
    low = None if symmetric else torch.tensor(lo, dtype=calc, device="cpu")
    first = -(1 << (bits - 1)) if symmetric else 0
    out = _output(t, calc)
    ints = out.view(torch.int64 if wide else torch.int32)  # draw into the output's own memory
    # random_() without bounds keeps the low 31 (63) bits of each draw, so masking them to
    # ``bits`` gives exactly random_(0, 2**bits): the same draws, without a division per value.
    mask = _I64_MASK53 if wide else _I32_MASK24
    offset = torch.tensor(first, dtype=ints.dtype, device="cpu")
    for k, part in zip(ints.split(_CHUNK), out.split(_CHUNK), strict=True):
        k.random_(generator=generator).bitwise_and_(mask)  # one chunk at a time: it stays in cache
        if first:
            k.add_(offset)
        part.copy_(k).mul_(step)  # in place: k converts exactly; one rounding
        if low is not None:
            part.add_(low)  # one more rounding
    return _store(t, out)


def normal_(t: torch.Tensor, mean: float = 0.0, std: float = 1.0, *, generator: torch.Generator) -> torch.Tensor:
    """Fill floating ``t`` in place with normal values N(mean, std**2), the same bits on every machine.

    Uses ``ceil(t.numel() / 2)`` 63-bit draws from ``generator`` (a CPU generator); the
    two values of each pair go to consecutive elements in C order.

    Raises:
        ValueError: if ``std`` is negative or a parameter is not finite.
    """
    if not (math.isfinite(mean) and math.isfinite(std) and std >= 0.0):
        raise ValueError(f"normal_ expects a finite mean and a finite std >= 0, got mean={mean}, std={std}")
    if t.is_meta or t.numel() == 0:
        return t
    if t.dtype != torch.float64:
        return _store(t, _normal32(_output(t, torch.float32), mean, std, generator))
    out = _output(t, torch.float64)
    n = out.numel()
    pairs, step = (n + 1) // 2, _CHUNK // 2
    bits = torch.empty(min(pairs, step), dtype=torch.int64, device="cpu")
    for start in range(0, pairs, step):
        c = min(step, pairs - start)
        end = min(n, 2 * (start + c))
        dest = out[2 * start : end]
        for col, z in enumerate(_standard_pairs(bits[:c].random_(generator=generator))):
            z.mul_(std).add_(mean)
            part = dest[col::2]  # even elements take the first value of each pair, odd ones the second
            part.copy_(z[: part.numel()])  # one rounding to float32/float64
    return _store(t, out)


def _normal32(out: torch.Tensor, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """``normal_`` for a flat float32 ``out``, computed in float32.

    Works on chunks of ``_CHUNK`` pairs in preallocated buffers, every op in place or
    with ``out=``, so that each chunk's buffers stay in cache; no op allocates and, but
    for ``sqrt_`` (parallel from 2048 values), none forks intra-op threads. Its result
    does not depend on any of that: each op is elementwise and correctly rounded.
    """
    n = out.numel()
    pairs = (n + 1) // 2
    size = min(pairs, _CHUNK)
    x, x2 = (torch.empty(size, dtype=torch.int64, device="cpu") for _ in range(2))
    i0, i1 = (torch.empty(size, dtype=torch.int32, device="cpu") for _ in range(2))
    buffers = tuple(torch.empty(size, dtype=torch.float32, device="cpu") for _ in range(5))
    scale, shift = _f32(std), _f32(mean)
    views = (x, x2, i0, i1, *buffers)  # all chunks but the last use the whole buffers
    for start in range(0, pairs, _CHUNK):
        c = min(_CHUNK, pairs - start)
        if c < size:
            views = tuple(buf[:c] for buf in views)
        draws, low, a, b, v, s, t, p, y = views
        draws.random_(generator=generator)
        # r = std * sqrt(-2 ln u), u = (j + 1) / 2**24 = 2**k * m
        v.copy_(torch.bitwise_and(draws, _LOW24, out=low)).add_(_ONE32)  # j + 1: exact in float32
        vb = v.view(torch.int32)
        torch.sub(vb, _SQRT_HALF_2_24, out=a).bitwise_right_shift_(_I32[23])  # k in [-24, 0] (arithmetic shift)
        vb.sub_(torch.bitwise_left_shift(a, _I32[23], out=b))  # v = 2**24 m, m in [sqrt(1/2), sqrt(2))
        torch.sub(v, _TWO24, out=s).div_(v.add_(_TWO24))  # s = (m - 1) / (m + 1), |s| <= 0.1716
        _horner_into(p, _ATANH32, torch.mul(s, s, out=t)).mul_(s)  # -2 ln m = -4 atanh(s)
        v.copy_(a).mul_(_MINUS_2LN2).add_(p).sqrt_()  # sqrt(-2 k ln 2 - 2 ln m) >= 0
        if std != 1.0:
            v.mul_(scale)
        # sin and cos of y = angle * (pi/4) / 2**24 in [0, pi/4)
        torch.bitwise_right_shift(draws, _I64[24], out=low).bitwise_and_(_LOW24)
        y.copy_(low).mul_(_ANGLE_STEP32)
        _horner_into(s, _SIN32, torch.mul(y, y, out=t)).mul_(y)  # sin y
        torch.sub(_ONE32, s, out=t).mul_(torch.add(s, _ONE32, out=p)).sqrt_()  # cos y >= sqrt(1/2)
        # bits 48-50: swap sin and cos, then flip each value's sign bit (integer ops: exact)
        a.copy_(torch.bitwise_right_shift(draws, _I64[48], out=low))  # < 2**15: fits int32
        sb, cb = s.view(torch.int32), t.view(torch.int32)
        torch.bitwise_left_shift(a, _I32[31], out=b).bitwise_right_shift_(_I32[31])  # all ones where bit 48 is set
        b.bitwise_and_(torch.bitwise_xor(sb, cb, out=y.view(torch.int32)))
        cb.bitwise_xor_(b)
        sb.bitwise_xor_(b)
        dest = out[2 * start : min(n, 2 * (start + c))]
        for col, (z, shift_bits) in enumerate(((t, _I32[30]), (s, _I32[29]))):
            z.view(torch.int32).bitwise_xor_(torch.bitwise_left_shift(a, shift_bits, out=b).bitwise_and_(_SIGN_BIT))
            part = dest[col::2]  # even elements take the first value of each pair, odd ones the second
            k = part.numel()
            if mean != 0.0:
                torch.add(z.mul_(v)[:k], shift, out=part)
            else:
                torch.mul(z[:k], v[:k], out=part)  # the last op writes into the output
    return out


def _horner_into(p: torch.Tensor, coefficients: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    """``p`` = sum(c_k * x**k), coefficients highest power first, as separate * and + (no FMA)."""
    torch.mul(x, coefficients[0], out=p).add_(coefficients[1])
    for c in coefficients[2:]:
        p.mul_(x).add_(c)
    return p


def _standard_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normal values (float64) per 63-bit draw in ``x`` (int64, >= 0)."""
    r = _sqrt_minus_2_log_u(x & 0xFFFFFFFF)
    y = ((x >> 32) & ((1 << 28) - 1)).to(torch.float64).mul_(_ANGLE_STEP)  # [0, pi/4)
    sin = _horner(_SIN, y * y).mul_(y)
    cos = (1.0 - sin).mul_(1.0 + sin).sqrt_()  # >= sqrt(1/2): no cancellation, within 2 ulp
    swap = ((x >> 60) & 1).bool()
    pair = []
    for a, b, bit in ((sin, cos, 61), (cos, sin, 62)):
        z = torch.where(swap, a, b).mul_(r)
        z.view(torch.int64).bitwise_xor_(((x >> bit) & 1) << 63)  # a random sign: flips the sign bit, exact
        pair.append(z)
    return pair[0], pair[1]


def _sqrt_minus_2_log_u(j: torch.Tensor) -> torch.Tensor:
    """sqrt(-2 ln u) for u = (j + 1) / 2**32, j in [0, 2**32) (int64); float64."""
    v = (j + 1).to(torch.float64)  # exact: at most 2**32
    raw = v.view(torch.int64)
    e = (raw >> 52) - 1023  # v = 2**e * m, m in [1, 2): bit fields, exact
    m = ((raw & _MANTISSA) | _ONE_BITS).view(torch.float64)
    big = m > _SQRT2  # fold m into [sqrt(1/2), sqrt(2)) so the series converges fast
    m = torch.where(big, m * 0.5, m)
    e = e + big
    s = (m - 1.0) / (m + 1.0)  # |s| <= 0.1716
    log_m = _horner(_ATANH, s * s).mul_(s).mul_(2.0)  # ln m = 2 atanh(s)
    log_u = (e - 32).to(torch.float64).mul_(_LN2).add_(log_m)  # <= 0
    return log_u.mul_(-2.0).sqrt_()


def _horner(coefficients: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """sum(c_k * x**k) with coefficients highest power first, as separate * and + (no FMA)."""
    p = torch.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        p.mul_(x).add_(c)
    return p


def _output(t: torch.Tensor, calc: torch.dtype) -> torch.Tensor:
    """A flat CPU buffer of dtype ``calc`` to draw into: ``t``'s own memory when it can be."""
    if t.device.type == "cpu" and t.dtype == calc and t.is_contiguous():
        return t.view(-1)
    return torch.empty(t.numel(), dtype=calc, device="cpu")  # explicit: a build may run under torch.device(...)


def _store(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if out.data_ptr() != t.data_ptr() or out.dtype != t.dtype or t.device.type != "cpu":
        t.copy_(out.view(t.shape))  # rounds float32 -> float16/bfloat16 (to nearest, ties to even)
    return t
