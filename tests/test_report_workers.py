"""report()'s worker threads: every task is done once, errors reach the caller unchanged
(a task's, or the progress callback's), no worker outlives the call, and progress only
moves forward."""

from __future__ import annotations

import threading
from itertools import pairwise

import pytest
import torch
from torch import nn

from modelspec import _inventory
from modelspec._inventory import inventory


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 30), nn.LayerNorm(30), nn.Linear(30, 2), nn.Embedding(70, 3))
    net.register_buffer("empty", torch.empty(0))
    return net


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("modelspec-values")]


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_every_task_runs_once(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    summarized: list[int] = []
    real_hash, real_stats = _inventory.sha256_of, _inventory.summarize
    monkeypatch.setattr(_inventory, "sha256_of", lambda t: hashed.append(id(t)) or real_hash(t))
    monkeypatch.setattr(_inventory, "summarize", lambda t: summarized.append(id(t)) or real_stats(t))
    net = _net()
    report = inventory(net, threads=threads)
    tensors = [*net.parameters(), *net.buffers()]
    assert sorted(hashed) == sorted(summarized) == sorted(id(t) for t in tensors)
    assert all(e.sha256 and e.stats for e in report.tensors)
    assert _workers() == []


@pytest.mark.parametrize("threads", [1, 3])
def test_a_failing_task_raises_its_own_error_and_stops_the_workers(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Boom(RuntimeError):
        pass

    real = _inventory.summarize

    def summarize(t: torch.Tensor):
        if t.shape == (30, 40):
            raise Boom("no statistics for you")
        return real(t)

    monkeypatch.setattr(_inventory, "summarize", summarize)
    with pytest.raises(Boom):
        inventory(_net(), threads=threads)
    with pytest.raises(Boom):
        inventory(_net(), threads=threads, progress=lambda done, total: None)
    assert _workers() == []


def test_an_error_in_progress_reaches_the_caller_and_no_worker_outlives_it() -> None:
    def progress(done: int, total: int) -> None:
        raise KeyError("stop")

    with pytest.raises(KeyError):
        inventory(_net(), threads=2, progress=progress)
    assert _workers() == []


def test_progress_moves_forward_with_empty_tensors_and_ends_once_at_the_total() -> None:
    calls: list[tuple[int, int]] = []
    inventory(_net(), threads=2, progress=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert calls[-1] == (total, total) and [c for c in calls if c[0] == total] == [(total, total)]
    assert all(a[0] < b[0] for a, b in pairwise(calls))
