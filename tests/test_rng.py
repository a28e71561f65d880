"""Portable init: the right distributions, every dtype and device, one generator per build.

Statistical checks use a fixed seed, so they are deterministic; their tolerances are
5 standard errors of the checked quantity (a correct sampler would fail one by chance
with probability below 1e-6), so a biased or mis-scaled sampler fails them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import modelspec
from modelspec._rng import PortableInit, _standard_pairs, normal_, uniform_

N = 1_000_000
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_uniform_bounds_mean_and_std(dtype: torch.dtype) -> None:
    lo, hi = -0.3, 0.7
    x = uniform_(torch.empty(N, dtype=dtype), lo, hi, generator=gen())
    v = x.double()
    # bounds as the dtype rounds them; 16-bit types may round a value up to hi itself
    lo_d, hi_d = (float(torch.tensor(b, dtype=dtype)) for b in (lo, hi))
    assert float(v.min()) >= lo_d and (float(v.max()) < hi_d if dtype.itemsize >= 4 else float(v.max()) <= hi_d)
    width = hi - lo
    se_mean = width / math.sqrt(12 * N)
    assert abs(float(v.mean()) - (lo + hi) / 2) < 5 * se_mean + (hi_d - lo_d) * 2.0**-9 * (dtype.itemsize < 4)
    # std of a uniform sample: relative standard error sqrt(0.8 / (4 N))
    std = width / math.sqrt(12)
    assert abs(float(v.std()) / std - 1) < 5 * math.sqrt(0.8 / (4 * N)) + 2.0**-8 * (dtype.itemsize < 4)
    assert len(torch.unique(x)) > (N // 2 if dtype.itemsize >= 4 else 100)  # many distinct values


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_normal_mean_std_and_shape(dtype: torch.dtype) -> None:
    mean, std = 0.5, 2.0
    x = normal_(torch.empty(N, dtype=dtype), mean, std, generator=gen(1)).double()
    slack = 2.0**-7 if dtype.itemsize < 4 else 0.0  # 16-bit rounding
    assert abs(float(x.mean()) - mean) < 5 * std / math.sqrt(N) + slack
    assert abs(float(x.std()) / std - 1) < 5 * math.sqrt(2 / (4 * N)) + slack  # kurtosis 3: se sqrt(2/(4N))
    z = ((x - mean) / std).float()
    # fractions below fixed quantiles of N(0, 1): binomial standard error
    for q, p in ((-1.959964, 0.025), (-1.0, 0.158655), (0.0, 0.5), (1.0, 0.841345), (2.575829, 0.995)):
        frac = float((z < q).double().mean())
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / N) + slack, (q, frac)
    assert float(z.abs().max()) <= math.sqrt(-2 * math.log(2.0**-32)) + 1e-2  # u >= 2**-32


def test_normal_series_match_libm() -> None:
    """log, sin and cos by series agree with the platform's libm to ~1e-15."""
    x = torch.randint(0, 2**63 - 1, (20_000,), generator=gen(5))
    z0, z1 = _standard_pairs(x)
    for xi, a, b in zip(x.tolist()[:20_000:7], z0.tolist()[::7], z1.tolist()[::7], strict=True):
        u = ((xi & 0xFFFFFFFF) + 1) / 2**32
        r = math.sqrt(-2 * math.log(u))
        y = ((xi >> 32) & ((1 << 28) - 1)) * (math.pi / 4) / 2**28
        s, c = math.sin(y), math.cos(y)
        first, second = (s, c) if (xi >> 60) & 1 else (c, s)
        first *= -1 if (xi >> 61) & 1 else 1
        second *= -1 if (xi >> 62) & 1 else 1
        assert math.isclose(a, r * first, rel_tol=1e-13, abs_tol=1e-15)
        assert math.isclose(b, r * second, rel_tol=1e-13, abs_tol=1e-15)


def test_draws_are_in_c_order_and_independent_of_layout() -> None:
    a = uniform_(torch.empty(6, 5), -1, 1, generator=gen())
    b = uniform_(torch.empty(5, 6).t(), -1, 1, generator=gen())  # a non-contiguous view
    assert torch.equal(a, b.contiguous())
    c = normal_(torch.empty(7), generator=gen())  # odd length: the last pair's second value is unused
    d = normal_(torch.empty(8), generator=gen())
    assert torch.equal(c, d[:7])


