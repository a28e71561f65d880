"""Sharing is explicit and by name; copies are never tied (BRIEF rules 1, 2, 4)."""

from __future__ import annotations

import copy

import torch
from conftest import D2L, write
from torch import nn

import modelspec


def _untied_copy(net: nn.Sequential) -> nn.Sequential:
    """The same network and weights, but position 4 gets its own copy of the shared layer."""
    untied = copy.deepcopy(net)
    untied[4] = copy.deepcopy(untied[2])
    assert untied[2] is not untied[4]
    return untied


def test_shared_gradient_is_sum_of_per_use_gradients() -> None:
    net = modelspec.build(D2L / "shared.yaml")
    untied = _untied_copy(net)
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
    net(x).sum().backward()
    untied(x).sum().backward()
    expected_w = untied[2].weight.grad + untied[4].weight.grad
    expected_b = untied[2].bias.grad + untied[4].bias.grad
    torch.testing.assert_close(net[2].weight.grad, expected_w, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(net[2].bias.grad, expected_b, rtol=1e-6, atol=1e-7)
    assert net[4].weight.grad is net[2].weight.grad
    # and each use does contribute: neither alone equals the sum
    assert not torch.allclose(untied[2].weight.grad, expected_w)


def test_yaml_alias_makes_independent_copies(tmp_path) -> None:
    spec = write(
        tmp_path,
        """
modelspec: 1
model:
  - &h {Linear: [8, 8]}
  - ReLU
  - *h
""",
    )
    net = modelspec.build(spec)
    assert net[0] is not net[2]
    assert net[0].weight is not net[2].weight
    assert len(list(net.parameters())) == 4
    assert not torch.equal(net[0].weight, net[2].weight)  # separately initialized
    net[0].weight.data.zero_()
    assert net[2].weight.abs().sum() > 0


def test_alias_of_a_use_still_shares_by_name(tmp_path) -> None:
    """Copying a {use: b} node copies the reference, which still names the one block."""
    spec = write(
        tmp_path,
        """
modelspec: 1
blocks:
  b: {Linear: [4, 4]}
model:
  - &u {use: b}
  - *u
""",
    )
    net = modelspec.build(spec)
    assert net[0] is net[1]


def test_shared_mlp_models_hold_the_same_block() -> None:
    m = modelspec.build(D2L / "shared_mlp.yaml")
    assert isinstance(m, nn.ModuleDict) and list(m) == ["mlp1", "mlp2"]
    assert m["mlp1"].shared_layer is m["mlp2"].shared_layer
    assert m["mlp1"].linear is not m["mlp2"].linear
    x = torch.rand(3, 20)
    (m["mlp1"](x).sum() + m["mlp2"](x).sum()).backward()
    g = m["mlp1"].shared_layer[0].weight.grad
    assert g is not None and g is m["mlp2"].shared_layer[0].weight.grad


def test_nested_blocks_share_inner_block(tmp_path) -> None:
    spec = write(
        tmp_path,
        """
modelspec: 1
blocks:
  inner: {Linear: [4, 4]}
  outer:
    - use: inner
    - ReLU
model:
  a: {use: outer}
  b: {use: inner}
  c: {Linear: [4, 4]}
""",
    )
    m = modelspec.build(spec)
    assert m.a[0] is m.b
    info = modelspec.build_info(m)
    assert info is not None
    assert info.block_sites == {"inner": ("a.0", "b"), "outer": ("a",)}


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = modelspec.build(D2L / "shared.yaml")
    assert torch.equal(torch.get_rng_state(), before)
    b = modelspec.build(D2L / "shared.yaml")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_seed_changes_values(tmp_path) -> None:
    text = (D2L / "shared.yaml").read_text()
    other = modelspec.build(write(tmp_path, text.replace("seed: 0", "seed: 1")))
    base = modelspec.build(D2L / "shared.yaml")
    assert not torch.equal(other[0].weight, base[0].weight)


def test_meta_build_allocates_nothing_but_has_real_shapes() -> None:
    net = modelspec.build(D2L / "shared_mlp.yaml", device="meta")
    assert all(p.is_meta for p in net.parameters())
    assert net["mlp1"].shared_layer is net["mlp2"].shared_layer
    rep = modelspec.report(net)
    assert rep.totals.unique_params == sum(p.numel() for p in net.parameters())
    assert all(e.sha256 is None and e.stats is None for e in rep.tensors)


def test_dtype_keeps_ties() -> None:
    net = modelspec.build(D2L / "shared.yaml", dtype="float64")
    assert net[2] is net[4] and net[2].weight.dtype == torch.float64


def test_example_pass_leaves_every_tensor_real_and_tied(tmp_path) -> None:
    """The size check runs on meta stand-ins; the real (tied) tensors must all come back."""
    m = modelspec.build("""
modelspec: 1
input: {shape: [2, 4]}
blocks:
  shared: {Linear: [4, 4]}
model: [{use: shared}, {BatchNorm1d: 4}, {use: shared}]
""")
    assert {t.device.type for t in [*m.parameters(), *m.buffers()]} == {"cpu"}
    assert m[0] is m[2] and m[0].weight is m[2].weight
    assert int(m[1].num_batches_tracked) == 0
