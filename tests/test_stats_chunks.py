"""Statistics of tensors longer than one chunk (running sums per position, one addition per
chunk) agree with a correctly rounded float64 reference, for every dtype a model holds,
at chunk boundaries and odd sizes, for non-contiguous and empty tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from modelspec import _stats
from modelspec._stats import summarize

CHUNK = _stats._CHUNK
_NOT_COMPUTING = frozenset(
    {
        "aten::select",
        "aten::slice",
        "aten::alias",
        "aten::view",
        "aten::unbind",
        "aten::split",
        "aten::detach",
        "aten::empty",
    }
)  # views and allocations


def _reference(x: torch.Tensor) -> tuple[float, float, float, float, float]:
    """mean, std (Bessel), l2, min, max of ``x`` with ``math.fsum`` over its float64 values."""
    values = x.reshape(-1).double().tolist()
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var), math.sqrt(math.fsum(v * v for v in values)), min(values), max(values)


def _draw(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(n, generator=g, dtype=torch.float64) * 0.02 + 1e-4).to(dtype)
    high = 256 if dtype == torch.uint8 else 10_000
    return torch.randint(0, high, (n,), generator=g, dtype=dtype)


@pytest.mark.parametrize("n", [CHUNK + 1, 2 * CHUNK + CHUNK // 2 + 3, 3 * CHUNK - 1, 4 * CHUNK])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.uint8]
)
def test_chunked_statistics_match_a_correctly_rounded_reference(n: int, dtype: torch.dtype) -> None:
    x = _draw(n, dtype, seed=n)
    s = summarize(x)
    mean, std, l2, low, high = _reference(x)
    # float64 running sums over a few chunks: within 1e-12 relative of the exact result
    assert math.isclose(s.mean, mean, rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(s.std, std, rel_tol=1e-12)
    assert math.isclose(s.l2, l2, rel_tol=1e-12)
    assert (s.min, s.max, s.nonfinite) == (low, high, 0)  # exact


def test_a_large_mean_does_not_cancel_the_spread() -> None:
    x = 1000.0 + torch.randn(3 * CHUNK + 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 1e-4
    s = summarize(x)
    mean, std, _, _, _ = _reference(x)
    assert math.isclose(s.std, std, rel_tol=1e-9)
    assert math.isclose(s.mean, mean, rel_tol=1e-15)


def test_a_non_contiguous_tensor_is_summarized_in_c_order() -> None:
    x = _draw(3 * CHUNK + 512, torch.float32, seed=9).reshape(-1, 512)
    assert not x.t().is_contiguous()
    assert summarize(x.t()) == summarize(x.t().contiguous())


def test_values_in_the_last_partial_chunk_count_and_padding_does_not() -> None:
    n = 2 * CHUNK + 5
    x = torch.zeros(n)
    x[-1] = 2.0**-20  # only the last partial chunk holds anything beside the shift (x[0] = 0)
    s = summarize(x)
    assert s.mean == 2.0**-20 / n and s.l2 == 2.0**-20 and s.max == 2.0**-20 and s.min == 0.0


def test_non_finite_values_past_the_first_chunk_are_counted() -> None:
    x = _draw(2 * CHUNK + 3, torch.float32, seed=2)
    x[CHUNK + 10] = float("nan")
    x[-1] = float("-inf")
    s = summarize(x)
    assert s.nonfinite == 2 and s.mean is None and s.std is None and s.min is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_empty_tensors(dtype: torch.dtype) -> None:
    s = summarize(torch.empty(0, 3, dtype=dtype))
    assert (s.mean, s.std, s.min, s.max, s.l2, s.nonfinite) == (None, None, None, None, 0.0, 0)


def test_summaries_do_not_change_the_tensor() -> None:
    x = _draw(2 * CHUNK + 1, torch.float64, seed=1)
    before = x.clone()
    summarize(x)
    assert torch.equal(x, before)


class _CountOps(TorchDispatchMode):
    """Counts the aten ops that compute (views and allocations aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name not in _NOT_COMPUTING:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _ops(n: int) -> int:
    x = torch.ones(n)
    with _CountOps() as ops:
        summarize(x)
    return ops.count


def test_each_further_chunk_costs_five_torch_ops() -> None:
    # min/max, conversion, shift, square, one addition into the running sums (the old
    # per-chunk fold took 12: seven halving additions and a copy besides the first four)
    assert (_ops(6 * CHUNK) - _ops(2 * CHUNK)) / 4 == 5
