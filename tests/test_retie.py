"""PyTorch operations that silently break parameter ties, and ``modelspec.retie``.

Each test first shows that the operation broke the tie (the assertion that would fail
without ``retie``), then that ``retie`` restores one ``nn.Parameter`` and training
behaviour: the gradient of the tied weight is the sum of both uses' gradients, checked
against an untied copy of the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tie_models import AE, LM, TOKENS, HandAE, HandLM, untied_ae_grads, untied_lm_grads
from torch import nn

import modelspec
from modelspec._errors import TieMismatchError, UsageError


def _loss(m: nn.Module) -> torch.Tensor:
    return m(TOKENS).pow(2).mean()


def _weights() -> dict[str, torch.Tensor]:
    """Trained-looking values of LM: every alias key present, as in ``state_dict()``."""
    m = modelspec.build(LM)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.rand(p.shape, generator=torch.Generator().manual_seed(5)))
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _tied(m: nn.Module) -> bool:
    return m.lm_head.weight is m.transformer.wte.weight


def _trains_as_one_tensor(m: nn.Module) -> None:
    """One parameter fewer than untied; its gradient is the sum of both uses' (numerically)."""
    assert len(list(m.parameters())) == 3  # wte (= lm_head), ln_f weight and bias
    expected = untied_lm_grads(m, _loss)
    m.zero_grad(set_to_none=True)
    _loss(m).backward()
    torch.testing.assert_close(m.transformer.wte.weight.grad, expected, rtol=1e-5, atol=1e-7)


def test_to_empty_from_meta_breaks_the_tie_and_retie_restores_it() -> None:
    sd = _weights()
    m = modelspec.build(LM, device="meta")
    assert _tied(m)
    m.to_empty(device="cpu")
    assert not _tied(m) and len(list(m.parameters())) == 4  # PyTorch made two tensors of one
    m.load_state_dict(sd)  # fills both with the same values: still two tensors
    assert not _tied(m)
    assert modelspec.retie(m) is m
    assert _tied(m)
    assert torch.equal(m.lm_head.weight, sd["transformer.wte.weight"])
    _trains_as_one_tensor(m)


