"""The bundled specs in specs/zoo/ against their handwritten twins in tests/twins.py.

For each spec: the same state_dict keys in the same order with the same shapes, the twin's
weights load with strict=True (and back), the same outputs on a fixed input, the published
unique and naive parameter counts, and the declared ties behave as ties (one tensor, gradients
of every use added up). GPT-2 small and ResNet-18 are built once per module (on the CPU for
outputs and gradients, on 'meta' where only shapes and counts matter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
from conftest import ROOT
from torch import nn
from twins import GPT, GPTConfig, ResNet18, Siamese, TiedAutoencoder, TransposedLinear, UNet, UntiedAutoencoder

import modelspec

ZOO = ROOT / "specs" / "zoo"

#: Built and handwritten models run the same float32 operations on the same values; 1e-5 leaves
#: room for an equivalent operation written differently (e.g. flatten instead of view, a + b
#: instead of b + a), far below the size of any difference a wrong wiring or weight would make.
ATOL = 1e-5


@dataclass(frozen=True)
class Case:
    spec: str
    twin: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple[torch.Tensor, ...]]
    unique: int  # published parameter count, each tensor once
    naive: int  # what counting every name (and every use of a tie) gives


CASES: dict[str, Case] = {
    "resnet18": Case(
        "resnet18.yaml", ResNet18, lambda g: (torch.randn(1, 3, 64, 64, generator=g),), 11_689_512, 11_689_512
    ),
    "gpt2": Case("gpt2.yaml", GPT, lambda g: (torch.randint(0, 50257, (1, 8), generator=g),), 124_439_808, 163_037_184),
    "tied_autoencoder": Case(
        "tied_autoencoder.yaml", TiedAutoencoder, lambda g: (torch.randn(4, 64, generator=g),), 2_704, 5_264
    ),
    "siamese": Case(
        "siamese.yaml", Siamese, lambda g: (torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)), 817, 817
    ),
    "unet": Case("unet.yaml", UNet, lambda g: (torch.randn(1, 1, 32, 32, generator=g),), 29_490, 29_490),
}
SMALL = ["tied_autoencoder", "siamese", "unet"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _twin(name: str) -> nn.Module:
    """The twin with seeded weights, and norm layers and zero-initialized biases drawn too, so that
    loading them into the built model is visible in its outputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CASES[name].twin()
    g = _gen(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
            if isinstance(m, TransposedLinear):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _keys_and_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _counts(model: nn.Module) -> tuple[int, int]:
    totals = modelspec.report(model).totals
    return totals.unique_params, totals.naive_params


def _assert_causal(model: nn.Module, vocab: int, length: int) -> None:
    """Changing token t changes the logits at t and never those at positions before t (bit for bit)."""
    idx = torch.randint(0, vocab, (1, length), generator=_gen(2))
    with torch.no_grad():
        base = model(idx)
        for t in range(1, length):
            changed = idx.clone()
            changed[0, t] = (idx[0, t] + 1) % vocab
            out = model(changed)
            assert torch.equal(out[:, :t], base[:, :t]), t
            assert not torch.allclose(out[:, t], base[:, t]), t


# ---- the twins alone: the published numbers and behaviour the specs are held to ---------------
@pytest.mark.parametrize("name", list(CASES))
def test_twin_has_the_published_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        twin = CASES[name].twin()
    assert sum(p.numel() for p in twin.parameters()) == CASES[name].unique
    assert _counts(twin)[0] == CASES[name].unique


def test_twin_gpt2_head_is_the_token_embedding() -> None:
    with torch.device("meta"):
        twin = GPT()
    assert twin.lm_head.weight is twin.transformer.wte.weight
    assert _counts(twin) == (124_439_808, 163_037_184)


def test_twin_gpt_is_causal() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tiny = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=64, block_size=16)).eval()
    _assert_causal(tiny, vocab=64, length=8)


def test_twin_transposed_tie_gradient_is_the_sum_of_both_uses() -> None:
    tied, untied = _twin("tied_autoencoder"), UntiedAutoencoder()
    _untie_into(tied, untied)
    _assert_transposed_tie_grads(tied, untied)


