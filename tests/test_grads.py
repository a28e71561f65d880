"""The seed's open question, answered with numbers: per-use gradients add up to .grad."""

from __future__ import annotations

import copy
import io
import json

import torch
from conftest import D2L

import modelspec
from modelspec.cli import main


def test_per_use_contributions_match_untied_reference() -> None:
    net = modelspec.build(D2L / "shared.yaml")
    untied = copy.deepcopy(net)
    untied[4] = copy.deepcopy(untied[2])
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    result = modelspec.grads(net, x)
    untied(x).sum().backward()

    (group,) = result.groups
    assert group.block == "shared" and [s.site for s in group.sites] == ["2", "4"]
    norms = {s.site: s.norms for s in group.sites}
    for tensor, untied_name in (("2.weight", "weight"), ("2.bias", "bias")):
        assert abs(norms["2"][tensor] - float(getattr(untied[2], untied_name).grad.double().norm())) < 1e-6
        assert abs(norms["4"][tensor] - float(getattr(untied[4], untied_name).grad.double().norm())) < 1e-6
        assert group.rel_error[tensor] < 1e-6  # the sum of the uses equals .grad
    expected = untied[2].weight.grad + untied[4].weight.grad
    torch.testing.assert_close(net[2].weight.grad, expected, rtol=1e-6, atol=1e-7)
    assert not list(net[2]._forward_hooks) and type(net[2]).__name__ == "Linear"  # the model is left as it was


def test_contributions_across_two_models() -> None:
    m = modelspec.build(D2L / "shared_mlp.yaml")
    result = modelspec.grads(m, batch=7, loss="mse")
    (group,) = result.groups
    assert [s.site for s in group.sites] == ["mlp1.shared_layer", "mlp2.shared_layer"]
    assert group.max_rel_error < 1e-6
    assert result.input_shape == [7, 20]


def test_nested_shared_blocks_are_accounted_for_completely() -> None:
    m = modelspec.build("""
modelspec: 1
input: {shape: [3, 4]}
blocks:
  inner: {Linear: [4, 4]}
  outer: [{use: inner}, Tanh, {use: inner}]
model: [{use: outer}, Tanh, {use: outer}, {use: inner}]
""")
    result = modelspec.grads(m)
    (group,) = result.groups  # the inner block holds the only tensors
    assert len(group.sites) == 5  # 2 uses in outer x 2 uses of outer, and one direct use
    assert group.max_rel_error < 1e-6


def test_grads_cli(tmp_path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["grads", str(D2L / "shared.yaml"), "--batch", "3", "--format", "json"], stdout=out, stderr=err) == 0
    payload = json.loads(out.getvalue())
    assert payload["input_shape"] == [3, 4] and payload["groups"][0]["block"] == "shared"
    out = io.StringIO()
    assert main(["grads", str(D2L / "shared.yaml")], stdout=out, stderr=err) == 0
    assert "per-use contributions" in out.getvalue() and "relative difference" in out.getvalue()


def test_grads_with_input_file(tmp_path) -> None:
    import safetensors.torch

    path = tmp_path / "x.safetensors"
    safetensors.torch.save_file({"input": torch.rand(6, 4)}, str(path))
    out = io.StringIO()
    assert main(["grads", str(D2L / "shared.yaml"), "--input", str(path), "--format", "json"], stdout=out,
                stderr=io.StringIO()) == 0  # fmt: skip
    assert json.loads(out.getvalue())["input_shape"] == [6, 4]


def test_grads_puts_running_statistics_back() -> None:
    m = modelspec.build("modelspec: 1\ninput: {shape: [4, 3]}\nblocks:\n  s: {Linear: [3, 3]}\n"
                        "model: [{use: s}, {BatchNorm1d: 3}, {use: s}]\n")  # fmt: skip
    before = {k: v.clone() for k, v in m.state_dict().items()}
    result = modelspec.grads(m, batch=8)
    assert result.groups[0].max_rel_error < 1e-6
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