def test_load_state_dict_assign_breaks_the_tie_and_retie_restores_it() -> None:
    sd = _weights()
    m = modelspec.build(LM)
    m.load_state_dict(sd, assign=True)
    assert not _tied(m) and len(list(m.parameters())) == 4
    modelspec.retie(m)
    assert _tied(m)
    _trains_as_one_tensor(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.step()  # one step moves the one tensor: both uses see it
    assert _tied(m) and not torch.equal(m.lm_head.weight, sd["lm_head.weight"])


def test_retie_right_after_to_empty_without_verifying() -> None:
    m = modelspec.build(LM, device="meta").to_empty(device="cpu")
    assert not _tied(m)
    modelspec.retie(m, verify=False)  # values are not meaningful yet
    assert _tied(m)
    sd = _weights()
    m.load_state_dict(sd)
    ref = modelspec.build(LM)
    ref.load_state_dict(sd)
    assert torch.equal(m(TOKENS), ref(TOKENS))
    _trains_as_one_tensor(m)


def test_retie_refuses_tensors_whose_values_differ() -> None:
    sd = _weights()
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    m = modelspec.build(LM)
    m.load_state_dict(sd, assign=True)
    with pytest.raises(TieMismatchError) as e:
        modelspec.retie(m)
    assert e.value.code == "tie-values"
    assert "'lm_head.weight'" in str(e.value) and "'transformer.wte.weight'" in str(e.value)
    assert "None" not in str(e.value)
    assert not _tied(m)  # nothing changed
    modelspec.retie(m, verify=False)  # keeps the values of 'to': the embedding's
    assert _tied(m) and torch.equal(m.lm_head.weight, sd["transformer.wte.weight"])


def test_retie_with_a_spec_path_or_text_on_a_handwritten_module(tmp_path: Path) -> None:
    path = tmp_path / "lm.yaml"
    path.write_text(LM)
    for spec in (str(path), path, LM):
        hand = HandLM(tied=False)
        with torch.no_grad():
            hand.lm_head.weight.copy_(hand.transformer.wte.weight)
        assert modelspec.retie(hand, spec=spec) is hand
        assert _tied(hand)
        _trains_as_one_tensor(hand)


def test_retie_makes_a_handwritten_decoder_read_the_encoder_transposed() -> None:
    hand = HandAE()
    with torch.no_grad():
        hand.decoder.weight.copy_(hand.encoder.weight.t())
    x = torch.rand(3, 20, generator=torch.Generator().manual_seed(4))
    before = hand(x).detach()
    modelspec.retie(hand, spec=AE)
    assert len(list(hand.parameters())) == 3 and "decoder.weight" not in hand.state_dict()
    assert type(hand.decoder).__name__ == "TransposedLinear"
    torch.testing.assert_close(hand(x), before, rtol=1e-6, atol=1e-6)  # a strided weight: another kernel
    _, _, total = untied_ae_grads(hand, x)
    hand(x).sum().backward()
    torch.testing.assert_close(hand.encoder.weight.grad, total, rtol=1e-5, atol=1e-6)


def test_retie_refuses_a_decoder_that_is_not_the_encoder_transposed() -> None:
    with pytest.raises(TieMismatchError) as e:
        modelspec.retie(HandAE(), spec=AE)
    assert e.value.code == "tie-values" and "'decoder.weight'" in str(e.value) and "'encoder.weight'" in str(e.value)


def test_retie_restores_a_transposed_tie_to_a_replaced_encoder() -> None:
    m = modelspec.build(AE)
    new = nn.Linear(20, 5)
    with torch.no_grad():
        new.weight.copy_(m.encoder.weight)
    m.encoder = new  # the decoder still reads the old encoder
    assert m.decoder.weight._base is not m.encoder.weight
    modelspec.retie(m)
    assert m.decoder.weight._base is m.encoder.weight


def test_retie_needs_a_spec_for_a_module_modelspec_did_not_build() -> None:
    with pytest.raises(UsageError) as e:
        modelspec.retie(HandLM(tied=False))
    assert e.value.code == "no-spec"


def test_transposed_ties_survive_to_empty_and_assign() -> None:
    """The decoder holds the encoder module, not its tensor: replacing the tensor keeps the link."""
    m = modelspec.build(AE, device="meta").to_empty(device="cpu")
    assert m.decoder.weight._base is m.encoder.weight
    sd = {k: torch.rand(v.shape) for k, v in modelspec.build(AE).state_dict().items()}
    m.load_state_dict(sd, assign=True)
    assert m.encoder.weight is not None and m.decoder.weight._base is m.encoder.weight
    assert torch.equal(m.decoder.weight, sd["encoder.weight"].t())


def test_torch_export_round_trip_breaks_the_tie_save_refuses_retie_restores(tmp_path: Path) -> None:
    m = modelspec.build(LM)
    torch.export.save(torch.export.export(m, (TOKENS,)), tmp_path / "lm.pt2")
    loaded = torch.export.load(tmp_path / "lm.pt2").module()
    assert not _tied(loaded)  # two Parameters sharing storage: an optimizer would step it twice
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    with pytest.raises(TieMismatchError) as e:
        modelspec.save(loaded, tmp_path / "b", spec=LM)
    assert e.value.code == "tie-mismatch" and "'lm_head.weight'" in str(e.value) and "None" not in str(e.value)
    modelspec.retie(loaded, spec=LM)
    assert _tied(loaded) and torch.equal(loaded(TOKENS), m(TOKENS))
    modelspec.save(loaded, tmp_path / "b", spec=LM)
    assert _tied(modelspec.load(tmp_path / "b"))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
def test_retie_reaches_through_torch_compile() -> None:
    """torch.compile wraps the model (its keys gain '_orig_mod.'); retie restores the model inside."""
    spec = (
        "modelspec: 1\ninput: {shape: [2, 3], dtype: int64}\nmodel:\n  nodes:\n    emb: {Embedding: [10, 4]}\n"
        "    head: {Linear: [4, 10, {bias: false}]}\nties:\n  - {param: head.weight, to: emb.weight}\n"
    )
    model = modelspec.build(spec)
    compiled = torch.compile(model)  # nothing is compiled until it is called
    model.head.weight = torch.nn.Parameter(model.emb.weight.detach().clone())
    assert modelspec.retie(compiled) is compiled
    assert model.head.weight is model.emb.weight
