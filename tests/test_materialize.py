"""``modelspec.materialize``: a model built on ``meta`` gets exactly the values of a direct build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import modelspec
from modelspec import UsageError

ROOT = Path(__file__).resolve().parent.parent
SPEC = """
modelspec: 1
seed: 7
vars: {d: 6}
blocks:
  shared: {Linear: [$d, $d]}
model:
  stem: {Linear: [$d, $d], trainable: false}
  body: {repeat: 5, of: [{Linear: [$d, $d]}, Tanh], groups: [2, 3]}
  twice: {repeat: 2, of: {use: shared}}
  norm: {BatchNorm1d: $d}
  enc: {Linear: [$d, 3]}
  dec: {Linear: [3, $d]}
ties:
  - {param: dec.weight, to: enc.weight, transposed: true}
"""


def assert_same_values(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("source", [SPEC, ROOT / "specs/zoo/tied_autoencoder.yaml", ROOT / "specs/zoo/siamese.yaml"])
def test_meta_then_materialize_equals_a_direct_build_bit_for_bit(source: object) -> None:
    model = modelspec.build(source, device="meta")  # type: ignore[arg-type]
    assert all(p.is_meta for p in model.parameters())
    state = torch.random.get_rng_state()
    modules = dict(model.named_modules())
    assert modelspec.materialize(model) is model
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert all(m is modules[n] for n, m in model.named_modules())  # the objects you hold stay
    assert_same_values(model, modelspec.build(source))  # type: ignore[arg-type]


def test_sharing_ties_and_frozen_parameters_hold_after_materialize() -> None:
    model = modelspec.materialize(modelspec.build(SPEC, device="meta"))
    assert model.twice[0] is model.twice[1] and model.body[0] is model.body[1] is not model.body[2]
    assert model.body[2] is model.body[4]
    assert not model.stem.weight.requires_grad and model.enc.weight.requires_grad
    with torch.no_grad():
        model.enc.weight.add_(1.0)  # the transposed reader sees the new values: one tensor
    torch.testing.assert_close(model.dec.weight, model.enc.weight.t(), rtol=0, atol=0)
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    model(torch.randn(4, 6))


def test_a_dtype_given_at_build_is_kept() -> None:
    model = modelspec.materialize(modelspec.build(SPEC, device="meta", dtype="bfloat16"))
    assert_same_values(model, modelspec.build(SPEC, dtype="bfloat16"))


def test_refusals() -> None:
    with pytest.raises(UsageError) as info:
        modelspec.materialize(nn.Linear(2, 2))
    assert info.value.code == "no-spec"
    model = modelspec.build(SPEC, device="meta")
    with pytest.raises(UsageError) as info:
        modelspec.materialize(model, device="meta")
    assert info.value.code == "bad-device"
    model.enc = nn.Linear(6, 4, device="meta")  # no longer what the spec builds
    model.norm.register_buffer("extra", torch.zeros(1, device="meta"))
    with pytest.raises(UsageError) as info:
        modelspec.materialize(model)
    assert info.value.code == "structure-changed" and "norm" in str(info.value)
