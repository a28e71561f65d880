"""Shared fixtures: the bundled specs and the seed's handwritten PyTorch models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
D2L = SPECS / "d2l"


# ---- the seed's models, written exactly as in the textbook section -------------
def seed_net() -> nn.Module:
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(1))
    net(torch.rand(size=(2, 4)))
    return net


def seed_shared_net() -> nn.Module:
    shared = nn.LazyLinear(8)
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.LazyLinear(1))
    net(torch.rand(size=(2, 4)))
    return net


class NestMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.linear = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.net(x))


class SharedMLP(nn.Module):
    def __init__(self, shared_layer: nn.Module) -> None:
        super().__init__()
        self.shared_layer = shared_layer
        self.linear = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.shared_layer(x))


def seed_shared_mlp() -> nn.Module:
    shared_layer = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
    return nn.ModuleDict({"mlp1": SharedMLP(shared_layer), "mlp2": SharedMLP(shared_layer)})


#: spec file -> (handwritten model factory, example input shape)
SEED_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "net.yaml": (seed_net, (2, 4)),
    "shared.yaml": (seed_shared_net, (2, 4)),
    "nest_mlp.yaml": (NestMLP, (2, 20)),
    "shared_mlp.yaml": (seed_shared_mlp, (2, 20)),
}


def bundled_specs() -> list[Path]:
    return sorted(SPECS.rglob("*.yaml"))


#: bundled specs far too large to build for real (282 GB), and variables that shrink them
SMALL_VARS: dict[str, dict[str, int]] = {
    "llama3_70b.yaml": {"n_layer": 2, "d_model": 64, "n_head": 8, "n_kv_head": 2, "d_ffn": 96, "vocab": 50},
}


@pytest.fixture
def d2l() -> Path:
    return D2L


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class RecordOps(TorchDispatchMode):
    """Records the name of every aten op run inside it (``with RecordOps() as ops: ...; ops.names``)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch at two intra-op threads for the test, the caller's setting restored after it."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)
