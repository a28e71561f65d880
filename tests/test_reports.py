"""Reports: golden files for the bundled specs, plus invariants that must hold for any model.

Update the golden files after an intended change with:
    MODELSPEC_UPDATE_GOLDEN=1 python -m pytest tests/test_reports.py
and review the diff like code.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import D2L, SEED_MODELS, SMALL_VARS, bundled_specs

import modelspec
from modelspec._diff import diff_reports
from modelspec._report import render_json, render_md, render_text
from modelspec._ties import transposed_map
from modelspec.cli import main

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MODELSPEC_UPDATE_GOLDEN") == "1"
RENDERERS = {"txt": render_text, "md": render_md, "json": render_json}


#: Floats in report.json may differ from the golden file by this much (relative). Statistics
#: are computed to be bit-identical on every machine (test_portable.py checks that); the
#: tolerance only keeps a golden test from failing on a last-digit change, while a wrong
#: statistic (or anything exact: names, shapes, counts, checksums, ties) still fails.
REL_TOL = 1e-9
# a number standing alone (not inside a word such as a sha256 or a name like 'mlp1')
NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"missing golden file {path}; run with MODELSPEC_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    if name.endswith(".json"):
        _same_json(json.loads(text), json.loads(expected), name)
    else:
        _same_text(text, expected, name)


def _same_json(got: object, want: object, where: str) -> None:
    """Structural equality; floats within REL_TOL, everything else (ints, strings, keys and
    their order, list lengths, null) exactly."""
    if isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=REL_TOL, abs_tol=0.0), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict) and isinstance(got, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            _same_json(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), f"{where}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same_json(g, w, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def _same_text(got: str, want: str, name: str) -> None:
    """Token by token: text exactly; integers (with thousands separators) exactly; a
    printed decimal within one unit of its last printed digit (or REL_TOL if larger)."""
    got_lines, want_lines = got.splitlines(), want.splitlines()
    assert len(got_lines) == len(want_lines), f"{name}: {len(got_lines)} lines != {len(want_lines)}"
    for i, (g, w) in enumerate(zip(got_lines, want_lines, strict=True), 1):
        where = f"{name}:{i}: {g!r} != {w!r}"
        assert NUMBER.split(g) == NUMBER.split(w), where  # the words between numbers
        g_nums, w_nums = NUMBER.findall(g), NUMBER.findall(w)
        assert len(g_nums) == len(w_nums), where
        for a, b in zip(g_nums, w_nums, strict=True):
            if not any(c in b for c in ".eE"):
                assert a == b, where
                continue
            x, y = float(a.replace(",", "")), float(b.replace(",", ""))
            mantissa = b.replace(",", "").lower().split("e")
            decimals = len(mantissa[0].split(".")[1]) if "." in mantissa[0] else 0
            unit = 10.0 ** (int(mantissa[1]) if len(mantissa) > 1 else 0) * 10.0**-decimals
            assert abs(x - y) <= max(unit, REL_TOL * abs(y)) * (1 + 1e-12), where


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
@pytest.mark.parametrize("spec", sorted(SEED_MODELS))
def test_golden_reports(spec: str, fmt: str) -> None:
    report = modelspec.report(modelspec.build(D2L / spec))
    check_golden(f"{Path(spec).stem}.{fmt}", RENDERERS[fmt](report))


def test_golden_folded_report() -> None:
    report = modelspec.report(modelspec.build(D2L / "shared_mlp.yaml"))
    check_golden("shared_mlp.depth1.txt", render_text(report, depth=1))


@pytest.mark.parametrize("spec", bundled_specs(), ids=lambda p: p.name)
def test_invariants(spec: Path) -> None:
    model = modelspec.build(spec, overrides=SMALL_VARS.get(spec.name))
    r = modelspec.report(model)
    t = r.totals
    assert t.naive_params - t.unique_params == t.saved_by_sharing
    assert t.unique_params == sum(p.numel() for p in model.parameters())
    readers = sum(model.get_parameter(src).numel() for src in transposed_map(model).values())  # read transposed
    assert t.naive_params == sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False)) + readers
    assert t.trainable_params + t.frozen_params == t.unique_params
    assert diff_reports(r, r).is_empty()
    assert sum(g.numel for g in r.tie_groups if g.kind == "module") <= t.unique_params
    names = [a for e in r.tensors for a in e.aliases]
    assert len(names) == len(set(names))  # every name belongs to exactly one entry


def test_shared_net_report_lists_shared_weight_once_with_aliases() -> None:
    r = modelspec.report(modelspec.build(D2L / "shared.yaml"))
    shared = [e for e in r.tensors if e.block == "shared"]
    assert [(e.name, e.aliases) for e in shared] == [
        ("2.weight", ["2.weight", "4.weight"]),
        ("2.bias", ["2.bias", "4.bias"]),
    ]
    (group,) = r.tie_groups
    assert group.sites == ["2", "4"] and group.numel == 72
    assert r.totals.unique_params == 121 and r.totals.naive_params == 193


def test_report_json_is_byte_identical_across_builds_and_thread_counts() -> None:
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = render_json(modelspec.report(modelspec.build(D2L / "shared_mlp.yaml")))
        torch.set_num_threads(2)
        two = render_json(modelspec.report(modelspec.build(D2L / "shared_mlp.yaml")))
    finally:
        torch.set_num_threads(n)
    assert one == two
    assert "time" not in json.loads(one)


def test_buffers_are_reported_as_buffers() -> None:
    m = modelspec.build("modelspec: 1\ninput: {shape: [4, 3]}\nmodel: [{Linear: [3, 5]}, {BatchNorm1d: 5}]\n")
    r = modelspec.report(m)
    buffers = {e.name: e for e in r.tensors if e.kind == "buffer"}
    assert set(buffers) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert r.totals.buffer_numel == 11 and not buffers["1.running_mean"].requires_grad


def test_frozen_and_training_memory() -> None:
    m = modelspec.build(D2L / "nest_mlp.yaml")
    m.linear.requires_grad_(False)
    t = modelspec.report(m).totals
    assert t.frozen_params == 32 * 16 + 16
    assert t.training_bytes_adam == t.param_bytes + 3 * 4 * t.trainable_params


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


def test_report_cli_formats(tmp_path: Path) -> None:
    spec = str(D2L / "shared_mlp.yaml")
    rc, text, _ = run("report", spec)
    assert rc == 0 and max(len(line) for line in text.splitlines()) <= 100
    rc, out, _ = run("report", spec, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 8 and rows[0]["aliases"].split() == ["mlp1.shared_layer.0.weight", "mlp2.shared_layer.0.weight"]
    rc, out, _ = run("report", spec, "--format", "json")
    assert json.loads(out)["totals"]["unique_params"] == 4480
    rc, _, _ = run("report", spec, "--format", "html", "-o", str(tmp_path / "r.html"))
    assert rc == 0 and (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    rc, out, _ = run("report", spec, "--device", "meta")
    assert rc == 0 and "4,480 parameters" in out


def test_report_of_build_folder_and_report_json(tmp_path: Path) -> None:
    modelspec.write_build(D2L / "shared.yaml", tmp_path / "b")
    rc, from_dir, _ = run("report", str(tmp_path / "b"), "--format", "json")
    rc2, from_json, _ = run("report", str(tmp_path / "b" / "report.json"), "--format", "json")
    assert rc == rc2 == 0 and from_dir == from_json == (tmp_path / "b" / "report.json").read_text()


def test_report_cli_bad_input(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    rc, _, err = run("report", str(tmp_path / "x.json"))
    assert rc == 2 and "not a modelspec report.json" in err
    rc, _, err = run("report", str(D2L / "shared.yaml"), "--depth", "-1")
    assert rc == 2


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "svg"])
def test_graph_cli(fmt: str) -> None:
    rc, out, _ = run("graph", str(D2L / "shared_mlp.yaml"), "--format", fmt)
    assert rc == 0 and "shared_layer" in out


NESTED = """
modelspec: 1
input: {shape: [2, 4]}
blocks:
  inner: {Linear: [4, 4]}
  outer:
    a: {use: inner}
    b: {Linear: [4, 4]}
    c: {use: inner}
