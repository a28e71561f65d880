"""Architecture diagrams of a :class:`~modelspec.inventory.Report`: Mermaid, Graphviz DOT and SVG.

The diagram is the module graph, not the module tree: a module reachable under several
names (a shared block) is drawn **once**, with one edge from every parent that uses it,
each edge labelled with the attribute name it is used under when that is not obvious.
Tie groups from the report are marked: a shared module gets the ``shared`` style and a
"shared ×N" tag, modules inside it get ``inshared``, and modules that hold one parameter
between them (a tied output head) get ``tied`` plus a dashed undirected edge.

Everything is derived from ``report.modules`` (names and aliases) and ``report.tensors``,
so a ``report.json`` read back with ``Report.model_validate_json`` draws the same picture.
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
    style: str = "plain"  # root | shared | tied | inshared | plain
    tags: list[str] = field(default_factory=list)
    hidden: int = 0  # modules folded into this one by ``depth``
    hidden_shared: int = 0  # of those, shared modules


@dataclass(frozen=True)
class _Edge:
    src: str
    dst: str
    label: str  # the attribute path the child is used under, relative to the parent
    show_label: bool


@dataclass(frozen=True)
class _Graph:
    title: str
    nodes: list[_Node]
    edges: list[_Edge]
    ties: list[tuple[str, str, str]]  # (node id, node id, label): one parameter held by both


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

    ties: list[tuple[str, str, str]] = []
    for g in report.tie_groups:
        if g.kind == "module":
            site = next((canon[s] for s in g.sites if s in canon), None)
            if site is not None and site in nodes:
                node = nodes[site]
                node.style = "shared"
                node.tags.append(f"shared ×{len(g.sites)}" + (f" ({g.block})" if g.block else ""))
            continue
        # kind == "parameter": the modules holding the tensor, mapped to what is visible.
        owners = list(dict.fromkeys(visible_owner(_parent(s))[1] for s in g.sites))
        leaf = g.tensors[0].rpartition(".")[2] if g.tensors else "parameter"
        for owner in owners:
            if nodes[owner].style != "shared":
                nodes[owner].style = "tied"
            nodes[owner].tags.append(f"tied: {leaf} ×{len(g.sites)}")
        ties += [(ids[owners[0]], ids[other], f"tied {leaf}") for other in owners[1:]]

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
    incoming = Counter(dst for _, dst, _ in edges)
    edge_list = [
        _Edge(ids[s], ids[d], label, incoming[d] > 1 or label != d.rpartition(".")[2]) for s, d, label in edges
    ]
    return _Graph(report.name or "model", list(nodes.values()), edge_list, ties)


def _lines(node: _Node, title: str) -> list[str]:
    """Label lines: name, type and parameter count, then tags (shared, tied, folded)."""
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
    "plain": ("#f8f9fa", "#495057", 1.2, False),
}
_TIE_COLOUR = "#7048e8"


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
    out += [f'  {n.id}["{"<br/>".join(_mermaid_text(x) for x in _lines(n, g.title))}"]' for n in g.nodes]
    for e in g.edges:
        out.append(f'  {e.src} -->|"{_mermaid_text(e.label)}"| {e.dst}' if e.show_label else f"  {e.src} --> {e.dst}")
    out += [f'  {a} -.-|"{_mermaid_text(label)}"| {b}' for a, b, label in g.ties]
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
    for n in g.nodes:
        # DOT's own "\n" escape separates label lines; user text has its backslashes doubled.
        label = "\\n".join(x.replace("\\", "\\\\").replace('"', '\\"') for x in _lines(n, g.title))
        fill, stroke, width, dashed = _PALETTE[n.style]
        style = ', style="rounded,filled,dashed"' if dashed else ""
        out.append(f'  {n.id} [label="{label}", fillcolor="{fill}", color="{stroke}", penwidth={width:g}{style}];')
    for e in g.edges:
        out.append(f"  {e.src} -> {e.dst}" + (f" [label={_dot_str(_printable(e.label))}];" if e.show_label else ";"))
    for a, b, label in g.ties:
        # constraint=false: a tie must not pull the tied modules onto different ranks.
        out.append(
            f"  {a} -> {b} [label={_dot_str(label)}, style=dashed, dir=none, constraint=false, "
            f'color="{_TIE_COLOUR}", fontcolor="{_TIE_COLOUR}"];'
        )
    out.append("}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ SVG
_CHAR_W, _LINE_H, _PAD, _H_GAP, _V_GAP, _MARGIN = 6.6, 14.0, 8.0, 16.0, 56.0, 20.0
_SVG_CSS = "".join(
    f".ms-node.ms-{style} rect {{ fill: {fill}; stroke: {stroke}; stroke-width: {width:g};"
    + (" stroke-dasharray: 5 3;" if dashed else "")
    + " }\n"
    for style, (fill, stroke, width, dashed) in _PALETTE.items()
) + (
    ".ms-node text { font: 11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; fill: #212529; }\n"
    ".ms-node text.ms-name { font-weight: bold; } .ms-node text.ms-tag { fill: #c2255c; font-style: italic; }\n"
    ".ms-edge path { fill: none; stroke: #868e96; stroke-width: 1.3; }\n"
    f".ms-tie path {{ fill: none; stroke: {_TIE_COLOUR}; stroke-width: 1.5; stroke-dasharray: 6 4; }}\n"
    ".ms-edge text, .ms-tie text { font: 10px ui-monospace, Menlo, Consolas, monospace; fill: #495057;"
    " paint-order: stroke; stroke: #ffffff; stroke-width: 3px; text-anchor: middle; }\n"
    f".ms-tie text {{ fill: {_TIE_COLOUR}; }}\n"
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
        (px, py, _, ph), (cx, cy, _, _) = boxes[e.src], boxes[e.dst]
        x0, y0, x1, y1 = px + shift, py + ph, cx + shift, cy
        ym = (y0 + y1) / 2
        out.append(
            f'<g class="ms-edge" data-from="{e.src}" data-to="{e.dst}" data-label="{esc(_printable(e.label))}">'
            f'<path d="M{_f(x0)},{_f(y0)} C{_f(x0)},{_f(ym)} {_f(x1)},{_f(ym)} {_f(x1)},{_f(y1)}" '
            'marker-end="url(#ms-arrow)"/>'
            + (
                f'<text x="{_f((x0 + x1) / 2)}" y="{_f(ym + 3)}">{esc(_printable(e.label))}</text>'
                if e.show_label
                else ""
            )
            + "</g>"
        )
    for a, b, label in g.ties:
        (ax, ay, _, ah), (bx, by, _, bh) = boxes[a], boxes[b]
        y0, y1 = ay + ah, by + bh
        yc = max(y0, y1) + 36.0  # the curve dips under both modules
        out.append(
            f'<g class="ms-tie" data-from="{a}" data-to="{b}">'
            f'<path d="M{_f(ax)},{_f(y0)} Q{_f((ax + bx) / 2)},{_f(yc)} {_f(bx)},{_f(y1)}"/>'
            f'<text x="{_f((ax + bx) / 2)}" y="{_f((max(y0, y1) + yc) / 2 + 6)}">{esc(label)}</text></g>'
        )
    for n in g.nodes:
        x, y, nw, nh = boxes[n.id]
        lines = _lines(n, g.title)
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
