"""report() computes checksums and statistics as independent tasks on worker threads: the
result does not depend on how many threads run them, every torch op in a worker runs on
that thread alone, and the caller's torch thread setting is left as it was.
(Timing lives in benchmarks/run.py, not here.)"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
import torch
from torch import nn

import modelspec
from modelspec import _inventory
from modelspec._inventory import inventory


def _model() -> nn.Module:
    g = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(300, 700), nn.LayerNorm(700), nn.Linear(700, 5), nn.BatchNorm1d(5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    net[2].weight.requires_grad_(False)
    return net


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_the_report_does_not_depend_on_the_thread_count(threads: int) -> None:
    net = _model()
    assert inventory(net, threads=threads).model_dump() == inventory(net, threads=1).model_dump()


def test_workers_run_torch_ops_on_one_thread_and_the_setting_is_restored(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = _inventory.summarize

    def spy(t: torch.Tensor) -> Any:
        seen.append(torch.get_num_threads())
        return real(t)

    monkeypatch.setattr(_inventory, "summarize", spy)
    rep = modelspec.report(_model())
    assert len(seen) == rep.totals.unique_tensors and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_known_checksums_are_not_computed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _model()
    full = inventory(net)
    known = {e.name: e.sha256 for e in full.tensors if e.sha256}
    hashed: list[int] = []
    real = _inventory.sha256_of
    monkeypatch.setattr(_inventory, "sha256_of", lambda t: hashed.append(1) or real(t))
    assert inventory(net, known_hashes=known).model_dump() == full.model_dump()
    assert hashed == []


def test_progress_reaches_the_total_once() -> None:
    calls: list[tuple[int, int]] = []
    inventory(_model(), progress=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert calls[-1] == (total, total) and [c for c in calls if c[0] == total] == [(total, total)]
    assert all(a[0] < b[0] for a, b in pairwise(calls))
