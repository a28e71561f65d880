"""diff: one test per kind of change, plus the invariants (empty on itself, antisymmetric)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from conftest import D2L, write

import modelspec
from modelspec._diff import diff_reports
from modelspec.cli import main

NET = """
modelspec: 1
input: {shape: [2, 4]}
blocks:
  shared: {Linear: [8, 8]}
model:
  encoder: {Linear: [4, 8]}
  a: {use: shared}
  b: {use: shared}
  head: {Linear: [8, 1]}
"""


def report_of(text: str) -> modelspec.Report:
    return modelspec.report(modelspec.build(text))


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def base() -> modelspec.Report:
    return report_of(NET)


def test_diff_of_a_report_with_itself_is_empty(base) -> None:
    d = diff_reports(base, base)
    assert d.is_empty() and d.kinds() == []


def test_added_and_removed_are_antisymmetric(base) -> None:
    bigger = report_of(NET + "  extra: {Linear: [1, 3]}\n")
    fwd, back = diff_reports(base, bigger), diff_reports(bigger, base)
    assert [t.name for t in fwd.added] == ["extra.weight", "extra.bias"] or sorted(t.name for t in fwd.added) == [
        "extra.bias", "extra.weight"]  # fmt: skip
    assert fwd.removed == [] and back.added == []
    assert back.removed == fwd.added
    assert fwd.totals_after.unique_params - fwd.totals_before.unique_params == 6


def test_renamed_same_values_under_new_name(base) -> None:
    renamed = report_of(NET.replace("head:", "out:"))
    d = diff_reports(base, renamed)
    assert [(r.old, r.new) for r in d.renamed] == [("head.bias", "out.bias"), ("head.weight", "out.weight")]
    assert d.added == [] and d.removed == []


def test_shape_change(base) -> None:
    d = diff_reports(base, report_of(NET.replace("{Linear: [8, 1]}", "{Linear: [8, 2]}")))
    assert {(c.name, c.before, c.after) for c in d.shape} == {("head.weight", "1×8", "2×8"), ("head.bias", "1", "2")}


def test_dtype_change(tmp_path: Path) -> None:
    a = modelspec.report(modelspec.build(D2L / "net.yaml"))
    b = modelspec.report(modelspec.build(D2L / "net.yaml", dtype="float64"))
    d = diff_reports(a, b)
    assert [c.name for c in d.dtype] == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert d.dtype[0].before == "float32" and d.dtype[0].after == "float64"


def test_spec_edit_that_unties_a_shared_block(base) -> None:
    untied = report_of(NET.replace("b: {use: shared}", "b: {Linear: [8, 8]}"))
    d = diff_reports(base, untied, structure_only=True)
    assert d.kinds() == ["tie"]
    assert {(t.kind, str(t.before), str(t.after)) for t in d.tie} == {
        ("unshared", "[['a.weight', 'b.weight']]", "[['a.weight'], ['b.weight']]"),
        ("unshared", "[['a.bias', 'b.bias']]", "[['a.bias'], ['b.bias']]"),
    }
    back = diff_reports(untied, base, structure_only=True)
    assert {t.kind for t in back.tie} == {"shared"}


def test_a_third_use_adds_an_alias(base) -> None:
    more = report_of(NET.replace("  head:", "  c: {use: shared}\n  head:"))
    d = diff_reports(base, more)
    assert {t.kind for t in d.tie} == {"alias-added"}
    assert d.added == []  # no new tensor: the shared one gained a name


def test_trainable_flag_change(tmp_path: Path) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(D2L / "nest_mlp.yaml", out).module
    net.linear.weight.requires_grad_(False)
    modelspec.save(net, tmp_path / "frozen")
    d = modelspec.diff(out, tmp_path / "frozen")
    assert [(c.name, c.before, c.after) for c in d.trainable] == [("linear.weight", "True", "False")]


def test_build_folder_against_model_saved_after_one_optimizer_step(tmp_path: Path) -> None:
    out = tmp_path / "before"
    net = modelspec.write_build(D2L / "shared.yaml", out).module
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.rand(3, 4)).sum().backward()
    opt.step()
    modelspec.save(net, tmp_path / "after")
    d = modelspec.diff(out, tmp_path / "after")
    assert d.kinds() == ["value"]
    assert sorted(v.name for v in d.value) == sorted(n for n, _ in net.named_parameters())
    before = modelspec.load(out)
    for v in d.value:
        a, b = before.get_parameter(v.name).detach().double(), net.get_parameter(v.name).detach().double()
        assert v.rel_l2 == pytest.approx(float((b - a).norm() / a.norm()), rel=1e-9)
        assert v.max_abs == pytest.approx(float((b - a).abs().max()), rel=1e-9)
    assert diff_reports(modelspec.report(before), modelspec.report(net), structure_only=True).is_empty()


def test_cli_exit_codes_formats_and_fail_on(tmp_path: Path) -> None:
    a = write(tmp_path, NET, "a.yaml")
    b = write(tmp_path, NET.replace("b: {use: shared}", "b: {Linear: [8, 8]}"), "b.yaml")
    assert cli("diff", str(a), str(a))[0] == 0
    rc, out, _ = cli("diff", str(a), str(b))
    assert rc == 1 and "unshared" in out
    rc, out, _ = cli("diff", str(a), str(b), "--format", "json")
    assert rc == 1 and json.loads(out)["tie"][0]["kind"] == "unshared"
    rc, out, _ = cli("diff", str(a), str(b), "--format", "md")
    assert rc == 1 and out.startswith("## Parameter diff")
    assert cli("diff", str(a), str(b), "--fail-on", "added,removed")[0] == 0  # ties do not count here
    rc, _, err = cli("diff", str(a), str(b), "--fail-on", "bogus")
    assert rc == 2 and "unknown kind" in err
    rc, _, err = cli("diff", str(a), str(tmp_path / "missing.yaml"))
    assert rc == 2 and "Traceback" not in err


def test_diff_output_is_deterministic(tmp_path: Path, base) -> None:
    other = report_of(NET.replace("{Linear: [8, 1]}", "{Linear: [8, 3]}") + "  z: {Linear: [3, 2]}\n  y: ReLU\n")
    texts = {diff_reports(base, other).model_dump_json() for _ in range(3)}
    assert len(texts) == 1


def test_renames_pair_by_kind_and_name_not_by_content_alone(tmp_path: Path) -> None:
    a = modelspec.write_build(write(tmp_path, "modelspec: 1\nmodel:\n  bn1: {BatchNorm1d: 4}\n  bn2: {BatchNorm1d: 4}\n",
                                    "a.yaml"), tmp_path / "a").report  # fmt: skip
    b = modelspec.write_build(write(tmp_path, "modelspec: 1\nmodel:\n  x1: {BatchNorm1d: 4}\n  x2: {BatchNorm1d: 4}\n",
                                    "b.yaml"), tmp_path / "b").report  # fmt: skip
    d = diff_reports(a, b)
    assert d.added == [] and d.removed == []
    for r in d.renamed:
        assert r.old.rpartition(".")[2] == r.new.rpartition(".")[2], r  # weight -> weight, never -> running_var
    assert len(d.renamed) == 10


def test_untied_tensor_values_are_compared(tmp_path: Path) -> None:
    a = modelspec.write_build(D2L / "shared.yaml", tmp_path / "a")
    net = a.module
    net[4] = torch.nn.Linear(8, 8)  # a fresh, different layer where the shared one was
    modelspec.save(
        net,
        tmp_path / "b",
        spec=write(
            tmp_path,
            (D2L / "shared.yaml")
            .read_text()
            .replace("  - use: shared\n  - ReLU\n  - LazyLinear", "  - Linear: [8, 8]\n  - ReLU\n  - LazyLinear"),
            "u.yaml",
        ),
    )
    d = modelspec.diff(tmp_path / "a", tmp_path / "b")
    assert {t.kind for t in d.tie} == {"unshared"}
    assert {v.name for v in d.value} == {"4.weight", "4.bias"}


def test_regrouped_ties() -> None:
    two_blocks = """
modelspec: 1
blocks:
  s: {Linear: [4, 4]}
  t: {Linear: [4, 4]}
model:
  a: {use: s}
  b: {use: S2}
  c: {use: T1}
  d: {use: t}
"""
    before = report_of(two_blocks.replace("S2", "s").replace("T1", "t"))  # s at a, b; t at c, d
    after = report_of(two_blocks.replace("S2", "t").replace("T1", "s"))  # s at a, c; t at b, d
    d = diff_reports(before, after, structure_only=True)
    assert {t.kind for t in d.tie} == {"regrouped"}
    weights = next(t for t in d.tie if "a.weight" in t.before[0])
    assert weights.before == [["a.weight", "b.weight"], ["c.weight", "d.weight"]]
    assert weights.after == [["a.weight", "c.weight"], ["b.weight", "d.weight"]]
