"""The node grammar of issue 7 (graphs, ops, module arguments) leaves v1 specs' canonical
hashes unchanged: build folders and reports made before it still match their specs.

The hashes below were computed with the code at commit 8686ceb (the last commit before the
grammar was rewritten), from a plain checkout of that commit (``git archive 8686ceb``), by
``modelspec.compile_spec(...).spec.sha256``. They are hard-coded on purpose: a change to the
canonical form of any v1 node kind makes this test fail.
"""

from __future__ import annotations

import pytest
from conftest import D2L

import modelspec

BEFORE_GRAPHS = {
    "nest_mlp.yaml": "10df7c5dd3485ee7995232b5a006788908485fcd8bd1801e87ca33705001b013",
    "net.yaml": "bbcd873a0270a8a948a28cea8d253728f7b4e327a7cf1ea46b639cd574ffeb6c",
    "shared.yaml": "c83d1467a2c4e161f98372a9b43571878252ed1d79b040e1ef583c98ca1fc18a",
    "shared_mlp.yaml": "90c526c8e53ccc7feb6d9e17f29daec334b6bce22d4082801371ddeebd2791de",
}

#: v1 forms the bundled specs do not use: positional arguments with keywords last, named
#: children inside a block, several models, int64 input, a layer giving a tuple.
TEXTS = {
    "conv": "modelspec: 1\nname: c\nseed: 3\ninput: {shape: [1, 3, 8, 8]}\nmodel:\n"
    "  - Conv2d: [3, 16, {kernel_size: 3, padding: 1}]\n  - {BatchNorm2d: 16}\n  - ReLU\n"
    "  - {Flatten: {start_dim: 1}}\n  - {LazyLinear: 10}\n",
    "children": "modelspec: 1\ndescription: nested\nblocks:\n"
    "  body: {net: [{Linear: [4, 4]}, Tanh], head: {Linear: {in_features: 4, out_features: 2, bias: false}}}\n"
    "models:\n  a: [{use: body}, {Dropout: 0.1}]\n  b: {use: body}\n",
    "embed": "modelspec: 1\ninput: {shape: [2, 5], dtype: int64}\nmodel:\n"
    "  - {Embedding: [10, 4, {padding_idx: 0}]}\n  - {LSTM: {input_size: 4, hidden_size: 3, batch_first: true}}\n",
}
TEXT_BEFORE_GRAPHS = {
    "conv": "1610197884d145c0a5fa9f35a458fc275a11877a978b2ab5b6cce63c064a1bac",
    "children": "51bf0d8c667daec65584434eca8ca37e534dc7dc07f59ca5cfa7226fa2044a9b",
    "embed": "34db03e84a785130a61f10866f28c7e32a10e6e472da3075ef7bf763a3a2759c",
}


@pytest.mark.parametrize("name", sorted(BEFORE_GRAPHS))
def test_bundled_v1_spec_hash_is_unchanged(name: str) -> None:
    assert modelspec.compile_spec(D2L / name).spec.sha256 == BEFORE_GRAPHS[name]


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_v1_forms_hash_is_unchanged(name: str) -> None:
    assert modelspec.compile_spec(TEXTS[name]).spec.sha256 == TEXT_BEFORE_GRAPHS[name]


def test_each_node_kind_is_defined_in_one_class() -> None:
    """Canonical form, graph-entry form, contained nodes and building live on each kind's class,
    and every kind of the union is in the schema's node grammar."""
    import typing

    from modelspec import _nodes

    kinds = typing.get_args(_nodes.Node)
    assert {k.__name__ for k in kinds} == {"Layer", "Seq", "Children", "Use", "Graph", "Repeat"}
    for kind in kinds:
        for method in ("to_data", "entry_data", "subnodes", "build"):
            assert method in vars(kind), (kind.__name__, method)
    assert "to_data" in vars(_nodes.Op) and "entry_data" in vars(_nodes.Op)
    defs = _nodes.schema_defs()
    options = str(defs["Node"]["anyOf"])
    for ref in ("#/$defs/Use", "#/$defs/Children", "#/$defs/Graph", "#/$defs/Layer", "#/$defs/Repeat", "'array'"):
        assert ref in options
    assert defs["Layer"]["properties"]["Linear"] == {"$ref": "#/$defs/layer.Linear"}


@pytest.mark.parametrize("name", ["basic-block", "shared", "encoder", "everything"])
def test_canonical_form_of_a_graph_is_a_spec_with_the_same_hash(name: str) -> None:
    import yaml
    from test_graph_schema import GOOD

    spec = modelspec.compile_spec(GOOD[name]).spec
    again = modelspec.compile_spec(yaml.safe_dump(spec.to_data(), sort_keys=False)).spec
    assert again.sha256 == spec.sha256 and again.to_data() == spec.to_data()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("    a: {Linear: [4, 4], in: x}\n    b: {Linear: [4, 4], in: x}\n", "    b: {Linear: [4, 4], in: x}\n    a: {Linear: [4, 4], in: x}\n"),
        ("  params:\n    p: {shape: [4]}\n    q: {shape: [4]}\n", "  params:\n    q: {shape: [4]}\n    p: {shape: [4]}\n"),
    ],
)  # fmt: skip
def test_the_order_of_graph_nodes_and_tensors_is_in_the_hash(first: str, second: str) -> None:
    """Nodes and free tensors are initialized, and listed in state_dict, in the written order."""
    tail = "    c: {add: null, in: [a, b, p, q]}\n"

    def text(part: str) -> str:
        nodes = "    a: {Linear: [4, 4], in: x}\n    b: {Linear: [4, 4], in: x}\n"
        if part.startswith("  params"):
            return f"modelspec: 1\nmodel:\n{part}  nodes:\n{nodes}{tail}"
        return f"modelspec: 1\nmodel:\n  params:\n    p: {{shape: [4]}}\n    q: {{shape: [4]}}\n  nodes:\n{part}{tail}"

    one, two = modelspec.compile_spec(text(first)).spec, modelspec.compile_spec(text(second)).spec
    assert one.sha256 != two.sha256
    assert list(modelspec.build(text(first)).state_dict()) != list(modelspec.build(text(second)).state_dict())
