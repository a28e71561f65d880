"""Validating ties, ``trainable:`` and init rules without torch: each layer's described
tensors equal what its constructor makes (over a grid of arguments, refusals included), the
skeleton's names, aliases and block sites equal the build's, the checks on the skeleton give
the build's diagnostics, and ``modelspec validate`` of every bundled spec imports no torch."""

from __future__ import annotations

import inspect
import itertools
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelspec import SpecError, _layer_tensors, _skeleton
from modelspec import _registry as registry
from modelspec._build import build_module, construct_on_meta
from modelspec._errors import Collector
from modelspec._init_select import lazy_becomes, plan_init
from modelspec._ties import apply_ties, transposed_map
from modelspec._validate import compile_spec, validate

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("**/*.yaml"))
CORPUS = sorted((ROOT / "tests" / "corpus" / "spec").glob("*.yaml"))
BUILTIN = {name: cls for name, cls in registry._builtin().items()}


# ---------------------------------------------------------------- one layer
def _isa(m: nn.Module) -> frozenset[str]:
    return frozenset(name for name, cls in BUILTIN.items() if isinstance(m, cls))


def _torch_tree(m: nn.Module) -> Any:
    def tensors(store: dict[str, Any], kind: str) -> list[Any]:
        return [(k, None if t is None else (tuple(t.shape), str(t.dtype).removeprefix("torch.")), kind,
                 k not in m._non_persistent_buffers_set) for k, t in store.items()]  # fmt: skip

    return (
        _isa(m),
        tensors(m._parameters, "param") + tensors(m._buffers, "buffer"),
        [(k, _torch_tree(c)) for k, c in m._modules.items()],
    )


def _described_tree(d: _layer_tensors.LayerTensors) -> Any:
    order = [t for t in d.tensors if t.kind == "param"] + [t for t in d.tensors if t.kind == "buffer"]
    return (
        d.isa,
        [(t.name, None if t.shape is None else (t.shape, t.dtype), t.kind, t.persistent) for t in order],
        [(k, _described_tree(c)) for k, c in d.children],
    )


