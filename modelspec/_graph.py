"""Architecture diagrams of a :class:`~modelspec.inventory.Report`: Mermaid, Graphviz DOT and SVG.

The diagram is the module graph, not the module tree: a module reachable under several
names (a shared block) is drawn **once**, with one edge from every parent that uses it,
each edge labelled with the attribute name it is used under when that is not obvious.
Tie groups from the report are marked: a shared module gets the ``shared`` style and a
"shared ×N" tag, modules inside it get ``inshared``, and modules that hold one parameter
between them (a tied output head) get ``tied`` plus a dashed undirected edge.

A parameter read transposed by another module (a tied autoencoder) marks both modules
``transposed`` and joins them with a dotted arrow from the source to the reader.

Inside a graph module (``report.flows``) the diagram shows the data flow: the graph's
inputs, its layers (the module nodes themselves, so a shared block is still drawn once,
with an arrow from each call, labelled by the call's name), its ops, free tensors and
output as small nodes, joined in the order values pass between them (skip edges and
branches included). When ``depth`` hides a layer a graph calls, that graph is drawn
folded, as any module.

Everything is derived from ``report.modules`` (names and aliases), ``report.tensors`` and
``report.flows``, so a ``report.json`` read back with ``Report.model_validate_json`` draws
the same picture.
Output is deterministic: same report, same bytes.

>>> print(to_mermaid(report))            # doctest: +SKIP
flowchart TD
  root["d2l-shared<br/>Sequential · 121 params"]
  m_2["2<br/>Linear · 72 params<br/>shared ×2 (shared)"]
  root -->|"2"| m_2
  root -->|"4"| m_2
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field

from ._fmt import MARKER, human_count
from ._inventory import Report

__all__ = ["to_dot", "to_mermaid", "to_svg"]


@dataclass
class _Node:
    id: str
    name: str  # canonical module name ('' for the root)
    aliases: list[str]
    type: str
    block: str | None
    params: int  # parameter elements inside (subtree), each tensor counted once
    style: str = "plain"  # root | shared | tied | transposed | inshared | plain; flow nodes: op | io | tensor
    tags: list[str] = field(default_factory=list)
    hidden: int = 0  # modules folded into this one by ``depth``
    hidden_shared: int = 0  # of those, shared modules
    flow: list[str] | None = None  # a data-flow node (op, input, output, free tensor): its label lines


@dataclass(frozen=True)
class _Edge:
    src: str
    dst: str
    label: str  # the attribute path the child is used under, relative to the parent; flow: the call
    show_label: bool
    flow: bool = False  # a value passed in a graph module's forward (not a containment edge)


@dataclass(frozen=True)
class _Graph:
    title: str
    nodes: list[_Node]
    edges: list[_Edge]
    ties: list[tuple[str, str, str, bool]]  # (node id, node id, label, transposed): one parameter in both


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


def _printable(text: str) -> str:
    # Module names can be any str without '.', newlines included; no format should break on them.
    return "".join(c if c.isprintable() else "?" for c in text)


def _fmt_params(n: int) -> str:
    return (f"{n:,}" if n < 100_000 else human_count(n)) + " params"


def _node_ids(names: list[str]) -> dict[str, str]:
    """Ids safe in Mermaid, DOT and XML: ``m_`` + the name with every non-word character as ``_``.

    The prefix keeps ids off Mermaid keywords (``end``) and off digits; clashes
    (``a.b`` vs ``a_b``) get a numeric suffix, in module order so ids are stable.
    """
    ids: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        base = "root" if name == "" else "m_" + re.sub(r"\W", "_", name, flags=re.ASCII)
        candidate, k = base, 2
        while candidate in used:
            candidate, k = f"{base}_{k}", k + 1
        used.add(candidate)
        ids[name] = candidate
    return ids


def _graph(report: Report, depth: int | None) -> _Graph:
    """The visible module graph of ``report`` folded at ``depth`` (None: everything)."""
    if depth is not None and depth < 0:
        raise ValueError(f"depth must be >= 0 or None, got {depth}")
    mods = report.modules
    canon = {alias: m.name for m in mods for alias in m.aliases}  # every name -> its module
    ids = _node_ids([m.name for m in mods])

    # A shared module is as shallow as its shallowest use; folding keeps it if any use is visible.
    visible = {m.name for m in mods if depth is None or min(_depth(a) for a in m.aliases) <= depth}

    def visible_owner(alias: str) -> tuple[str, str]:
        """(the name at or above ``alias`` that reaches a visible module, that module's canonical name)."""
        while alias and (alias not in canon or canon[alias] not in visible):
            alias = _parent(alias)
        return alias, canon.get(alias, "")

    # Parameters inside each module: walk every alias of every tensor up to the root, so a
    # shared tensor counts once per module however many of its names pass through it.
    inside: dict[str, set[int]] = {m.name: set() for m in mods}
    for i, t in enumerate(report.tensors):
        if t.kind != "parameter":
            continue
        for alias in t.aliases:
            prefix = alias
            while prefix:
                prefix = _parent(prefix)
                if prefix in canon:
                    inside[canon[prefix]].add(i)

    nodes = {
        m.name: _Node(
            id=ids[m.name],
            name=m.name,
            aliases=list(m.aliases),
            type=m.type,
            block=m.block,
            params=sum(report.tensors[i].numel for i in sorted(inside[m.name])),
            style="root" if m.name == "" else ("inshared" if len(m.aliases) > 1 else "plain"),
        )
        for m in mods
        if m.name in visible
    }
    # A folded module counts under every visible module that reaches it (a hidden shared
    # block is inside both models that use it), and shared ones are counted apart.
    shared_sites = {canon[s] for g in report.tie_groups if g.kind == "module" for s in g.sites if s in canon}
    for m in mods:
        if m.name not in visible:
            for owner in dict.fromkeys(visible_owner(a)[1] for a in m.aliases):
                nodes[owner].hidden += 1
                nodes[owner].hidden_shared += m.name in shared_sites

    ties: list[tuple[str, str, str, bool]] = []
    for g in report.tie_groups:
        if g.kind == "module":
            site = next((canon[s] for s in g.sites if s in canon), None)
            if site is not None and site in nodes:
                node = nodes[site]
                node.style = "shared"
                node.tags.append(f"shared ×{len(g.sites)}" + (f" ({g.block})" if g.block else ""))
            continue
        # "parameter" / "transposed": the modules holding (or reading) the tensor, mapped to what is visible.
        owners = list(dict.fromkeys(visible_owner(_parent(s))[1] for s in g.sites))
        leaf = g.tensors[0].rpartition(".")[2] if g.tensors else "parameter"
        transposed = g.kind == "transposed"
        for k, owner in enumerate(owners):
            if nodes[owner].style != "shared":
                nodes[owner].style = "transposed" if transposed else "tied"
            if not transposed:
                nodes[owner].tags.append(f"tied: {leaf} ×{len(g.sites)}")
            else:
                nodes[owner].tags.append(f"tied: {leaf}, read transposed" if k == 0 else f"tied: reads {leaf}ᵀ")
        label = f"{leaf}ᵀ" if transposed else f"tied {leaf}"
        ties += [(ids[owners[0]], ids[other], label, transposed) for other in owners[1:]]

    edges: dict[tuple[str, str, str], None] = {}  # an ordered set
    for m in mods:
        if m.name not in visible:
            continue
        for alias in m.aliases:
            if alias == "":
                continue
            # The label is the path below the visible parent: for a module inside a shared
            # one it is the same under every use, so those edges collapse into one.
            src_alias, src = visible_owner(_parent(alias))
            label = alias[len(src_alias) + 1 :] if src_alias else alias
            edges[(src, m.name, label)] = None
    flow_nodes, flow_edges, replaced = _flows(report, canon, ids, nodes)
    for key in replaced:  # containment edges a drawn data flow replaces
        edges.pop(key, None)
    incoming = Counter(dst for _, dst, _ in edges)
    edge_list = [
        _Edge(ids[s], ids[d], label, incoming[d] > 1 or label != d.rpartition(".")[2]) for s, d, label in edges
    ]
    reached = {d for _, d, _ in edges}
    in_flow = {e.src for e in flow_edges} | {e.dst for e in flow_edges}
    hidden_ns = {n for _, n, _ in replaced if n not in reached and ids[n] not in in_flow}
    node_list = [n for n in nodes.values() if n.name not in hidden_ns]
    keep = {n.id for n in node_list} | {n.id for n in flow_nodes}
    edge_list = [e for e in edge_list if e.src in keep and e.dst in keep] + flow_edges
    return _Graph(report.name or "model", node_list + flow_nodes, edge_list, ties)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _flows(
    report: Report, canon: dict[str, str], ids: dict[str, str], nodes: dict[str, _Node]
) -> tuple[list[_Node], list[_Edge], set[tuple[str, str, str]]]:
    """The drawn data flow of every visible graph module whose layers are all visible.

    Returns the small nodes (inputs, ops, free tensors, output), the flow edges, and the
    containment edges ``(parent, child, label)`` they replace: the graph module's edges to
    the layers it calls, and those through the containers that dotted names create
    (``transformer`` for ``transformer.wte``), which are not drawn when nothing else
    reaches them.
    """
    tensors = {a: t for t in report.tensors for a in t.aliases}
    used_ids = set(ids.values())
    small: list[_Node] = []
    out: dict[tuple[str, str, str], None] = {}  # (src id, dst id, label): an ordered set
    replaced: set[tuple[str, str, str]] = set()
    for f in report.flows:
        if f.module not in nodes:
            continue
        calls = {n.name: canon.get(_join(f.module, n.target)) for n in f.nodes if n.kind == "module"}
        if any(c is None or c not in nodes for c in calls.values()):
            continue  # a layer is folded away: draw the graph module folded too
        called = Counter(calls.values())
        node_id: dict[str, str] = {}
        for n in f.nodes:
            if n.kind == "module":
                node_id[n.name] = ids[calls[n.name]]  # type: ignore[index]
                path = _join(f.module, n.target)
                while path != f.module:  # the containment edges from the graph module down to the layer
                    parent = _parent(path)
                    rel = path[len(parent) + 1 :] if parent else path
                    child = canon.get(path)
                    if child is not None:
                        replaced.add((canon.get(parent, f.module), child, rel))
                    path = parent
                continue
            base = "f_" + ids[f.module].removeprefix("m_") + "__" + re.sub(r"\W", "_", n.name, flags=re.ASCII)
            candidate, k = base, 2
            while candidate in used_ids:
                candidate, k = f"{base}_{k}", k + 1
            used_ids.add(candidate)
            node_id[n.name] = candidate
            style = {"input": "io", "output": "io", "tensor": "tensor", "constant": "tensor"}.get(n.kind, "op")
            if n.kind in ("input", "output"):
                lines = [n.name if n.kind == "input" else "output"]
            elif n.kind in ("tensor", "constant"):
                t = tensors.get(_join(f.module, n.target))
                shape = ("×".join(map(str, t.shape)) or "scalar") if t else ""
                lines = [n.target, f"{t.kind if t else 'tensor'} {shape}".strip()]
            elif n.kind == "function" and n.target == "getitem":  # picking an item: qkv[0], x[:, -1]
                index = n.args[1:-1].rstrip(",") if n.args.startswith("(") and n.args.endswith(")") else n.args
                named = not re.fullmatch(r"getitem(_\d+)?", n.name)
                lines = [f"{n.name}: [{index}]" if named else f"[{index}]"]
            else:
                plain = re.fullmatch(re.escape(n.target) + r"(_\d+)?", n.name)  # 'add_1' computes add
                lines = [n.target if plain else f"{n.name}: {n.target}"]
                if n.args:
                    lines.append(n.args if len(n.args) <= 40 else n.args[:39] + "…")
            small.append(_Node(id=candidate, name=f"{f.module}:{n.name}", aliases=[], type=n.kind, block=None,
                               params=0, style=style, flow=[_printable(x) for x in lines]))  # fmt: skip
        graph_id = ids[f.module]
        for n in f.nodes:  # inputs and free tensors hang under their graph module
            if n.kind in ("input", "tensor", "constant"):
                out[(graph_id, node_id[n.name], "")] = None
        for e in f.edges:
            src, dst = e.src, e.dst
            label = ""
            for end in (src, dst):  # a layer called at several nodes: name the call
                if end in calls and called[calls[end]] > 1:
                    label = end
            out[(node_id[src], node_id[dst], label)] = None
    edges = [_Edge(a, b, label, bool(label), flow=True) for a, b, label in out]
    return small, edges, replaced


def _lines(node: _Node, title: str) -> list[str]:
    """Label lines: name, type and parameter count, then tags (shared, tied, folded); a flow node's own."""
    if node.flow is not None:
        return node.flow
    name = title if node.name == "" else node.name.rpartition(".")[2]
    lines = [name, f"{node.type} · {_fmt_params(node.params)}", *node.tags]
    if node.hidden:
        lines.append(f"+{node.hidden} folded" + (f", {node.hidden_shared} shared" if node.hidden_shared else ""))
    return [_printable(x) for x in lines]


# ------------------------------------------------------------------ styles
# style -> (fill, stroke, stroke width, dashed): one palette, so the three formats agree.
_PALETTE = {
    "root": ("#e7f5ff", "#1c7ed6", 2.0, False),
    "shared": ("#ffe8cc", "#d9480f", 3.0, False),
    "inshared": ("#fff4e6", "#f08c00", 1.2, False),
    "tied": ("#f3f0ff", "#7048e8", 2.0, True),
    "transposed": ("#e6fcf5", "#0ca678", 2.0, True),
    "plain": ("#f8f9fa", "#495057", 1.2, False),
    # data-flow nodes: ops, inputs/outputs, free tensors
    "op": ("#fff9db", "#e67700", 1.0, False),
    "io": ("#ffffff", "#495057", 1.0, False),
    "tensor": ("#ebfbee", "#2b8a3e", 1.0, False),
}
_TIE_COLOUR = "#7048e8"
_TRANSPOSED_COLOUR = "#0ca678"
_FLOW_COLOUR = "#1971c2"


# ------------------------------------------------------------------ Mermaid
def _mermaid_text(text: str) -> str:
    # Mermaid's entity codes (#60; for '<') are the only escape it understands in labels.
    # Only ASCII punctuation means something to Mermaid's parser; other characters pass.
    return "".join(f"#{ord(c)};" if c.isascii() and not (c.isalnum() or c in " _-.,:()+/") else c for c in text)


def to_mermaid(report: Report, depth: int | None = None) -> str:
    """A Mermaid ``flowchart TD`` of the module graph (renders in GitHub Markdown).

    Args:
        report: the parameter inventory (``modelspec.report(module)`` or a loaded report.json).
        depth: fold modules deeper than this (the root is depth 0); their parameters stay
            counted in the visible ancestor. None draws every module.

    Returns:
        The flowchart source, ending in a newline.
    """
    g = _graph(report, depth)
    out = ["flowchart TD", f"  %% {MARKER}"]  # a comment: how modelspec recognises its own file
    shapes = {"op": ('(["', '"])'), "io": ('[/"', '"/]'), "tensor": ('[("', '")]')}  # small data-flow nodes
    for n in g.nodes:
        left, right = shapes.get(n.style, ('["', '"]')) if n.flow is not None else ('["', '"]')
        out.append(f"  {n.id}{left}{'<br/>'.join(_mermaid_text(x) for x in _lines(n, g.title))}{right}")
    for e in g.edges:
        out.append(f'  {e.src} -->|"{_mermaid_text(e.label)}"| {e.dst}' if e.show_label else f"  {e.src} --> {e.dst}")
    # a same tie is an undirected dashed link; a transposed one a dotted arrow from the source to the reader
    out += [f'  {a} {"-.->" if t else "-.-"}|"{_mermaid_text(label)}"| {b}' for a, b, label, t in g.ties]
    for k, (_, _, _, t) in enumerate(g.ties):
        if t:
            out.append(f"  linkStyle {len(g.edges) + k} stroke:{_TRANSPOSED_COLOUR},stroke-width:2px;")
    for style, (fill, stroke, width, dashed) in _PALETTE.items():
        members = [n.id for n in g.nodes if n.style == style]
        if members:
            css = f"fill:{fill},stroke:{stroke},stroke-width:{width:g}px" + (",stroke-dasharray:5 3" if dashed else "")
            out += [f"  classDef {style} {css};", f"  class {','.join(members)} {style};"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ Graphviz DOT
def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(report: Report, depth: int | None = None) -> str:
    """The module graph as Graphviz DOT (``dot -Tsvg`` renders it; nothing here runs Graphviz).

    Args:
        report: the parameter inventory.
        depth: fold modules deeper than this, as in :func:`to_mermaid`.

    Returns:
        A ``digraph`` source, ending in a newline.
    """
    g = _graph(report, depth)
    out = [
        "digraph modelspec {",
        "  graph [rankdir=TB, fontname=Helvetica];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10];',
        '  edge [color="#495057", fontname=Helvetica, fontsize=9];',
    ]
    shapes = {"op": "ellipse", "io": "parallelogram", "tensor": "cylinder"}
    for n in g.nodes:
        # DOT's own "\n" escape separates label lines; user text has its backslashes doubled.
        label = "\\n".join(x.replace("\\", "\\\\").replace('"', '\\"') for x in _lines(n, g.title))
        fill, stroke, width, dashed = _PALETTE[n.style]
        style = ', style="rounded,filled,dashed"' if dashed else ""
        if n.flow is not None:  # a small data-flow node
            style = f', shape={shapes.get(n.style, "box")}, style=filled, fontsize=8, margin="0.06,0.02"'
        out.append(f'  {n.id} [label="{label}", fillcolor="{fill}", color="{stroke}", penwidth={width:g}{style}];')
    for e in g.edges:
        attrs = [f"label={_dot_str(_printable(e.label))}"] * e.show_label + [f'color="{_FLOW_COLOUR}"'] * e.flow
        out.append(f"  {e.src} -> {e.dst}" + (f" [{', '.join(attrs)}];" if attrs else ";"))
    for a, b, label, transposed in g.ties:
        # constraint=false: a tie must not pull the tied modules onto different ranks.
        if transposed:
            out.append(
                f"  {a} -> {b} [label={_dot_str(label)}, style=dotted, penwidth=2, constraint=false, "
                f'color="{_TRANSPOSED_COLOUR}", fontcolor="{_TRANSPOSED_COLOUR}"];'
            )
            continue
        out.append(
            f"  {a} -> {b} [label={_dot_str(label)}, style=dashed, dir=none, constraint=false, "
            f'color="{_TIE_COLOUR}", fontcolor="{_TIE_COLOUR}"];'
        )
    out.append("}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ SVG
_CHAR_W, _LINE_H, _PAD, _H_GAP, _V_GAP, _MARGIN = 6.6, 14.0, 8.0, 16.0, 56.0, 20.0
_SMALL_CHAR_W, _SMALL_LINE_H = 6.0, 12.0  # data-flow nodes: 10px text
_SVG_CSS = "".join(
    f".ms-{'flow' if style in ('op', 'io', 'tensor') else 'node'}.ms-{style} rect {{ fill: {fill}; stroke: {stroke};"
    f" stroke-width: {width:g};" + (" stroke-dasharray: 5 3;" if dashed else "") + " }\n"
    for style, (fill, stroke, width, dashed) in _PALETTE.items()
) + (
    ".ms-node text { font: 11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; fill: #212529; }\n"
    ".ms-node text.ms-name { font-weight: bold; } .ms-node text.ms-tag { fill: #c2255c; font-style: italic; }\n"
    ".ms-edge path { fill: none; stroke: #868e96; stroke-width: 1.3; }\n"
    f".ms-tie path {{ fill: none; stroke: {_TIE_COLOUR}; stroke-width: 1.5; stroke-dasharray: 6 4; }}\n"
    ".ms-edge text, .ms-tie text { font: 10px ui-monospace, Menlo, Consolas, monospace; fill: #495057;"
    " paint-order: stroke; stroke: #ffffff; stroke-width: 3px; text-anchor: middle; }\n"
    f".ms-tie text {{ fill: {_TIE_COLOUR}; }}\n"
    ".ms-flow text { font: 10px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; fill: #212529; }\n"
    f".ms-edge.ms-dataflow path {{ stroke: {_FLOW_COLOUR}; }}\n"
    f".ms-tie.ms-transposed path {{ stroke: {_TRANSPOSED_COLOUR}; stroke-width: 2; stroke-dasharray: 2 3; }}\n"
    f".ms-tie.ms-transposed text {{ fill: {_TRANSPOSED_COLOUR}; }}\n"
)


def _f(x: float) -> str:
    return f"{x:.1f}"


def _layout(g: _Graph) -> tuple[dict[str, tuple[float, float, float, float]], float, float]:
    """Place nodes: (x centre, y top, width, height) by id, plus the canvas size.

    Rows are longest-path layers, so every edge points down even when a shared module is
    used at different depths. Columns come from a tidy tree (below): a subtree gets an
    interval wide enough for its children, the parent is centred over it, and because
    sibling intervals are disjoint no two nodes overlap.
    """
    size = {}
    for n in g.nodes:
        lines = _lines(n, g.title)
        if n.flow is not None:  # a small data-flow node
            size[n.id] = (max(30.0, max(len(x) for x in lines) * _SMALL_CHAR_W + _PAD), len(lines) * _SMALL_LINE_H + 6)
            continue
        size[n.id] = (max(60.0, max(len(x) for x in lines) * _CHAR_W + 2 * _PAD), len(lines) * _LINE_H + _PAD)
    order = [n.id for n in g.nodes]
    parents: dict[str, list[str]] = {i: [] for i in order}
    for e in g.edges:
        parents[e.dst].append(e.src)

    layer: dict[str, int] = {}
    pending = list(order)
    while pending:  # modules come parent-first, except a shared module reused deeper later
        progressed = [i for i in pending if all(p in layer for p in parents[i])]
        if not progressed:  # a cycle (only in a hand-edited report): put the rest one row lower
            progressed = pending[:1]
        for i in progressed:
            layer[i] = 1 + max((layer[p] for p in parents[i] if p in layer), default=-1)
        pending = [i for i in pending if i not in layer]

    # The layout tree: a shared module hangs under the lowest common ancestor of the modules
    # that use it, just after the branch holding its first user, so it sits between its users
    # instead of under one of them. Layers ascend, so every parent is placed before its child.
    up: dict[str, str | None] = {}
    key: dict[str, tuple[int, int]] = {}
    pos = {i: k for k, i in enumerate(order)}

    def chain(q: str | None) -> list[str]:  # q and its layout ancestors, nearest first
        return [] if q is None else [q, *chain(up[q])]

    for i in sorted(order, key=lambda i: (layer[i], pos[i])):
        chains = [chain(p) for p in dict.fromkeys(parents[i]) if p in up] or [[]]
        up[i] = next((q for q in chains[0] if all(q in c for c in chains[1:])), None)
        first = chains[0].index(up[i]) if up[i] is not None else 0
        key[i] = (pos[chains[0][first - 1]], 1) if first > 0 else (pos[i], 0)
    kids: dict[str, list[str]] = {i: [] for i in order}
    roots = []
    for i in sorted(order, key=lambda i: key[i]):
        (kids[up[i]] if up[i] is not None else roots).append(i)
    span: dict[str, float] = {}

    def width(i: str) -> float:
        if i not in span:
            inner = sum(width(k) for k in kids[i]) + _H_GAP * max(0, len(kids[i]) - 1)
            span[i] = max(size[i][0], inner)
        return span[i]

    xs: dict[str, float] = {}

    def place(i: str, left: float) -> None:
        xs[i] = left + width(i) / 2
        inner = sum(width(k) for k in kids[i]) + _H_GAP * max(0, len(kids[i]) - 1)
        cur = left + (width(i) - inner) / 2
        for k in kids[i]:
            place(k, cur)
            cur += width(k) + _H_GAP

    cur = _MARGIN
    for r in roots:
        place(r, cur)
        cur += width(r) + _H_GAP
    rows = max(layer.values(), default=-1) + 1
    row_h = [max((size[i][1] for i in order if layer[i] == r), default=0.0) for r in range(rows)]
    tops = [_MARGIN + sum(row_h[:r]) + _V_GAP * r for r in range(rows)]
    boxes = {i: (xs[i], tops[layer[i]], *size[i]) for i in order}
    canvas_h = (tops[-1] + row_h[-1] if rows else 0.0) + _MARGIN + (40.0 if g.ties else 0.0)
    return boxes, cur - _H_GAP + _MARGIN, canvas_h


def _attr_lines(names: list[str]) -> str:
    """Names for an attribute, one a line: ``&#10;`` survives XML's attribute normalization."""
    return html.escape("\n".join(_printable(x) for x in names)).replace("\n", "&#10;")


def to_svg(report: Report, depth: int | None = None) -> str:
    """A self-contained SVG of the module graph, laid out here (no Graphviz, no scripts, no fonts).

    Each module is a ``<g class="ms-node ms-STYLE" data-name="CANONICAL NAME">`` with a
    ``<title>`` listing every alias; each use is a ``<g class="ms-edge" data-from data-to>``.

    Args:
        report: the parameter inventory.
        depth: fold modules deeper than this, as in :func:`to_mermaid`.

    Returns:
        An ``<svg>`` document, ending in a newline.
    """
    g = _graph(report, depth)
    boxes, w, h = _layout(g)
    esc = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ms-graph" width="{_f(w)}" height="{_f(h)}" '
        f'viewBox="0 0 {_f(w)} {_f(h)}" role="img">',
        f"<!-- {MARKER} -->",  # how modelspec recognises its own file
        f"<title>{esc(_printable(g.title))}: module graph</title>",
        f"<style>{_SVG_CSS}</style>",
        '<defs><marker id="ms-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#868e96"/></marker></defs>',
    ]
    pair_count = Counter((e.src, e.dst) for e in g.edges)
    pair_seen: Counter[tuple[str, str]] = Counter()
    for e in g.edges:
        # Several uses of one module by one parent (net[2] and net[4]) fan out side by side.
        k = pair_seen[(e.src, e.dst)]
        pair_seen[(e.src, e.dst)] += 1
        shift = (k - (pair_count[(e.src, e.dst)] - 1) / 2) * 24.0
        (px, py, pw, ph), (cx, cy, _, _) = boxes[e.src], boxes[e.dst]
        x0, y0, x1, y1 = px + shift, py + ph, cx + shift, cy
        ym = (y0 + y1) / 2
        if e.src == e.dst:  # a layer called on its own output: a loop on its right side
            xr = px + pw / 2
            path = f"M{_f(xr)},{_f(py + ph * 0.7)} C{_f(xr + 30)},{_f(py + ph + 10)} {_f(xr + 30)},{_f(py - 10)} "
            path += f"{_f(xr)},{_f(py + ph * 0.3)}"
            x0, x1, ym = xr + 30, xr + 30, py + ph / 2
        else:
            path = f"M{_f(x0)},{_f(y0)} C{_f(x0)},{_f(ym)} {_f(x1)},{_f(ym)} {_f(x1)},{_f(y1)}"
        cls = "ms-edge ms-dataflow" if e.flow else "ms-edge"
        out.append(
            f'<g class="{cls}" data-from="{e.src}" data-to="{e.dst}" data-label="{esc(_printable(e.label))}">'
            f'<path d="{path}" marker-end="url(#ms-arrow)"/>'
            + (
                f'<text x="{_f((x0 + x1) / 2)}" y="{_f(ym + 3)}">{esc(_printable(e.label))}</text>'
                if e.show_label
                else ""
            )
            + "</g>"
        )
    for a, b, label, transposed in g.ties:
        (ax, ay, _, ah), (bx, by, _, bh) = boxes[a], boxes[b]
        y0, y1 = ay + ah, by + bh
        yc = max(y0, y1) + 36.0  # the curve dips under both modules
        out.append(
            f'<g class="ms-tie{" ms-transposed" if transposed else ""}" data-from="{a}" data-to="{b}">'
            f'<path d="M{_f(ax)},{_f(y0)} Q{_f((ax + bx) / 2)},{_f(yc)} {_f(bx)},{_f(y1)}"'
            + (' marker-end="url(#ms-arrow)"/>' if transposed else "/>")
            + f'<text x="{_f((ax + bx) / 2)}" y="{_f((max(y0, y1) + yc) / 2 + 6)}">{esc(label)}</text></g>'
        )
    for n in g.nodes:
        x, y, nw, nh = boxes[n.id]
        lines = _lines(n, g.title)
        if n.flow is not None:  # a small data-flow node: not a module, so not clickable
            rx = nh / 2 if n.style == "op" else 2
            out.append(
                f'<g class="ms-flow ms-{n.style}" id="ms-{n.id}" data-name="{esc(_printable(n.name))}">'
                f'<rect x="{_f(x - nw / 2)}" y="{_f(y)}" width="{_f(nw)}" height="{_f(nh)}" rx="{_f(rx)}"/>'
                + "".join(
                    f'<text x="{_f(x - nw / 2 + _PAD / 2)}" y="{_f(y + _SMALL_LINE_H * (j + 1))}">{esc(t)}</text>'
                    for j, t in enumerate(lines)
                )
                + "</g>"
            )
            continue
        tip = ["(root)" if a == "" else _printable(a) for a in n.aliases] + [f"block: {n.block}"] * bool(n.block)
        out.append(
            f'<g class="ms-node ms-{n.style}" id="ms-{n.id}" data-name="{esc(_printable(n.name))}" '
            f'data-aliases="{_attr_lines(n.aliases)}">'
            f"<title>{esc(chr(10).join(tip))}</title>"
            f'<rect x="{_f(x - nw / 2)}" y="{_f(y)}" width="{_f(nw)}" height="{_f(nh)}" rx="6"/>'
        )
        for j, text in enumerate(lines):
            cls = "ms-name" if j == 0 else ("ms-tag" if j >= 2 else "ms-info")
            out.append(
                f'<text class="{cls}" x="{_f(x - nw / 2 + _PAD)}" y="{_f(y + _PAD / 2 + _LINE_H * (j + 1) - 3.5)}">'
                f"{esc(text)}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
