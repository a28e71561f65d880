"""Frozen parameters (``requires_grad=False``) last: the checkpoint records them under its
digest, ``load`` restores them, the reports count trainable and frozen parameters, ``diff``
reports a change of trainability (exit 1), and a tie cannot join a frozen parameter to a
trainable one. Modules are frozen by hand here; ``trainable: false`` in a spec does the same."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from conftest import D2L, write
from torch import nn

import modelspec
from modelspec._checkpoint import open_checkpoint
from modelspec._errors import CheckpointError, SpecError
from modelspec._report import render_md, render_text
from modelspec.cli import main

SHARED = """\
modelspec: 1
input: {shape: [2, 4]}
blocks:
  shared: {Linear: [8, 8]}
model:
  - Linear: [4, 8]
  - use: shared
  - ReLU
  - use: shared
  - Linear: [8, 1]
"""


def frozen_build(tmp_path: Path) -> tuple[nn.Module, Path]:
    out = tmp_path / "b"
    net = modelspec.write_build(write(tmp_path, SHARED), out).module
    net[1].requires_grad_(False)  # the shared block: both uses
    net[4].bias.requires_grad_(False)
    modelspec.save(net, out)
    return net, out


def test_checkpoint_records_frozen_parameters(tmp_path: Path) -> None:
    _, out = frozen_build(tmp_path)
    ckpt = open_checkpoint(out / "model.safetensors")
    assert json.loads(ckpt.metadata["frozen"]) == ["1.bias", "1.weight", "4.bias"]  # canonical names only
    assert ckpt.frozen == {"1.weight", "1.bias", "4.bias"}


def test_load_restores_requires_grad(tmp_path: Path) -> None:
    _, out = frozen_build(tmp_path)
    loaded = modelspec.load(out)
    assert loaded[1] is loaded[3]
    grads = {n: p.requires_grad for n, p in loaded.named_parameters(remove_duplicate=False)}
    assert grads == {"0.weight": True, "0.bias": True, "1.weight": False, "1.bias": False,
                     "3.weight": False, "3.bias": False, "4.weight": True, "4.bias": False}  # fmt: skip
    loaded(torch.rand(2, 4)).sum().backward()
    assert loaded[1].weight.grad is None and loaded[0].weight.grad is not None


def test_the_digest_covers_the_frozen_list(tmp_path: Path) -> None:
    _, out = frozen_build(tmp_path)
    path = out / "model.safetensors"
    data = path.read_bytes()
    edited = data.replace(b'"frozen":"[\\"1.bias\\", \\"1.weight\\", \\"4.bias\\"]"',
                          b'"frozen":"[\\"1.bias\\", \\"1.weight\\", \\"0.bias\\"]"')  # fmt: skip
    assert edited != data and len(edited) == len(data)
    path.write_bytes(edited)
    with pytest.raises(CheckpointError) as e:
        modelspec.load(out)
    assert e.value.code == "metadata-mismatch"


def test_reports_count_trainable_and_frozen(tmp_path: Path) -> None:
    _, out = frozen_build(tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["frozen_params"] == 8 * 8 + 8 + 1
    assert report["totals"]["trainable_params"] == 4 * 8 + 8 + 8
    grads = {t["name"]: t["requires_grad"] for t in report["tensors"]}
    assert grads == {"0.weight": True, "0.bias": True, "1.weight": False, "1.bias": False, "4.weight": True,
                     "4.bias": False}  # fmt: skip
    rep = modelspec.report(modelspec.load(out))
    assert "| trainable / frozen | 48 / 73 |" in render_md(rep)
    assert "48 / 73" in render_text(rep)
    assert "48 / 73" in (out / "report.md").read_text()


def test_diff_reports_a_change_of_trainability(tmp_path: Path) -> None:
    before = tmp_path / "before"
    modelspec.write_build(write(tmp_path, SHARED), before)
    _, after = frozen_build(tmp_path)
    d = modelspec.diff(before, after)
    assert [(c.name, c.before, c.after) for c in d.trainable] == [
        ("1.bias", "True", "False"),
        ("1.weight", "True", "False"),
        ("4.bias", "True", "False"),
    ]
    out, err = io.StringIO(), io.StringIO()
    assert main(["diff", str(before), str(after)], stdout=out, stderr=err) == 1
    assert "~ trainable `1.weight`" in out.getvalue() or "~ trainable 1.weight" in out.getvalue()
    out = io.StringIO()
    assert main(["diff", str(after), str(after)], stdout=out, stderr=io.StringIO()) == 0


def test_a_zoo_model_frozen_by_hand_round_trips(tmp_path: Path) -> None:
    net = modelspec.write_build(D2L / "nest_mlp.yaml", tmp_path / "n").module
    net.net.requires_grad_(False)
    modelspec.save(net, tmp_path / "n")
    loaded = modelspec.load(tmp_path / "n")
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in net.parameters()]
    assert modelspec.report(loaded).totals.frozen_params == 20 * 64 + 64 + 64 * 32 + 32


FROZEN = """\
modelspec: 1
input: {shape: [2, 4]}
blocks:
  shared: {Linear: [8, 8], trainable: false}
model:
  - Linear: [4, 8]
  - use: shared
  - ReLU
  - use: shared
  - {Linear: [8, 1], trainable: false}
"""


def test_trainable_false_in_a_spec_lasts(tmp_path: Path) -> None:
    out = tmp_path / "f"
    res = modelspec.write_build(write(tmp_path, FROZEN), out)
    assert json.loads(open_checkpoint(out / "model.safetensors").metadata["frozen"]) == [
        "1.bias", "1.weight", "4.bias", "4.weight"]  # fmt: skip
    assert res.report.totals.frozen_params == 72 + 9 and res.report.totals.trainable_params == 40
    loaded = modelspec.load(out)
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == {
        "0.weight": True, "0.bias": True, "1.weight": False, "1.bias": False, "4.weight": False, "4.bias": False}  # fmt: skip
    before = tmp_path / "t"
    modelspec.write_build(write(tmp_path, SHARED, "trained.yaml"), before)
    out_text = io.StringIO()
    assert main(["diff", str(before), str(out)], stdout=out_text, stderr=io.StringIO()) == 1
    assert out_text.getvalue().count("~ trainable") == 4


def test_a_tie_between_frozen_and_trainable_is_an_error(tmp_path: Path) -> None:
    text = """\
modelspec: 1
model:
  wte: {Embedding: [10, 4], trainable: false}
  lm_head: {Linear: [4, 10, false]}
ties:
  - {param: lm_head.weight, to: wte.weight}
"""
    spec = write(tmp_path, text)
    for check in (modelspec.build, modelspec.validate):
        with pytest.raises(SpecError) as e:
            check(spec)
        assert e.value.codes == ["trainable-conflict"]


def test_init_and_transfer_reach_frozen_parameters(tmp_path: Path) -> None:
    modelspec.write_build(write(tmp_path, "modelspec: 1\nmodel: [{Linear: [8, 16]}]\n", "trunk.yaml"), tmp_path / "tb")
    text = """\
modelspec: 1
model:
  body: {Sequential: [{Linear: [8, 16]}], trainable: false}
  head: {Linear: [16, 2], trainable: false}
init:
  - {params: 'body.*', from: tb, rename: {body: ''}}
  - {layer: Linear, params: 'head.*', constant: {value: 0.5}}
"""
    m = modelspec.build(write(tmp_path, text))
    assert torch.equal(m.body[0].weight, modelspec.load(tmp_path / "tb")[0].weight)
    assert (m.head.weight == 0.5).all() and not any(p.requires_grad for p in m.parameters())
