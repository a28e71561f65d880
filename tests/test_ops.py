"""Every op of the op table: the built graph computes what the torch expression does, adds no
``state_dict`` keys, and its argument errors point at file:line:column."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import modelspec
from modelspec import SpecError
from modelspec._ops import OPS


@dataclass(frozen=True)
class Case:
    entry: str  # the node's op and arguments, as YAML flow
    inputs: dict[str, tuple[list[int], str]]  # name -> (shape, dtype)
    expect: Callable[..., Any]  # the torch expression on the same inputs
    outputs: str = "out"
    tol: float = 0.0  # exact unless stated


def ab(shape: list[int]) -> dict[str, tuple[list[int], str]]:
    return {"a": (shape, "float32"), "b": (shape, "float32")}


def one(shape: list[int], dtype: str = "float32") -> dict[str, tuple[list[int], str]]:
    return {"x": (shape, dtype)}


CASES: dict[str, list[Case]] = {
    "add": [Case("{add: null, in: [a, b, c]}", {**ab([2, 3]), "c": ([2, 3], "float32")}, lambda a, b, c: a + b + c),
            Case("{add: null, in: [a, b]}", {"a": ([2, 3], "float32"), "b": ([3], "float32")}, lambda a, b: a + b)],
    "sub": [Case("{sub: null, in: [a, b]}", ab([2, 3]), lambda a, b: a - b)],
    "mul": [Case("{mul: null, in: [a, b, c]}", {**ab([2, 3]), "c": ([2, 3], "float32")}, lambda a, b, c: a * b * c)],
    "div": [Case("{div: null, in: [a, b]}", ab([2, 3]), lambda a, b: a / b)],
    "matmul": [Case("{matmul: null, in: [a, b]}", {"a": ([2, 3, 4], "float32"), "b": ([2, 4, 5], "float32")},
                    lambda a, b: a @ b)],
    "neg": [Case("neg", one([2, 3]), lambda x: -x)],
    "abs": [Case("abs", one([2, 3]), torch.abs)],
    "exp": [Case("exp", one([2, 3]), torch.exp)],
    "relu": [Case("relu", one([2, 3]), torch.relu)],
    "sigmoid": [Case("sigmoid", one([2, 3]), torch.sigmoid)],
    "tanh": [Case("tanh", one([2, 3]), torch.tanh)],
    "gelu": [Case("gelu", one([2, 3]), F.gelu), Case("{gelu: {approximate: tanh}}", one([2, 3]),
                                                     lambda x: F.gelu(x, approximate="tanh"))],
    "cat": [Case("{cat: {dim: 1}, in: [a, b]}", ab([2, 3]), lambda a, b: torch.cat([a, b], dim=1)),
            Case("{cat: -1, in: [a, b, a]}", ab([2, 3]), lambda a, b: torch.cat([a, b, a], dim=-1))],
    "stack": [Case("{stack: null, in: [a, b]}", ab([2, 3]), lambda a, b: torch.stack([a, b]))],
    "split": [Case("{split: [2, 1]}", one([2, 5]), lambda x: x.split(2, 1), outputs="['out[0]', 'out[1]', 'out[2]']"),
              Case("{split: {split_size: [1, 4], dim: -1}}", one([2, 5]), lambda x: x.split([1, 4], -1),
                   outputs="['out[0]', 'out[1]']")],
    "chunk": [Case("{chunk: [3, -1]}", one([2, 6]), lambda x: x.chunk(3, -1), outputs="['out[0]', 'out[1]', 'out[2]']")],
    "reshape": [Case("{reshape: [2, -1]}", one([2, 3, 4]), lambda x: x.reshape(2, -1))],
    "view": [Case("{view: {shape: [-1, 4]}}", one([2, 3, 4]), lambda x: x.view(-1, 4))],
    "flatten": [Case("{flatten: {start_dim: 1}}", one([2, 3, 4]), lambda x: x.flatten(1)),
                Case("flatten", one([2, 3, 4]), lambda x: x.flatten())],
    "unflatten": [Case("{unflatten: [-1, [2, 3]]}", one([2, 6]), lambda x: x.unflatten(-1, (2, 3)))],
    "transpose": [Case("{transpose: [1, 2]}", one([2, 3, 4]), lambda x: x.transpose(1, 2))],
    "permute": [Case("{permute: [2, 0, 1]}", one([2, 3, 4]), lambda x: x.permute(2, 0, 1))],
    "contiguous": [Case("contiguous", one([2, 3]), lambda x: x.contiguous())],
    "squeeze": [Case("{squeeze: 1}", one([2, 1, 3]), lambda x: x.squeeze(1))],
    "unsqueeze": [Case("{unsqueeze: {dim: 0}}", one([2, 3]), lambda x: x.unsqueeze(0))],
    "softmax": [Case("{softmax: -1}", one([2, 3]), lambda x: x.softmax(-1))],
    "log_softmax": [Case("{log_softmax: {dim: 1}}", one([2, 3]), lambda x: x.log_softmax(1))],
    "mean": [Case("{mean: {dim: 1, keepdim: true}}", one([2, 3, 4]), lambda x: x.mean(1, keepdim=True), tol=1e-6),
             Case("mean", one([2, 3]), lambda x: x.mean(), tol=1e-6)],
    "sum": [Case("{sum: {dim: [0, 2]}}", one([2, 3, 4]), lambda x: x.sum((0, 2)), tol=1e-6)],
    "select": [Case("{select: [1, -1]}", one([2, 3, 4]), lambda x: x[:, -1])],
    "slice": [Case("{slice: {dim: 1, start: 1, end: 3}}", one([2, 4, 5]), lambda x: x[:, 1:3]),
              Case("{slice: {dim: -1, step: 2}}", one([2, 4, 5]), lambda x: x[..., ::2]),
              Case("{slice: {dim: -2, start: -2}}", one([2, 4, 5]), lambda x: x[..., -2:, :])],
    "to": [Case("{to: int64}", one([2, 3]), lambda x: x.to(torch.int64)),
           Case("{to: {dtype: bool}}", one([2, 3]), lambda x: x.to(torch.bool))],
    "arange": [Case("arange", one([2, 5], "int64"), lambda x: torch.arange(x.size(1))),
               Case("{arange: {dim: 0}}", one([3, 5], "int64"), lambda x: torch.arange(x.size(0)))],
    "causal_mask": [Case("causal_mask", one([2, 4, 3]), lambda x: torch.ones(4, 4, dtype=torch.bool).tril())],
    "attention": [
        Case("{attention: {is_causal: true}, in: [q, k, v]}",
             {n: ([2, 2, 5, 4], "float32") for n in "qkv"},
             lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), tol=1e-6),
        Case("{attention: {scale: 0.5}, in: [q, k, v, m]}",
             {**{n: ([2, 2, 5, 4], "float32") for n in "qkv"}, "m": ([5, 5], "bool")},
             lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.5), tol=1e-6),
    ],
    "masked_fill": [Case("{masked_fill: -.inf, in: [x, m]}", {"x": ([2, 3], "float32"), "m": ([2, 3], "bool")},
                         lambda x, m: x.masked_fill(m, -math.inf))],
    "pairwise_distance": [Case("{pairwise_distance: {p: 1.0}, in: [a, b]}", ab([2, 3]),
                               lambda a, b: F.pairwise_distance(a, b, p=1.0), tol=1e-6)],
    "cosine_similarity": [Case("{cosine_similarity: -1, in: [a, b]}", ab([2, 3]),
                               lambda a, b: F.cosine_similarity(a, b, dim=-1), tol=1e-6)],
}  # fmt: skip

ALL = [(name, i) for name in sorted(CASES) for i in range(len(CASES[name]))]


def spec_text(case: Case) -> str:
    inputs = ", ".join(f"{n}: {{shape: {s}, dtype: {d}}}" for n, (s, d) in case.inputs.items())
    return f"modelspec: 1\nmodel:\n  inputs: {{{inputs}}}\n  nodes:\n    out: {case.entry}\n  outputs: {case.outputs}\n"


def values(case: Case, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in case.inputs.values():
        if dtype == "bool":
            out.append(torch.rand(shape, generator=g) > 0.5)
        elif dtype == "int64":
            out.append(torch.randint(0, 9, shape, generator=g))
        else:
            out.append(torch.randn(shape, generator=g) + 0.1)
    if "q" in case.inputs and "m" in case.inputs:  # every attention row may look somewhere
        out[-1] = out[-1] | torch.eye(out[-1].shape[-1], dtype=torch.bool)
    return out


def test_every_op_has_a_case() -> None:
    assert sorted(CASES) == sorted(OPS)


@pytest.mark.parametrize(("name", "i"), ALL, ids=[f"{n}-{i}" for n, i in ALL])
def test_op_computes_the_torch_expression(name: str, i: int) -> None:
    case = CASES[name][i]
    model = modelspec.build(spec_text(case))
    xs = values(case)
    got, want = model(*xs), case.expect(*xs)
    gots = got if isinstance(got, tuple) else (got,)
    wants = want if isinstance(want, tuple) else (want,)
    assert len(gots) == len(wants)
    for g, w in zip(gots, wants, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        if case.tol:
            torch.testing.assert_close(g, w, rtol=case.tol, atol=case.tol)
        else:
            assert torch.equal(g, w), (g, w)
    # ops hold no tensors: nothing in state_dict, no parameters, no submodules
    assert model.state_dict() == {}
    assert list(model.parameters()) == [] and list(model.children()) == []


@pytest.mark.parametrize(("name", "i"), ALL, ids=[f"{n}-{i}" for n, i in ALL])
def test_op_calls_torch_directly_in_the_generated_forward(name: str, i: int) -> None:
    """The generated code names the torch call; it never looks an op up in a table."""
    code = modelspec.build(spec_text(CASES[name][i])).code
    assert "OPS" not in code and "emit" not in code and "_ops" not in code


def test_ops_add_no_keys_between_layers() -> None:
    text = """modelspec: 1