def test_meta_and_empty_tensors_draw_nothing() -> None:
    g = gen()
    state = g.get_state()
    uniform_(torch.empty(3, 4, device="meta"), generator=g)
    normal_(torch.empty(0), generator=g)
    assert torch.equal(g.get_state(), state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_other_devices_get_the_cpu_draws() -> None:  # pragma: no cover - only with a GPU
    for fill in (uniform_, normal_):
        on_gpu = fill(torch.empty(1000, device="cuda"), generator=gen())
        assert torch.equal(on_gpu.cpu(), fill(torch.empty(1000), generator=gen()))


def test_bad_parameters_are_refused() -> None:
    for call in (
        lambda: uniform_(torch.empty(3), 1.0, 0.0, generator=gen()),
        lambda: uniform_(torch.empty(3), 0.0, math.inf, generator=gen()),
        lambda: normal_(torch.empty(3), 0.0, -1.0, generator=gen()),
    ):
        with pytest.raises(ValueError):
            call()


def test_default_init_of_common_layers_goes_through_the_portable_primitives() -> None:
    mode = PortableInit(gen())
    with mode:
        layers = [
            nn.Linear(4, 3),
            nn.Conv2d(2, 3, 3),
            nn.Embedding(10, 4),
            nn.LSTM(4, 5),
            nn.GRU(4, 5),
            nn.Bilinear(3, 4, 5),
            nn.MultiheadAttention(8, 2, add_bias_kv=True),
            nn.TransformerEncoderLayer(8, 2, dim_feedforward=16),
            nn.BatchNorm1d(4),
            nn.LayerNorm(4),
            nn.PReLU(),
        ]
    assert mode.unportable == set()
    with PortableInit(gen()):
        again = nn.Linear(4, 3)
    assert torch.equal(again.weight, layers[0].weight)  # one seeded generator: reproducible


def test_other_random_ops_are_recorded_as_unportable() -> None:
    mode = PortableInit(gen())
    with mode:
        torch.randn(3)
        torch.empty(4).bernoulli_(0.5)
    assert mode.unportable == {"aten::randn", "aten::bernoulli_"}


def test_build_draws_from_the_spec_seed_not_the_global_rng() -> None:
    spec = "modelspec: 1\nseed: 5\nmodel: [{Linear: [4, 3]}]\n"
    torch.manual_seed(0)
    a = modelspec.build(spec)
    torch.manual_seed(1)
    b = modelspec.build(spec)
    assert torch.equal(a[0].weight, b[0].weight)
    # Linear's default init: kaiming_uniform_(a=sqrt(5)) -> bound 1/sqrt(fan_in), then the bias
    g = gen(5)
    weight = uniform_(torch.empty(3, 4), -0.5, 0.5, generator=g)
    bias = uniform_(torch.empty(3), -0.5, 0.5, generator=g)
    assert torch.equal(a[0].weight, weight) and torch.equal(a[0].bias, bias)


def test_factories_inside_do_not_follow_a_device_context() -> None:
    """A build runs under ``torch.device(...)``: the draws stay on the CPU whatever it says."""
    with torch.device("meta"), PortableInit(gen()):
        w = nn.init.kaiming_uniform_(torch.empty(3, 4, device="cpu"))
        v = nn.init.normal_(torch.empty(5, device="cpu"), std=0.1)
        h = nn.init.uniform_(torch.empty(5, dtype=torch.float16, device="cpu"), -1.0, 2.0)
    assert not w.is_meta and not v.is_meta and not h.is_meta
    assert torch.equal(v, normal_(torch.empty(5), 0.0, 0.1, generator=_after(gen(), 12)))


def _after(g: torch.Generator, n: int) -> torch.Generator:
    uniform_(torch.empty(n), -1.0, 1.0, generator=g)  # consume n draws, as kaiming_uniform_ did
    return g


def test_complex_tensors_fall_back_and_are_recorded() -> None:
    mode = PortableInit(gen())
    with mode:
        torch.empty(3, dtype=torch.complex64).uniform_()
    assert mode.unportable == {"aten::uniform_"}
