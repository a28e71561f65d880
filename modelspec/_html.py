"""One self-contained HTML page for a :class:`~modelspec.inventory.Report`.

The page works offline and from ``file://``: CSS and a small vanilla script are inline,
the diagram is the inline SVG of :func:`modelspec._graph.to_svg`, and a Content Security
Policy forbids every network fetch, so even a hostile name in a report could not make
the page load anything. All report text is HTML-escaped; the script embeds no data (it
reads the table it enhances), so nothing from the report ever reaches JavaScript source.

Stable element ids for tools and tests: ``diagram``, ``inventory`` (one row per unique
tensor; the script marks it ``data-ready="1"`` and keeps ``data-rows``/``data-shown``
current), ``filter`` (the text box), ``param-ties`` (the parameter ties, when there are
any), ``ties`` (the tie groups) and ``blocks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ._fmt import fmt_float, human_bytes
from ._graph import to_svg
from ._inventory import Report, TensorEntry

__all__ = ["render_html"]

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { color-scheme: light; --line: #dee2e6; --muted: #6c757d; --accent: #1c7ed6; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; padding: 1.5rem;
  max-width: 1400px; color: #212529; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.15rem; margin: 2rem 0 .5rem; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.meta, .hint { color: var(--muted); margin: 0 0 .5rem; }
#totals { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: .5rem; margin: 1rem 0; }
#totals div { border: 1px solid var(--line); border-radius: 6px; padding: .4rem .6rem; }
#totals dt { color: var(--muted); font-size: 12px; } #totals dd { margin: 0; font-weight: 600; }
#diagram { border: 1px solid var(--line); border-radius: 6px; overflow: auto; max-height: 75vh; }
#diagram svg { display: block; } #diagram .ms-node { cursor: pointer; }
#diagram .ms-node.ms-active rect { stroke: var(--accent); stroke-width: 3; }
.tools { display: flex; gap: .75rem; align-items: center; margin: .5rem 0; flex-wrap: wrap; }
#filter { font: inherit; padding: .3rem .5rem; min-width: 22rem; border: 1px solid #adb5bd; border-radius: 4px; }
#scope[hidden] { display: none; }
#scope button { font: inherit; border: 1px solid var(--accent); color: var(--accent); background: #e7f5ff;
  border-radius: 999px; padding: .1rem .6rem; cursor: pointer; }
.wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: .2rem .4rem; text-align: left; vertical-align: top; }
#inventory td, th { white-space: nowrap; } td code { font-size: 11.5px; }
th { background: #f8f9fa; position: sticky; top: 0; }
th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0; cursor: pointer; color: inherit; }
th[aria-sort="ascending"] button::after { content: " ▲"; } th[aria-sort="descending"] button::after { content: " ▼"; }
th[data-type="number"] { text-align: right; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fcfcfd; } tbody tr:hover { background: #f1f3f5; }
.alias { color: var(--muted); display: block; line-height: 1.45; }
"""

