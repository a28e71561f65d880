"""Parameter ties in reports: transposed readers, tie kinds, the list of ties, and diff.

A transposed tie (a tied autoencoder's decoder reads ``encoder.weight`` transposed) leaves
one parameter; the report lists the reader as a ``transposed_aliases`` name of that
tensor, counts it in the naive total, gives it a tie group of kind ``transposed`` and
lists the tie itself. ``diff`` calls a tie added, removed or changed in kind a change.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import write
from tie_models import AUTOENCODER
from torch import nn

import modelspec
from modelspec import ReportError
from modelspec._consistency import read_report
from modelspec._diff import diff_reports
from modelspec._inventory import DeclaredTie, Report, TieGroup
from modelspec._report import render_json, render_md, render_text
from modelspec.cli import main

TIED_HEAD = """\
modelspec: 1
name: tied-head
model:
  inputs: {idx: {shape: [2, 8], dtype: int64}}
  nodes:
    pos: {arange: {dim: 1}, in: idx}
    transformer.wte: {Embedding: [50, 16], in: idx}
    transformer.wpe: {Embedding: [8, 16], in: pos}
    h: {add: null, in: [transformer.wte, transformer.wpe]}
    transformer.ln_f: {LayerNorm: 16}
    lm_head: {Linear: [16, 50, {bias: false}]}
ties:
  - {param: lm_head.weight, to: transformer.wte.weight}
"""

# Square layers, so the same pair of layers can be tied either way (or not at all).
SQUARE = """\
modelspec: 1
name: square
input: {shape: [2, 8]}
model:
  nodes:
    encoder: {Linear: [8, 8]}
    act: ReLU
    decoder: {Linear: [8, 8]}
