"""A transposed tie is one tensor: no extra parameter anywhere, gradients of both uses
add up, and it survives what PyTorch users do to a model (copy, pickle, dtype
conversion, torch.compile, state_dict round trips)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tie_models import AE, untied_ae_grads

import modelspec
from modelspec._ties import check_ties

X = torch.rand(3, 20, generator=torch.Generator().manual_seed(1))


def _is_linked(m: torch.nn.Module) -> bool:
    """The decoder reads the encoder's current weight: a live view, no copy."""
    w = m.decoder.weight
    return w._base is m.encoder.weight and torch.equal(w, m.encoder.weight.t())


def test_one_tensor_and_no_extra_parameter() -> None:
    m = modelspec.build(AE)
    params = list(m.parameters())
    assert len(params) == 3  # encoder.weight, encoder.bias, decoder.bias
    assert sum(p.numel() for p in params) == 20 * 5 + 5 + 20  # the encoder's count plus the decoder's bias
    assert list(m.state_dict()) == ["encoder.weight", "encoder.bias", "decoder.bias"]
    assert "decoder.weight" not in dict(m.named_parameters(remove_duplicate=False))
    assert modelspec.report(m).totals.unique_params == 125
    assert type(m.decoder).__name__ == "TransposedLinear" and isinstance(m.decoder, torch.nn.Linear)
    assert _is_linked(m)
    with torch.no_grad():
        m.encoder.weight.mul_(2)  # one tensor: the decoder sees the change
    assert _is_linked(m)


def test_gradient_of_both_uses_accumulates_into_the_source() -> None:
    m = modelspec.build(AE)
    enc_use, dec_use, total = untied_ae_grads(m, X)
    assert enc_use.norm() > 0 and dec_use.norm() > 0
    m(X).sum().backward()
    torch.testing.assert_close(m.encoder.weight.grad, total, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(m.encoder.weight.grad, enc_use, rtol=1e-3, atol=1e-5)  # not only the encoder's use
    assert m.decoder.bias.grad is not None


def test_optimizer_step_moves_both_uses() -> None:
    m = modelspec.build(AE)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = m.encoder.weight.detach().clone()
    m(X).sum().backward()
    opt.step()
    assert not torch.equal(m.encoder.weight, before)
    assert _is_linked(m)


def test_deepcopy_keeps_its_own_link() -> None:
    m = modelspec.build(AE)
    c = copy.deepcopy(m)
    assert c.encoder is not m.encoder and _is_linked(c)
    assert torch.equal(c(X), m(X))
    with torch.no_grad():
        c.encoder.weight.add_(1)
    assert _is_linked(c) and _is_linked(m) and not torch.equal(c(X), m(X))
    assert len(list(c.parameters())) == 3


def test_pickle_round_trip() -> None:
    from modelspec._ties import TransposedLinear  # importable by name: what unpickling needs

    m = modelspec.build(AE)
    p = pickle.loads(pickle.dumps(m))
    assert type(p.decoder) is TransposedLinear
    assert _is_linked(p) and len(list(p.parameters())) == 3
    assert torch.equal(p(X), m(X))
    assert not check_ties(p, modelspec.build_info(m).spec.ties)


def test_to_float64_keeps_the_link() -> None:
    m = modelspec.build(AE)
    w, b, db = (t.detach().double() for t in (m.encoder.weight, m.encoder.bias, m.decoder.bias))
    expected = torch.tanh(X.double() @ w.t() + b) @ w + db  # the decoder's weight is w.t()
    m = m.to(torch.float64)
    assert m.encoder.weight.dtype == torch.float64 and m.decoder.weight.dtype == torch.float64
    assert _is_linked(m) and len(list(m.parameters())) == 3
    torch.testing.assert_close(m(X.double()), expected, rtol=1e-6, atol=1e-7)


def test_state_dict_loads_strict_into_a_fresh_build() -> None:
    m = modelspec.build(AE)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.rand(p.shape, generator=torch.Generator().manual_seed(3)))
    fresh = modelspec.build(AE)
    assert not torch.equal(fresh(X), m(X))
    result = fresh.load_state_dict(m.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh(X), m(X)) and _is_linked(fresh)
    assert torch.equal(fresh.decoder.weight, m.encoder.weight.t())


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
def test_torch_compile_matches_eager() -> None:
    m = modelspec.build(AE)
    eager = copy.deepcopy(m)
    eager(X).sum().backward()
    # aot_eager: dynamo traces the tied module and autograd runs through the traced graph, with no
    # C++ compiler (inductor needs one, and fails to build its kernels under ATEN_CPU_CAPABILITY=default)
    compiled = torch.compile(m, backend="aot_eager")
    out = compiled(X)
    torch.testing.assert_close(out, eager(X), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert len(list(m.parameters())) == 3 and _is_linked(m)
    torch.testing.assert_close(m.encoder.weight.grad, eager.encoder.weight.grad, rtol=1e-5, atol=1e-6)


def test_a_chain_of_ties_is_one_parameter_in_any_order() -> None:
    """a -> b and b -> c (or the other way round in the list): all three are c's parameter."""
    head = "modelspec: 1\ninput: {shape: [2, 4]}\nmodel:\n  nodes:\n    a: {Linear: [4, 4]}\n    b: {Linear: [4, 4]}\n"
    head += "    c: {Linear: [4, 4]}\n"
    for ties in (["a.weight", "b.weight"], ["b.weight", "a.weight"]):
        lines = "".join(f"  - {{param: {p}, to: {'b.weight' if p == 'a.weight' else 'c.weight'}}}\n" for p in ties)
        m = modelspec.build(head + "ties:\n" + lines)
        assert m.a.weight is m.b.weight is m.c.weight
        assert len(list(m.parameters())) == 4  # c.weight and three biases


def test_a_tie_to_a_parameter_read_transposed_is_refused() -> None:
    spec = (
        "modelspec: 1\ninput: {shape: [2, 4]}\nmodel:\n  nodes:\n    enc: {Linear: [4, 3]}\n"
        "    dec: {Linear: [3, 4]}\n    other: {Linear: [3, 4], in: enc}\n  outputs: [dec, other]\n"
        "ties:\n  - {param: dec.weight, to: enc.weight, transposed: true}\n  - {param: other.weight, to: dec.weight}\n"
    )
    with pytest.raises(modelspec.SpecError) as info:
        modelspec.build(spec)
    (d,) = info.value.diagnostics
    assert d.code == "tie-chain" and d.path == ("ties", 1, "to") and (d.line, d.column) == (11, 27)
    assert "enc.weight" in (d.hint or "")


def test_retie_restores_a_chain_of_ties_after_to_empty() -> None:
    spec = (
        "modelspec: 1\ninput: {shape: [2, 4]}\nmodel:\n  nodes:\n    a: {Linear: [4, 4]}\n    b: {Linear: [4, 4]}\n"
        "    c: {Linear: [4, 4]}\nties:\n  - {param: a.weight, to: b.weight}\n  - {param: b.weight, to: c.weight}\n"
    )
    m = modelspec.build(spec, device="meta").to_empty(device="cpu")
    assert m.a.weight is not m.b.weight  # to_empty broke the chain
    modelspec.retie(m, verify=False)
    assert m.a.weight is m.b.weight is m.c.weight
