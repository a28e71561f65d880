"""Graph errors say what is wrong and where: code, file:line:column, and the fix (did-you-mean
where it applies). The corpus (tests/corpus/spec/graph-*.yaml) checks every code and position
through the CLI; these check what the messages and hints must name."""

from __future__ import annotations

import pytest

import modelspec
from modelspec import Diagnostic, SpecError

HEAD = "modelspec: 1\ninput: {shape: [2, 4]}\nmodel:\n"


def refused(text: str, *, build: bool = False) -> list[Diagnostic]:
    with pytest.raises(SpecError) as e:
        modelspec.build(text) if build else modelspec.validate(text)
    return list(e.value.diagnostics)


def test_unknown_input_suggests_the_name() -> None:
    found = refused(HEAD + "  nodes:\n    conv_1: {Linear: [4, 4]}\n    out: {add: null, in: [conv1, x]}\n")
    [d] = [d for d in found if d.code != "unused-node"]  # conv_1 is unused too
    assert (d.code, d.line, d.column, d.hint) == ("unknown-input", 6, 27, "did you mean 'conv_1'?")


def test_a_cycle_is_spelled_out() -> None:
    [d] = refused(
        HEAD + "  nodes:\n    a: {Linear: [4, 4], in: c}\n    b: {Linear: [4, 4]}\n    c: {add: null, in: [b, x]}\n"
    )
    assert (d.code, d.line, d.column) == ("graph-cycle", 5, 5)
    assert "a -> c -> b -> a" in d.message


def test_missing_in_names_the_inputs() -> None:
    [d] = refused(
        HEAD + "  inputs: [x, mask]\n  nodes:\n    a: {masked_fill: 0.0}\n    b: {add: null, in: [a, mask]}\n"
    )
    assert (d.code, d.line, d.column) == ("missing-in", 6, 5)
    assert "x, mask" in d.message and d.hint == "e.g. 'in: x'"


@pytest.mark.parametrize("name", ["code", "graph", "forward", "training", "meta"])
def test_graph_module_attributes_cannot_name_a_layer(name: str) -> None:
    [d] = refused(HEAD + f"  nodes:\n    {name}: {{Linear: [4, 4]}}\n")
    assert (d.code, d.line, d.column) == ("bad-name", 5, 5)
    assert f"'{name}'" in d.message and "GraphModule" in d.message


def test_an_op_may_take_a_name_a_module_cannot() -> None:
    """Ops are not attributes of the GraphModule: only their generated variable is named."""
    model = modelspec.build(HEAD + "  nodes:\n    code: relu\n")
    assert "torch.relu(x)" in model.code


def test_op_shapes_that_do_not_agree_name_the_node_and_the_shapes() -> None:
    [d] = refused(HEAD + "  nodes:\n    a: {Linear: [4, 3]}\n    b: {add: null, in: [a, x]}\n", build=True)
    assert (d.code, d.line, d.column) == ("build-error", 6, 5)
    assert "model.nodes.b" in d.message
    assert d.hint is not None and "[2, 3], [2, 4]" in d.hint and "a, x" in d.hint


def test_a_layer_with_wrong_sizes_in_a_graph_is_pointed_at() -> None:
    [d] = refused(HEAD + "  nodes:\n    a: {cat: 1, in: [x, x]}\n    b: {Linear: [4, 3]}\n", build=True)
    assert (d.code, d.line, d.column) == ("build-error", 6, 5)
    assert d.hint is not None and "in_features=4" in d.hint and "[2, 8]" in d.hint


def test_a_tuple_given_to_a_layer_says_to_pick_an_item() -> None:
    text = "modelspec: 1\ninput: {shape: [2, 5, 4]}\nmodel:\n  nodes:\n    lstm: {LSTM: [4, 3]}\n    fc: {Linear: [3, 2]}\n"
    [d] = refused(text, build=True)
    assert (d.code, d.line, d.column) == ("build-error", 6, 5)
    assert d.hint is not None and "'lstm[0]'" in d.hint and "later version" not in d.hint


def test_a_wrong_example_dtype_names_the_graph_input() -> None:
    text = "modelspec: 1\nmodel:\n  inputs: {ids: {shape: [2, 5]}}\n  nodes:\n    emb: {Embedding: [10, 4]}\n"
    [d] = refused(text, build=True)
    assert d.hint is not None and "'inputs.ids.dtype: int64'" in d.hint


def test_a_lazy_layer_in_a_graph_without_examples_is_missing_input() -> None:
    text = "modelspec: 1\nmodel:\n  inputs: [x, mask]\n  nodes:\n    a: {LazyLinear: 3, in: x}\n    b: {masked_fill: 0.0, in: [a, mask]}\n"
    [d] = refused(text, build=True)
    assert (d.code, d.line, d.column) == ("missing-input", 5, 5)
    assert d.hint is not None and "x: {shape: [...]}" in d.hint and "mask: {shape: [...]}" in d.hint


