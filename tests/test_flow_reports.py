"""Data flow in reports and diagrams: graph modules' nodes and edges, drawn with each block once.

``report.flows`` is read from each ``torch.fx.GraphModule``'s graph, so it is the same for
a built model, a loaded one and a report.json read back. Mermaid, DOT and SVG are parsed
back by small structural readers: inputs, layers, ops, free tensors and outputs, the
skip edge of a residual block, and transposed ties drawn unlike same ties.
"""

from __future__ import annotations

import operator
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.fx as fx
from conftest import write
from tie_models import AUTOENCODER
from torch import nn

import modelspec
from modelspec._graph import to_dot, to_mermaid, to_svg
from modelspec._html import render_html
from modelspec._inventory import Flow, FlowEdge, FlowNode, Report
from modelspec._report import render_json, render_md

SVG_NS = "{http://www.w3.org/2000/svg}"

RESIDUAL = """\
modelspec: 1
name: residual
input: {shape: [2, 8, 6, 6]}
blocks:
  block:
    nodes:
      conv1: {Conv2d: [8, 8, 3, {padding: 1, bias: false}]}
      bn1: {BatchNorm2d: 8}
      relu: {ReLU: {inplace: true}}
      conv2: {Conv2d: [8, 8, 3, {padding: 1, bias: false}], in: relu}
      bn2: {BatchNorm2d: 8}
      sum: {add: null, in: [bn2, x]}
      out: {relu: null, in: sum}
      scaled: {mul: null, in: [out, scale]}
    params:
      scale: {shape: [1], init: ones}
    outputs: scaled
model:
  - use: block
  - use: block
  - Flatten
"""

SIAMESE = """\
modelspec: 1
name: siamese
blocks:
  trunk: [{Linear: [4, 4]}, ReLU]
model:
  inputs: {a: {shape: [2, 4]}, b: {shape: [2, 4]}}
  nodes:
    ea: {use: trunk, in: a}
    eb: {use: trunk, in: b}
    dist: {pairwise_distance: null, in: [ea, eb]}
    both: {cat: {dim: 1}, in: [ea, eb]}
  outputs: [dist, both]
"""

TIED_HEAD = """\
modelspec: 1
name: tied-head
model:
  inputs: {idx: {shape: [2, 8], dtype: int64}}
  nodes:
    transformer.wte: {Embedding: [50, 16], in: idx}
    transformer.ln_f: {LayerNorm: 16}
    lm_head: {Linear: [16, 50, {bias: false}]}
ties:
  - {param: lm_head.weight, to: transformer.wte.weight}
"""


def _report(tmp_path: Path, text: str, name: str = "spec.yaml") -> Report:
    return modelspec.report(modelspec.build(write(tmp_path, text, name)))


# ------------------------------------------------------------------ report.flows
def test_residual_block_flow_has_its_skip_edge_and_is_listed_once(tmp_path: Path) -> None:
    r = _report(tmp_path, RESIDUAL)
    assert [f.module for f in r.flows] == ["0"]  # the block is used at '0' and '1': one flow
    (flow,) = r.flows
    assert [(n.name, n.kind, n.target) for n in flow.nodes] == [
        ("x", "input", "x"),
        ("scale", "tensor", "scale"),
        ("conv1", "module", "conv1"),
        ("bn1", "module", "bn1"),
        ("relu", "module", "relu"),
        ("conv2", "module", "conv2"),
        ("bn2", "module", "bn2"),
        ("sum_1", "function", "add"),  # fx renames 'sum' (a builtin)
        ("out", "function", "relu"),
        ("scaled", "function", "mul"),
        ("output", "output", "output"),
    ]
    edges = [(e.src, e.dst) for e in flow.edges]
    assert ("x", "sum_1") in edges and ("bn2", "sum_1") in edges  # the skip edge and the main path
    assert ("scale", "scaled") in edges and ("scaled", "output") in edges
    assert len(edges) == len(set(edges)) == 11


def test_flow_records_constant_arguments_and_dotted_targets(tmp_path: Path) -> None:
    r = _report(tmp_path, SIAMESE)
    nodes = {n.name: n for n in r.flows[0].nodes}
    assert (nodes["both"].kind, nodes["both"].target, nodes["both"].args) == ("function", "cat", "dim=1")
    assert (nodes["ea"].kind, nodes["ea"].target, nodes["eb"].target) == ("module", "ea", "eb")
    head = _report(tmp_path, TIED_HEAD, "head.yaml")
    targets = [n.target for n in head.flows[0].nodes if n.kind == "module"]
    assert targets == ["transformer.wte", "transformer.ln_f", "lm_head"]
    assert [n.name for n in head.flows[0].nodes if n.kind == "module"] == ["transformer_wte", "transformer_ln_f",
                                                                           "lm_head"]  # fmt: skip