# Vanilla ES5 so any browser runs it; it only reads the DOM the server-side renderer wrote.
_JS = """
(function () {
  "use strict";
  var table = document.getElementById("inventory");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var filter = document.getElementById("filter");
  var count = document.getElementById("count");
  var scopeBox = document.getElementById("scope");
  var scope = null; // alias prefixes of the module clicked in the diagram, or null

  function cellKey(row, col, numeric) {
    var cell = row.cells[col];
    var v = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
    if (!numeric) { return v.toLowerCase(); }
    return v === "" ? NaN : Number(v);
  }
  function inScope(row) {
    if (scope === null) { return true; }
    var names = row.getAttribute("data-aliases").split("\\n");
    return names.some(function (n) {
      return scope.some(function (p) { return p === "" || n.indexOf(p + ".") === 0; });
    });
  }
  function apply() {
    var terms = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function (row) {
      var text = row.getAttribute("data-search");
      var hit = inScope(row) && terms.every(function (t) { return text.indexOf(t) >= 0; });
      row.hidden = !hit;
      if (hit) { shown += 1; }
    });
    table.setAttribute("data-shown", String(shown));
    count.textContent = shown + " of " + rows.length + " tensors";
  }
  function sortBy(th) {
    var col = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "number";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var keyed = rows.map(function (row, i) { return [cellKey(row, col, numeric), i, row]; });
    keyed.sort(function (a, b) {
      var x = a[0], y = b[0];
      if (numeric && (isNaN(x) || isNaN(y))) { // missing values sort last either way
        if (isNaN(x) !== isNaN(y)) { return isNaN(x) ? 1 : -1; }
      } else if (x !== y) { return (x < y ? -1 : 1) * dir; }
      return a[1] - b[1]; // stable: ties keep inventory order
    });
    rows = keyed.map(function (k) { return k[2]; });
    rows.forEach(function (row) { body.appendChild(row); });
    table.setAttribute("data-sorted", th.getAttribute("data-key") + (dir === 1 ? ":asc" : ":desc"));
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.querySelector("button").addEventListener("click", function () { sortBy(th); });
  });
  filter.addEventListener("input", apply);

  var nodes = document.querySelectorAll("#diagram .ms-node");
  function setScope(node) {
    Array.prototype.forEach.call(nodes, function (n) { n.classList.remove("ms-active"); });
    if (node === null || node.getAttribute("data-name") === "") {
      scope = null;
      scopeBox.hidden = true;
    } else {
      scope = node.getAttribute("data-aliases").split("\\n");
      node.classList.add("ms-active");
      scopeBox.querySelector("span").textContent = node.getAttribute("data-name");
      scopeBox.hidden = false;
    }
    apply();
  }
  Array.prototype.forEach.call(nodes, function (n) {
    n.addEventListener("click", function () { setScope(n); });
  });
  scopeBox.querySelector("button").addEventListener("click", function () { setScope(null); });

  apply();
  table.setAttribute("data-rows", String(rows.length));
  table.setAttribute("data-ready", "1");
})();
"""

# (key, header, numeric?) of the inventory columns, in order.
_COLUMNS = [
    ("name", "name", False),
    ("aliases", "aliases", False),
    ("kind", "kind", False),
    ("block", "block", False),
    ("shape", "shape", False),
    ("dtype", "dtype", False),
    ("numel", "numel", True),
    ("trainable", "trainable", False),
    ("mean", "mean", True),
    ("std", "std", True),
    ("min", "min", True),
    ("max", "max", True),
    ("l2", "l2", True),
    ("sha256", "sha256", False),
]


def _td(text: str, *, sort: str | None = None, num: bool = False, title: str | None = None) -> str:
    """A cell; ``sort`` is the raw value the script sorts by (exact numbers, not the rounded text)."""
    attrs = ' class="num"' if num else ""
    attrs += f' data-v="{escape(sort)}"' if sort is not None else ""
    attrs += f' title="{escape(title)}"' if title else ""
    return f"<td{attrs}>{text}</td>"


def _stat(value: float | None) -> str:
    return _td(escape(fmt_float(value)), sort="" if value is None else repr(value), num=True)


def _row(e: TensorEntry) -> str:
    s = e.stats
    others = "".join(f'<code class="alias">{escape(a)}</code>' for a in e.aliases[1:])
    others += "".join(f'<code class="alias">{escape(a)} (transposed)</code>' for a in e.transposed_aliases)
    search = " ".join([*e.aliases, *e.transposed_aliases, e.kind, e.block or "", e.dtype]).lower()
    shape = "×".join(map(str, e.shape)) or "scalar"
    # one a line, for the diagram's scope: a module reading a tensor transposed lists it too
    aliases = escape("\n".join([*e.aliases, *e.transposed_aliases])).replace("\n", "&#10;")
    cells = [
        _td(f"<code>{escape(e.name)}</code>", sort=e.name),
        _td(others, sort=str(len(e.aliases) + len(e.transposed_aliases) - 1)),
        _td(escape(e.kind)),
        _td(escape(e.block or "")),
        _td(escape(shape), sort=f"{len(e.shape):02d}:{shape}"),
        _td(escape(e.dtype)),
        _td(f"{e.numel:,}", sort=str(e.numel), num=True),
        _td("yes" if e.requires_grad else "no"),
        _stat(s.mean if s else None),
        _stat(s.std if s else None),
        _stat(s.min if s else None),
        _stat(s.max if s else None),
        _stat(s.l2 if s else None),
        _td(f"<code>{escape(e.sha256[:12])}</code>" if e.sha256 else "—", title=e.sha256),
    ]
    return f'<tr data-aliases="{aliases}" data-search="{escape(search)}">' + "".join(cells) + "</tr>"


