"""Data-flow graphs (issue 7, section 1): what each form builds, checked against the
handwritten PyTorch it stands for."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import modelspec
from modelspec import SpecError

BASIC_BLOCK = """modelspec: 1
input: {shape: [2, 8, 5, 5]}
model:
  nodes:
    conv1: {Conv2d: [8, 8, 3, {padding: 1, bias: false}]}
    bn1: {BatchNorm2d: 8}
    relu: {ReLU: {inplace: true}}
    conv2: {Conv2d: [8, 8, 3, {padding: 1, bias: false}]}
    bn2: {BatchNorm2d: 8}
    sum: {add: null, in: [bn2, x]}
    out: relu
"""


class BasicBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + x)


def same_as(built: nn.Module, reference: nn.Module, *xs: torch.Tensor) -> None:
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    reference.load_state_dict(built.state_dict(), strict=True)
    built.eval(), reference.eval()
    torch.testing.assert_close(built(*xs), reference(*xs), rtol=1e-5, atol=1e-5)


def test_default_in_is_the_previous_node_and_explicit_in_names_one() -> None:
    model = modelspec.build(BASIC_BLOCK)
    same_as(model, BasicBlock(), torch.randn(2, 8, 5, 5))


def test_code_reads_like_a_handwritten_forward() -> None:
    lines = [ln.split(";")[0].strip() for ln in modelspec.build(BASIC_BLOCK).code.strip().splitlines()]
    assert lines == [
        "def forward(self, x):",
        "conv1 = self.conv1(x)",
        "bn1 = self.bn1(conv1)",
        "relu = self.relu(bn1)",
        "conv2 = self.conv2(relu)",
        "bn2 = self.bn2(conv2)",
        "sum_1 = bn2 + x",  # 'sum' is a builtin: fx keeps it unshadowed
        "out = torch.relu(sum_1)",
        "return out",
    ]


def test_forward_is_generated_code_not_an_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    model = modelspec.build(BASIC_BLOCK)
    assert isinstance(model, fx.GraphModule)
    assert type(model).forward.__code__.co_filename.startswith("<eval_with_key>")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("interpreted")

    monkeypatch.setattr(fx.Interpreter, "run", refuse)
    monkeypatch.setattr(fx.Interpreter, "run_node", refuse)
    model(torch.randn(2, 8, 5, 5))


def test_in_as_a_list_and_as_keyword_inputs() -> None:
    model = modelspec.build("""modelspec: 1
input: {shape: [2, 5, 8]}
model:
  nodes:
    q: {Linear: [8, 8]}
    attn: {MultiheadAttention: {embed_dim: 8, num_heads: 2, batch_first: true}, in: {query: q, key: x, value: x}}
    both: {cat: -1, in: ['attn[0]', q]}
""")
    x = torch.randn(2, 5, 8)
    model.eval()
    q = model.q(x)
    want = torch.cat([model.attn(query=q, key=x, value=x)[0], q], -1)
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    assert "self.attn(query = q, key = x, value = x)" in model.code


class LastStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 3, batch_first=True)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, (h, c) = self.lstm(x)
        return self.fc(out[:, -1] + h[0]), c


def test_name_index_picks_from_a_tuple_and_a_list_of_outputs_is_a_tuple() -> None:
    model = modelspec.build("""modelspec: 1
input: {shape: [2, 5, 4]}
model:
  nodes:
    lstm: {LSTM: {input_size: 4, hidden_size: 3, batch_first: true}}
    last: {select: [1, -1], in: 'lstm[0]'}
    h: {add: null, in: [last, 'lstm[1][0][0]']}
    fc: {Linear: [3, 2]}
  outputs: [fc, 'lstm[1][1]']
""")
    x = torch.randn(2, 5, 4)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    same_as(model, LastStep(), x)
    assert "lstm_0 = lstm[0]" in model.code  # picked items are named for what they are


def test_dotted_names_give_nested_keys() -> None:
    model = modelspec.build("""modelspec: 1
input: {shape: [2, 3], dtype: int64}
model:
  nodes:
    transformer.wte: {Embedding: [10, 4]}
    transformer.ln_f: {LayerNorm: 4}
    lm_head: {Linear: [4, 10, {bias: false}]}