def _untie_into(tied: nn.Module, untied: UntiedAutoencoder) -> None:
    """Give ``untied`` the tied model's values, each decoder weight its own copy."""
    sd = tied.state_dict()
    with torch.no_grad():
        for i in (0, 2):
            untied.encoder[i].weight.copy_(sd[f"encoder.{i}.weight"])
            untied.encoder[i].bias.copy_(sd[f"encoder.{i}.bias"])
            untied.decoder[i].bias.copy_(sd[f"decoder.{i}.bias"])
        untied.decoder[0].weight.copy_(sd["encoder.2.weight"].t())
        untied.decoder[2].weight.copy_(sd["encoder.0.weight"].t())


def _assert_transposed_tie_grads(tied: nn.Module, untied: UntiedAutoencoder) -> None:
    x = torch.randn(4, 64, generator=_gen(3))
    w = torch.randn(4, 64, generator=_gen(4))  # a loss that weighs every output differently
    with torch.no_grad():
        torch.testing.assert_close(tied(x), untied(x), rtol=0, atol=ATOL)
    enc0, enc2 = tied.get_parameter("encoder.0.weight"), tied.get_parameter("encoder.2.weight")
    g0, g2 = torch.autograd.grad((tied(x) * w).sum(), [enc0, enc2])
    u = untied
    ue0, ue2, ud0, ud2 = torch.autograd.grad(
        (u(x) * w).sum(), [u.encoder[0].weight, u.encoder[2].weight, u.decoder[0].weight, u.decoder[2].weight]
    )
    # the decoder's use contributes (not just the encoder's), and the two add up
    assert not torch.allclose(g0, ue0) and not torch.allclose(g2, ue2)
    torch.testing.assert_close(g0, ue0 + ud2.t(), rtol=1e-5, atol=ATOL)
    torch.testing.assert_close(g2, ue2 + ud0.t(), rtol=1e-5, atol=ATOL)


# ---- the specs against the twins -------------------------------------------------------------
@pytest.fixture(scope="module")
def pair() -> Iterator[Callable[[str], tuple[nn.Module, nn.Module]]]:
    """name -> (twin, built model holding the twin's weights), each built once per module.

    The twin's state_dict loads with strict=True."""
    cache: dict[str, tuple[nn.Module, nn.Module]] = {}

    def get(name: str) -> tuple[nn.Module, nn.Module]:
        if name not in cache:
            twin = _twin(name)
            built = modelspec.build(ZOO / CASES[name].spec).eval()
            built.load_state_dict(twin.state_dict(), strict=True)
            cache[name] = (twin, built)
        return cache[name]

    yield get
    cache.clear()