def test_a_picked_item_that_does_not_exist_is_pointed_at() -> None:
    [d] = refused(HEAD + "  nodes:\n    a: {chunk: 2}\n    b: {relu: null, in: 'a[5]'}\n", build=True)
    assert (d.code, d.line, d.column) == ("build-error", 6, 21)
    assert d.hint == "'a' gives a tuple of 2 items: pick one of a[0] to a[1]"


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("modelspec: 1\nmodel:\n  nodes:\n    a: {Linear: [4, 3]}\n    act: gelu\n    b: {Linear: [5, 3]}\n", 6, 5),
        ("modelspec: 1\nmodel:\n  - {Linear: [4, 3]}\n  - {Dropout: 0.1}\n  - {Linear: [5, 3]}\n", 5, 5),
        ("modelspec: 1\nblocks:\n  head: {Linear: [5, 3]}\nmodel: [{Linear: [4, 3]}, ReLU, {use: head}]\n", 3, 3),
        ("modelspec: 1\nmodel:\n  - {Conv2d: [3, 16, 3]}\n  - {MaxPool2d: 2}\n  - {BatchNorm2d: 8}\n", 5, 5),
        ("modelspec: 1\nmodel:\n  - {Embedding: [10, 8]}\n  - {Linear: [4, 3]}\n", 4, 5),
    ],
)
def test_layers_that_cannot_connect_are_refused_without_an_example(text: str, line: int, column: int) -> None:
    [d] = refused(text)
    assert (d.code, d.line, d.column) == ("cannot-connect", line, column)


@pytest.mark.parametrize(
    "text",
    [
        # sizes the check cannot follow are left to the example pass
        "modelspec: 1\nmodel:\n  - {Linear: [4, 3]}\n  - {BatchNorm1d: 5}\n",  # which dim a BatchNorm1d reads depends on rank
        "modelspec: 1\nmodel:\n  - {Linear: [4, 3]}\n  - Flatten\n  - {Linear: [5, 3]}\n",
        "modelspec: 1\nmodel:\n  nodes:\n    a: {Linear: [4, 3]}\n    b: {cat: -1, in: [a, x]}\n    c: {Linear: [7, 3]}\n",
        "modelspec: 1\nmodel:\n  - {Conv2d: [3, 16, 3]}\n  - {Linear: [5, 3]}\n",  # channels vs the last dim
    ],
)
def test_only_sizes_the_spec_states_are_compared(text: str) -> None:
    modelspec.validate(text)
    modelspec.build(text)


def test_with_an_example_the_pass_reports_instead() -> None:
    [d] = refused(
        "modelspec: 1\ninput: {shape: [2, 4]}\nmodel:\n  - {Linear: [4, 3]}\n  - {Linear: [5, 3]}\n", build=True
    )
    assert d.code == "build-error"


@pytest.mark.parametrize(
    ("nodes", "line", "column", "hint"),
    [
        ("    a: {Linear: [4, 4], in: [x, x]}\n", 5, 25, "give it one input"),  # Linear.forward(input)
        ("    a: {Linear: [4, 4], in: {inp: x}}\n", 5, 30, "did you mean 'input'?"),
        ("    a: {Bilinear: [4, 4, 2]}\n", 5, 5, "e.g. 'in: [input1, input2]'"),  # two inputs, the default gives one
        ("    a: {Sequential: [ReLU], in: [x, x]}\n", 5, 29, "give it one input"),
        ("    g:\n      inputs: [p, q]\n      nodes:\n        s: {add: null, in: [p, q]}\n", 5, 5, "e.g. 'in: [p, q]'"),
    ],
)
def test_a_layer_given_inputs_its_forward_does_not_take_is_bad_arity(
    nodes: str, line: int, column: int, hint: str
) -> None:
    [d] = refused(HEAD + "  nodes:\n" + nodes)
    assert (d.code, d.line, d.column, d.hint) == ("bad-arity", line, column, hint)


def test_a_graph_block_takes_its_inputs_by_position_or_name() -> None:
    text = """modelspec: 1
blocks:
  pair:
    inputs: [p, q]
    nodes:
      s: {sub: null, in: [p, q]}
model:
  inputs: [x, z]
  nodes:
    a: {use: pair, in: {q: x, p: z}}
    b: {use: pair, in: [a, x, z]}
"""
    [d] = refused(text)
    assert (d.code, d.line, d.column) == ("bad-arity", 11, 20)
    import torch

    model = modelspec.build(text.replace("    b: {use: pair, in: [a, x, z]}\n", "    b: {use: pair, in: [a, x]}\n"))
    x, z = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(model(x, z), (z - x) - x, rtol=0, atol=0)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_free_tensor_too_large_to_hold_is_refused_before_allocating(device: str) -> None:
    text = (
        HEAD
        + "  params:\n    p: {shape: [1099511627776, 1099511627776, 4]}\n  nodes:\n    a: {add: null, in: [x, p]}\n"
    )
    with pytest.raises(SpecError) as e:
        modelspec.build(text, device=device)
    [d] = e.value.diagnostics
    assert (d.code, d.line, d.column) == ("too-large", 5, 5)
    assert "param 'p'" in d.message
