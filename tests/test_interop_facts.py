"""What keeps ties and what does not, outside modelspec (README: "What keeps ties and what does not").

Each test shows one fact about PyTorch or a library around it, measured on a built model, and
then what modelspec offers instead. If a new release changes a fact, its test fails: update the
README's table with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch as st
import torch
import torch.nn as nn

import modelspec

ROOT = Path(__file__).resolve().parent.parent
GPT2 = ROOT / "specs" / "zoo" / "gpt2.yaml"
TINY_VARS = {"n_layer": 2, "n_head": 2, "d_model": 16, "vocab": 64, "n_ctx": 16}

SHARED_TWICE = """
modelspec: 1
name: shared-twice
input: {shape: [16, 64]}
seed: 0
blocks:
  shared: {Linear: [64, 64]}
model:
  - use: shared
  - Tanh
  - use: shared
"""

SHARED_BATCHNORM = """
modelspec: 1
name: shared-batchnorm
input: {shape: [4, 8]}
seed: 0
blocks:
  bn: {BatchNorm1d: 8}
model:
  - Linear: [8, 8]
  - use: bn
  - Linear: [8, 8]
  - use: bn
"""


def _head_and_embedding(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return model.get_submodule("lm_head").weight, model.get_submodule("transformer.wte").weight


# ---- torch.export: a saved and loaded program has two Parameters on one storage -----------------
def test_export_load_separates_tied_parameters(tmp_path: Path) -> None:
    model = modelspec.build(GPT2, **TINY_VARS)
    program = torch.export.export(model, (torch.zeros(1, 8, dtype=torch.int64),))
    torch.export.save(program, tmp_path / "gpt.pt2")
    loaded = torch.export.load(tmp_path / "gpt.pt2").module()
    head, wte = _head_and_embedding(loaded)
    assert head is not wte  # two Parameters: an optimizer would step them apart
    assert head.data_ptr() == wte.data_ptr()  # ... that still share their storage
    assert len(list(loaded.parameters())) == len(list(model.parameters())) + 1

    # modelspec: retie restores one Parameter (from the spec's ties), after checking the values agree
    modelspec.retie(loaded, spec=GPT2)
    head, wte = _head_and_embedding(loaded)
    assert head is wte
    assert len(list(loaded.parameters())) == len(list(model.parameters()))


# ---- autocast: the weight cache sums a tied gradient in bfloat16 -----------------------------------
def _grad(net: nn.Module, x: torch.Tensor, *, cache: bool) -> torch.Tensor:
    net.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, cache_enabled=cache):
        y = net(x)
    y.float().square().sum().backward()
    return net[0].weight.grad.clone()


def test_autocast_cache_sums_a_tied_gradient_in_bfloat16() -> None:
    net = modelspec.build(SHARED_TWICE)
    assert net[0] is net[2]
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    cached, uncached = _grad(net, x, cache=True), _grad(net, x, cache=False)
    # Both runs compute the same two per-use gradients in bfloat16. Without the cache each use
    # has its own cast, and the two are added in float32 (exactly); with it, both flow into the one
    # cached bfloat16 weight and are added there: the float32 sum rounded to bfloat16.
    torch.testing.assert_close(cached, uncached.bfloat16().float(), rtol=2**-8, atol=0)  # within one bf16 step
    relative = ((cached - uncached).norm() / uncached.norm()).item()
    assert relative > 1e-4  # 1.8e-3 measured: the size of bfloat16 rounding, not float32's


# ---- torchinfo counts a module shared by two parents once per parent --------------------------------
class _Pair(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def test_torchinfo_counts_a_shared_module_more_than_once() -> None:
    torchinfo = pytest.importorskip("torchinfo")  # in the test extra only: not a dependency of modelspec
    models = modelspec.build(ROOT / "specs" / "d2l" / "shared_mlp.yaml")
    pair = _Pair(models["mlp1"], models["mlp2"])
    summary = torchinfo.summary(pair, input_data=torch.zeros(2, 20), verbose=0)
    unique = sum(p.numel() for p in pair.parameters())
    assert unique == 4_480
    assert summary.total_params > unique  # 11,856 with torchinfo 1.8.0
    # modelspec: each tensor once, and what counting every name would give
    totals = modelspec.report(pair).totals
    assert totals.unique_params == 4_480
    assert totals.naive_params > totals.unique_params


# ---- safetensors: load_model fails on a shared BatchNorm's num_batches_tracked ---------------------
def test_safetensors_load_model_fails_on_a_shared_batchnorm(tmp_path: Path) -> None:
    net = modelspec.build(SHARED_BATCHNORM)
    assert net[1] is net[3]
    st.save_model(net, str(tmp_path / "bn.safetensors"))  # saves: each shared tensor once
    with pytest.raises(RuntimeError, match=r"num_batches_tracked"):
        st.load_model(modelspec.build(SHARED_BATCHNORM), str(tmp_path / "bn.safetensors"))

    # modelspec: its own checkpoint round trip keeps the shared module and its buffers
    with torch.no_grad():
        net.train()(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)))  # updates the running stats
    modelspec.save(net, tmp_path / "build")
    loaded = modelspec.load(tmp_path / "build")
    assert loaded[1] is loaded[3]
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert int(loaded[1].num_batches_tracked) == 2  # one shared module, used twice in the pass
