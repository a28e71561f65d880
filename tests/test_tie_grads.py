"""``grads`` on parameter ties: each owner's contribution to a tied parameter's gradient,
checked against an untied reference, and their sum equals ``.grad``."""

from __future__ import annotations

import torch
from tie_models import AE, LM, TOKENS, HandLM, untied_ae_grads

import modelspec
from modelspec._grads import render_grads_text

X = torch.rand(3, 20, generator=torch.Generator().manual_seed(6))


def _norm(t: torch.Tensor) -> float:
    return float(t.double().norm())


def test_same_tie_lists_each_owner() -> None:
    m = modelspec.build(LM)
    ref = HandLM(tied=False)
    ref.load_state_dict(m.state_dict())
    ref(TOKENS).sum().backward()
    result = modelspec.grads(m, TOKENS)
    (group,) = result.groups
    assert group.kind == "parameter" and group.tensors == ["transformer.wte.weight"]
    norms = {s.site: s.norms["transformer.wte.weight"] for s in group.sites}
    assert set(norms) == {"transformer.wte", "lm_head"}
    assert abs(norms["transformer.wte"] - _norm(ref.transformer.wte.weight.grad)) < 1e-5
    assert abs(norms["lm_head"] - _norm(ref.lm_head.weight.grad)) < 1e-5
    assert not any(s.transposed for s in group.sites)
    assert group.rel_error["transformer.wte.weight"] < 1e-6
    total = ref.transformer.wte.weight.grad + ref.lm_head.weight.grad
    torch.testing.assert_close(m.transformer.wte.weight.grad, total, rtol=1e-5, atol=1e-6)


def test_transposed_tie_lists_the_reader_as_an_owner() -> None:
    m = modelspec.build(AE)
    enc_use, dec_use, total = untied_ae_grads(m, X)
    result = modelspec.grads(m, X)
    (group,) = result.groups
    assert group.kind == "transposed" and group.tensors == ["encoder.weight"]
    sites = {s.site: s for s in group.sites}
    assert set(sites) == {"encoder", "decoder"}
    assert sites["decoder"].transposed and not sites["encoder"].transposed
    assert abs(sites["encoder"].norms["encoder.weight"] - _norm(enc_use)) < 1e-5
    assert abs(sites["decoder"].norms["encoder.weight"] - _norm(dec_use)) < 1e-5
    assert abs(group.sum_norms["encoder.weight"] - _norm(total)) < 1e-5
    assert group.rel_error["encoder.weight"] < 1e-6
    torch.testing.assert_close(m.encoder.weight.grad, total, rtol=1e-5, atol=1e-6)
    assert "from decoder (transposed)" in render_grads_text(result)
    assert type(m.decoder).__name__ == "TransposedLinear" and m.decoder.weight._base is m.encoder.weight  # left as was


def test_shared_block_read_transposed_accounts_for_every_use() -> None:
    """A block used twice whose weight a third module also reads transposed: three owners."""
    m = modelspec.build("""
modelspec: 1
input: {shape: [4, 8]}
blocks:
  enc: {Linear: [8, 8]}
model:
  nodes:
    a: {use: enc}
    t: Tanh
    b: {use: enc}
    dec: {Linear: [8, 8]}
ties:
  - {param: dec.weight, to: a.weight, transposed: true}
""")
    x = torch.rand(4, 8, generator=torch.Generator().manual_seed(7))
    w = m.a.weight.detach()
    uses = [w.clone().requires_grad_(True) for _ in range(3)]
    bias, dec_bias = m.a.bias.detach(), m.dec.bias.detach()
    y = torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(x, uses[0], bias)), uses[1], bias)
    torch.nn.functional.linear(y, uses[2].t(), dec_bias).sum().backward()

    result = modelspec.grads(m, x)
    (group,) = [g for g in result.groups if "a.weight" in g.tensors]
    norms = {s.site.split(" = ")[0]: s.norms["a.weight"] for s in group.sites}
    assert set(norms) == {"a", "b", "dec"}
    for site, use in zip(("a", "b", "dec"), uses, strict=True):
        assert abs(norms[site] - _norm(use.grad)) < 1e-5, site
    assert group.rel_error["a.weight"] < 1e-6
    torch.testing.assert_close(m.a.weight.grad, sum(u.grad for u in uses), rtol=1e-5, atol=1e-6)
