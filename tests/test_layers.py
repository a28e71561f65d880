"""The layers modelspec ships (modelspec.layers): named in specs like torch.nn classes, checked
by the registry, and equal to what they replace.

CausalSelfAttention is compared with the attention written as a graph in specs/zoo/gpt2.yaml:
the graph's weights are loaded into the layer (strict, same keys) and both run on one input.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
import torch
import yaml
from conftest import ROOT

import modelspec
from modelspec import SpecError, SpecWarning
from modelspec._schema import render_schemas
from modelspec.layers import CausalSelfAttention

#: Both run the same float32 operations (one matmul for q, k, v; SDPA; one matmul out) in a
#: slightly different order of views; 1e-5 is far below what a wrong head split or mask gives.
ATOL = 1e-5

HEAD = "modelspec: 1\nname: t\n"


def _find_attention(value: Any) -> dict[str, Any] | None:
    """The graph under a key 'attn' whose nodes start with c_attn: GPT-2's attention."""
    if isinstance(value, dict):
        attn = value.get("attn")
        if isinstance(attn, dict) and "c_attn" in attn.get("nodes", {}):
            return attn
        children = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        found = _find_attention(child)
        if found is not None:
            return found
    return None


def _gpt2_attention_graph() -> torch.nn.Module:
    doc = yaml.safe_load((ROOT / "specs" / "zoo" / "gpt2.yaml").read_text())
    attn = _find_attention(doc["model"])
    assert attn is not None, "specs/zoo/gpt2.yaml no longer writes the attention as a graph 'attn' with c_attn"
    spec: dict[str, Any] = {"modelspec": 1, "name": "gpt2-attn", "seed": 0}
    if "vars" in doc:  # the fragment may use the file's variables (d_model, n_head, ...)
        spec["vars"] = doc["vars"]
    spec["model"] = {"inputs": {"x": {"shape": [1, 8, 768]}}, **attn}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecWarning)  # e.g. variables the fragment does not use
        return modelspec.build(json.dumps(spec) + "\n")


def test_causal_self_attention_equals_gpt2_graph_attention() -> None:
    graph = _gpt2_attention_graph().eval()
    layer = CausalSelfAttention(768, 12).eval()
    assert list(layer.state_dict()) == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]
    layer.load_state_dict(graph.state_dict(), strict=True)
    graph.load_state_dict(layer.state_dict(), strict=True)
    x = torch.randn(2, 10, 768, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = graph(x), layer(x)
    assert got.shape == (2, 10, 768)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    # causal: changing the last position changes nothing before it
    x2 = x.clone()
    x2[:, -1] += 1
    with torch.no_grad():
        torch.testing.assert_close(layer(x2)[:, :-1], got[:, :-1], rtol=0, atol=ATOL)


def test_shipped_layer_in_a_spec_builds_with_gpt2_names() -> None:
    spec = HEAD + "input: {shape: [2, 5, 64]}\nmodel:\n  attn: {CausalSelfAttention: {n_embd: 64, n_head: 4}}\n"
    net = modelspec.build(spec)
    assert isinstance(net.attn, CausalSelfAttention)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        "attn.c_attn.weight": (192, 64),
        "attn.c_attn.bias": (192,),
        "attn.c_proj.weight": (64, 64),
        "attn.c_proj.bias": (64,),
    }
    assert net(torch.zeros(2, 5, 64)).shape == (2, 5, 64)
    no_bias = modelspec.build(HEAD + "model: [{CausalSelfAttention: [64, 4, false]}]\n")
    assert list(no_bias.state_dict()) == ["0.c_attn.weight", "0.c_proj.weight"]


def test_shipped_layer_arguments_are_checked() -> None:
    spec = HEAD + "model:\n  - CausalSelfAttention: {n_embd: 64, n_heads: 4}\n  - CausalSelfAttention: [64, 4.5]\n"
    with pytest.raises(SpecError) as info:
        modelspec.validate(spec)
    found = {(d.code, d.line, d.column) for d in info.value.diagnostics}
    assert ("bad-argument", 4, 39) in found  # n_heads: did you mean n_head
    assert ("wrong-type", 5, 31) in found  # 4.5 is not an int
    hints = [d.hint for d in info.value.diagnostics if d.code == "bad-argument"]
    assert hints == ["did you mean 'n_head'?"]
    with pytest.raises(SpecError) as info:
        modelspec.build(HEAD + "model: [{CausalSelfAttention: [64, 5]}]\n")  # 64 is not a multiple of 5
    assert info.value.codes == ["build-error"]


def test_shipped_layers_are_in_the_committed_schema_and_not_shadowable() -> None:
    layers = json.loads((ROOT / "schemas" / "modelspec.schema.json").read_text())["$defs"]
    entry = layers["layer.CausalSelfAttention"]
    assert entry["description"].startswith("modelspec.layers.CausalSelfAttention(n_embd, n_head, bias, dropout)")
    assert (
        "CausalSelfAttention" in json.loads(render_schemas()["modelspec.schema.json"])["$defs"]["Layer"]["properties"]
    )

    class CausalSelfAttention(torch.nn.Module):
        pass

    with pytest.raises(modelspec.UsageError) as info:
        modelspec.register_layer(CausalSelfAttention)
    assert info.value.code == "shadowed-layer"


def test_dropout_only_in_training() -> None:
    layer = CausalSelfAttention(16, 2, dropout=0.5)
    x = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(0))
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)
    with pytest.raises(ValueError):
        CausalSelfAttention(16, 2, dropout=1.0)