""")
    assert list(model.state_dict()) == ["transformer.wte.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
                                        "lm_head.weight"]  # fmt: skip
    assert isinstance(model.transformer, nn.ModuleDict)
    assert "self.transformer.wte(x)" in model.code


def test_sequential_with_an_explicit_input() -> None:
    model = modelspec.build("""modelspec: 1
input: {shape: [2, 4]}
model:
  nodes:
    fc: {Linear: [4, 4]}
    down: {Sequential: [{Linear: [4, 4]}, ReLU], in: x}
    s: {add: null, in: [fc, down]}
""")
    assert type(model.down) is nn.Sequential and isinstance(model.down[1], nn.ReLU)
    assert list(model.state_dict())[2:] == ["down.0.weight", "down.0.bias"]
    x = torch.randn(2, 4)
    assert torch.equal(model(x), model.fc(x) + model.down(x))


SHARED = """modelspec: 1
input: {shape: [2, 4]}
blocks:
  mlp: [{Linear: [4, 4]}, ReLU]
  blk:
    nodes:
      fc: {Linear: [4, 4]}
      act: tanh
      res: {add: null, in: [act, x]}
model:
  nodes:
    h.0: {use: blk}
    h.1: {use: blk}
    a: {use: mlp}
    b: {use: mlp}
    inner:
      nodes:
        l: {Linear: [4, 4]}
        r: {mul: null, in: [l, x]}
"""


def test_a_block_in_a_graph_is_the_same_object_under_every_name() -> None:
    model = modelspec.build(SHARED)
    assert model.a is model.b  # a list block under two node names
    assert model.h["0"] is model.h["1"]  # a graph block used twice: one GraphModule
    assert isinstance(model.h["0"], fx.GraphModule) and isinstance(model.inner, fx.GraphModule)
    assert list(model.state_dict()) == ["h.0.fc.weight", "h.0.fc.bias", "h.1.fc.weight", "h.1.fc.bias",
                                        "a.0.weight", "a.0.bias", "b.0.weight", "b.0.bias",
                                        "inner.l.weight", "inner.l.bias"]  # fmt: skip
    assert len(list(model.parameters())) == 6  # shared blocks counted once
    x = torch.randn(2, 4)
    blk = model.h["0"]
    h = blk(blk(x))
    h = model.a(model.a(h))
    torch.testing.assert_close(model(x), model.inner.l(h) * h, rtol=0, atol=0)
    torch.testing.assert_close(blk(x), torch.tanh(blk.fc(x)) + x, rtol=0, atol=0)


def test_gradients_of_both_uses_add_up() -> None:
    model = modelspec.build(SHARED)
    model(torch.randn(2, 4)).sum().backward()
    grad = model.a[0].weight.grad
    assert grad is not None and model.b[0].weight.grad is grad


def test_free_params_and_buffers() -> None:
    model = modelspec.build("""modelspec: 1
seed: 1
input: {shape: [2, 3, 4]}
model:
  params:
    cls: {shape: [1, 1, 4], init: {normal: {std: 0.02}}}
    pos.table: {shape: [4], init: ones, dtype: float64}
    wide: {shape: [1000], init: {uniform: {low: -0.5, high: 0.25}}}
    zero: {shape: [4]}
  buffers:
    scale: {shape: [1], init: ones, persistent: false}
    count: {shape: [1], dtype: int64}
  nodes:
    a: {add: null, in: [x, cls, zero]}
    b: {mul: null, in: [a, scale]}
    c: {add: null, in: [b, pos.table, count]}
    d: {sum: -1, in: wide}
    e: {add: null, in: [c, d]}