def test_flows_of_a_loaded_model_and_of_any_graph_module(tmp_path: Path) -> None:
    out = tmp_path / "build"
    modelspec.write_build(write(tmp_path, RESIDUAL), out)
    built = _report(tmp_path, RESIDUAL, "again.yaml")
    assert modelspec.report(modelspec.load(out)).flows == built.flows
    assert Report.model_validate_json((out / "report.json").read_text(encoding="utf-8")).flows == built.flows

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).transpose(0, 1) + x.t()

    traced = modelspec.report(nn.Sequential(fx.symbolic_trace(Net())))
    assert traced.flows[0].module == "0"
    assert [(n.kind, n.target, n.args) for n in traced.flows[0].nodes] == [
        ("input", "x", ""),
        ("module", "fc", ""),
        ("method", "transpose", "0, 1"),
        ("method", "t", ""),
        ("function", "add", ""),
        ("output", "output", ""),
    ]


def test_a_flow_naming_what_is_not_there_is_refused(tmp_path: Path) -> None:
    r = _report(tmp_path, RESIDUAL)
    flow = r.flows[0]
    bad = r.model_copy(update={"flows": [flow.model_copy(update={
        "edges": [*flow.edges, FlowEdge(src="bn2", dst="nowhere"), FlowEdge(src="output", dst="conv1")],
        "nodes": [*flow.nodes, FlowNode(name="extra", kind="module", target="conv9")],
    }), Flow(module="nope", nodes=[], edges=[])]})  # fmt: skip
    with pytest.raises(modelspec.ReportError) as e:
        modelspec._consistency.read_report(render_json(bad))
    paths = [p for p, _ in e.value.problems]
    assert "flows[0].edges[11].dst" in paths
    assert "flows[0].edges[12]" in paths
    assert "flows[0].nodes[11].target" in paths
    assert "flows[1].module" in paths and "flows[1].nodes" in paths


# ------------------------------------------------------------------ diagram readers
# (id, shape) of nodes; (src, dst, label) of edges; (src, dst, transposed) of ties
Parsed = tuple[dict[str, str], list[tuple[str, str, str | None]], list[tuple[str, str, bool]]]
_MERMAID_SHAPES = {('["', '"]'): "module", ('(["', '"])'): "op", ('[/"', '"/]'): "io", ('[("', '")]'): "tensor"}


def parse_mermaid(text: str) -> Parsed:
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str, str | None]] = []
    ties: list[tuple[str, str, bool]] = []
    for line in lines[1:]:
        if m := re.fullmatch(r'  (\w+)(\["|\(\["|\[/"|\[\(")[^"]*("\]|"\]\)|"/\]|"\)\])', line):
            assert m[1] not in nodes, f"node {m[1]} declared twice"
            nodes[m[1]] = _MERMAID_SHAPES[(m[2], m[3])]
        elif m := re.fullmatch(r'  (\w+) -->(?:\|"([^"]*)"\|)? (\w+)', line):
            edges.append((m[1], m[3], m[2]))
        elif m := re.fullmatch(r'  (\w+) -\.(-|->)\|"[^"]*"\| (\w+)', line):
            ties.append((m[1], m[3], m[2] == "->"))
        else:
            assert re.fullmatch(r"  (%% .*|classDef \w+ [^;]+;|class [\w,]+ \w+;|linkStyle \d+ [^;]+;)", line), line
    return nodes, edges, ties


def parse_dot(text: str) -> Parsed:
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str, str | None]] = []
    ties: list[tuple[str, str, bool]] = []
    for line in text.splitlines()[4:-1]:
        if m := re.fullmatch(r"  (\w+) \[label=(.*)\];", line):
            shape = re.search(r", shape=(\w+)", line)
            nodes[m[1]] = {None: "module", "ellipse": "op", "parallelogram": "io", "cylinder": "tensor"}[
                shape[1] if shape else None
            ]
        elif m := re.fullmatch(r"  (\w+) -> (\w+)( \[.*\])?;", line):
            attrs = m[3] or ""
            if "style=dotted" in attrs or "style=dashed" in attrs:
                ties.append((m[1], m[2], "style=dotted" in attrs))
            else:
                label = re.search(r'label="((?:[^"\\]|\\.)*)"', attrs)
                edges.append((m[1], m[2], label[1] if label else None))
        else:
            raise AssertionError(f"unexpected line: {line!r}")
    return nodes, edges, ties


def parse_svg(text: str) -> Parsed:
    root = ET.fromstring(text)
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str, str | None]] = []
    ties: list[tuple[str, str, bool]] = []
    for g in root.iter(SVG_NS + "g"):
        cls = g.get("class", "").split()
        if "ms-node" in cls or "ms-flow" in cls:
            node_id = g.get("id", "").removeprefix("ms-")
            assert node_id not in nodes, f"node {node_id} drawn twice"
            nodes[node_id] = "module" if "ms-node" in cls else cls[1].removeprefix("ms-")
        elif "ms-edge" in cls:
            shown = [t.text for t in g.iter(SVG_NS + "text")]
            edges.append((g.get("data-from", ""), g.get("data-to", ""), shown[0] if shown else None))
        elif "ms-tie" in cls:
            ties.append((g.get("data-from", ""), g.get("data-to", ""), "ms-transposed" in cls))
    return nodes, edges, ties