def _grid(**axes: list[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes (a value of ``...`` leaves the argument out), at most 150 of
    them, picked with a fixed seed."""
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    if len(combos) > 150:
        combos = random.Random(0).sample(combos, 150)
    return [{k: v for k, v in c.items() if v is not ...} for c in combos]


_CONV = dict(in_channels=[2, 4], out_channels=[4, 6], kernel_size=[1, 3], stride=[..., 2], groups=[..., 2, 3],
             bias=[..., False])  # fmt: skip
GRIDS: dict[str, list[dict[str, Any]]] = {
    "Linear": _grid(in_features=[0, 3, -1], out_features=[1, 4], bias=[..., True, False]),
    "Bilinear": _grid(in1_features=[2], in2_features=[3], out_features=[1, 4], bias=[..., False]),
    "Embedding": _grid(num_embeddings=[5], embedding_dim=[3, 0], padding_idx=[..., None, 0, 4, 5, -5, -6]),
    "LayerNorm": _grid(normalized_shape=[4, (2, 3)], elementwise_affine=[..., False], bias=[..., False]),
    "RMSNorm": _grid(normalized_shape=[4, (2, 3)], elementwise_affine=[..., False]),
    "GroupNorm": _grid(num_groups=[1, 2, 3], num_channels=[4, 6], affine=[..., False], bias=[..., False]),
    "PReLU": _grid(num_parameters=[..., 3]),
    "MultiheadAttention": _grid(
        embed_dim=[8, 6],
        num_heads=[1, 2, 4],
        bias=[..., False],
        add_bias_kv=[..., True],
        kdim=[..., 8, 5],
        vdim=[..., 3],
    ),
    "RNN": _grid(
        input_size=[3],
        hidden_size=[4, 0],
        num_layers=[..., 2],
        nonlinearity=[..., "relu", "x"],
        bias=[..., False],
        bidirectional=[..., True],
        dropout=[..., 0.5, 2.0],
    ),
    "LSTM": _grid(
        input_size=[3],
        hidden_size=[4],
        num_layers=[..., 2, 3],
        bias=[..., False],
        bidirectional=[..., True],
        proj_size=[..., 2, 4, -1],
    ),
    "GRU": _grid(input_size=[3], hidden_size=[4], num_layers=[..., 2], bias=[..., False], bidirectional=[..., True]),
    "RNNCell": _grid(input_size=[3], hidden_size=[4], bias=[..., False], nonlinearity=[..., "relu"]),
    "LSTMCell": _grid(input_size=[3], hidden_size=[4], bias=[..., False]),
    "GRUCell": _grid(input_size=[3], hidden_size=[4], bias=[..., False]),
    "CausalSelfAttention": _grid(n_embd=[8, 6], n_head=[2, 4], bias=[..., False], dropout=[..., 0.5, 1.0]),
}
for _n in (1, 2, 3):
    GRIDS[f"Conv{_n}d"] = _grid(**_CONV, padding=[..., 1, "same", "valid", "x"],
                                padding_mode=[..., "reflect", "x"])  # fmt: skip
    GRIDS[f"ConvTranspose{_n}d"] = _grid(**_CONV, output_padding=[..., 1], padding_mode=[..., "reflect"])
    GRIDS[f"Conv{_n}d"] += [{"in_channels": 2, "out_channels": 4, "kernel_size": (1, 2, 3)[:_n]}]
    for _norm in ("BatchNorm", "InstanceNorm"):
        GRIDS[f"{_norm}{_n}d"] = _grid(num_features=[3], affine=[..., True, False],
                                       track_running_stats=[..., True, False], bias=[..., False])  # fmt: skip
GRIDS["SyncBatchNorm"] = GRIDS["BatchNorm1d"]
for _layer in ("TransformerEncoderLayer", "TransformerDecoderLayer"):
    GRIDS[_layer] = _grid(d_model=[8], nhead=[2, 3], dim_feedforward=[16], dropout=[..., 0.0, 1.5], bias=[..., False],
                          norm_first=[..., True], activation=[..., "gelu", "tanh"])  # fmt: skip
_PLAIN_ARGS = {"Softmax": {"dim": 1}, "LogSoftmax": {"dim": 1}, "Softmin": {"dim": 1}, "MaxPool1d": {"kernel_size": 2},
               "AdaptiveAvgPool2d": {"output_size": 1}}  # fmt: skip
for _name in _layer_tensors.PLAIN:
    GRIDS[_name] = [_PLAIN_ARGS.get(_name, {})]
for _name in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"):
    GRIDS[_name] = [{}, {"p": 0.2}, {"p": 1.5}, {"p": -0.1}]
for _name in ("MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d"):
    GRIDS[_name] = [{"kernel_size": 2}, {"kernel_size": 3, "stride": 1, "padding": 1}]
for _name in ("AdaptiveAvgPool1d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d"):
    GRIDS[_name] = [{"output_size": 2}]


def test_every_described_layer_has_a_grid() -> None:
    assert sorted(GRIDS) == sorted(_layer_tensors.DESCRIBED)


@pytest.mark.parametrize("name", sorted(_layer_tensors.DESCRIBED))
def test_formula_takes_the_constructors_parameters_and_defaults(name: str) -> None:
    entry = registry.live_entries()[name]
    mine = _layer_tensors.signature(name).parameters
    if name in _layer_tensors.PLAIN and not mine:
        return  # holds nothing whatever it is given
    theirs = {p.name: (p.required, p.default) for p in entry.params}
    ours = {k: (p.default is inspect.Parameter.empty, p.default) for k, p in mine.items()}
    for k, (required, default) in theirs.items():
        if k == "activation":  # the constructor's default is the function that the name "relu" stands for
            assert ours[k] == (False, "relu") and default is torch.nn.functional.relu
            continue
        assert ours[k][0] == required and (required or ours[k][1] == default), (name, k)
    assert set(ours) == set(theirs)


@pytest.mark.parametrize("name", sorted(_layer_tensors.DESCRIBED))
def test_described_tensors_equal_the_constructed_layer(name: str) -> None:
    cls = BUILTIN[name]
    described = 0
    for values in GRIDS[name]:
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")  # e.g. RNN's dropout with one layer
                built = cls(**values)
        except Exception:  # noqa: BLE001 - the constructor refuses: the formula must say so
            assert _layer_tensors.describe(name, values) is None, (name, values)
            continue
        mine = _layer_tensors.describe(name, values)
        assert mine is not None, (name, values)  # described whenever the constructor accepts
        assert _described_tree(mine) == _torch_tree(built), (name, values)
        described += 1
    assert described >= 1


def test_a_lazy_layer_type_becomes_the_layer_without_lazy() -> None:
    for name, cls in BUILTIN.items():
        becomes = getattr(cls, "cls_to_become", None)
        assert lazy_becomes(name) == (becomes.__name__ if isinstance(becomes, type) else name), name


@pytest.mark.parametrize("container", [nn.Sequential(), nn.ModuleDict()])
def test_containers_are_no_layer_type(container: nn.Module) -> None:
    assert _isa(container) == frozenset()  # a skeleton's containers match no 'layer:' selector


def test_undescribed_layers_and_module_arguments_fall_back() -> None:
    assert _layer_tensors.describe("LazyLinear", {"out_features": 3}) is None
    assert _layer_tensors.describe("Transformer", {}) is None
    spec = "modelspec: 1\nmodel:\n  - LazyLinear: 3\nties: []\ninit:\n  - {params: '*', zeros}\n"
    assert _skeleton.skeleton(compile_spec(spec)) is None


# ---------------------------------------------------------------- the whole model
SKELETONS = {
    "shared-in-repeat-and-groups": """\
modelspec: 1
input: {shape: [2, 4]}
blocks:
  shared: {Linear: [4, 4]}
  pair: [{use: shared}, {LayerNorm: 4}]
model:
  first: {use: pair}
  stack: {repeat: 3, of: {use: shared}}
  body: {repeat: 5, of: [{Linear: [4, 4]}, Tanh], groups: [2, 3], trainable: false}
  again: {use: pair}
  norm: {BatchNorm1d: 4}
""",
    "graph-tensors-and-dotted-names": """\
modelspec: 1
model:
  inputs: {x: {shape: [2, 3, 8]}, kv: {shape: [2, 4, 5]}}
  params: {scale: {shape: [8], init: ones}, extra.bias: {shape: [8]}}
  buffers: {one: {shape: [1], init: ones, persistent: false}, stats.mean: {shape: [8]}}
  nodes:
    enc.attn: {MultiheadAttention: [8, 2, {kdim: 5, vdim: 5, add_bias_kv: true, batch_first: true}], in: [x, kv, kv]}
    enc.rnn: {LSTM: [8, 4, {num_layers: 2, bidirectional: true, proj_size: 2, batch_first: true}], in: x}
    enc.layer: {TransformerEncoderLayer: [8, 2, 16, {batch_first: true}], in: "enc.attn[0]"}
    conv: {Conv1d: [3, 6, 3, {groups: 3, padding: 1}], in: x}
    s1: {add: null, in: [enc.layer, scale]}
    s2: {add: null, in: [s1, extra.bias]}
    s3: {sub: null, in: [s2, stats.mean]}
    s4: {mul: null, in: [s3, one]}
  outputs: [s4, "enc.rnn[0]", conv]
""",
    "models-sharing-a-block": (ROOT / "specs" / "d2l" / "shared_mlp.yaml").read_text(),
    "transposed-and-chained-ties": """\
modelspec: 1
model:
  inputs: {x: {shape: [2, 6]}}
  nodes:
    a: {Linear: [6, 4], in: x}
    b: {Linear: [4, 6], in: a}
    c: {Linear: [6, 4], in: x}
    d: {Linear: [6, 4], in: x}
  outputs: [b, c, d]
ties:
  - {param: b.weight, to: a.weight, transposed: true}
  - {param: c.weight, to: d.weight}
  - {param: d.weight, to: a.weight}
init:
  - {layer: Linear, params: "*.bias", zeros}
  - {params: "a.weight", xavier_uniform}
""",
}
BUILDABLE = [s for s in SPECS if _skeleton.skeleton(compile_spec(s)) is not None]


def _layout(root: Any) -> Any:
    """Every name of every parameter, buffer and module (aliases included), shapes, dtypes and
    which names are one tensor."""
    params = list(root.named_parameters(remove_duplicate=False))
    buffers = list(root.named_buffers(remove_duplicate=False))
    groups: dict[int, list[str]] = {}
    for n, t in params + buffers:
        groups.setdefault(id(t), []).append(n)
    return {
        "params": [(n, tuple(t.shape), str(t.dtype)) for n, t in params],
        "buffers": [(n, tuple(t.shape), str(t.dtype)) for n, t in buffers],
        "same": sorted(groups.values()),
        "modules": [n for n, _ in root.named_modules(remove_duplicate=False)],
        "state_dict": list(root.state_dict(keep_vars=True)),
    }


def test_bundled_specs_have_skeletons() -> None:
    names = {s.stem for s in BUILDABLE}
    assert {"gpt2", "bert", "tied_autoencoder", "albert", "bert_model", "siamese", "shared_mlp"} <= names


@pytest.mark.parametrize("spec", [*BUILDABLE, *SKELETONS], ids=lambda s: s.stem if isinstance(s, Path) else s)
def test_skeleton_names_equal_the_constructed_model(spec: Path | str) -> None:
    resolved = compile_spec(SKELETONS[spec] if isinstance(spec, str) else spec)
    made = _skeleton.skeleton(resolved)
    assert made is not None
    built, _ = construct_on_meta(resolved)
    assert _layout(made[0]) == _layout(built)


@pytest.mark.parametrize("spec", [*BUILDABLE, *SKELETONS], ids=lambda s: s.stem if isinstance(s, Path) else s)
def test_skeleton_after_ties_equals_the_build(spec: Path | str) -> None:
    """Ties applied, block sites, transposed reads and each init rule's selection: the same."""
    source = SKELETONS[spec] if isinstance(spec, str) else spec
    resolved = compile_spec(source, overrides=_small(compile_spec(source)) or None)
    root, builder = _skeleton.skeleton(resolved)  # type: ignore[misc]
    built, info = build_module(resolved, device="meta")
    errors = Collector()
    apply_ties(root, resolved.spec.ties, errors)  # type: ignore[arg-type]
    assert not errors.errors
    assert _layout(root) == _layout(built)
    assert transposed_map(root) == transposed_map(built)  # type: ignore[arg-type]
    sites = _skeleton.block_sites(root, builder.blocks)
    assert sites == info.block_sites
    mine, theirs = (
        plan_init(root, resolved.spec.init, sites, errors),
        plan_init(built, resolved.spec.init, sites, errors),
    )
    assert not errors.errors
    assert mine[1:] == theirs[1:] and mine[0].order == theirs[0].order and mine[0].owner == theirs[0].owner


def _small(resolved: Any) -> dict[str, Any]:
    """Smaller sizes for the big bundled models (the build on meta runs their example input)."""
    small = {"n_layer": 2, "vocab": 100, "n_ctx": 16, "n_pos": 16}
    return {k: v for k, v in small.items() if k in resolved.spec.vars}


# ---------------------------------------------------------------- the same diagnostics
_SEQ = "modelspec: 1\ninput: {shape: [2, 4]}\n"
CASES = {
    "unknown-and-buffer": _SEQ
    + """\
model:
  - Linear: [4, 4]
  - BatchNorm1d: 4
  - Linear: [4, 4]
ties:
  - {param: 2.weigth, to: 0.weight}
  - {param: 2.bias, to: 1.running_mean}
  - {param: 2.weight, to: nothing.weight}
""",
    "duplicate-and-cycle": _SEQ
    + """\
model:
  a: {Linear: [4, 4]}
  b: {Linear: [4, 4]}
  c: {Linear: [4, 4]}
ties:
  - {param: a.weight, to: b.weight}
  - {param: b.weight, to: a.weight}
  - {param: a.weight, to: c.weight}
""",
    "already-tied": _SEQ
    + """\
blocks:
  shared: {Linear: [4, 4]}
model:
  - use: shared
  - ReLU
  - use: shared
ties:
  - {param: 0.weight, to: 2.weight}
""",
    "shapes": _SEQ
    + """\
model:
  - Linear: [4, 8]
  - Linear: [8, 8]
  - Linear: [8, 4]
ties:
  - {param: 1.weight, to: 0.weight}
  - {param: 1.bias, to: 0.bias, transposed: true}
  - {param: 2.weight, to: 1.weight, transposed: false}
""",
    "dtype-and-unused-param": """\
modelspec: 1
model:
  inputs: {x: {shape: [2, 4]}}
  params: {p64: {shape: [4, 4], dtype: float64}}
  nodes:
    lin: {Linear: [4, 4], in: x}
    sub:
      in: lin
      inputs: [h]
      params: {w: {shape: [4]}}
      nodes: {out: {Linear: [4, 4], in: h}}
      outputs: out
  outputs: sub
ties:
  - {param: lin.weight, to: p64}
  - {param: lin.bias, to: w}
""",
    "chain": _SEQ
    + """\
model:
  a: {Linear: [4, 4]}
  b: {Linear: [4, 4]}
  c: {Linear: [4, 4]}
ties:
  - {param: b.weight, to: a.weight, transposed: true}
  - {param: c.weight, to: b.weight}
""",
    "trainable-conflict": _SEQ
    + """\
model:
  a: {Linear: [4, 4], trainable: false}
  b: {Linear: [4, 4]}
  c: {Linear: [4, 4], trainable: false}
ties:
  - {param: b.weight, to: a.weight}
  - {param: b.bias, to: c.bias}
""",
    "trainable-shared": _SEQ
    + """\
blocks:
  shared: {Linear: [4, 4]}
model:
  frozen: {trainable: false, Sequential: [{use: shared}]}
  live: {use: shared}
""",
    "init-selectors": _SEQ
    + """\
blocks:
  unused: {Linear: [4, 4]}
  inner: {Linear: [4, 4]}
model:
  - Linear: [4, 4]
  - ReLU6
  - use: inner
  - LayerNorm: 4
init:
  - {params: "0.weigth", zeros}
  - {params: "*.weigth", zeros}
  - {params: "zzz*", zeros}
  - {layer: Linaer, zeros}
  - {layer: [ReLU, Hardtanh], zeros}
  - {layer: Conv2d, zeros}
  - {block: nope, zeros}
  - {block: unused, zeros}
  - {layer: LayerNorm, params: "0.*", zeros}
  - {block: inner, layer: LazyLinear, params: "2.*", ones}
  - {params: "*.bias", xavier_uniform}
""",
    "init-aliases": _SEQ
    + """\
model:
  emb: {Linear: [4, 4]}
  lm: {Linear: [4, 4, {bias: false}]}
  dec: {Linear: [4, 4]}
ties:
  - {param: lm.weight, to: emb.weight}
  - {param: dec.weight, to: emb.weight, transposed: true}
init:
  - {params: lm.weight, zeros}
  - {params: "lm.*", zeros}
  - {params: dec.weight, zeros}
  - {params: ["emb.*", "dec.bias"], kaiming_normal}
""",
    "init-in-attention": """\
modelspec: 1
model:
  inputs: {x: {shape: [2, 3, 8]}}
  nodes:
    attn: {MultiheadAttention: [8, 2, {batch_first: true}], in: [x, x, x]}
    block: {TransformerDecoderLayer: [8, 2, 16, {batch_first: true}], in: ["attn[0]", x]}
    head: {CausalSelfAttention: [8, 2], in: block}
  outputs: head
init:
  - {layer: Linear, params: "*.weight", normal: {std: 0.02}}
  - {layer: MultiheadAttention, params: "*in_proj_weight", orthogonal}
  - {layer: Dropout, zeros}
""",
    "missing-example": """\
modelspec: 1
model:
  inputs: {a: {shape: [2, 4]}, b: null}
  nodes:
    lin: {Linear: [4, 4], in: a}
    out: {add: null, in: [lin, b]}
  outputs: out
ties:
  - {param: lin.weight, to: lin.bias}
""",
    "several-models": """\
modelspec: 1
input: {shape: [2, 4]}
blocks:
  trunk: {Linear: [4, 4]}
models:
  left: [{use: trunk}, {Linear: [4, 2]}]
  right: [{use: trunk}, {Linear: [4, 2]}]
ties:
  - {param: right.1.weight, to: left.1.weight}
  - {param: right.0.bias, to: left.0.bias}
init:
  - {block: trunk, zeros}
  - {params: "right.*", ones}
""",
}


def _diagnostics(source: Any) -> list[dict[str, object]] | str:
    try:
        return [d.to_dict() for d in validate(source)]
    except SpecError as e:
        return [d.to_dict() for d in e.diagnostics]
    except Exception as e:  # noqa: BLE001 - compared, not raised: both ways must fail alike
        return f"{type(e).__name__}: {e}"


_CHECK = _skeleton.check_without_torch  # the one under test, whatever a test patched in before


def _both(source: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, list[bool]]:
    used: list[bool] = []
    check = _CHECK

    def spy(resolved: Any) -> bool:
        used.append(True)  # a SpecError raised from here is the skeleton's answer
        used[-1] = check(resolved)
        return used[-1]

    monkeypatch.setattr(_skeleton, "check_without_torch", spy)
    torch_free = _diagnostics(source)
    monkeypatch.setattr(_skeleton, "check_without_torch", lambda resolved: False)
    return torch_free, _diagnostics(source), used


@pytest.mark.parametrize("case", [*CASES, *SKELETONS])
def test_skeleton_and_build_give_the_same_diagnostics(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = CASES.get(case) or SKELETONS[case]
    torch_free, on_meta, used = _both(text, monkeypatch)
    spec = compile_spec(text).spec if case in SKELETONS else None
    if spec is None or spec.ties or spec.init or spec.freezes:
        assert used == [True]  # the skeleton answered
    assert torch_free == on_meta
    if case in CASES:
        assert isinstance(on_meta, list) and any(d["severity"] == "error" for d in on_meta), on_meta


def _checks_built(spec: Path) -> bool:
    try:
        s = compile_spec(spec).spec
    except SpecError:
        return True  # fails before: compared anyway (both paths give the same)
    return bool(s.ties or s.freezes or s.init)


@pytest.mark.parametrize("spec", [s for s in [*CORPUS, *SPECS] if _checks_built(s)], ids=lambda p: p.name)
def test_corpus_and_bundled_specs_give_the_same_diagnostics(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch_free, on_meta, _ = _both(spec, monkeypatch)
    assert torch_free == on_meta


def test_codes_the_cases_cover() -> None:
    codes = set()
    for text in CASES.values():
        diagnostics = _diagnostics(text)
        assert isinstance(diagnostics, list)
        codes |= {d["code"] for d in diagnostics}
    assert codes >= {"unknown-param", "duplicate-tie", "tie-cycle", "already-tied", "tie-shape", "tie-dtype",
                     "tie-chain", "unused-param", "trainable-conflict", "init-unmatched", "init-alias", "init-shape",
                     "unknown-layer", "unknown-block", "missing-input"}  # fmt: skip


# ---------------------------------------------------------------- no torch
def test_bundled_specs_with_ties_trainable_or_init_are_checked_on_the_skeleton() -> None:
    # that validating them imports neither torch nor pydantic: test_parse_speed
    checked = [s for s in SPECS if _checks_built(s)]
    assert {s.stem for s in checked} >= {"gpt2", "bert", "tied_autoencoder"}
    assert all(_CHECK(compile_spec(s)) for s in checked)


def test_a_tie_error_is_reported_without_torch(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(CASES["shapes"])
    code = (
        "import sys\nfrom modelspec.cli import main\n"
        f"rc = main(['validate', {str(spec)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MODELSPEC_NO_CACHE"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "error[tie-shape]" in done.stderr


def test_the_formulas_were_checked_with_this_torch() -> None:
    """Fails after a torch upgrade: rerun this file's layer tests, then bump CHECKED_WITH."""
    assert _layer_tensors.CHECKED_WITH == torch.__version__.split("+")[0]
    assert _layer_tensors.formulas_hold()


@pytest.mark.parametrize(
    "why",
    ["lazy", "module-argument", "from", "plugin", "other-torch"],
)
def test_what_the_skeleton_cannot_tell_is_built_on_meta(why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = CASES["shapes"]
    if why == "lazy":
        text = text.replace("- Linear: [4, 8]", "- LazyLinear: 8")
    elif why == "module-argument":
        text = (
            _SEQ + "model:\n  - TransformerEncoder: {encoder_layer: {TransformerEncoderLayer: [4, 2]}, num_layers: 1}\n"
        )
        text += "init:\n  - {params: '*.bias', xavier_uniform}\n"
    elif why == "from":
        text += "init:\n  - {params: '*', from: elsewhere}\n"
    elif why == "plugin":
        monkeypatch.setitem(registry._registered, "MyLinear", nn.Linear)
    else:
        monkeypatch.setattr(_layer_tensors, "CHECKED_WITH", "0.0.0")
        _layer_tensors.formulas_hold.cache_clear()
    try:
        assert not _skeleton.check_without_torch(compile_spec(text))
        with pytest.raises(SpecError):
            validate(text)  # built on meta, which finds the errors
    finally:
        _layer_tensors.formulas_hold.cache_clear()


# ---------------------------------------------------------------- generated specs
_LAYERS = ["{Linear: [4, 4]}", "{Linear: [4, 4, {bias: false}]}", "{LayerNorm: 4}", "ReLU",
           "{LayerNorm: [4, {elementwise_affine: false}]}"]  # fmt: skip
_NAMES = ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias", "3.weight", "3.0.weight", "3.1.weight",
          "3.1.bias", "4.weight", "0.weigth", "b.weight"]  # fmt: skip
_GLOBS = ["*.weight", "*.bias", "0.*", "3.*", "*.weigth", "1.weight", "3.0.weight", "nothing"]


@st.composite
def tie_specs(draw: st.DrawFn) -> str:
    """A list of width-4 layers (so the example pass always works), a shared block used once
    or twice, a repeat, random trainable flags, ties between likely names and init rules."""
    pick = lambda options: draw(st.sampled_from(options))  # noqa: E731
    flag = lambda: pick(["", ", trainable: false", ", trainable: true"])  # noqa: E731
    items = [pick(_LAYERS) for _ in range(3)]
    lines = ["modelspec: 1", "input: {shape: [2, 4]}", "blocks:", f"  shared: {{Sequential: [{pick(_LAYERS)}]{flag()}}}",
             "model:"]  # fmt: skip
    lines += [f"  - {item}" for item in items]
    lines.append(f"  - {{repeat: 2, of: {pick(_LAYERS)}{flag()}}}")
    lines += ["  - {use: shared}"] * draw(st.integers(1, 2))
    ties = [(pick(_NAMES), pick(_NAMES), draw(st.booleans())) for _ in range(draw(st.integers(0, 3)))]
    if ties:
        lines += ["ties:"] + [f"  - {{param: {p}, to: {t}, transposed: {str(tr).lower()}}}" for p, t, tr in ties]
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        selectors = []
        if draw(st.booleans()):
            selectors.append(f"params: '{pick(_GLOBS)}'")
        if draw(st.booleans()):
            selectors.append(f"layer: {pick(['Linear', 'LayerNorm', 'ReLU', 'Conv2d'])}")
        if draw(st.booleans()) or not selectors:
            selectors.append(f"block: {pick(['shared', 'nope'])}")
        rules.append(f"  - {{{', '.join(selectors)}, {pick(['zeros', 'xavier_uniform', 'normal: {std: 0.1}'])}}}")
    if rules:
        lines += ["init:", *rules]
    return "\n".join(lines) + "\n"


@settings(max_examples=120, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(text=tie_specs())
def test_generated_specs_give_the_same_diagnostics(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch_free, on_meta, used = _both(text, monkeypatch)
    assert used in ([], [True])  # the skeleton answers for every layer generated here
    assert torch_free == on_meta, text