def _table(table_id: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain table whose cells are already-escaped HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="wrap"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _codes(names: Sequence[str]) -> str:
    return ", ".join(f"<code>{escape(n)}</code>" for n in names)


def render_html(report: Report, *, depth: int | None = None) -> str:
    """Render ``report`` as one self-contained, offline HTML page.

    The page has the totals, the module diagram (a shared module drawn once; click a
    module to list only its tensors), the inventory table (click a header to sort, type
    in the box to filter; every term must match a name, kind, block or dtype), the tie
    groups and the blocks.

    Args:
        report: the parameter inventory (``modelspec.report(module)`` or a loaded report.json).
        depth: fold the diagram at this module depth (see :func:`modelspec._graph.to_svg`).

    Returns:
        The HTML document; the same report always gives the same bytes.

    Example:
        >>> Path("report.html").write_text(render_html(modelspec.report(net)))  # doctest: +SKIP
    """
    t = report.totals
    title = f"Parameter report: {report.name or 'model'}"
    meta = [f"modelspec {report.modelspec_version}", f"device {report.device}"]
    if report.spec_sha256:
        meta.insert(0, f"spec sha256 {report.spec_sha256}")
    totals = [
        ("unique parameters", f"{t.unique_params:,}"),
        ("naive count (every name)", f"{t.naive_params:,}"),
        ("saved by sharing", f"{t.saved_by_sharing:,}"),
        ("trainable / frozen", f"{t.trainable_params:,} / {t.frozen_params:,}"),
        ("unique tensors", f"{t.unique_tensors:,}"),
        ("parameter bytes", human_bytes(t.param_bytes)),
        ("buffer elements", f"{t.buffer_numel:,}"),
        ("training memory (Adam)", human_bytes(t.training_bytes_adam)),
    ]
    heads = "".join(
        f'<th data-key="{key}" data-type="{"number" if num else "text"}">'
        f'<button type="button">{escape(label)}</button></th>'
        for key, label, num in _COLUMNS
    )
    if report.tie_groups:
        ties = _table(
            "ties",
            ["kind", "block", "sites", "tensors", "elements stored once"],
            [
                [escape(g.kind), escape(g.block or ""), _codes(g.sites), _codes(g.tensors), f"{g.numel:,}"]
                for g in report.tie_groups
            ],
        )
    else:
        ties = '<p id="ties">No tensor is shared.</p>'
    param_ties = []
    if report.ties:
        param_ties = [
            "<h2>Parameter ties</h2>",
            _table("param-ties", ["parameter", "is", "kind"],
                   [[_codes([t.param]), _codes([t.to]), escape(t.kind)] for t in report.ties]),
        ]  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="generator" content="modelspec">',  # how modelspec recognises its own file
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f'<header><h1>{escape(title)}</h1><p class="meta mono">{escape(" · ".join(meta))}</p></header>',
        '<dl id="totals">'
        + "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in totals)
        + "</dl>",
        "<h2>Architecture</h2>",
        '<p class="hint">Each module is drawn once; a shared module has an arrow from every module that uses it. '
        "Orange: shared module (lighter: inside one). Purple, dashed: holds a tied parameter. "
        "Green, dotted arrow: reads a parameter transposed. Inside a graph module, blue arrows show the data flow "
        "from its inputs through its layers, ops (rounded) and free tensors (green) to its output. "
        "Click a module to list its tensors.</p>",
        f'<div id="diagram">{to_svg(report, depth)}</div>',
        "<h2>Tensors</h2>",
        '<div class="tools"><input id="filter" type="search" placeholder="filter: name, kind, block, dtype…" '
        'aria-label="filter tensors"><span id="count" class="hint"></span>'
        '<span id="scope" hidden>in module <button type="button" title="show all tensors">'
        "<span></span> ×</button></span></div>",
        f'<div class="wrap"><table id="inventory"><thead><tr>{heads}</tr></thead><tbody>',
        *(_row(e) for e in report.tensors),
        "</tbody></table></div>",
        *param_ties,
        "<h2>Tie groups</h2>",
        ties,
    ]
    if report.blocks:
        parts += [
            "<h2>Blocks</h2>",
            _table(
                "blocks",
                ["block", "used at", "tensors", "parameters"],
                [
                    [
                        escape(b.name),
                        _codes([s or "(root)" for s in b.sites]) or "(unused)",
                        str(b.tensors),
                        f"{b.params:,}",
                    ]
                    for b in report.blocks
                ],
            ),
        ]
    parts += [f"<script>{_JS}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"
