"""Statistics are accurate (float64) and independent of the thread count; checksums are of raw bytes."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from modelspec._stats import sha256_of, summarize


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_stats_match_float64_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3_000_017, generator=g) * 0.02 + 1e-5  # not a multiple of the chunk or row size
    s = summarize(x)
    ref = x.double()
    assert math.isclose(s.mean, ref.mean().item(), rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(s.std, ref.std().item(), rel_tol=1e-9)
    assert math.isclose(s.l2, ref.norm().item(), rel_tol=1e-12)
    assert s.min == x.min().item() and s.max == x.max().item()


def test_mean_of_many_equal_values_is_exact() -> None:
    x = torch.full((20_000_000,), 0.1, dtype=torch.float32)
    assert summarize(x).mean == float(torch.tensor(0.1, dtype=torch.float32))


def test_variance_does_not_cancel_for_large_mean() -> None:
    x = 1000.0 + torch.arange(10, dtype=torch.float64) * 1e-6
    assert math.isclose(summarize(x).std, x.std().item(), rel_tol=1e-6)


def test_stats_do_not_depend_on_thread_count(restore_threads) -> None:
    x = torch.randn(5_000_000, generator=torch.Generator().manual_seed(3))
    torch.set_num_threads(1)
    one = summarize(x)
    torch.set_num_threads(2)
    two = summarize(x)
    assert one == two


def test_checksum_is_of_raw_bytes_and_works_for_bfloat16() -> None:
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert sha256_of(x) == hashlib.sha256(x.numpy().tobytes()).hexdigest()
    assert sha256_of(x.t()) == hashlib.sha256(x.t().contiguous().numpy().tobytes()).hexdigest()
    b = torch.ones(4, dtype=torch.bfloat16)
    assert sha256_of(b) == hashlib.sha256(bytes.fromhex("803f" * 4)).hexdigest()


def test_nonfinite_values_are_counted() -> None:
    s = summarize(torch.tensor([1.0, float("nan"), float("inf")]))
    assert s.nonfinite == 2 and s.mean is None and s.std is None


def test_small_and_integer_tensors() -> None:
    assert summarize(torch.tensor([3.0])).std == 0.0
    assert summarize(torch.tensor([True, False])).mean == 0.5
    assert summarize(torch.arange(5)).max == 4.0
    assert summarize(torch.empty(0)).l2 == 0.0
