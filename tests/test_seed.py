"""Every example of the seed works as a spec, like the handwritten PyTorch (BRIEF rule 5)."""

from __future__ import annotations

import pytest
import torch
from conftest import D2L, SEED_MODELS, bundled_specs, seed_shared_net
from torch import nn

import modelspec


def _forward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    if isinstance(model, nn.ModuleDict):
        return [m(x) for m in model.values()]
    return [model(x)]


@pytest.mark.parametrize("spec_name", sorted(SEED_MODELS))
def test_state_dict_keys_and_shapes_equal_handwritten(spec_name: str) -> None:
    factory, _ = SEED_MODELS[spec_name]
    built = modelspec.build(D2L / spec_name)
    hand = factory()
    assert list(built.state_dict()) == list(hand.state_dict())  # same keys, same order
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in hand.state_dict().items()}


@pytest.mark.parametrize("spec_name", sorted(SEED_MODELS))
def test_handwritten_state_dict_loads_strictly_and_gives_same_output(spec_name: str) -> None:
    factory, shape = SEED_MODELS[spec_name]
    torch.manual_seed(123)
    hand = factory()
    built = modelspec.build(D2L / spec_name)
    built.load_state_dict(hand.state_dict(), strict=True)
    x = torch.rand(shape)
    for a, b in zip(_forward(built, x), _forward(hand, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and back: the built model's state_dict loads into the handwritten one
    hand2 = factory()
    hand2.load_state_dict(built.state_dict(), strict=True)


def test_nest_mlp_keys_are_exactly_the_seeds() -> None:
    built = modelspec.build(D2L / "nest_mlp.yaml")
    assert list(built.state_dict()) == [
        "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "linear.weight", "linear.bias",
    ]  # fmt: skip
    assert next(iter(built.named_parameters()))[1].shape == (64, 20)
    assert isinstance(built.net, nn.Sequential) and isinstance(built.linear, nn.Linear)


def test_net_is_a_real_sequential_with_seed_shapes() -> None:
    net = modelspec.build(D2L / "net.yaml")
    assert type(net) is nn.Sequential
    assert [(n, tuple(p.shape)) for n, p in net.named_parameters()] == [
        ("0.weight", (8, 4)), ("0.bias", (8,)), ("2.weight", (1, 8)), ("2.bias", (1,)),
    ]  # fmt: skip
    assert type(net[2].bias) is nn.Parameter and net[2].weight.grad is None
    assert net(torch.rand(2, 4)).shape == (2, 1)


def test_no_interpretive_overhead_in_forward() -> None:
    """The built modules run torch.nn's forward (a transposed tie keeps its class's forward) or,
    for a graph, torch.fx's generated code: nothing of modelspec runs in forward."""
    for path in bundled_specs():
        model = modelspec.build(path, device="meta")  # the classes are the same on every device
        for m in model.modules():
            if not isinstance(m, torch.fx.GraphModule):
                assert type(m).forward.__module__.startswith("torch.nn"), (path, type(m))
            assert not m._forward_hooks and not m._forward_pre_hooks


def test_shared_seed_behaviour() -> None:
    net = modelspec.build(D2L / "shared.yaml")
    assert net[2] is net[4]
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]  # shared weight once
    assert bool((net[2].weight.data[0] == net[4].weight.data[0]).all())
    net[2].weight.data[0, 0] = 100
    assert net[4].weight.data[0, 0] == 100  # the same object, not just the same value


def test_seed_shared_net_matches_built_structure() -> None:
    hand = seed_shared_net()
    built = modelspec.build(D2L / "shared.yaml")
    assert [type(m).__name__ for m in built] == [type(m).__name__ for m in hand]
    assert (hand[2] is hand[4]) and (built[2] is built[4])
