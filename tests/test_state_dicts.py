"""State dicts for handwritten code and several models: modelspec.state_dict, load_state_dict, parameters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from twins import GPT, GPTConfig, Siamese, TiedAutoencoder, UntiedAutoencoder

import modelspec

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "specs" / "zoo"
D2L = ROOT / "specs" / "d2l"
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=64, block_size=16)
TINY_VARS = {"n_layer": 2, "n_head": 2, "d_model": 16, "vocab": 64, "n_ctx": 16}
#: the same float32 operations on the same values, written differently (see test_zoo.py)
ATOL = 1e-5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


TWINS: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "gpt2": (lambda: GPT(TINY), lambda: (torch.randint(0, 64, (2, 8), generator=_gen(3)),)),
    "tied_autoencoder": (TiedAutoencoder, lambda: (torch.randn(4, 64, generator=_gen(3)),)),
    "siamese": (Siamese, lambda: (torch.randn(4, 16, generator=_gen(3)), torch.randn(4, 16, generator=_gen(4)))),
}


def _built(name: str, folder: Path) -> Path:
    modelspec.write_build(ZOO / f"{name}.yaml", folder, overrides=TINY_VARS if name == "gpt2" else None)
    return folder


def _twin(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)  # other values than the build's: loading must change them
        return TWINS[name][0]().eval()


# ---- modelspec.state_dict ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TWINS))
def test_handwritten_twin_loads_the_folder_strictly(name: str, tmp_path: Path) -> None:
    folder = _built(name, tmp_path / "b")
    twin = _twin(name)
    twin.load_state_dict(modelspec.state_dict(folder), strict=True)
    model = modelspec.load(folder).eval()
    x = TWINS[name][1]()
    with torch.no_grad():
        torch.testing.assert_close(twin(*x), model(*x), atol=ATOL, rtol=0)
    for key, value in twin.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_the_checkpoint_alone_lacks_the_alias_keys(tmp_path: Path) -> None:
    folder = _built("gpt2", tmp_path / "b")
    stored = load_file(folder / "model.safetensors")  # each tensor once: lm_head.weight is an alias
    with pytest.raises(RuntimeError, match=r"lm_head\.weight"):
        _twin("gpt2").load_state_dict(stored, strict=True)


def test_aliases_are_the_canonical_tensor_object(tmp_path: Path) -> None:
    sd = modelspec.state_dict(_built("gpt2", tmp_path / "b"))
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
    assert list(sd) == list(modelspec.load(tmp_path / "b").state_dict())  # every name, in the model's order
    assert not any(t.requires_grad for t in sd.values())


def test_module_aliases_of_a_shared_block(tmp_path: Path) -> None:
    model = modelspec.build(D2L / "shared.yaml")
    sd = modelspec.state_dict(model)
    assert sd["2.weight"] is sd["4.weight"]
    assert sd.keys() == model.state_dict().keys()


def test_transposed_names_on_request(tmp_path: Path) -> None:
    folder = _built("tied_autoencoder", tmp_path / "b")
    plain = modelspec.state_dict(folder)
    assert "decoder.0.weight" not in plain  # not a parameter of the tied model, nor of its twin
    sd = modelspec.state_dict(folder, transposed=True)
    assert torch.equal(sd["decoder.0.weight"], sd["encoder.2.weight"].t())
    assert sd["decoder.0.weight"].data_ptr() == sd["encoder.2.weight"].data_ptr()  # a view, not a copy
    untied = UntiedAutoencoder().eval()
    untied.load_state_dict(sd, strict=True)  # handwritten code whose decoder holds its own weights
    x = TWINS["tied_autoencoder"][1]()
    with torch.no_grad():
        torch.testing.assert_close(untied(*x), modelspec.load(folder)(*x), atol=ATOL, rtol=0)


def test_state_dict_of_a_wrapped_module_has_the_models_names() -> None:
    model = modelspec.build(ZOO / "siamese.yaml")
    wrapped = nn.DataParallel(model)
    assert list(modelspec.state_dict(wrapped)) == list(model.state_dict())


# ---- modelspec.load_state_dict --------------------------------------------------------------------
def _gpt() -> nn.Module:
    return modelspec.build(ZOO / "gpt2.yaml", **TINY_VARS)


def _head_and_embedding(model: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    return model.get_submodule("lm_head").weight, model.get_submodule("transformer.wte").weight


def test_loads_a_handwritten_state_dict_and_keeps_the_ties() -> None:
    model, twin = _gpt(), _twin("gpt2")
    before = _head_and_embedding(model)[0]
    result = modelspec.load_state_dict(model, twin.state_dict())
    assert result == ([], [])
    head, wte = _head_and_embedding(model)
    assert head is wte is before  # copied in place: one Parameter, the same object as before
    for key, value in twin.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_plain_load_state_dict_keeps_the_last_alias_silently() -> None:
    """What modelspec.load_state_dict guards against."""
    model, sd = _gpt(), _twin("gpt2").state_dict()
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1  # the aliases now disagree
    model.load_state_dict(sd, strict=True)  # no error
    wte = _head_and_embedding(model)[1]
    assert torch.equal(wte, sd["lm_head.weight"])  # lm_head.weight comes after transformer.wte.weight
    assert not torch.equal(wte, sd["transformer.wte.weight"])


def test_disagreeing_aliases_are_rejected_naming_both() -> None:
    model, sd = _gpt(), _twin("gpt2").state_dict()
    sd["lm_head.weight"] = sd["lm_head.weight"].clone()
    sd["lm_head.weight"][3, 5] += 0.25
    before = model.state_dict()["transformer.wte.weight"].clone()
    with pytest.raises(modelspec.TieMismatchError) as e:
        modelspec.load_state_dict(model, sd)
    assert e.value.code == "aliases-disagree"
    assert "'transformer.wte.weight'" in str(e.value) and "'lm_head.weight'" in str(e.value)
    assert "0.25" in str(e.value)  # the largest difference
    assert torch.equal(model.state_dict()["transformer.wte.weight"], before)  # nothing was loaded


def test_disagreeing_keys_of_a_shared_block_are_rejected() -> None:
    model = modelspec.build(D2L / "shared.yaml")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["4.bias"] += 1
    with pytest.raises(modelspec.TieMismatchError) as e:
        modelspec.load_state_dict(model, sd)
    assert e.value.code == "aliases-disagree"
    assert "'2.bias'" in str(e.value) and "'4.bias'" in str(e.value)


def test_one_name_per_tied_tensor_is_enough(tmp_path: Path) -> None:
    folder = _built("gpt2", tmp_path / "b")
    stored = load_file(folder / "model.safetensors")  # canonical names only
    assert "lm_head.weight" not in stored
    model = _gpt()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert modelspec.load_state_dict(model, stored) == ([], [])
    head, wte = _head_and_embedding(model)
    assert head is wte
    assert torch.equal(wte, stored["transformer.wte.weight"])


def test_strict_names() -> None:
    model = modelspec.build(ZOO / "siamese.yaml")
    sd = dict(model.state_dict())
    del sd["head.bias"]
    sd["head.extra"] = torch.zeros(1)
    with pytest.raises(modelspec.TieMismatchError) as e:
        modelspec.load_state_dict(model, sd)
    assert e.value.code == "names-mismatch"
    assert "'head.bias'" in str(e.value) and "'head.extra'" in str(e.value)
    assert modelspec.load_state_dict(model, sd, strict=False) == (["head.bias"], ["head.extra"])


def test_shapes() -> None:
    model = modelspec.build(ZOO / "siamese.yaml")
    sd = dict(model.state_dict())
    sd["head.weight"] = torch.zeros(2, 8)
    with pytest.raises(modelspec.TieMismatchError) as e:
        modelspec.load_state_dict(model, sd)
    assert e.value.code == "shape-mismatch"
    assert "'head.weight'" in str(e.value)


def test_transposed_keys_are_checked_against_their_source() -> None:
    model = modelspec.build(ZOO / "tied_autoencoder.yaml")
    untied = UntiedAutoencoder()
    with torch.no_grad():
        untied.decoder[0].weight.copy_(untied.encoder[2].weight.t())
        untied.decoder[2].weight.copy_(untied.encoder[0].weight.t())
    assert modelspec.load_state_dict(model, untied.state_dict()) == ([], [])
    assert torch.equal(model.state_dict()["encoder.2.weight"], untied.encoder[2].weight)
    with torch.no_grad():
        untied.decoder[0].weight[0, 0] += 1
    with pytest.raises(modelspec.TieMismatchError) as e:
        modelspec.load_state_dict(model, untied.state_dict())
    assert e.value.code == "aliases-disagree"
    assert "'encoder.2.weight'" in str(e.value) and "'decoder.0.weight'" in str(e.value)


def test_wrapper_prefixes_are_looked_through() -> None:
    model, source = _gpt(), _twin("gpt2")
    wrapped = nn.DataParallel(source)
    assert next(iter(wrapped.state_dict())).startswith("module.")
    modelspec.load_state_dict(nn.DataParallel(model), wrapped.state_dict())
    assert torch.equal(model.state_dict()["lm_head.weight"], source.lm_head.weight)


# ---- modelspec.parameters ----------------------------------------------------------------------
def _pair() -> tuple[nn.Module, nn.Module]:
    pair = modelspec.build(D2L / "shared_mlp.yaml")
    return pair["mlp1"], pair["mlp2"]


def _step(optimizers: list[torch.optim.Optimizer], a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(2, 20, generator=_gen(0))
    (a(x).sum() + b(x).sum()).backward()
    for opt in optimizers:
        opt.step()


def test_parameters_lists_a_shared_weight_once() -> None:
    a, b = _pair()
    params = modelspec.parameters(a, b)
    assert len({id(p) for p in params}) == len(params)
    assert len(params) == len(list(a.parameters())) + 2  # b adds only its own head
    assert params[: len(list(a.parameters()))] == list(a.parameters())


def test_one_optimizer_steps_a_shared_weight_once() -> None:
    a, b = _pair()
    shared = a.shared_layer[0].weight
    assert b.shared_layer[0].weight is shared
    start = shared.detach().clone()
    _step([torch.optim.SGD(modelspec.parameters(a, b), lr=0.1)], a, b)
    once = (shared.detach() - start).norm()

    a2, b2 = _pair()  # the same values (seeded build)
    shared2 = a2.shared_layer[0].weight
    assert torch.equal(shared2, start)
    _step([torch.optim.SGD(a2.parameters(), lr=0.1), torch.optim.SGD(b2.parameters(), lr=0.1)], a2, b2)
    twice = (shared2.detach() - start).norm()
    assert once > 0
    assert (twice / once).item() == pytest.approx(2.0, abs=1e-4)  # one optimizer per model: 2.00x as far


def test_one_optimizer_given_both_lists_warns() -> None:
    """Why a plain concatenation is not the answer."""
    a, b = _pair()
    with pytest.warns(UserWarning, match="duplicate parameters"):
        torch.optim.SGD([*a.parameters(), *b.parameters()], lr=0.1)