@pytest.fixture(scope="module")
def meta() -> Iterator[Callable[[str], nn.Module]]:
    """name -> the spec built on 'meta' (shapes and counts, no memory), once per module."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = modelspec.build(ZOO / CASES[name].spec, device="meta")
        return cache[name]

    yield get
    cache.clear()


@pytest.mark.parametrize("name", list(CASES))
def test_spec_has_the_twins_keys_in_order_and_shapes(name: str, meta: Callable[[str], nn.Module]) -> None:
    with torch.device("meta"):
        twin = CASES[name].twin()
    assert _keys_and_shapes(meta(name)) == _keys_and_shapes(twin)


@pytest.mark.parametrize("name", list(CASES))
def test_spec_has_the_published_parameter_counts(name: str, meta: Callable[[str], nn.Module]) -> None:
    assert _counts(meta(name)) == (CASES[name].unique, CASES[name].naive)


@pytest.mark.parametrize("name", list(CASES))
def test_state_dicts_load_strictly_both_ways(name: str, pair) -> None:
    twin, built = pair(name)
    built.load_state_dict(twin.state_dict(), strict=True)
    twin.load_state_dict(built.state_dict(), strict=True)


@pytest.mark.parametrize("name", list(CASES))
def test_same_outputs_as_the_twin(name: str, pair) -> None:
    twin, built = pair(name)
    inputs = CASES[name].inputs(_gen(5))
    with torch.no_grad():
        expected = twin(*inputs)
        got = built(*inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_built_gpt2_head_is_the_token_embedding(pair) -> None:
    _, built = pair("gpt2")  # after load_state_dict too: loading copies values, the tie stays
    assert built.get_parameter("lm_head.weight") is built.get_parameter("transformer.wte.weight")


def test_built_gpt2_is_causal(pair) -> None:
    _, built = pair("gpt2")
    _assert_causal(built, vocab=50257, length=8)


def test_built_gpt2_tied_head_gradient_is_the_sum_of_both_uses(pair) -> None:
    twin, built = pair("gpt2")
    idx = torch.randint(0, 50257, (1, 8), generator=_gen(6))
    w = torch.randn(1, 8, 50257, generator=_gen(7))
    (tied,) = torch.autograd.grad((built(idx) * w).sum(), [built.get_parameter("transformer.wte.weight")])
    wte = twin.transformer.wte.weight
    twin.lm_head.weight = nn.Parameter(wte.detach().clone())  # untie: the reference
    try:
        emb, head = torch.autograd.grad((twin(idx) * w).sum(), [wte, twin.lm_head.weight])
    finally:
        twin.lm_head.weight = wte
    assert emb.abs().sum() > 0 and head.abs().sum() > 0
    torch.testing.assert_close(tied, emb + head, rtol=1e-5, atol=ATOL)


def test_built_autoencoder_is_transposed_tied(pair) -> None:
    _, built = pair("tied_autoencoder")
    names = [n for n, _ in built.named_parameters(remove_duplicate=False)]
    assert names == [
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.2.weight",
        "encoder.2.bias",
        "decoder.0.bias",
        "decoder.2.bias",
    ]
    untied = UntiedAutoencoder()
    _untie_into(built, untied)
    _assert_transposed_tie_grads(built, untied)


def test_built_autoencoder_gradient_matches_finite_differences() -> None:
    """Central differences in float64 on the encoder weight that both uses read."""
    built = modelspec.build(ZOO / "tied_autoencoder.yaml", dtype=torch.float64)
    x = torch.randn(4, 64, generator=_gen(8), dtype=torch.float64)
    w = torch.randn(4, 64, generator=_gen(9), dtype=torch.float64)
    weight = built.get_parameter("encoder.0.weight")
    (grad,) = torch.autograd.grad((built(x) * w).sum(), [weight])
    eps = 1e-6
    picks = torch.randint(0, weight.numel(), (16,), generator=_gen(10)).tolist()
    with torch.no_grad():
        for i in picks:
            r, c = divmod(i, weight.shape[1])
            old = weight[r, c].item()
            weight[r, c] = old + eps
            up = (built(x) * w).sum().item()
            weight[r, c] = old - eps
            down = (built(x) * w).sum().item()
            weight[r, c] = old
            assert (up - down) / (2 * eps) == pytest.approx(grad[r, c].item(), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("name", SMALL)
def test_built_gradients_match_the_twins(name: str, pair) -> None:
    twin, built = pair(name)
    inputs = CASES[name].inputs(_gen(11))
    tp, bp = dict(twin.named_parameters()), dict(built.named_parameters())
    assert list(tp) == list(bp)
    t_grads = torch.autograd.grad(twin(*inputs).square().sum(), list(tp.values()))
    b_grads = torch.autograd.grad(built(*inputs).square().sum(), list(bp.values()))
    for key, t, b in zip(tp, t_grads, b_grads, strict=True):
        torch.testing.assert_close(b, t, rtol=1e-5, atol=ATOL, msg=key)


def test_built_siamese_runs_one_trunk_for_both_inputs(pair) -> None:
    _, built = pair("siamese")
    calls = [n for n in built.graph.nodes if n.op == "call_module"]
    called = [built.get_submodule(n.target) for n in calls]
    trunks = [m for m in called if isinstance(m, nn.Sequential)]
    assert len(trunks) == 2 and trunks[0] is trunks[1]  # two calls, one module: one set of parameters
    assert [n.args[0].name for n in calls[:2]] == ["a", "b"]