FORMATS: dict[str, tuple[Callable[..., str], Callable[[str], Parsed]]] = {
    "mermaid": (to_mermaid, parse_mermaid),
    "dot": (to_dot, parse_dot),
    "svg": (to_svg, parse_svg),
}


def draw(report: Report, fmt: str, depth: int | None = None) -> Parsed:
    render, parse = FORMATS[fmt]
    text = render(report, depth)
    assert render(Report.model_validate_json(render_json(report)), depth) == text  # deterministic, from JSON too
    nodes, edges, ties = parse(text)
    for src, dst, _ in edges:
        assert src in nodes and dst in nodes, (src, dst)
    return nodes, edges, ties


# ------------------------------------------------------------------ diagrams
@pytest.mark.parametrize("fmt", FORMATS)
def test_residual_block_is_drawn_once_with_its_data_flow(tmp_path: Path, fmt: str) -> None:
    nodes, edges, ties = draw(_report(tmp_path, RESIDUAL), fmt)
    block, x, add = "m_0", "f_0__x", "f_0__sum_1"
    assert [n for n in nodes if n.startswith("m_1")] == []  # the second use is an edge, not a copy
    assert [(s, d) for s, d, _ in edges if d == block] == [("root", block), ("root", block)]
    assert nodes[x] == "io" and nodes[add] == "op" and nodes["f_0__scale"] == "tensor"
    assert nodes["f_0__output"] == "io" and nodes["m_0_conv1"] == "module"
    pairs = {(s, d) for s, d, _ in edges}
    assert {(block, x), (x, "m_0_conv1"), ("m_0_conv1", "m_0_bn1"), ("m_0_bn2", add), (x, add)} <= pairs
    assert (block, "m_0_conv1") not in pairs  # the data flow replaces the containment edge
    assert not ties


@pytest.mark.parametrize("fmt", FORMATS)
def test_block_called_twice_in_a_graph_is_drawn_once_with_each_call_named(tmp_path: Path, fmt: str) -> None:
    nodes, edges, _ = draw(_report(tmp_path, SIAMESE), fmt)
    assert "m_ea" in nodes and "m_eb" not in nodes
    into = sorted((s, label) for s, d, label in edges if d == "m_ea")
    assert into == [("f_root__a", "ea"), ("f_root__b", "eb")]
    out = sorted((d, label) for s, d, label in edges if s == "m_ea" and d.startswith("f_"))
    assert out == [("f_root__both", "ea"), ("f_root__both", "eb"), ("f_root__dist", "ea"), ("f_root__dist", "eb")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_transposed_tie_is_drawn_unlike_a_same_tie(tmp_path: Path, fmt: str) -> None:
    _, _, ties = draw(_report(tmp_path, AUTOENCODER), fmt)
    assert ties == [("m_encoder", "m_decoder", True)]
    nodes, edges, ties = draw(_report(tmp_path, TIED_HEAD, "head.yaml"), fmt)
    assert ties == [("m_transformer_wte", "m_lm_head", False)]
    assert "m_transformer" not in nodes  # the container of dotted names is not a step of the flow
    assert ("f_root__idx", "m_transformer_wte") in {(s, d) for s, d, _ in edges}


@pytest.mark.parametrize("fmt", FORMATS)
def test_folded_graph_draws_no_flow(tmp_path: Path, fmt: str) -> None:
    r = _report(tmp_path, RESIDUAL)
    assert set(draw(r, fmt)[0].values()) == {"module", "io", "op", "tensor"}
    nodes, _, _ = draw(r, fmt, depth=1)  # the block's layers are folded away, so is its flow
    assert set(nodes.values()) == {"module"}


def test_markdown_and_html_show_the_flow_and_the_ties(tmp_path: Path) -> None:
    r = _report(tmp_path, AUTOENCODER)
    md = render_md(r)
    assert "  m_encoder -.->|" in md and '  f_root__x[/"x"/]' in md
    page = render_html(r)
    assert render_html(r) == page
    assert '<table id="param-ties">' in page and "<td>transposed</td>" in page
    assert 'class="ms-flow ms-io" id="ms-f_root__x"' in page and 'class="ms-tie ms-transposed"' in page


def test_graph_reading_an_attribute_that_is_no_tensor_of_the_report() -> None:
    """A graph may read any attribute (here a submodule): recorded as a constant; the report reads back."""
    root = nn.Module()
    root.fc = nn.Linear(2, 2)
    g = fx.Graph()
    x = g.placeholder("x")
    fc = g.get_attr("fc")
    g.output(g.call_function(operator.getitem, ((x, fc), 0)))
    r = modelspec.report(fx.GraphModule(root, g))
    assert [(n.kind, n.target) for n in r.flows[0].nodes][1] == ("constant", "fc")
    assert modelspec._consistency.read_report(render_json(r)) == r
    assert parse_mermaid(to_mermaid(r))[0]["f_root__fc"] == "tensor"