""")
    # PyTorch's order: a module's own parameters, its buffers, then its children ('pos'); 'scale' is not persistent
    assert list(model.state_dict()) == ["cls", "wide", "zero", "count", "pos.table"]
    assert [n for n, _ in model.named_buffers()] == ["scale", "count"]
    assert [n for n, _ in model.named_parameters()] == ["cls", "wide", "zero", "pos.table"]
    assert model.pos.table.dtype == torch.float64 and model.count.dtype == torch.int64
    assert torch.equal(model.pos.table, torch.ones(4, dtype=torch.float64)) and torch.equal(model.zero, torch.zeros(4))
    assert 0 < model.cls.std() < 0.1
    assert model.wide.min() >= -0.5 and model.wide.max() <= 0.25 and model.wide.std() > 0.1
    x = torch.randn(2, 3, 4)
    want = (x + model.cls + model.zero) * model.scale + model.pos.table + model.count + model.wide.sum(-1)
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)


def test_several_inputs_of_different_dtypes() -> None:
    model = modelspec.build("""modelspec: 1
model:
  inputs: {ids: {shape: [2, 6], dtype: int64}, mask: {shape: [2, 6], dtype: bool}}
  nodes:
    emb: {Embedding: [10, 4], in: ids}
    keep: {unsqueeze: -1, in: mask}
    out: {masked_fill: 0.0, in: [emb, keep]}
""")
    ids, mask = torch.randint(0, 10, (2, 6)), torch.rand(2, 6) > 0.5
    torch.testing.assert_close(model(ids, mask), model.emb(ids).masked_fill(mask.unsqueeze(-1), 0.0), rtol=0, atol=0)
    assert model.code.splitlines()[3] == "def forward(self, ids, mask):"


def test_each_model_has_its_own_example_inputs() -> None:
    model = modelspec.build("""modelspec: 1
blocks:
  trunk: {LazyLinear: 3}
models:
  a:
    inputs: {x: {shape: [2, 4]}}
    nodes:
      t: {use: trunk}
  b:
    inputs: {p: {shape: [5, 4]}, q: {shape: [5, 4]}}
    nodes:
      tp: {use: trunk, in: p}
      tq: {use: trunk, in: q}
      d: {pairwise_distance: null, in: [tp, tq]}
""")
    assert model.a.t is model.b.tp is model.b.tq
    assert model.a.t.weight.shape == (3, 4)  # sized by model a's example
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(model.b(p, q), F.pairwise_distance(model.a.t(p), model.a.t(q)), rtol=0, atol=0)


# ------------------------------------------------------------------ modules as arguments
ENCODER = """modelspec: 1
input: {shape: [2, 5, 8]}
model:
  nodes:
    enc:
      TransformerEncoder:
        encoder_layer: {TransformerEncoderLayer: {d_model: 8, nhead: 2, batch_first: true}}
        num_layers: 2
        enable_nested_tensor: false
"""


def test_transformer_encoder_with_an_inline_layer() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, batch_first=True)
    reference = nn.Module()
    reference.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    reference.forward = lambda x: reference.enc(x)  # type: ignore[method-assign]
    model = modelspec.build(ENCODER)
    assert model.enc.layers[0] is not model.enc.layers[1]  # PyTorch's copies: independent, as written
    same_as(model, reference, torch.randn(2, 5, 8))


def test_a_block_given_to_a_copying_constructor_is_refused() -> None:
    text = """modelspec: 1
input: {shape: [2, 5, 8]}
blocks:
  layer: {TransformerEncoderLayer: {d_model: 8, nhead: 2, batch_first: true}}
model:
  nodes:
    enc: {TransformerEncoder: {encoder_layer: {use: layer}, num_layers: 2, enable_nested_tensor: false}}
    again: {use: layer}
"""
    with pytest.raises(SpecError) as e:
        modelspec.build(text)
    [d] = e.value.diagnostics
    assert (d.code, d.line, d.column) == ("copied-block", 7, 48)
    assert "copies" in d.message and "'layer'" in d.message


def test_a_block_given_to_a_constructor_that_keeps_it_is_the_block() -> None:
    model = modelspec.build("""modelspec: 1
input: {shape: [2, 5, 8]}
blocks:
  enc: {TransformerEncoder: {encoder_layer: {TransformerEncoderLayer: {d_model: 8, nhead: 2, batch_first: true}},
                             num_layers: 1, enable_nested_tensor: false}}
model:
  nodes:
    t: {Transformer: {d_model: 8, nhead: 2, custom_encoder: {use: enc}, num_decoder_layers: 1, batch_first: true},
        in: [x, x]}
    again: {use: enc}
