"""uniform_ draws in cache-sized chunks: the values are those of one bounded random_ call."""

from __future__ import annotations

import pytest
import torch

from modelspec import _rng
from modelspec._rng import uniform_


def reference(n: int, dtype: torch.dtype, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    """The documented formula with one bounded integer draw: k in [first, first + 2**bits)."""
    calc, bits = (torch.float64, 53) if dtype == torch.float64 else (torch.float32, 24)
    symmetric = lo == -hi
    first = -(1 << (bits - 1)) if symmetric else 0
    k = torch.empty(n, dtype=torch.int64).random_(first, first + (1 << bits), generator=g)
    width = torch.tensor(hi if symmetric else hi - lo, dtype=calc)
    x = k.to(calc) * (width * 2.0 ** -(bits - 1 if symmetric else bits))
    return x if symmetric else x + torch.tensor(lo, dtype=calc)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bounds", [(-0.3, 0.3), (0.0, 1.0), (-1.0, 2.5)])
@pytest.mark.parametrize("n", [1, 5, _rng._CHUNK, 2 * _rng._CHUNK + 3])
def test_chunked_draws_equal_one_bounded_draw(dtype: torch.dtype, bounds: tuple[float, float], n: int) -> None:
    g1, g2 = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
    got = uniform_(torch.empty(n, dtype=dtype), *bounds, generator=g1)
    want = reference(n, dtype, *bounds, g2)
    bits = torch.int64 if dtype == torch.float64 else torch.int32
    assert torch.equal(got.view(bits), want.to(dtype).view(bits))  # bit for bit
    # the generator advanced by the same number of draws
    assert torch.equal(torch.randint(0, 1 << 30, (4,), generator=g1), torch.randint(0, 1 << 30, (4,), generator=g2))
