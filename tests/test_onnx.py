"""ONNX export (issue 9, section 3): one initializer per tie group under its canonical name,
outputs equal to PyTorch's in onnxruntime, transposed ties as Transpose nodes, and the
command line's errors (exit 2, nothing written)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import D2L, SPECS

import modelspec
from modelspec.cli import main

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'torch-modelspec[onnx]')")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'torch-modelspec[onnx]')")

ZOO = SPECS / "zoo"
# GPT-2 small's structure and tie at a size that exports in seconds
SMALL_GPT2 = {"n_layer": 2, "n_head": 4, "d_model": 64, "vocab": 1000, "n_ctx": 64}
CASES = {
    "tied_autoencoder": (ZOO / "tied_autoencoder.yaml", {}),
    "siamese": (ZOO / "siamese.yaml", {}),
    "gpt2": (ZOO / "gpt2.yaml", SMALL_GPT2),
}
# float32 on the CPU: both runtimes sum in their own order
ATOL, RTOL = 1e-4, 1e-4


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


class Exported:
    def __init__(self, name: str, tmp: Path) -> None:
        spec, overrides = CASES[name]
        self.model = modelspec.build(spec, overrides=overrides).eval()
        self.result = modelspec.export_onnx(self.model, tmp / f"{name}.onnx")
        self.proto = onnx.load(str(self.result.path))
        self.session = ort.InferenceSession(str(self.result.path), providers=["CPUExecutionProvider"])

    def groups(self) -> dict[str, set[str]]:
        """canonical name -> every name reaching the tensor, from the module (by identity)."""
        names: dict[int, list[str]] = {}
        for n, t in self.model.named_parameters(remove_duplicate=False):
            names.setdefault(id(t), []).append(n)
        canonical = {id(t): n for n, t in reversed(list(self.model.state_dict(keep_vars=True).items()))}
        return {canonical[i]: set(ns) for i, ns in names.items()}


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Exported]:
    """Each case exported once for the whole file (an export takes seconds)."""
    done: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in done:
            done[name] = Exported(name, tmp_path_factory.mktemp("onnx"))
        return done[name]

    return get


@pytest.fixture(params=list(CASES))
def exported(request: pytest.FixtureRequest, exports: Callable[[str], Exported]) -> Exported:
    return exports(request.param)


def _inputs(e: Exported, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    xs = []
    for i in e.session.get_inputs():
        shape = [batch if d == 0 else n for d, n in enumerate(i.shape)]
        if i.type == "tensor(int64)":
            xs.append(torch.randint(0, SMALL_GPT2["vocab"], shape, generator=g))
        else:
            xs.append(torch.randn(shape, generator=g))
    return tuple(xs)


@pytest.mark.parametrize("batch", [1, 3])
def test_outputs_match_pytorch_in_onnxruntime(exported: Exported, batch: int) -> None:
    assert exported.result.dynamic_batch
    xs = _inputs(exported, batch, seed=batch)
    with torch.no_grad():
        want = exported.model(*xs)
    feeds = {i.name: x.numpy() for i, x in zip(exported.session.get_inputs(), xs, strict=True)}
    (got,) = exported.session.run(None, feeds)
    assert got.shape == tuple(want.shape)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=ATOL, rtol=RTOL)


def test_one_initializer_per_tie_group_named_canonically(exported: Exported) -> None:
    groups = exported.groups()
    inits = [i.name for i in exported.proto.graph.initializer]
    aliases = {a for members in groups.values() for a in members}
    stored = [n for n in inits if n in aliases]
    assert sorted(stored) == sorted(groups)  # every tie group exactly once, by its canonical name
    assert len(set(stored)) == len(stored)
    assert not (set(inits) & (aliases - set(groups)))  # no alias name survives
    assert exported.result.copies == ()
    assert {c: set(a) for c, a in exported.result.initializers.items()} == groups
    assert all(aliases[0] == c for c, aliases in exported.result.initializers.items())  # canonical first
    # the file records the ties for readers of the ONNX file
    meta = {p.key: p.value for p in exported.proto.metadata_props}
    ties = json.loads(meta["modelspec.ties"])
    assert {c: set(a) for c, a in ties.items()} == {c: a for c, a in groups.items() if len(a) > 1}
    assert meta["modelspec.spec_sha256"] == modelspec.build_info(exported.model).spec.sha256


def test_gpt2_head_is_the_embedding_initializer(exports: Callable[[str], Exported]) -> None:
    exported = exports("gpt2")
    inits = {i.name: tuple(i.dims) for i in exported.proto.graph.initializer}
    assert inits["transformer.wte.weight"] == (SMALL_GPT2["vocab"], SMALL_GPT2["d_model"])
    assert "lm_head.weight" not in inits  # PyTorch's exporter alone names it lm_head.weight (the last alias)
    assert set(exported.result.initializers["transformer.wte.weight"]) == {"transformer.wte.weight", "lm_head.weight"}
    vocab_sized = [n for n, dims in inits.items() if SMALL_GPT2["vocab"] in dims]
    assert vocab_sized == ["transformer.wte.weight"]  # the (vocab, C) tensor is stored once


def test_siamese_trunk_is_stored_once(exports: Callable[[str], Exported]) -> None:
    exported = exports("siamese")
    inits = [i.name for i in exported.proto.graph.initializer]
    assert sorted(inits) == sorted(["trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "trunk.2.bias",
                                    "head.weight", "head.bias"])  # fmt: skip
    uses = [n for n in exported.proto.graph.node if "trunk.0.weight" in n.input]
    assert len(uses) == 2  # both calls read the one initializer


def _transposes(proto: onnx.ModelProto) -> dict[str, int]:
    count: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type == "Transpose":
            count[node.input[0]] = count.get(node.input[0], 0) + 1
    return count


def test_transposed_tie_is_one_initializer_and_a_transpose(exports: Callable[[str], Exported]) -> None:
    exported = exports("tied_autoencoder")
    assert exported.result.transposed == {
        "decoder.0.weight": "encoder.2.weight",
        "decoder.2.weight": "encoder.0.weight",
    }
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in exported.proto.graph.initializer}
    assert sorted(inits) == sorted(["encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias",
                                    "decoder.0.bias", "decoder.2.bias"])  # fmt: skip
    assert _transposes(exported.proto) == {"encoder.2.weight": 1, "encoder.0.weight": 1}
    # and no initializer holds a transposed copy of an encoder weight
    for name in ("encoder.0.weight", "encoder.2.weight"):
        w = exported.model.get_parameter(name).detach().numpy()
        assert not any(a.shape == w.T.shape and (a == w.T).all() for a in inits.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_transposed_copy_is_reported(tmp_path: Path, dtype: torch.dtype) -> None:
    """What PyTorch's exporter does with its optimizer on (folds ``weight.T`` into a new
    initializer): the check names the copy and its source."""
    import onnx_ir
    from onnxscript import optimizer

    from modelspec._onnx import _copies, tie_groups

    model = modelspec.build(ZOO / "tied_autoencoder.yaml", dtype=dtype).eval()
    modelspec.export_onnx(model, tmp_path / "ae.onnx", inputs=(torch.ones(4, 64, dtype=dtype),))
    ir_model = onnx_ir.load(tmp_path / "ae.onnx")
    optimizer.optimize(ir_model)
    copies = _copies(ir_model.graph, model, tie_groups(model))
    assert {(c.of, c.transposed) for c in copies} == {("encoder.0.weight", True), ("encoder.2.weight", True)}


# ------------------------------------------------------------------ the command line
def test_help_has_examples() -> None:
    rc, out, _ = run("export", "--help")
    assert rc == 0 and "examples:" in out and "modelspec export" in out


def test_cli_export_and_replace_own_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "shared.onnx"
    rc, out, err = run("export", str(D2L / "shared.yaml"), "--format", "onnx", "-o", str(target))
    assert rc == 0, err
    proto = onnx.load(str(target))
    assert sorted(i.name for i in proto.graph.initializer) == ["0.bias", "0.weight", "2.bias", "2.weight", "6.bias",
                                                               "6.weight"]  # fmt: skip
    assert str(target) in out
    rc, _, err = run("export", str(D2L / "shared.yaml"), "-o", str(target), "--static-batch")  # its own file
    assert rc == 0, err
    dims = onnx.load(str(target)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 4]


def test_cli_dynamic_batch_is_named(tmp_path: Path) -> None:
    rc, _, err = run("export", str(D2L / "shared.yaml"), "-o", str(tmp_path / "a.onnx"))
    assert rc == 0, err
    session = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 4]
    assert session.get_outputs()[0].name == "output"


def test_cli_build_folder(tmp_path: Path) -> None:
    modelspec.write_build(ZOO / "siamese.yaml", tmp_path / "b")
    rc, _, err = run("export", str(tmp_path / "b"), "-o", str(tmp_path / "s.onnx"))
    assert rc == 0, err
    model = modelspec.load(tmp_path / "b").eval()
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    a, b = torch.randn(5, 16, generator=torch.Generator().manual_seed(0)), torch.randn(5, 16)
    (got,) = session.run(None, {"a": a.numpy(), "b": b.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(a, b), atol=ATOL, rtol=RTOL)


def test_cli_several_models_need_model(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    rc, _, err = run("export", str(D2L / "shared_mlp.yaml"), "-o", str(out))
    assert rc == 2 and "error[no-model]" in err and not out.exists()
    rc, _, err = run("export", str(D2L / "shared_mlp.yaml"), "-o", str(out), "--model", "mlp2")
    assert rc == 0, err
    names = sorted(i.name for i in onnx.load(str(out)).graph.initializer)
    assert names == ["linear.bias", "linear.weight", "shared_layer.0.bias", "shared_layer.0.weight",
                     "shared_layer.2.bias", "shared_layer.2.weight"]  # fmt: skip


NO_INPUT = "modelspec: 1\nname: no-input\nmodel:\n  - Linear: [4, 2]\n"


@pytest.mark.parametrize(
    ("spec_text", "code"),
    [(NO_INPUT, "no-input"), ("modelspec: 1\nname: bad\nmodel:\n  - Lineer: [4, 2]\n", None)],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path: Path, spec_text: str, code: str | None) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    out = tmp_path / "x.onnx"
    rc, _, err = run("export", str(spec), "-o", str(out))
    assert rc == 2
    if code:
        assert f"error[{code}]" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_cli_never_replaces_a_users_file(tmp_path: Path) -> None:
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"\x08\x07not modelspec's")
    rc, _, err = run("export", str(D2L / "shared.yaml"), "-o", str(mine))
    assert rc == 2 and "error[in-the-way]" in err
    assert mine.read_bytes() == b"\x08\x07not modelspec's"
    spec = tmp_path / "s.yaml"
    spec.write_text((D2L / "shared.yaml").read_text())
    rc, _, err = run("export", str(spec), "-o", str(spec), "--force")
    assert rc == 2 and "error[would-overwrite-input]" in err


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_missing_extra_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # 'import onnx' now raises ImportError
    out = tmp_path / "x.onnx"
    rc, _, err = run("export", str(D2L / "shared.yaml"), "-o", str(out))
    assert rc == 2
    assert "error[missing-dependency]" in err and "pip install 'torch-modelspec[onnx]'" in err
    assert not out.exists()


class _HandTied(torch.nn.Module):
    """A handwritten model with a parameter tie registered in the other order (the head first)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(8, 5, bias=False)
        self.embed = torch.nn.Embedding(5, 8)
        self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(idx))