input: {shape: [2, 4]}
model:
  nodes:
    fc1: {Linear: [4, 6]}
    act: gelu
    parts: {chunk: [2, -1]}
    both: {mul: null, in: ['parts[0]', 'parts[1]']}
    fc2: {Linear: [3, 2]}
"""
    model = modelspec.build(text)
    assert list(model.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    x = torch.randn(2, 4)
    h = F.gelu(model.fc1(x)).chunk(2, -1)
    assert torch.equal(model(x), model.fc2(h[0] * h[1]))


# ------------------------------------------------------------------ argument errors
def diagnose(text: str) -> list[tuple[str, int | None, int | None, str | None]]:
    with pytest.raises(SpecError) as e:
        modelspec.validate(text)
    return [(d.code, d.line, d.column, d.hint) for d in e.value.diagnostics]


HEAD = "modelspec: 1\nmodel:\n  nodes:\n"


@pytest.mark.parametrize(
    ("entry", "code", "column", "hint"),
    [
        ("{transpose: [1, x]}", "wrong-type", 26, None),  # a string for an int: at the value
        ("{softmax: {dim: 1.5}}", "wrong-type", 21, None),  # a float for an int: at the keyword
        ("{mean: {keepdim: 1}}", "wrong-type", 18, None),
        ("{gelu: {approximate: fast}}", "wrong-type", 18, None),
        ("{to: float}", "wrong-type", 11, None),  # not a dtype name (one value: at the op)
        ("{flatten: {start: 1}}", "bad-argument", 21, "did you mean 'start_dim'?"),
        ("{softmax: {dims: 1}}", "bad-argument", 21, "did you mean 'dim'?"),
        ("{transpose: [1]}", "missing-argument", 11, None),
        ("{transpose: [0, 1, 2]}", "bad-argument", 29, None),  # too many: at the extra one
        ("{relu: 1}", "bad-argument", 11, None),  # takes no argument
    ],
)
def test_op_argument_errors_point_at_the_argument(entry: str, code: str, column: int, hint: str | None) -> None:
    found = diagnose(HEAD + f"    out: {entry}\n")
    assert [(c, ln, col) for c, ln, col, _ in found] == [(code, 4, column)]
    if hint is not None:
        assert found[0][3] == hint


@pytest.mark.parametrize(
    ("entry", "column"),
    [
        ("{sub: null, in: [x, x, x]}", 22),  # two inputs, three given: at 'in'
        ("{matmul: null, in: x}", 25),  # two inputs, one given
        ("{attention: null, in: [x, x]}", 28),  # three or four
        ("{add: null, in: [x]}", 22),
        ("{neg: null, in: [x, x]}", 22),
        ("{cat: 0}", 5),  # the default input is one: the node itself is pointed at
    ],
)
def test_wrong_number_of_inputs_is_bad_arity(entry: str, column: int) -> None:
    found = diagnose(HEAD + f"    out: {entry}\n")
    assert [(c, ln, col) for c, ln, col, _ in found] == [("bad-arity", 4, column)]


def test_unknown_op_suggests_the_op() -> None:
    found = diagnose(HEAD + "    out: {trnspose: [0, 1]}\n")
    assert found == [("unknown-op", 4, 11, "did you mean 'transpose'?")]
    found = diagnose(HEAD + "    out: softmx\n")
    assert [(c, ln, col) for c, ln, col, _ in found] == [("unknown-op", 4, 5)]  # a bare op: at its node
    assert found[0][3] == "did you mean 'softmax'?"


def test_ops_take_inputs_as_a_list_not_by_name() -> None:
    found = diagnose(HEAD + "    out: {sub: null, in: {a: x, b: x}}\n")
    assert [c for c, *_ in found] == ["wrong-type"]


def test_a_slip_for_an_op_is_not_taken_for_a_named_child() -> None:
    found = diagnose(HEAD + "    out: {atention: {is_causal: true}, in: [x, x, x]}\n")
    assert [(c, ln, col, h) for c, ln, col, h in found] == [("unknown-op", 4, 11, "did you mean 'attention'?")]
    # a named child whose name is close to an op still is a named child
    model = modelspec.build(HEAD + "    block: {relu1: ReLU}\n")
    assert isinstance(model.block.relu1, torch.nn.ReLU)


def test_attention_dropout_applies_only_in_training() -> None:
    text = (
        "modelspec: 1\nmodel:\n  inputs: {q: {shape: [2, 2, 5, 4]}}\n"
        "  nodes:\n    out: {attention: {dropout_p: 0.5}, in: [q, q, q]}\n"
    )
    model = modelspec.build(text)
    q = torch.randn(2, 2, 5, 4)
    model.eval()
    torch.testing.assert_close(model(q), F.scaled_dot_product_attention(q, q, q), rtol=1e-6, atol=1e-6)
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(q), F.scaled_dot_product_attention(q, q, q))
    assert model.state_dict() == {}
