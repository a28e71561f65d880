"""Architecture diagrams: a shared module is drawn once, with an edge from every user.

Each format is parsed back into (nodes, edges) by a small structural reader, so the
same behavioural checks run on Mermaid, DOT and SVG alike.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from conftest import D2L
from torch import nn

import modelspec
from modelspec._graph import to_dot, to_mermaid, to_svg
from modelspec._inventory import Report

SVG_NS = "{http://www.w3.org/2000/svg}"

# id -> label lines; (src, dst, label or None); (a, b) of tie edges
Parsed = tuple[dict[str, list[str]], list[tuple[str, str, str | None]], list[tuple[str, str]]]


def parse_mermaid(text: str) -> Parsed:
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    nodes: dict[str, list[str]] = {}
    edges: list[tuple[str, str, str | None]] = []
    ties: list[tuple[str, str]] = []
    for line in lines[1:]:
        if m := re.fullmatch(r'  (\w+)\["([^"]*)"\]', line):
            assert m[1] not in nodes, f"node {m[1]} declared twice"
            nodes[m[1]] = m[2].split("<br/>")
        elif m := re.fullmatch(r'  (\w+) -->(?:\|"([^"]*)"\|)? (\w+)', line):
            edges.append((m[1], m[3], m[2]))
        elif m := re.fullmatch(r'  (\w+) -\.-\|"[^"]*"\| (\w+)', line):
            ties.append((m[1], m[2]))
        elif line.startswith("  %% "):  # a comment (the line that marks the file as modelspec's)
            continue
        else:
            assert re.fullmatch(r"  (classDef \w+ [^;]+|class [\w,]+ \w+);", line), f"unexpected line: {line!r}"
    return nodes, edges, ties


def _dot_strings_and_braces(text: str) -> str:
    """``text`` with every quoted string blanked; fails on an unterminated string or unbalanced braces."""
    out, i, depth = [], 0, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            j = i + 1
            while text[j] != '"':  # IndexError here means an unterminated string
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        assert depth >= 0, "closing brace before its opening one"
        out.append(c)
        i += 1
    assert depth == 0, "unbalanced braces"
    return "".join(out)


def parse_dot(text: str) -> Parsed:
    bare = _dot_strings_and_braces(text)
    assert bare.startswith("digraph modelspec {") and bare.rstrip().endswith("}")
    labels = iter(re.findall(r'label="((?:[^"\\]|\\.)*)"', text))
    nodes: dict[str, list[str]] = {}
    edges: list[tuple[str, str, str | None]] = []
    ties: list[tuple[str, str]] = []
    for line in bare.splitlines()[1:-1]:
        if line.startswith("  graph "):
            assert "label=" not in line  # the root node names the model
        elif m := re.fullmatch(r"  (\w+) \[label=\"\", .*\];", line):
            assert m[1] not in nodes, f"node {m[1]} declared twice"
            nodes[m[1]] = next(labels).split("\\n")
        elif m := re.fullmatch(r"  (\w+) -> (\w+)( \[.*\])?;", line):
            label = next(labels) if m[3] and "label=" in m[3] else None
            (ties.append((m[1], m[2])) if m[3] and "style=dashed" in m[3] else edges.append((m[1], m[2], label)))
        else:
            assert re.fullmatch(r"  (node|edge) \[.*\];", line), f"unexpected line: {line!r}"
    return nodes, edges, ties


def parse_svg(text: str) -> Parsed:
    root = ET.fromstring(text)
    assert root.tag == SVG_NS + "svg"
    nodes: dict[str, list[str]] = {}
    for g in root.iter(SVG_NS + "g"):
        if "ms-node" in g.get("class", "").split():
            node_id = g.get("id", "").removeprefix("ms-")
            assert node_id not in nodes, f"node {node_id} drawn twice"
            nodes[node_id] = [t.text or "" for t in g.iter(SVG_NS + "text")]
    edges, ties = [], []
    for g in root.iter(SVG_NS + "g"):
        cls = g.get("class", "").split()
        if "ms-edge" in cls:
            shown = [t.text for t in g.iter(SVG_NS + "text")]
            edges.append((g.get("data-from", ""), g.get("data-to", ""), shown[0] if shown else None))
        elif "ms-tie" in cls:
            ties.append((g.get("data-from", ""), g.get("data-to", "")))
    return nodes, edges, ties


FORMATS: dict[str, tuple[Callable[..., str], Callable[[str], Parsed]]] = {
    "mermaid": (to_mermaid, parse_mermaid),
    "dot": (to_dot, parse_dot),
    "svg": (to_svg, parse_svg),
}


def draw(report: Report, fmt: str, depth: int | None = None) -> Parsed:
    render, parse = FORMATS[fmt]
    nodes, edges, ties = parse(render(report, depth))
    for src, dst, _ in edges:  # every edge endpoint is a declared node
        assert src in nodes and dst in nodes, (src, dst)
    for a, b in ties:
        assert a in nodes and b in nodes, (a, b)
    return nodes, edges, ties


def spec_report(name: str) -> Report:
    return modelspec.report(modelspec.build(D2L / name))


class TiedHead(nn.Module):
    """GPT-2's tie: the output head holds the input embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def node_named(report: Report, fmt: str, name: str, depth: int | None = None) -> str:
    """The id of the node whose first label line is ``name`` (exactly one such node)."""
    nodes, _, _ = draw(report, fmt, depth)
    found = [i for i, lines in nodes.items() if lines[0] == name]
    assert len(found) == 1, f"{name!r} drawn {len(found)} times"
    return found[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_shared_layer_is_drawn_once_with_one_edge_per_use(fmt: str) -> None:
    report = spec_report("shared.yaml")  # net[2] is net[4]
    nodes, edges, _ = draw(report, fmt)
    assert len(nodes) == len(report.modules) == 7  # '4' is not a second node
    shared = node_named(report, fmt, "2")
    assert not any(lines[0] == "4" for lines in nodes.values())
    into = [(src, label) for src, dst, label in edges if dst == shared]
    assert [src for src, _ in into] == ["root", "root"]
    assert {label for _, label in into} == {"2", "4"}  # each use says where it is
    assert "shared ×2 (shared)" in nodes[shared]
    assert "121 params" in nodes["root"][1]  # the root counts the shared layer once: 193 is naive


@pytest.mark.parametrize("fmt", FORMATS)
def test_shared_block_across_models_has_an_edge_from_each_model(fmt: str) -> None:
    report = spec_report("shared_mlp.yaml")
    nodes, edges, _ = draw(report, fmt)
    shared = node_named(report, fmt, "shared_layer")
    mlp1, mlp2 = node_named(report, fmt, "mlp1"), node_named(report, fmt, "mlp2")
    assert sorted(src for src, dst, _ in edges if dst == shared) == sorted([mlp1, mlp2])
    # its own layers are drawn once too, each reached only from the shared block
    inner = [dst for src, dst, _ in edges if src == shared]
    assert len(inner) == 4
    for node in inner:
        assert [src for src, dst, _ in edges if dst == node] == [shared]
    assert len(nodes) == len(report.modules)
    assert "shared ×2 (shared_layer)" in nodes[shared]
    assert "3,424 params" in nodes[shared][1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_tied_parameter_marks_both_modules_and_joins_them(fmt: str) -> None:
    report = modelspec.report(TiedHead())
    assert [g.kind for g in report.tie_groups] == ["parameter"]
    nodes, _, ties = draw(report, fmt)
    emb, head = node_named(report, fmt, "emb"), node_named(report, fmt, "head")
    assert ties == [(emb, head)]
    assert "tied: weight ×2" in nodes[emb] and "tied: weight ×2" in nodes[head]
    assert "68 params" in nodes["root"][1]  # 40 + 20 + 8, the tied weight once


def test_styles_mark_shared_and_tied_modules() -> None:
    mermaid = to_mermaid(spec_report("shared_mlp.yaml"))
    assert "  class m_mlp1_shared_layer shared;" in mermaid.splitlines()
    svg = ET.fromstring(to_svg(modelspec.report(TiedHead())))
    styles = {g.get("data-name"): g.get("class") for g in svg.iter(SVG_NS + "g") if g.get("data-name") is not None}
    assert styles["emb"] == styles["head"] == "ms-node ms-tied"
    assert styles["body"] == "ms-node ms-plain"


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_sharing_draws_the_plain_tree(fmt: str) -> None:
    report = spec_report("nest_mlp.yaml")
    nodes, edges, ties = draw(report, fmt)
    assert len(nodes) == len(report.modules) and len(edges) == len(nodes) - 1 and not ties
    assert not any(line.startswith(("shared", "tied")) for lines in nodes.values() for line in lines)


@pytest.mark.parametrize("fmt", FORMATS)
def test_depth_folds_deeper_modules_into_their_ancestors(fmt: str) -> None:
    report = spec_report("shared_mlp.yaml")
    nodes, edges, _ = draw(report, fmt, depth=1)
    assert sorted(lines[0] for lines in nodes.values()) == ["mlp1", "mlp2", "shared-mlp"]
    assert len(edges) == 2
    for model in ("mlp1", "mlp2"):  # parameters below stay counted, shared block included
        lines = nodes[node_named(report, fmt, model, depth=1)]
        assert "3,952 params" in lines[1]
        assert "+6 folded, 1 shared" in lines
    only_root, no_edges, _ = draw(report, fmt, depth=0)
    assert len(only_root) == 1 and not no_edges
    assert FORMATS[fmt][0](report, 99) == FORMATS[fmt][0](report, None)


def test_depth_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="depth"):
        to_svg(spec_report("net.yaml"), depth=-1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_is_deterministic_and_survives_report_json(fmt: str) -> None:
    render = FORMATS[fmt][0]
    first = render(spec_report("shared_mlp.yaml"))
    again = spec_report("shared_mlp.yaml")  # a fresh build: same seed, same report
    assert render(again) == first
    assert render(Report.model_validate_json(again.model_dump_json())) == first


def hostile_report() -> Report:
    """Names that break naive renderers: markup, quotes, backslashes, a Mermaid keyword, id clashes."""
    net = nn.ModuleDict(
        {
            "<script>alert(1)</script>": nn.Linear(2, 2),
            'q"uote\\': nn.Linear(2, 2),
            "end": nn.ReLU(),
            "a": nn.ModuleDict({"b": nn.Linear(2, 2)}),
            "a_b": nn.Linear(2, 2),
            "new\nline": nn.ReLU(),
        }
    )
    return modelspec.report(net)


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_names_are_escaped(fmt: str) -> None:
    report = hostile_report()
    nodes, edges, _ = draw(report, fmt)  # the readers fail on broken quoting or markup
    assert len(nodes) == len(report.modules) and len(edges) == len(nodes) - 1
    assert all(re.fullmatch(r"\w+", i) for i in nodes)
    firsts = {lines[0] for lines in nodes.values()}
    if fmt == "dot":  # inside a quoted DOT string markup is plain text; quote and backslash are escaped
        assert {"<script>alert(1)</script>", 'q\\"uote\\\\'} <= firsts
    else:
        assert "<script>" not in FORMATS[fmt][0](report)
    if fmt == "svg":  # XML escaping round-trips to the real name; a newline is no line break
        assert {"<script>alert(1)</script>", 'q"uote\\', "new?line"} <= firsts


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graphviz_accepts_the_dot() -> None:  # pragma: no cover - only where Graphviz exists
    for report in (spec_report("shared_mlp.yaml"), hostile_report(), modelspec.report(TiedHead())):
        run = subprocess.run(["dot", "-Tsvg"], input=to_dot(report), capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        ET.fromstring(run.stdout)
