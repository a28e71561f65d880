"""The committed JSON Schema describes graphs: good graph specs validate, bad forms are
rejected, and an editor can complete what goes inside ``nodes:`` (``in``, ops, layers)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import ROOT
from test_graphs import BASIC_BLOCK, ENCODER, SHARED

import modelspec

SCHEMA = json.loads((ROOT / "schemas" / "modelspec.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

GOOD = {
    "basic-block": BASIC_BLOCK,
    "shared": SHARED,
    "encoder": ENCODER,
    "everything": """modelspec: 1
models:
  lm:
    inputs: {ids: {shape: [2, 6], dtype: int64}, mask: {shape: [2, 6], dtype: bool}}
    params:
      cls: {shape: [1, 1, 8], init: {normal: {std: 0.02}}}
    buffers:
      scale: {shape: [1], init: ones, persistent: false}
      noise: {shape: [8], init: {uniform: {low: -0.1, high: 0.1}}, dtype: float64}
    nodes:
      transformer.wte: {Embedding: [10, 8], in: ids}
      pos: {arange: 1, in: ids}
      transformer.wpe: {Embedding: [6, 8], in: pos}
      h: {add: null, in: [transformer.wte, transformer.wpe, cls]}
      q: {Linear: [8, 8]}
      heads: {unflatten: [-1, [2, 4]], in: q}
      t: {transpose: [1, 2]}
      att: {attention: {is_causal: true}, in: [t, t, t]}
      back: {transpose: {dim0: 1, dim1: 2}}
      flat: {flatten: {start_dim: 2}}
      keep: {unsqueeze: -1, in: mask}
      masked: {masked_fill: 0.0, in: [flat, keep]}
      scaled: {mul: null, in: [masked, scale]}
      lstm: {LSTM: {input_size: 8, hidden_size: 8, batch_first: true}, in: scaled}
      mha: {MultiheadAttention: {embed_dim: 8, num_heads: 2, batch_first: true}, in: {query: 'lstm[0]', key: h, value: h}}
      down: {Sequential: [{Linear: [8, 8]}, ReLU], in: 'mha[0]'}
      inner:
        inputs: [a]
        nodes:
          fc: {Linear: [8, 8]}
          r: relu
      both: {cat: {dim: -1}, in: [inner, noise]}
      last: {select: [1, -1]}
    outputs: [last, 'lstm[1][0]']
""",
}


def errors(doc: Any) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(doc)]


@pytest.mark.parametrize("name", sorted(GOOD))
def test_graph_specs_validate_against_the_schema(name: str) -> None:
    assert errors(yaml.safe_load(GOOD[name])) == []
    modelspec.validate(GOOD[name])  # and the validator agrees


def test_bundled_specs_validate_against_the_schema() -> None:
    specs = sorted((ROOT / "specs").rglob("*.yaml"))
    assert specs
    for spec in specs:
        assert errors(yaml.safe_load(spec.read_text())) == [], spec


def graph(nodes: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"modelspec": 1, "model": {"nodes": nodes, **more}}


@pytest.mark.parametrize(
    "bad",
    [
        graph({"a": "ReLU"}, output="a"),  # unknown graph key
        {"modelspec": 1, "model": {"inputs": ["x"]}},  # no nodes
        graph({"a": {"softmax": {"dim": "last"}}}),  # an op argument of the wrong type
        graph({"a": {"transpose": {"dim0": 0, "dim": 1}}}),  # an unknown op argument
        graph({"a": {"to": {"dtype": "float"}}}),  # not a dtype
        graph({"a": {"addd": None, "in": ["x", "x"]}}),  # unknown op
        graph({"a": {"Lienar": [4, 4]}}),  # unknown layer
        graph({"a": {"Linear": {"in_feature": 4}}}),  # unknown layer argument
        graph({"a": {"Linear": [4, 4], "in": 3}}),  # 'in' is names
        graph({"a": {"Linear": [4, 4], "in": "x[first]"}}),  # not a reference
        graph({"a": {"Linear": [4, 4], "relu": None}}),  # a layer and an op in one entry
        graph({"code": {"Linear": [4, 4]}}),  # a GraphModule attribute
        graph({"a": "ReLU"}, params={"p": {"shape": [4], "init": "randn"}}),
        graph({"a": "ReLU"}, inputs={"x": {"shape": ["2"]}}),
        {"modelspec": 1, "model": [{"Linear": [4, 4], "in": "x"}]},  # 'in' outside a graph
    ],
)
def test_schema_rejects_bad_graph_forms(bad: dict[str, Any]) -> None:
    assert errors(bad)
    with pytest.raises(modelspec.SpecError):
        modelspec.validate(yaml.safe_dump(bad))


def _object_options(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in entry["anyOf"] if o.get("type") == "object" or "$ref" in o]


def test_an_editor_can_complete_node_entries() -> None:
    defs = SCHEMA["$defs"]
    nodes = defs["Graph"]["properties"]["nodes"]
    assert nodes["additionalProperties"] == {"$ref": "#/$defs/GraphEntry"}
    entry = defs["GraphEntry"]
    bare = next(o for o in entry["anyOf"] if o.get("type") == "string")
    assert {"Linear", "ReLU", "add", "softmax", "attention"} <= set(bare["enum"])  # bare layers and ops
    keys: dict[str, set[str]] = {}
    for option in _object_options(entry):
        target = defs[option["$ref"].split("/")[-1]] if "$ref" in option else option
        for key in target.get("properties", {}):
            keys.setdefault(key, set()).update(target.get("properties", {}))
    # every layer and op is offered as a key, each together with 'in'
    from modelspec._ops import OPS
    from modelspec._registry import layer_names

    for name in [*OPS, *layer_names(), "use", "Sequential"]:
        assert name in keys and "in" in keys[name], name
    linear = next(o for o in entry["anyOf"] if "Linear" in o.get("properties", {}))
    ref = linear["properties"]["Linear"]["$ref"]  # the layer's own arguments, completed as outside graphs
    assert ref == defs["Layer"]["properties"]["Linear"]["$ref"] == "#/$defs/layer.Linear"
    softmax = defs["op.softmax"]
    assert "dim" in softmax["anyOf"][-1]["properties"]
    assert set(defs["Graph"]["properties"]) == {"inputs", "nodes", "outputs", "params", "buffers", "trainable"}
    assert {"$ref": "#/$defs/Graph"} in defs["Node"]["anyOf"]