model:
  body: [{use: outer}, {use: outer}]
"""


def test_block_shared_inside_a_shared_block_has_its_own_tie_group() -> None:
    r = modelspec.report(modelspec.build(NESTED))
    groups = {g.block: g for g in r.tie_groups}
    assert set(groups) == {"outer", "inner"}
    assert groups["inner"].sites == ["body.0.a", "body.0.c", "body.1.a", "body.1.c"]
    assert groups["inner"].numel == 20 and groups["outer"].numel == 40
    blocks = {b.name: b for b in r.blocks}
    assert blocks["outer"].params == 40 and blocks["inner"].params == 20  # nested block included once
    assert r.totals.unique_params == 40 and r.totals.naive_params == 120


def test_root_that_is_a_block() -> None:
    r = modelspec.report(modelspec.build("modelspec: 1\nblocks:\n  b: [{Linear: [4, 4]}, ReLU]\nmodel: {use: b}\n"))
    (block,) = r.blocks
    assert block.sites == [""] and block.params == 20
    assert "used at (root)" in render_text(r)


def test_report_histograms_cli(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rc, _, err = run("report", str(D2L / "shared.yaml"), "--histograms", str(tmp_path / "h"), "--by", "block")
    assert rc == 0 and "histogram" in err
    assert sorted(p.suffix for p in (tmp_path / "h").iterdir()) == [".png"] * len(list((tmp_path / "h").iterdir()))
    assert len(list((tmp_path / "h").iterdir())) >= 1
    rc, _, err = run("report", str(D2L / "shared.yaml"), "--device", "meta", "--histograms", str(tmp_path / "m"))
    assert rc == 2 and "need values" in err


def test_golden_comparison_tolerates_only_float_noise() -> None:
    want = {"name": "0.weight", "numel": 32, "sha256": "ab12", "stats": {"mean": 0.25, "l2": None}}
    _same_json({**want, "stats": {"mean": 0.25 * (1 + 1e-12), "l2": None}}, want, "r")
    for bad in ({**want, "numel": 33}, {**want, "sha256": "ab13"}, {**want, "stats": {"mean": 0.2500001, "l2": None}}):
        with pytest.raises(AssertionError):
            _same_json(bad, want, "r")
    line = "0.weight  [8, 4]  4,480  mean=-0.0243  sha 3f2e1a  mlp1"
    _same_text(line.replace("-0.0243", "-0.0244"), line, "t")  # one unit in the last printed digit
    for bad in ("-0.0246", "4,481", "3f2e1b", "mlp2", "[8, 5]"):
        old = {"-0.0246": "-0.0243", "4,481": "4,480", "3f2e1b": "3f2e1a", "mlp2": "mlp1", "[8, 5]": "[8, 4]"}[bad]
        with pytest.raises(AssertionError):
            _same_text(line.replace(old, bad), line, "t")
