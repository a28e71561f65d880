"""The float32 path of the portable normal_: its stream, its accuracy, its operations.

float32, float16 and bfloat16 tensors are filled from one 63-bit draw per pair (bits 0-23
the radius, 24-47 the angle, 48-50 swap and signs), computed in float32 in chunks.
"""

from __future__ import annotations

import math

import torch
from conftest import RecordOps

from modelspec import _rng
from modelspec._rng import normal_


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference(draw: int) -> tuple[float, float]:
    """The pair the documented recipe gives for one draw, with the platform's libm in float64."""
    u = ((draw & 0xFFFFFF) + 1) / 2**24
    r = math.sqrt(-2 * math.log(u))
    y = ((draw >> 24) & 0xFFFFFF) * (math.pi / 4) / 2**24
    s, c = math.sin(y), math.cos(y)
    first, second = (s, c) if (draw >> 48) & 1 else (c, s)
    first *= -1 if (draw >> 49) & 1 else 1
    second *= -1 if (draw >> 50) & 1 else 1
    return r * first, r * second


def test_float32_values_follow_the_documented_recipe_to_float32_accuracy() -> None:
    n, mean, std = 20_000, 0.25, 3.0
    draws = torch.empty(n // 2, dtype=torch.int64).random_(generator=gen(7)).tolist()
    got = normal_(torch.empty(n), mean, std, generator=gen(7)).tolist()
    for i, draw in enumerate(draws):
        for k, want in enumerate(reference(draw)):
            # float32 series and rounding: measured worst 2.7e-7 relative; 1e-6 is about 17 ulp
            assert math.isclose(got[2 * i + k], mean + std * want, rel_tol=1e-6, abs_tol=1e-6 * std)


def test_one_draw_per_pair_and_the_generator_state_after() -> None:
    for n in (1, 2, 7, 2 * _rng._CHUNK + 1):
        g, h = gen(3), gen(3)
        normal_(torch.empty(n), generator=g)
        torch.empty((n + 1) // 2, dtype=torch.int64).random_(generator=h)
        assert torch.equal(g.get_state(), h.get_state()), n


def test_a_longer_tensor_starts_with_the_same_values_across_chunks() -> None:
    n = 2 * (2 * _rng._CHUNK) + 3  # two full chunks of pairs and a partial one
    short = normal_(torch.empty(n), 1.0, 0.5, generator=gen(4))
    long = normal_(torch.empty(n + 1), 1.0, 0.5, generator=gen(4))
    assert torch.equal(short, long[:n])
    chunked = normal_(torch.empty(4 * _rng._CHUNK + 4), 1.0, 0.5, generator=gen(4))
    assert torch.equal(short, chunked[:n])


def test_16bit_types_are_the_float32_values_rounded() -> None:
    x = normal_(torch.empty(5001), 0.5, 2.0, generator=gen(2))
    for dtype in (torch.float16, torch.bfloat16):
        y = normal_(torch.empty(5001, dtype=dtype), 0.5, 2.0, generator=gen(2))
        assert torch.equal(y, x.to(dtype))


def test_zero_std_gives_the_mean() -> None:
    x = normal_(torch.empty(100), 1.5, 0.0, generator=gen())
    assert torch.equal(x, torch.full((100,), 1.5))


def test_float32_path_uses_only_correctly_rounded_and_integer_operations() -> None:
    """No libm function (log, sin, cos, exp), no fused or multi-operand arithmetic (addcmul,
    lerp, where on floats), no reduction: those differ between SIMD levels."""
    with RecordOps() as ops:
        normal_(torch.empty(1001), 0.5, 2.0, generator=gen())
        normal_(torch.empty(10, dtype=torch.bfloat16), generator=gen())
    allowed = {
        "aten::random_", "aten::empty", "aten::slice", "aten::view", "aten::alias", "aten::copy_",
        "aten::lift_fresh", "aten::detach",
        "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_", "aten::div_", "aten::sqrt_",
        "aten::bitwise_and", "aten::bitwise_and_", "aten::bitwise_xor", "aten::bitwise_xor_",
        "aten::bitwise_left_shift", "aten::bitwise_right_shift", "aten::bitwise_right_shift_",
    }  # fmt: skip
    assert ops.names <= allowed, ops.names - allowed
