"""Tensors of at most ``_LEAVES`` values take a short path to their statistics (a model has
many: LayerNorm weights, biases). It must give bitwise what the chunked path gives, for
every dtype, and never change the tensor it summarizes."""

from __future__ import annotations

import pytest
import torch

from modelspec import _stats
from modelspec._stats import summarize


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = [torch.randn(n, generator=g) * 3.0 + 1.0 for n in (1, 2, 3, 7, 768, 1000, _stats._LEAVES)]
    out += [
        torch.randn(1023, generator=g, dtype=torch.float64) * 1e-3 + 1e3,  # |mean| >> std
        torch.randn(700, generator=g).to(torch.bfloat16),
        torch.randn(300, generator=g).half(),
        torch.arange(900),
        torch.randint(-(2**62), 2**62, (513,), generator=g),  # int64 beyond 2**53 rounds on conversion
        torch.randint(0, 255, (77,), generator=g, dtype=torch.uint8),
        torch.tensor([True, False, True], dtype=torch.bool).to(torch.uint8),
        torch.tensor([1.0, float("nan"), 3.0]),
        torch.tensor([float("inf"), 2.0, -float("inf")]),
        torch.tensor([-0.0, 0.0]),
    ]
    return out


@pytest.mark.parametrize("x", _tensors(), ids=lambda x: f"{x.dtype}-{x.numel()}")
def test_short_path_is_bitwise_the_chunked_path(x: torch.Tensor) -> None:
    shift = float(x[0].double())
    short = _stats._small_sums(x, shift)
    chunked = _stats._sums(x, shift)
    assert repr(short[:2]) == repr(chunked[:2])  # repr: nan equals nan, and -0.0 differs from 0.0
    assert short[2].dtype == chunked[2].dtype == x.dtype
    assert torch.equal(short[2], chunked[2]) or (short[2].isnan() and chunked[2].isnan())
    assert torch.equal(short[3], chunked[3]) or (short[3].isnan() and chunked[3].isnan())


def test_summarize_takes_the_short_path_only_up_to_the_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[int] = []
    real = _stats._small_sums
    monkeypatch.setattr(_stats, "_small_sums", lambda flat, shift: taken.append(flat.numel()) or real(flat, shift))
    for n in (1, _stats._LEAVES, _stats._LEAVES + 1, 5000):
        summarize(torch.ones(n))
    assert taken == [1, _stats._LEAVES]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_summarize_leaves_the_tensor_unchanged(dtype: torch.dtype) -> None:
    x = torch.linspace(-2.0, 5.0, 600, dtype=dtype)
    before = x.clone()
    s = summarize(x)
    assert torch.equal(x, before)
    assert s.min == -2.0 and s.max == 5.0 and abs(s.mean - x.double().mean().item()) < 1e-12


def test_non_contiguous_small_tensor_is_summarized_in_c_order() -> None:
    x = torch.arange(600, dtype=torch.float32).reshape(20, 30) * 0.25 - 3.0
    assert summarize(x.t()) == summarize(x.t().contiguous())
    assert summarize(x.t()) == summarize(x)  # the same values in another order: exact sums agree