def test_any_module_with_inputs(tmp_path: Path) -> None:
    model = _HandTied()
    result = modelspec.export_onnx(model, tmp_path / "h.onnx", inputs=(torch.zeros(2, 3, dtype=torch.int64),))
    assert result.initializers == {"head.weight": ("head.weight", "embed.weight")}  # the first name, as state_dict
    assert [i.name for i in onnx.load(str(result.path)).graph.initializer] == ["head.weight"]
    with pytest.raises(modelspec.UsageError) as e:
        modelspec.export_onnx(model, tmp_path / "g.onnx")  # no spec, no inputs
    assert e.value.code == "no-input" and not (tmp_path / "g.onnx").exists()


CONV_BN = """\
modelspec: 1
name: conv-bn
input: {shape: [2, 3, 8, 8]}
seed: 0
model:
  - Conv2d: {in_channels: 3, out_channels: 4, kernel_size: 3, bias: false}
  - BatchNorm2d: 4
  - ReLU
"""


def test_buffers_and_constant_fills(tmp_path: Path) -> None:
    """BatchNorm's running statistics are initializers by their names; its step counter is not
    read in eval mode (``missing``); the zero bias the exporter gives a bias-free Conv equals the
    fresh BatchNorm bias but is not a copy of it."""
    model = modelspec.build(CONV_BN)
    result = modelspec.export_onnx(model, tmp_path / "cb.onnx")
    assert result.copies == ()
    assert result.missing == ("1.num_batches_tracked",)
    assert {"1.running_mean", "1.running_var", "1.weight", "1.bias", "0.weight"} <= set(result.initializers)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert model.training  # the export put it in eval mode and back
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model.eval()(x), atol=ATOL, rtol=RTOL)


