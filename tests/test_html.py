"""The HTML report: one offline page with the diagram, a sortable/filterable inventory and the ties.

The browser tests open the page in headless Chromium: the DOM after the inline script ran
(``--dump-dom``) and a screenshot. Without Chromium they are skipped, unless
``MODELSPEC_REQUIRE_BROWSER=1`` (CI) makes a missing browser a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import D2L
from test_graph import TiedHead, hostile_report
from torch import nn

import modelspec
from modelspec._html import render_html
from modelspec._inventory import Report


class Page(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)

    def by_id(self, element_id: str) -> tuple[str, dict[str, str | None]]:
        found = [(t, a) for t, a in self.tags if a.get("id") == element_id]
        assert len(found) == 1, f"id {element_id!r} found {len(found)} times"
        return found[0]


def spec_report(name: str) -> Report:
    return modelspec.report(modelspec.build(D2L / name))


def test_page_has_the_key_elements_and_one_row_per_tensor() -> None:
    report = spec_report("shared_mlp.yaml")
    page = Page(render_html(report))
    assert page.by_id("inventory")[0] == "table"
    assert page.by_id("diagram")[0] == "div"
    assert page.by_id("filter")[0] == "input"
    assert page.by_id("ties")[0] == "table"
    rows = [a for t, a in page.tags if t == "tr" and "data-aliases" in a]
    assert [r["data-aliases"] for r in rows] == ["\n".join(e.aliases) for e in report.tensors]
    assert len([1 for t, a in page.tags if t == "g" and a.get("data-name") == "mlp1.shared_layer"]) == 1
    headers = [a["data-key"] for t, a in page.tags if t == "th" and "data-key" in a]
    assert headers[:2] == ["name", "aliases"] and {"numel", "mean", "std", "min", "max", "l2", "sha256"} <= set(headers)


def test_tie_groups_table_and_its_absence() -> None:
    shared = render_html(spec_report("shared.yaml"))
    assert shared.count("<tr><td>module</td><td>shared</td>") == 1
    plain = Page(render_html(spec_report("net.yaml")))
    assert plain.by_id("ties")[0] == "p"


def test_page_needs_no_network() -> None:
    for report in (spec_report("shared_mlp.yaml"), hostile_report()):
        text = render_html(report)
        page = Page(text)
        for tag, attrs in page.tags:
            for attr in ("src", "href", "srcset", "action", "poster"):
                value = (attrs.get(attr) or "").strip().lower()
                assert not re.match(r"(https?:)?//", value), (tag, attr, value)
            assert tag != "link" and not (tag == "script" and "src" in attrs)
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg\")", text)  # the SVG namespace is a name, not a fetch
        assert "@import" not in text and "url(http" not in text
        csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
        assert csp and "default-src 'none'" in (csp[0] or "")


def test_names_are_escaped() -> None:
    text = render_html(hostile_report())
    page = Page(text)
    assert text.count("<script") == 1  # only the page's own script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    names = [a["data-aliases"] for t, a in page.tags if t == "tr" and "data-aliases" in a]
    assert "<script>alert(1)</script>.weight" in names and 'q"uote\\.weight' in names


def test_inline_script_is_present_and_embeds_no_data() -> None:
    report = spec_report("shared.yaml")
    page = Page(render_html(report))
    assert len(page.scripts) == 1
    script = page.scripts[0]
    assert 'setAttribute("data-ready", "1")' in script and "addEventListener" in script
    assert all(e.name not in script for e in report.tensors)  # data lives in the table, not in code


def test_output_is_deterministic_and_survives_report_json() -> None:
    first = render_html(spec_report("shared_mlp.yaml"))
    again = spec_report("shared_mlp.yaml")
    assert render_html(again) == first
    assert render_html(Report.model_validate_json(again.model_dump_json())) == first


def test_meta_device_report_renders_without_values() -> None:
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    text = render_html(modelspec.report(net))
    assert '<td class="num" data-v="">—</td>' in text  # stats are None on meta
    assert render_html(modelspec.report(TiedHead()), depth=0).count('class="ms-node') == 1


# ------------------------------------------------------------------ in a real browser
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# Appended to a copy of the page only: drives the page's own script like a user would.
PROBE = """<script>
(function () {
  var t = document.getElementById("inventory"), out = {};
  var numel = t.querySelector('th[data-key="numel"] button');
  numel.click(); numel.click();
  out.sorted = t.getAttribute("data-sorted");
  out.order = Array.prototype.map.call(t.tBodies[0].rows, function (r) { return r.cells[0].textContent; });
  var f = document.getElementById("filter");
  f.value = "bias mlp2"; f.dispatchEvent(new Event("input"));
  out.filtered = t.getAttribute("data-shown");
  f.value = ""; f.dispatchEvent(new Event("input"));
  document.querySelector('#diagram .ms-node[data-name="mlp2"]').dispatchEvent(new MouseEvent("click"));
  out.scoped = t.getAttribute("data-shown");
  var box = document.querySelector("#diagram svg").getBoundingClientRect();
  out.diagram = [box.width, box.height];
  out.tableHeight = t.getBoundingClientRect().height;
  document.body.setAttribute("data-probe", JSON.stringify(out));
})();
</script>"""


@pytest.fixture
def chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    if os.environ.get("MODELSPEC_REQUIRE_BROWSER") == "1":
        pytest.fail("MODELSPEC_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed")


def run_chromium(chromium: str, tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # fresh profile per run
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def png_colours(path: Path, enough: int = 3) -> int:
    """Distinct pixel colours seen, scanning rows until ``enough`` are found (8-bit RGB/RGBA only)."""
    data = path.read_bytes()
    width, _ = png_size(path)
    depth, colour_type, interlace = data[24], data[25], data[28]
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, "unexpected PNG format"
    bpp = 3 if colour_type == 2 else 4
    idat, pos = b"", 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * bpp
    prev, colours = bytearray(stride), set()
    for y in range(len(raw) // (stride + 1)):
        kind, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG row filter (None, Sub, Up, Average, Paeth)
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                row[i] = (row[i] + a) & 255
            elif kind == 2:
                row[i] = (row[i] + b) & 255
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(row[i : i + bpp]) for i in range(0, stride, bpp))
        if len(colours) >= enough:
            break
        prev = row
    return len(colours)


def test_page_renders_in_a_browser(chromium: str, tmp_path: Path) -> None:
    report = spec_report("shared_mlp.yaml")
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")

    dom = run_chromium(chromium, tmp_path, "--dump-dom", page.as_uri())
    table = re.search(r'<table id="inventory"[^>]*>', dom)
    assert table, "the inventory table is missing from the rendered DOM"
    assert 'data-ready="1"' in table[0], "the inline script did not run"
    assert f'data-rows="{len(report.tensors)}"' in table[0] and f'data-shown="{len(report.tensors)}"' in table[0]
    assert dom.count('class="ms-node') == len(report.modules)

    probed = tmp_path / "probe.html"
    probed.write_text(render_html(report).replace("</body>", PROBE + "</body>"), encoding="utf-8")
    found = re.search(r'data-probe="([^"]*)"', run_chromium(chromium, tmp_path, "--dump-dom", probed.as_uri()))
    assert found, "the probe script did not run"
    probe = json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&"))
    by_numel = sorted(report.tensors, key=lambda e: -e.numel)  # stable, like the page's sort
    assert probe["sorted"] == "numel:desc" and probe["order"] == [e.name for e in by_numel]
    assert probe["filtered"] == "3"  # mlp2's two shared biases (by alias) and its own
    assert probe["scoped"] == "6"  # clicking mlp2: the 4 shared tensors and its linear's 2
    assert probe["diagram"][0] > 200 and probe["diagram"][1] > 100 and probe["tableHeight"] > 100

    shot = tmp_path / "shot.png"
    run_chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,900", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert png_size(shot) == (1280, 900)
    assert png_colours(shot) >= 3, "the screenshot is blank"
