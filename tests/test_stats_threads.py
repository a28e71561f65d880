"""Statistics run their torch ops on the calling thread only (report() hashes in worker
threads meanwhile), leave the caller's thread setting as it was, and are exact at chunk
boundaries."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from modelspec import _stats
from modelspec._stats import summarize


class _Threads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(torch.get_num_threads())
        return func(*args, **(kwargs or {}))


def test_statistics_ops_run_on_one_thread_and_the_setting_is_restored(two_threads) -> None:
    x = torch.randn(300_000, generator=torch.Generator().manual_seed(1))
    with _Threads() as mode:
        summarize(x)
    assert 1 in mode.seen and torch.get_num_threads() == 2


def test_setting_is_restored_when_summarize_fails(two_threads, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(_stats, "_sums", boom)
    with pytest.raises(RuntimeError):
        summarize(torch.ones(_stats._LEAVES + 1))  # past the short path for a few values
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("extra", [-1, 0, 1, 5])
def test_sums_min_and_max_across_chunk_boundaries(extra: int) -> None:
    n = 3 * _stats._CHUNK + extra
    x = torch.arange(n, dtype=torch.float32) * 0.5 - 7.0  # every sum is an exact float64
    x[n // 2] = -1e6
    s = summarize(x)
    ref = x.double()
    assert math.isclose(s.mean, ref.sum().item() / n, rel_tol=1e-15)
    assert s.min == -1e6 and s.max == x[-1].item()
    assert math.isclose(s.l2, ref.norm().item(), rel_tol=1e-12)
