"""BERT and ALBERT in specs/zoo/ against their handwritten twins in tests/twins_bert.py.

As tests/test_zoo.py does for part 1: the twin's state_dict keys in the same order with the same
shapes, strict loading both ways, the same outputs on a fixed input, the published unique and
naive parameter counts, and the declared sharing behaving as sharing (one tensor or module,
gradients of every use added up). Each model is built once per module: on 'meta' for keys and
counts, on the CPU for outputs and gradients. Inputs are small (2 sequences of 16 tokens).
Also: GPT-2 medium and BERT-large from the base files with overrides, and every zoo spec's
length beside its twin's (printed; see it with ``pytest -s``).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import test_bigmodels as tbm
import torch
import twins
import twins_bert as tb
from conftest import ROOT, write
from torch import nn
from twins import GPT, GPTConfig
from twins_bert import AlbertConfig, AlbertModel, BertForMaskedLM, BertModel

import modelspec
from modelspec import SpecError

ZOO = ROOT / "specs" / "zoo"

#: Built and handwritten models run the same float32 operations on the same values (measured: the
#: outputs are bit-identical); 1e-5 leaves room for an equivalent operation written differently.
ATOL = 1e-5
#: Gradients summed over 12 uses of one layer in another order than the untied reference sums them.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5
SHARED = "encoder.albert_layer_groups.0.albert_layers.0"  # ALBERT's one layer
BERT_ENCODER = [
    tb.BertSelfAttention,
    tb.BertAddNorm,
    tb.BertAttention,
    tb.BertIntermediate,
    tb.BertLayer,
    tb.BertEncoder,
]


@dataclass(frozen=True)
class Case:
    spec: str
    twin: Callable[[], nn.Module]
    vocab: int
    unique: int  # published parameter count, each tensor once
    naive: int  # counting every name of a tied tensor


CASES: dict[str, Case] = {
    # the head's weight is the word embedding (30522 x 768) and its bias cls.predictions.bias (30522)
    "bert": Case("bert.yaml", BertForMaskedLM, 30522, 109_514_298, 109_514_298 + 30522 * 768 + 30522),
    "bert_model": Case("bert_model.yaml", BertModel, 30522, 109_482_240, 109_482_240),
    "albert": Case("albert.yaml", AlbertModel, 30000, 11_683_584, 11_683_584),
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 sequences of 16 tokens, two segments; the second is padded after 11 tokens."""
    g = _gen(seed)
    ids = torch.randint(1, vocab, (2, 16), generator=g)
    types = torch.zeros(2, 16, dtype=torch.int64)
    types[:, 8:] = 1
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 11:] = 0
    return ids, types, mask


def _twin(name: str) -> nn.Module:
    """The twin with seeded weights; LayerNorms and the MLM bias drawn too (they start at 1 and 0),
    so that loading them into the built model shows in its outputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CASES[name].twin()
    g = _gen(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        if isinstance(model, BertForMaskedLM):
            model.cls.predictions.bias.copy_(0.1 * torch.randn(model.cls.predictions.bias.shape, generator=g))
    return model.eval()


def _keys_and_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _counts(model: nn.Module) -> tuple[int, int]:
    totals = modelspec.report(model).totals
    return totals.unique_params, totals.naive_params


def _outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    out = model(*inputs)
    return out if isinstance(out, tuple) else (out,)


# ---- the twins alone -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_twin_has_the_published_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        twin = CASES[name].twin()
    assert sum(p.numel() for p in twin.parameters()) == CASES[name].unique
    assert _counts(twin) == (CASES[name].unique, CASES[name].naive)


# ---- the specs against the twins -------------------------------------------------------------
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


@pytest.fixture(scope="module")
def pair() -> Iterator[Callable[[str], tuple[nn.Module, nn.Module]]]:
    """name -> (twin, built model holding the twin's weights, loaded with strict=True), once per module."""
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
    inputs = _inputs(CASES[name].vocab, seed=5)
    with torch.no_grad():
        expected, got = _outputs(twin, inputs), _outputs(built, inputs)
    assert [t.shape for t in got] == [t.shape for t in expected]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["bert", "albert"])  # bert_model has bert's encoder
def test_padding_is_hidden_by_the_attention_mask(name: str, pair) -> None:
    """Changing a padded token (mask 0) leaves every other position's hidden state as it was,
    changing an attended one does not: the additive mask reaches every layer."""
    _, built = pair(name)
    ids, types, mask = _inputs(CASES[name].vocab, seed=6)
    padded, attended = ids.clone(), ids.clone()
    padded[1, 13] = ids[1, 13] % (CASES[name].vocab - 1) + 1
    attended[1, 5] = ids[1, 5] % (CASES[name].vocab - 1) + 1
    with torch.no_grad():
        base = _outputs(built, (ids, types, mask))[0]
        after_padded = _outputs(built, (padded, types, mask))[0]
        after_attended = _outputs(built, (attended, types, mask))[0]
    torch.testing.assert_close(after_padded[:, :11], base[:, :11], rtol=0, atol=ATOL)
    assert not torch.allclose(after_attended[1, :11], base[1, :11], atol=1e-3)