""")
    assert model.t.encoder is model.again


# ------------------------------------------------------------------ builds and copies
def test_the_build_is_deterministic() -> None:
    one, two = modelspec.build(SHARED), modelspec.build(SHARED)
    assert one.code == two.code
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values(), strict=True))


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_keep_names_sharing_buffers_and_code(how: str) -> None:
    model = modelspec.build(SHARED.replace("model:\n", "model:\n  buffers:\n    nb: {shape: [4], persistent: false}\n")
                            .replace("r: {mul: null, in: [l, x]}", "r: {mul: null, in: [l, x]}\n    s: {add: null, in: [inner, nb]}"))  # fmt: skip
    if how == "deepcopy":
        copied = copy.deepcopy(model)
    elif how == "pickle":
        copied = pickle.loads(pickle.dumps(model))
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        copied = torch.load(buffer, weights_only=False)
    assert list(copied.state_dict()) == list(model.state_dict())
    assert "nb" not in copied.state_dict() and [n for n, _ in copied.named_buffers()] == ["nb"]
    assert copied.a is copied.b and copied.h["0"] is copied.h["1"] and copied.a is not model.a
    assert copied.code == model.code and copied.h["0"].code == model.h["0"].code
    x = torch.randn(2, 4)
    torch.testing.assert_close(copied(x), model(x), rtol=0, atol=0)


def test_the_readme_graph_examples_build() -> None:
    import re

    from conftest import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Graphs") : text.index("## Parameter ties")]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    basic, _fragment, several, encoder = blocks
    assert modelspec.build(basic, device="meta").code.count("self.") == 5
    assert list(modelspec.build("modelspec: 1\n" + several).state_dict()) == ["lm.tok.weight"]
    nested = "".join(f"    {line}\n" for line in encoder.splitlines())
    built = modelspec.build(f"modelspec: 1\ninput: {{shape: [2, 5, 64]}}\nmodel:\n  nodes:\n{nested}")
    assert built.encoder.layers[0] is not built.encoder.layers[1]


def test_a_list_of_graph_blocks_gives_handwritten_keys() -> None:
    model = modelspec.build("""modelspec: 1
input: {shape: [2, 3, 8]}
blocks:
  block: &block
    nodes:
      attn.c_attn: {Linear: [8, 24]}
      q: {chunk: [3, -1]}
      attn.c_proj: {Linear: [8, 8], in: 'q[0]'}
      res: {add: null, in: [attn.c_proj, x]}
model:
  nodes:
    transformer.h: [{use: block}, *block]
    lm_head: {Linear: [8, 5]}
""")
    assert list(model.state_dict())[:4] == ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
                                            "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias"]  # fmt: skip
    assert "transformer.h.1.attn.c_proj.bias" in model.state_dict()
    first, second = model.transformer.h
    assert first is not second and first.attn.c_attn is not second.attn.c_attn  # an alias is a copy
    x = torch.randn(2, 3, 8)
    h = first.attn.c_proj(first.attn.c_attn(x).chunk(3, -1)[0]) + x
    h = second.attn.c_proj(second.attn.c_attn(h).chunk(3, -1)[0]) + h
    torch.testing.assert_close(model(x), model.lm_head(h), rtol=0, atol=0)


def test_grads_of_a_graph_with_two_inputs() -> None:
    """`grads` without an input uses each graph input's example; with a tuple, those tensors."""
    from conftest import ROOT

    model = modelspec.build(ROOT / "specs" / "zoo" / "siamese.yaml")
    report = modelspec.grads(model)
    assert report.input_shapes == [[4, 16], [4, 16]] and report.input_shape == [4, 16]
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(4, 16, generator=g), torch.rand(4, 16, generator=g)
    report = modelspec.grads(model, (a, b))
    reference = copy.deepcopy(model)
    reference.zero_grad()
    reference(a, b).sum().backward()
    norms = {t.name: t.grad_norm for t in report.tensors}
    for name, p in reference.named_parameters():
        assert norms[name] == pytest.approx(float(p.grad.double().norm()), rel=1e-6), name