"""
SQUARE_SAME = SQUARE + "ties:\n  - {param: decoder.weight, to: encoder.weight}\n"
SQUARE_TRANSPOSED = SQUARE + "ties:\n  - {param: decoder.weight, to: encoder.weight, transposed: true}\n"


def _report(tmp_path: Path, text: str, name: str = "spec.yaml") -> Report:
    return modelspec.report(modelspec.build(write(tmp_path, text, name)))


@pytest.fixture
def ae(tmp_path: Path) -> Report:
    return _report(tmp_path, AUTOENCODER)


# ------------------------------------------------------------------ inventory (task point 1)
def test_transposed_reader_is_listed_counted_grouped_and_tied(ae: Report) -> None:
    by_name = {e.name: e for e in ae.tensors}
    assert list(by_name) == ["encoder.weight", "encoder.bias", "decoder.bias"]
    assert by_name["encoder.weight"].transposed_aliases == ["decoder.weight"]
    assert by_name["encoder.weight"].aliases == ["encoder.weight"]
    assert all(e.transposed_aliases == [] for e in ae.tensors[1:])
    # unique: the encoder's weight and both biases; naive: the decoder's weight again
    assert ae.totals.unique_params == 20 * 5 + 5 + 20
    assert ae.totals.naive_params == ae.totals.unique_params + 20 * 5
    assert ae.totals.saved_by_sharing == 100
    assert ae.tie_groups == [
        TieGroup(kind="transposed", block=None, sites=["encoder.weight", "decoder.weight"],
                 tensors=["encoder.weight"], numel=100)
    ]  # fmt: skip
    assert ae.ties == [DeclaredTie(param="decoder.weight", to="encoder.weight", kind="transposed")]


def test_same_tie_is_a_parameter_group_and_a_same_tie(tmp_path: Path) -> None:
    r = _report(tmp_path, TIED_HEAD)
    assert [(g.kind, g.sites) for g in r.tie_groups] == [("parameter", ["transformer.wte.weight", "lm_head.weight"])]
    assert r.ties == [DeclaredTie(param="lm_head.weight", to="transformer.wte.weight", kind="same")]
    assert all(e.transposed_aliases == [] for e in r.tensors)
    assert r.totals.naive_params - r.totals.unique_params == 50 * 16


def test_module_modelspec_did_not_build_lists_its_transposed_ties(tmp_path: Path) -> None:
    wrapper = nn.Sequential(modelspec.build(write(tmp_path, AUTOENCODER)))  # no spec known for the wrapper
    r = modelspec.report(wrapper)
    assert r.ties == [DeclaredTie(param="0.decoder.weight", to="0.encoder.weight", kind="transposed")]
    assert r.tensors[0].transposed_aliases == ["0.decoder.weight"]


def test_report_json_with_ties_reads_back_and_is_stable(ae: Report, tmp_path: Path) -> None:
    text = render_json(ae)
    assert read_report(text) == ae
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        again = render_json(_report(tmp_path, AUTOENCODER, "again.yaml"))
    finally:
        torch.set_num_threads(threads)
    assert again == text
    out = tmp_path / "build"
    modelspec.write_build(write(tmp_path, AUTOENCODER), out)
    assert (out / "report.json").read_text(encoding="utf-8") == text
    assert render_json(modelspec.report(modelspec.load(out))) == text


# ------------------------------------------------------------------ consistency
def _bad_naive(r: dict[str, Any]) -> None:
    t = r["totals"]
    t["naive_params"] -= 100  # as if the transposed reader were not counted
    t["saved_by_sharing"] -= 100


def _reader_is_also_an_alias(r: dict[str, Any]) -> None:
    r["tensors"][0]["transposed_aliases"].append("encoder.bias")


def _reader_of_no_module(r: dict[str, Any]) -> None:
    r["tensors"][0]["transposed_aliases"] = ["nowhere.weight"]
    r["tie_groups"][0]["sites"][1] = "nowhere.weight"
    r["ties"][0]["param"] = "nowhere.weight"


def _group_sites_wrong(r: dict[str, Any]) -> None:
    r["tie_groups"][0]["sites"].reverse()


def _group_missing(r: dict[str, Any]) -> None:
    r["tie_groups"].clear()


def _tie_kind_flipped(r: dict[str, Any]) -> None:
    r["ties"][0]["kind"] = "same"


def _tie_to_unknown(r: dict[str, Any]) -> None:
    r["ties"][0]["to"] = "encoder.weigth"


def _tie_twice(r: dict[str, Any]) -> None:
    r["ties"].append(copy.deepcopy(r["ties"][0]))


def _buffer_read_transposed(r: dict[str, Any]) -> None:
    r["tensors"][0]["kind"] = "buffer"
    r["tensors"][0]["requires_grad"] = False


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (_bad_naive, "totals.naive_params"),
        (_reader_is_also_an_alias, "tensors[0].transposed_aliases[1]"),
        (_reader_of_no_module, "tensors[0].transposed_aliases[0]"),
        (_group_sites_wrong, "tie_groups[0].sites"),
        (_group_missing, "tensors[0].transposed_aliases"),
        (_tie_kind_flipped, "ties[0].param"),
        (_tie_to_unknown, "ties[0].to"),
        (_tie_twice, "ties[1].param"),
        (_buffer_read_transposed, "tensors[0].transposed_aliases"),
    ],
)
def test_self_contradicting_tie_fields_are_refused(ae: Report, mutate: Any, path: str) -> None:
    data = json.loads(render_json(ae))
    mutate(data)
    with pytest.raises(ReportError) as e:
        read_report(json.dumps(data))
    assert e.value.code == "bad-report"
    assert path in [p for p, _ in e.value.problems]


# ------------------------------------------------------------------ report.md and text (task point 2)
def test_markdown_and_text_show_tie_kinds(ae: Report, tmp_path: Path) -> None:
    md = render_md(ae)
    assert "| `decoder.weight` | `encoder.weight` | transposed |" in md.splitlines()
    assert "| transposed |  | `encoder.weight`, `decoder.weight` | `encoder.weight` | 100 |" in md.splitlines()
    assert "`decoder.weight` (transposed)" in md  # in the tensor's names
    text = render_text(ae).splitlines()
    assert "  decoder.weight = encoder.weight transposed (dims 0 and 1 swapped)" in text
    assert "  transposed: encoder.weight, read transposed at decoder.weight: 100 elements in 1 tensor" in text
    same = render_text(_report(tmp_path, TIED_HEAD, "head.yaml")).splitlines()
    assert "  lm_head.weight = transformer.wte.weight (the same parameter)" in same
    assert render_md(_report(tmp_path, TIED_HEAD, "head.yaml")).count("| `lm_head.weight` | ") == 1


# ------------------------------------------------------------------ diff (task point 2)
def _cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue()


@pytest.fixture
def square_reports(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, text in [("none", SQUARE), ("same", SQUARE_SAME), ("transposed", SQUARE_TRANSPOSED)]:
        path = tmp_path / f"{name}.json"
        path.write_text(render_json(_report(tmp_path, text, f"{name}.yaml")), encoding="utf-8")
        paths[name] = path
    return paths


def test_diff_tie_changed_in_kind(square_reports: dict[str, Path]) -> None:
    a, b = (read_report(square_reports[k].read_text(encoding="utf-8")) for k in ("same", "transposed"))
    d = diff_reports(a, b)
    assert [(c.change, c.param) for c in d.declared_ties] == [("kind", "decoder.weight")]
    assert d.declared_ties[0].before == DeclaredTie(param="decoder.weight", to="encoder.weight", kind="same")
    assert d.declared_ties[0].after == DeclaredTie(param="decoder.weight", to="encoder.weight", kind="transposed")
    code, out = _cli("diff", str(square_reports["same"]), str(square_reports["transposed"]), "--fail-on", "tie")
    assert code == 1
    assert any(line.startswith("~ tie       kind: decoder.weight = encoder.weight (same)") for line in out.splitlines())


@pytest.mark.parametrize(("a", "b", "change"), [("none", "transposed", "added"), ("transposed", "none", "removed")])
def test_diff_tie_added_or_removed(square_reports: dict[str, Path], a: str, b: str, change: str) -> None:
    code, out = _cli("diff", str(square_reports[a]), str(square_reports[b]), "--format", "json", "--fail-on", "tie")
    assert code == 1
    data = json.loads(out)
    assert [(c["change"], c["param"]) for c in data["declared_ties"]] == [(change, "decoder.weight")]


def test_diff_of_ties_alone_is_a_change(tmp_path: Path) -> None:
    """Same tensors, same sharing; only the list of ties differs: still a 'tie' change."""
    before = tmp_path / "before.json"
    before.write_text(render_json(_report(tmp_path, TIED_HEAD)), encoding="utf-8")
    data = json.loads(before.read_text(encoding="utf-8"))
    data["ties"] = []  # the head shares the embedding's tensor, but no tie says so
    after = tmp_path / "after.json"
    after.write_text(json.dumps(data), encoding="utf-8")
    code, out = _cli("diff", str(before), str(after), "--fail-on", "tie")
    assert code == 1
    assert out.splitlines() == ["- tie       removed: lm_head.weight = transformer.wte.weight (same)"]
    assert _cli("diff", str(before), str(before))[0] == 0