# ---- BERT: the head reads the word embedding, its bias is cls.predictions.bias ----------------
def test_built_bert_head_is_tied_as_transformers_ties_it(pair) -> None:
    _, built = pair("bert")  # after load_state_dict too: loading copies values, the ties stay
    assert built.get_parameter("cls.predictions.decoder.weight") is built.get_parameter(
        "bert.embeddings.word_embeddings.weight"
    )
    assert built.get_parameter("cls.predictions.decoder.bias") is built.get_parameter("cls.predictions.bias")
    names = [n for n, _ in built.named_parameters()]
    assert "cls.predictions.decoder.weight" not in names and "cls.predictions.decoder.bias" not in names


def test_built_bert_layers_are_independent_copies(pair) -> None:
    """The layers are a repeat: each its own module and parameters, as nn.Sequential children."""
    _, built = pair("bert")
    layers = built.get_submodule("bert.encoder.layer")
    assert isinstance(layers, nn.Sequential) and len(layers) == 12
    assert len({id(m) for m in layers}) == 12
    weights = [m.get_parameter("output.dense.weight") for m in layers]
    assert len({id(w) for w in weights}) == 12


def test_built_bert_tied_embedding_gradient_is_the_sum_of_both_uses(pair) -> None:
    twin, built = pair("bert")
    inputs = _inputs(30522, seed=7)
    w = torch.randn(2, 16, 30522, generator=_gen(8))  # a loss that weighs every logit differently
    (tied,) = torch.autograd.grad((built(*inputs) * w).sum(), [built.get_parameter("cls.predictions.decoder.weight")])
    head = twin.cls.predictions.decoder
    wte = twin.bert.embeddings.word_embeddings.weight
    head.weight = nn.Parameter(wte.detach().clone())  # untie: the reference
    try:
        emb, out = torch.autograd.grad((twin(*inputs) * w).sum(), [wte, head.weight])
    finally:
        head.weight = wte
    assert emb.abs().sum() > 0 and out.abs().sum() > 0  # both uses contribute
    torch.testing.assert_close(tied, emb + out, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_bert_encoder_spec_is_the_mlm_trunk_plus_the_pooler(meta: Callable[[str], nn.Module]) -> None:
    """bert_model.yaml (BertModel) is bert.yaml's 'bert' node plus the pooler: 109,482,240."""
    mlm, encoder = meta("bert"), meta("bert_model")
    trunk = sum(p.numel() for p in mlm.get_submodule("bert").parameters())
    pooler = sum(p.numel() for p in encoder.get_submodule("pooler").parameters())
    assert _keys_and_shapes(mlm.get_submodule("bert")) == _keys_and_shapes(encoder)[:-2]
    assert (trunk, pooler) == (108_891_648, 768 * 768 + 768)
    assert _counts(encoder)[0] == trunk + pooler == 109_482_240
    # the head adds its transform (dense and LayerNorm) and the bias; its weight is the embedding
    assert _counts(mlm)[0] == trunk + (768 * 768 + 768) + 2 * 768 + 30522 == 109_514_298


# ---- ALBERT: one layer, run 12 times ---------------------------------------------------------
def test_built_albert_runs_one_layer_twelve_times(pair) -> None:
    _, built = pair("albert")
    calls = [n for n in built.graph.nodes if n.op == "call_module" and n.target == SHARED]
    assert len(calls) == 12
    layer = built.get_submodule(SHARED)
    assert [m for m in built.modules() if isinstance(m, torch.fx.GraphModule) and m is not built] == [layer]
    assert sum(p.numel() for p in layer.parameters()) == 7_087_872  # counted once in 11,683,584


def test_built_albert_layer_gradient_is_the_sum_over_its_twelve_uses(pair) -> None:
    """The reference: the same ALBERT with 12 layer groups (transformers' num_hidden_groups),
    each holding the shared layer's values; the shared layer's gradient is their sum."""
    _, built = pair("albert")
    with torch.device("meta"):
        untied = AlbertModel(AlbertConfig(num_hidden_groups=12)).eval()
    untied.to_empty(device="cpu")  # every value is copied next
    sd = built.state_dict()
    with torch.no_grad():
        for key, value in untied.state_dict().items():
            group = key.startswith("encoder.albert_layer_groups.")
            value.copy_(sd[f"{SHARED}.{key.split('.', 5)[5]}" if group else key])
    inputs = _inputs(30000, seed=9)
    w0, w1 = torch.randn(2, 16, 768, generator=_gen(10)), torch.randn(2, 768, generator=_gen(11))

    def loss(out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return (out[0] * w0).sum() + (out[1] * w1).sum()

    b_out, u_out = built(*inputs), untied(*inputs)
    for b, u in zip(b_out, u_out, strict=True):
        torch.testing.assert_close(b, u, rtol=0, atol=ATOL)  # the reference computes the same
    shared = dict(built.get_submodule(SHARED).named_parameters())
    grads = torch.autograd.grad(loss(b_out), list(shared.values()))
    copies = [g.albert_layers[0].get_parameter(n) for n in shared for g in untied.encoder.albert_layer_groups]
    per_use = torch.autograd.grad(loss(u_out), copies)  # 12 per name, one for each application
    assert all(p.abs().sum() > 0 for p in per_use)  # every application contributes
    for i, (name, grad) in enumerate(zip(shared, grads, strict=True)):
        summed = torch.stack(per_use[12 * i : 12 * (i + 1)]).sum(0)
        torch.testing.assert_close(grad, summed, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)


# ---- one file, other sizes: variables and overrides -----------------------------------------
BERT_LARGE = tb.BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
LARGER = {
    # GPT-2 medium: 24 layers, 16 heads, width 1024; the head is the token embedding
    "gpt2-medium": ("gpt2.yaml", lambda: GPT(GPTConfig(n_layer=24, n_head=16, n_embd=1024)), 354_823_168),
    # BERT-large, masked LM and encoder with pooler: 24 layers, 16 heads, width 1024, FFN 4096
    "bert-large-mlm": ("bert.yaml", lambda: BertForMaskedLM(BERT_LARGE), 335_174_458),
    "bert-large": ("bert_model.yaml", lambda: BertModel(BERT_LARGE), 335_141_888),
}
OVERRIDES = {"n_layer": 24, "d_model": 1024, "n_head": 16}


@pytest.mark.parametrize("name", list(LARGER))
def test_the_larger_model_is_the_same_file_with_overrides(name: str) -> None:
    """Built on 'meta' (no memory): the twin's keys and shapes, and the published count."""
    spec, twin, unique = LARGER[name]
    built = modelspec.build(ZOO / spec, device="meta", overrides=OVERRIDES)
    with torch.device("meta"):
        reference = twin()
    assert _keys_and_shapes(built) == _keys_and_shapes(reference)
    assert _counts(built)[0] == sum(p.numel() for p in reference.parameters()) == unique


def test_gpt2_medium_count_on_the_command_line() -> None:
    cmd = [sys.executable, "-m", "modelspec", "report", str(ZOO / "gpt2.yaml"), "--device", "meta", "--format", "json",
           "--set", "n_layer=24", "d_model=1024", "n_head=16"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    totals = json.loads(out.stdout)["totals"]
    assert (totals["unique_params"], totals["naive_params"]) == (354_823_168, 354_823_168 + 50257 * 1024)


# ---- the grammar rule BERT's head needed -----------------------------------------------------
def test_a_free_param_named_by_a_tie_is_read(tmp_path) -> None:
    """A graph's free param that a tie names is read by the tied layer (BERT's cls.predictions.bias),
    so it is not 'unused-param'; one no tie names still is."""
    spec = """
modelspec: 1
model:
  inputs: {x: {shape: [2, 4]}}
  nodes:
    head:
      params: {bias: {shape: [3]}%s}
      nodes:
        decoder: {Linear: [4, 3]}
ties:
  - {param: head.decoder.bias, to: head.bias}
"""
    model = modelspec.build(write(tmp_path, spec % ""))
    assert model.get_parameter("head.decoder.bias") is model.get_parameter("head.bias")
    assert [k for k in model.state_dict()] == ["head.bias", "head.decoder.weight", "head.decoder.bias"]
    with pytest.raises(SpecError) as e:
        modelspec.compile_spec(write(tmp_path, spec % ", other: {shape: [3]}"))
    assert [d.code for d in e.value.diagnostics] == ["unused-param"]


# ---- spec length beside the twin's -----------------------------------------------------------
#: each zoo spec -> the handwritten code its twin needs (classes and helpers, its own and shared)
_BERT = [tb.BertConfig, tb.extended_attention_mask, tb.self_attention, tb.BertEmbeddings]
_ENCODER = [tb.BertSelfAttention, tb.BertAddNorm, tb.BertAttention, tb.BertIntermediate, tb.BertLayer, tb.BertEncoder]
_HEAD = [tb.BertPredictionHeadTransform, tb.BertLMPredictionHead, tb.BertOnlyMLMHead, tb.BertForMaskedLM]
_ALBERT = [
    tb.AlbertConfig,
    tb.AlbertAttention,
    tb.AlbertLayer,
    tb.AlbertLayerGroup,
    tb.AlbertTransformer,
    tb.AlbertModel,
]
TWIN_SOURCES: dict[str, list[object]] = {
    "resnet18.yaml": [twins.BasicBlock, twins.ResNet18],
    "gpt2.yaml": [twins.GPTConfig, twins.CausalSelfAttention, twins.MLP, twins.Block, twins.GPT],
    "tied_autoencoder.yaml": [twins.TransposedLinear, twins.TiedAutoencoder],
    "siamese.yaml": [twins.Siamese],
    "unet.yaml": [twins.double_conv, twins.UNet],
    "bert.yaml": [*_BERT, *_ENCODER, tb.BertModel, *_HEAD],
    "bert_model.yaml": [*_BERT, *_ENCODER, tb.BertPooler, tb.BertModel],
    "albert.yaml": [*_BERT, *_ALBERT],
    "lenet.yaml": [tbm.lenet],
    "llama3_70b.yaml": [tbm.Attention, tbm.MLP, tbm.Layer, tbm.Inner, tbm.Llama],
}
#: the specs not longer than their twins; the others repeat blocks that Python writes once with a
#: width argument (ResNet's BasicBlock, U-Net's double_conv) or are a few lines either way
SHORTER = {"gpt2.yaml", "bert.yaml", "bert_model.yaml", "albert.yaml", "llama3_70b.yaml"}


def _python_lines(source: str) -> int:
    """Lines of code: neither blank, nor a comment alone, nor part of a docstring."""
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    lines = textwrap.dedent(source).splitlines()
    return sum(1 for i, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")
               and i not in docstrings)  # fmt: skip


def _yaml_lines(text: str) -> int:
    """Lines of the spec: neither blank nor a comment alone."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def test_zoo_specs_are_not_longer_than_their_twins() -> None:
    assert sorted(TWIN_SOURCES) == sorted(p.name for p in ZOO.glob("*.yaml"))
    rows = []
    for spec, sources in TWIN_SOURCES.items():
        ours = _yaml_lines((ZOO / spec).read_text(encoding="utf-8"))
        theirs = sum(_python_lines(inspect.getsource(s)) for s in sources)  # type: ignore[arg-type]
        rows.append((spec, ours, theirs))
    print("\nlines of code (no blank lines, comments or docstrings): spec / handwritten twin", file=sys.stderr)
    for spec, ours, theirs in rows:
        print(f"  {spec:24} {ours:4} / {theirs:4}", file=sys.stderr)
    assert [r[0] for r in rows if r[1] <= r[2]] == [r[0] for r in rows if r[0] in SHORTER]


@pytest.mark.parametrize("n_layer", [12, 24])
def test_gpt2_spec_carries_gpt2s_initialization(n_layer: int) -> None:
    """N(0, 0.02) weights, zero biases, and the residual projections at 0.02 / sqrt(2 n_layer),
    which follows an override of n_layer (a narrow model keeps the test fast)."""
    model = modelspec.build(ROOT / "specs/zoo/gpt2.yaml", n_layer=n_layer, d_model=256, n_head=4)
    with torch.no_grad():
        residual = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")])
        others = torch.cat(
            [model.transformer.wte.weight.flatten(), model.transformer.h[0].attn.c_attn.weight.flatten()]
        )
        biases = [p for n, p in model.named_parameters() if n.endswith(".bias") and ".ln_" not in n and "ln_f" not in n]
        # sample std of ~10^6 (resp. ~10^7) normal draws: within 1% of the target
        assert abs(float(residual.std()) / (0.02 / (2 * n_layer) ** 0.5) - 1) < 0.01
        assert abs(float(others.std()) / 0.02 - 1) < 0.01
        assert all(bool((b == 0).all()) for b in biases)
        assert bool((model.transformer.ln_f.weight == 1).all())
    assert model.lm_head.weight is model.transformer.wte.weight  # initialized once, as the embedding


def test_a_tie_elsewhere_with_the_same_short_name_does_not_hide_an_unused_param() -> None:
    """The resolver can only match name endings ('bias'); the build checks the qualified name, at
    every place the graph sits, so a tie between other layers does not count as reading 'g.bias'."""
    spec = """
modelspec: 1
blocks:
  graph: {params: {bias: {shape: [4]}}, nodes: {a: {Linear: [4, 4]}}}
model:
  g: {use: graph}
  h: {Linear: [4, 4]}
ties:
  - {param: h.bias, to: %s}
"""
    for check in (modelspec.validate, modelspec.build):
        with pytest.raises(SpecError) as e:
            check(spec % "g.a.bias")
        assert [(d.code, d.line) for d in e.value.diagnostics] == [("unused-param", 4)]
    model = modelspec.build(spec % "g.bias")  # this tie does name it: the Linear reads it
    assert model.h.bias is model.g.bias
