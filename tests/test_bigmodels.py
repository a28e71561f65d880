"""Big models and fast starts: the bundled LeNet and Llama-3-70B-shaped specs against handwritten
twins, the 70B count on ``meta``, which PyTorch modules a build imports, and ``materialize``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import modelspec
from modelspec import SpecError

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "specs" / "zoo" / "lenet.yaml"
LLAMA = ROOT / "specs" / "zoo" / "llama3_70b.yaml"
SMALL = {"n_layer": 2, "d_model": 64, "n_head": 8, "n_kv_head": 2, "d_ffn": 96, "vocab": 50}


# ---- the handwritten twins ---------------------------------------------------------------------
def lenet() -> nn.Sequential:
    """LeNet-5 as the textbook writes it."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10),
    )  # fmt: skip


class Attention(nn.Module):
    """Grouped-query attention as Hugging Face's Llama writes it (repeat_kv), without rotary embeddings."""

    def __init__(self, d: int, n_head: int, n_kv: int) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.hs = n_head, n_kv, d // n_head
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, n_kv * self.hs, bias=False)
        self.v_proj = nn.Linear(d, n_kv * self.hs, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(b, t, self.n_kv, self.hs).transpose(1, 2)  # (B, kv, T, hs)
        v = self.v_proj(x).view(b, t, self.n_kv, self.hs).transpose(1, 2)
        rep = self.n_head // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # head h reads kv head h // rep
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, d: int, ffn: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, d: int, n_head: int, n_kv: int, ffn: int) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(d, eps=1e-5)
        self.self_attn = Attention(d, n_head, n_kv)
        self.post_attention_layernorm = nn.RMSNorm(d, eps=1e-5)
        self.mlp = MLP(d, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Inner(nn.Module):
    def __init__(self, vocab: int, d: int, n_layer: int, n_head: int, n_kv: int, ffn: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Layer(d, n_head, n_kv, ffn) for _ in range(n_layer))
        self.norm = nn.RMSNorm(d, eps=1e-5)


class Llama(nn.Module):
    def __init__(self, vocab: int, d_model: int, n_layer: int, n_head: int, n_kv_head: int, d_ffn: int) -> None:
        super().__init__()
        self.model = Inner(vocab, d_model, n_layer, n_head, n_kv_head, d_ffn)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(self.model.norm(x))


def _random_(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ---- LeNet -------------------------------------------------------------------------------------
def test_lenet_spec_is_the_textbook_lenet() -> None:
    built, twin = modelspec.build(LENET), lenet()
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [(k, v.shape) for k, v in twin.state_dict().items()]
    assert sum(p.numel() for p in built.parameters()) == 61_706
    _random_(twin)
    built.load_state_dict(twin.state_dict(), strict=True)
    twin.load_state_dict(built.state_dict(), strict=True)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(built(x), twin(x), rtol=1e-5, atol=1e-6)


# ---- the Llama-3-70B-shaped spec ---------------------------------------------------------------
def test_llama_has_70b_parameters_on_meta() -> None:
    model = modelspec.build(LLAMA, device="meta")
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 70_553_706_496
    assert len(params) == 723
    assert params["model.layers.79.self_attn.k_proj.weight"].shape == (1024, 8192)
    assert params["model.layers.0.mlp.down_proj.weight"].shape == (8192, 28672)
    assert model.lm_head.weight is not params["model.embed_tokens.weight"]  # untied head
    assert all(p.is_meta for p in params.values())
    assert modelspec.report(model).totals.unique_params == 70_553_706_496


def test_small_llama_is_the_twin() -> None:
    built = modelspec.build(LLAMA, **SMALL)
    twin = Llama(**SMALL)
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [(k, v.shape) for k, v in twin.state_dict().items()]
    _random_(twin)
    built.load_state_dict(twin.state_dict(), strict=True)
    twin.load_state_dict(built.state_dict(), strict=True)
    tokens = torch.randint(0, SMALL["vocab"], (2, 7), generator=torch.Generator().manual_seed(3))
    out = built(tokens)
    assert out.shape == (2, 7, SMALL["vocab"])
    torch.testing.assert_close(out, twin(tokens), rtol=1e-4, atol=1e-5)


def test_small_llama_materializes_bit_for_bit() -> None:
    model = modelspec.build(LLAMA, device="meta", **SMALL)
    modelspec.materialize(model)
    eager = modelspec.build(LLAMA, **SMALL)
    for (k, a), (k2, b) in zip(model.state_dict().items(), eager.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k


def test_materialize_restores_a_parameter_tie() -> None:
    gpt = ROOT / "specs" / "zoo" / "gpt2.yaml"
    small = {"n_layer": 1, "n_head": 2, "d_model": 16, "vocab": 40, "n_ctx": 16}
    model = modelspec.materialize(modelspec.build(gpt, device="meta", **small))
    assert model.lm_head.weight is model.transformer.wte.weight
    eager = modelspec.build(gpt, **small)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), eager.state_dict().values(), strict=True))


# ---- what a build imports ----------------------------------------------------------------------
def _imports_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which of PyTorch's heavy modules it imported."""
    probe = code + "\nimport json, sys\nprint(json.dumps({m: m in sys.modules for m in ('sympy', 'torch._dynamo')}))"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        f"import modelspec; modelspec.build({str(LENET)!r})",  # the example pass runs for real
        f"import modelspec; modelspec.build({str(LENET)!r}, device='meta')",  # on CPU stand-ins
        f"import modelspec; modelspec.report(modelspec.build({str(LLAMA)!r}, device='meta'))",
        f"import modelspec; modelspec.build({str(ROOT / 'specs/d2l/shared.yaml')!r}, max_memory='available')",
    ],
    ids=["lenet-cpu", "lenet-meta", "llama-meta-report", "lazy-with-memory-check"],
)
def test_a_build_does_not_import_dynamo_or_sympy(code: str) -> None:
    # PyTorch's meta kernels and its dispatch-mode wrapper import both on first use (2-4 s)
    assert _imports_after(code) == {"sympy": False, "torch._dynamo": False}


# ---- the example pass on CPU stand-ins keeps every diagnostic -----------------------------------
BAD = """
modelspec: 1
input: {shape: [2, 1, 28, 28]}
model:
  - Conv2d: [1, 6, 5]
  - Flatten
  - Linear: [100, 10]
"""


def test_a_shape_error_reads_the_same_on_meta_and_on_cpu() -> None:
    found = []
    for device in ("cpu", "meta"):
        with pytest.raises(SpecError) as e:
            modelspec.build(BAD, device=device)
        # the message ends with PyTorch's own words, which its meta kernels phrase differently
        found.append([(d.code, d.line, d.column, d.message.split(": ")[0], d.hint) for d in e.value.diagnostics])
    assert found[0] == found[1]
    assert found[0][0][:3] == ("build-error", 7, 5)


def test_meta_build_holds_no_values_after_its_check_on_cpu() -> None:
    model = modelspec.build(LENET, device="meta")
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