class _Branches(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1 if x.sum() > 0 else x - 1  # data-dependent: torch.export cannot trace it


class _BatchOfOne(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(3) * 2  # only a batch of 1 fits


def test_export_failure_is_an_error_code_and_silent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(modelspec.ModelspecError) as e:
        modelspec.export_onnx(_Branches(), tmp_path / "b.onnx", inputs=(torch.ones(2, 3),))
    assert e.value.code == "export-failed"
    assert "\x1b" not in str(e.value)  # torch's colours are taken out
    assert list(tmp_path.iterdir()) == []
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")  # torch.export prints a partial graph to stderr: not passed on


def test_a_model_that_fixes_its_batch_exports_with_the_example_shape(tmp_path: Path) -> None:
    result = modelspec.export_onnx(_BatchOfOne(), tmp_path / "one.onnx", inputs=(torch.ones(1, 3),))
    assert not result.dynamic_batch
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3]


def test_cli_set_variables(tmp_path: Path) -> None:
    out = tmp_path / "g.onnx"
    sets = ["n_layer=1", "n_head=2", "d_model=16", "vocab=50", "n_ctx=16"]
    rc, _, err = run("export", str(ZOO / "gpt2.yaml"), "--format", "onnx", "-o", str(out), "--set", *sets)
    assert rc == 0, err
    names = {i.name for i in onnx.load(str(out)).graph.initializer}
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    assert any(n.startswith("transformer.h.0.") for n in names)
    assert not any(n.startswith("transformer.h.1.") for n in names)


def test_cli_set_on_a_build_folder_is_refused(tmp_path: Path) -> None:
    modelspec.write_build(D2L / "shared.yaml", tmp_path / "b")
    rc, _, err = run("export", str(tmp_path / "b"), "-o", str(tmp_path / "x.onnx"), "--set", "n=1")
    assert rc == 2 and "error[bad-usage]" in err and not (tmp_path / "x.onnx").exists()
