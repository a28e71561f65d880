"""The memory estimate (weights, gradients, Adam per dtype) and ``build`` refusing a model too large."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import modelspec
from modelspec import SpecError, UsageError, cli
from modelspec._fmt import human_bytes
from modelspec._shards import parse_size

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "specs" / "zoo" / "lenet.yaml"
LLAMA = ROOT / "specs" / "zoo" / "llama3_70b.yaml"
LENET_PARAMS = 61_706

MIXED = """
modelspec: 1
blocks:
  shared: {Linear: [10, 10]}
model:
  frozen: {Linear: [4, 10], trainable: false}
  a: {use: shared}
  b: {use: shared}
  norm: {BatchNorm1d: 10}
"""
# frozen 50, shared 110 (once), norm weight+bias 20; buffers: running mean/var 20 floats, one int64
TRAINABLE, FROZEN, FLOAT_BUFFERS = 130, 50, 20

HUGE = "modelspec: 1\nmodel:\n  - Linear: [2000000, 2000000]\n"  # 16 TB in float32


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_estimate_of_lenet_per_dtype() -> None:
    est = modelspec.estimate_memory(LENET)
    assert (est.dtype, est.params, est.trainable) == ("float32", LENET_PARAMS, LENET_PARAMS)
    f32, half = est["float32"], est["bfloat16"]
    assert (f32.weights, f32.gradients, f32.adam, f32.training) == (4 * LENET_PARAMS, 4 * LENET_PARAMS,
                                                                    8 * LENET_PARAMS, 16 * LENET_PARAMS)  # fmt: skip
    assert (half.weights, half.training) == (2 * LENET_PARAMS, 8 * LENET_PARAMS)
    assert est["float16"] == half
    assert est.current == f32


def test_estimate_counts_shared_tensors_once_and_frozen_ones_without_gradients() -> None:
    est = modelspec.estimate_memory(MIXED)
    f32 = est["float32"]
    assert f32.weights == 4 * (TRAINABLE + FROZEN + FLOAT_BUFFERS) + 8  # num_batches_tracked stays int64
    assert f32.gradients == 4 * TRAINABLE and f32.adam == 8 * TRAINABLE
    assert est["bfloat16"].weights == 2 * (TRAINABLE + FROZEN + FLOAT_BUFFERS) + 8
    built = modelspec.build(MIXED)
    assert modelspec.estimate_memory(built) == est  # a module gives the same estimate as its spec


def test_estimate_of_a_bfloat16_model_and_of_70b() -> None:
    est = modelspec.estimate_memory(modelspec.build(LENET, dtype="bfloat16"))
    assert est.dtype == "bfloat16" and est.current.weights == 2 * LENET_PARAMS
    big = modelspec.estimate_memory(LLAMA)  # built on meta: nothing allocated
    assert big.params == 70_553_706_496
    assert big["bfloat16"].weights == 2 * 70_553_706_496
    assert big["float32"].training == 16 * 70_553_706_496


@pytest.mark.parametrize("fmt", ["text", "md"])
def test_report_shows_the_estimate(fmt: str) -> None:
    code, out, _ = run("report", str(LENET), "--format", fmt)
    assert code == 0
    row = next(line for line in out.splitlines() if "float16 / bfloat16" in line)
    for value in (2 * LENET_PARAMS, 2 * LENET_PARAMS, 4 * LENET_PARAMS, 8 * LENET_PARAMS):
        assert human_bytes(value) in row


def test_report_json_keeps_its_schema() -> None:
    code, out, _ = run("report", str(LENET), "--format", "json")
    assert code == 0
    assert json.loads(out)["totals"]["training_bytes_adam"] == 16 * LENET_PARAMS


@pytest.mark.parametrize(
    ("text", "size"),
    [("1000", 1000), ("16GB", 16 * 10**9), ("16G", 16 * 10**9), ("512MiB", 512 * 2**20), ("1.5TB", 15 * 10**11),
     ("2 gib", 2 * 2**30), ("10kB", 10_000)],
)  # fmt: skip
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "GB", "-1GB", "1.2.3"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_size(text)
    assert e.value.code == "bad-size"


def test_build_refuses_more_than_max_memory_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "lenet"
    code, _, err = run("build", str(LENET), "-o", str(out), "--max-memory", "100kB")
    assert code == 2
    assert "lenet.yaml:17:5: error[too-large]" in err and human_bytes(4 * LENET_PARAMS) in err  # Linear [400, 120]
    assert "--device meta" in err and "--dtype bfloat16" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert run("build", str(LENET), "-o", str(out), "--max-memory", "1MB")[0] == 0  # 241 KiB fits


def test_build_of_a_model_larger_than_the_machine_is_refused_before_allocating(tmp_path: Path) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text(HUGE)
    code, _, err = run("build", str(spec), "-o", str(tmp_path / "out"))  # default: the memory available
    assert code == 2 and "error[too-large]" in err
    assert not (tmp_path / "out").exists()
    for limit in ("1GB", 10**9):
        with pytest.raises(SpecError) as e:
            modelspec.build(HUGE, max_memory=limit)
        (d,) = e.value.diagnostics
        assert (d.code, d.line, d.column) == ("too-large", 3, 5)  # at the layer that holds the most


def test_max_memory_does_not_apply_on_meta() -> None:
    model = modelspec.build(LENET, device="meta", max_memory=1)
    assert sum(p.numel() for p in model.parameters()) == LENET_PARAMS


def test_bad_max_memory_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("build", str(LENET), "-o", str(tmp_path / "x"), "--max-memory", "plenty")
    assert code == 2 and "error[bad-size]" in err


@pytest.mark.parametrize(
    "spec", ["zoo/gpt2.yaml", "zoo/resnet18.yaml", "zoo/tied_autoencoder.yaml", "d2l/shared_mlp.yaml"]
)
def test_the_check_before_building_agrees_with_the_estimate(spec: str) -> None:
    from modelspec._api import _constructed_estimate, compile_spec

    path = ROOT / "specs" / spec
    overrides = {"n_layer": 1, "vocab": 100} if spec == "zoo/gpt2.yaml" else None
    # constructors only (no example pass, no ties applied): a tied head is still counted once
    assert _constructed_estimate(compile_spec(path, overrides=overrides))[0] == modelspec.estimate_memory(
        path, overrides=overrides
    )
