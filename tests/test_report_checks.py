"""A report.json that contradicts itself is refused, with the JSON path of each problem.

Each case starts from a real report.json and corrupts one field. Without the checks,
every one of them was read without complaint and ``diff`` said "no differences".
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import D2L

import modelspec
from modelspec import ReportError
from modelspec._consistency import check_report, read_report
from modelspec.cli import main

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report.json of the seed's SharedMLP pair: 8 tensors, 4 of them shared by two models."""
    out = tmp_path_factory.mktemp("build") / "shared_mlp"
    modelspec.write_build(D2L / "shared_mlp.yaml", out)
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _duplicate_first_tensor(r: dict[str, Any]) -> None:
    r["tensors"].append(copy.deepcopy(r["tensors"][0]))


def _alias_of_another_tensor(r: dict[str, Any]) -> None:
    r["tensors"][4]["aliases"].append(r["tensors"][5]["name"])


def _canonical_not_first(r: dict[str, Any]) -> None:
    r["tensors"][0]["aliases"].reverse()


def _change(path: str, how: Callable[[Any], Any]) -> Mutation:
    """``tensors.0.numel`` -> r["tensors"][0]["numel"] = how(r["tensors"][0]["numel"])."""

    def mutate(r: dict[str, Any]) -> None:
        *parents, last = (int(p) if p.isdigit() else p for p in path.split("."))
        node: Any = r
        for p in parents:
            node = node[p]
        node[last] = how(node[last] if isinstance(node, list) else node.get(last))

    return mutate


def _set(path: str, value: Any) -> Mutation:
    return _change(path, lambda _: value)


def _add_n(path: str, n: int) -> Mutation:
    return _change(path, lambda v: v + n)


def _upper(path: str) -> Mutation:
    return _change(path, str.upper)


# (case, corruption, the JSON path the error must name)
CASES: list[tuple[str, Mutation, str]] = [
    ("tensor-listed-twice", _duplicate_first_tensor, "tensors[8].aliases[0]"),
    ("name-in-two-entries", _alias_of_another_tensor, "tensors[5].aliases[0]"),
    ("canonical-not-first", _canonical_not_first, "tensors[0].aliases"),
    ("numel-10^400", _set("tensors.0.numel", 10**400), "tensors[0].numel"),
    ("numel-not-prod-shape", _add_n("tensors.0.numel", 1), "tensors[0].numel"),
    ("numel-a-float", _set("tensors.0.numel", 1280.0), "tensors[0].numel"),
    ("shape-negative", _set("tensors.0.shape", [-64, -20]), "tensors[0].shape[0]"),
    ("bytes-wrong", _add_n("tensors.0.bytes", 4), "tensors[0].bytes"),
    ("dtype-unknown", _set("tensors.0.dtype", "float31"), "tensors[0].dtype"),
    ("sha256-uppercase", _upper("tensors.0.sha256"), "tensors[0].sha256"),
    ("sha256-short", _set("tensors.0.sha256", "abc"), "tensors[0].sha256"),
    ("spec-sha256-bad", _set("spec_sha256", "not a digest"), "spec_sha256"),
    ("stats-nan", _set("tensors.0.stats.mean", float("nan")), "tensors[0].stats.mean"),
    ("stats-inf", _set("tensors.0.stats.l2", float("inf")), "tensors[0].stats.l2"),
    ("stats-std-negative", _set("tensors.0.stats.std", -1.0), "tensors[0].stats.std"),
    ("stats-min-above-max", _set("tensors.0.stats.min", 1.0), "tensors[0].stats.min"),
    ("stats-mean-above-max", _set("tensors.0.stats.mean", 0.5), "tensors[0].stats.mean"),
    ("stats-nonfinite-above-numel", _set("tensors.0.stats.nonfinite", 2000), "tensors[0].stats.nonfinite"),
    ("stats-a-string", _set("tensors.0.stats.max", "big"), "tensors[0].stats.max"),
    ("buffer-with-grad", _set("tensors.0.kind", "buffer"), "tensors[0].requires_grad"),
    ("block-unknown", _set("tensors.0.block", "nowhere"), "tensors[0].block"),
    ("totals-negative", _set("totals.unique_params", -1), "totals.unique_params"),
    ("totals-off-by-one", _add_n("totals.unique_params", 1), "totals.unique_params"),
    ("totals-saved", _set("totals.saved_by_sharing", 0), "totals.saved_by_sharing"),
    ("totals-adam", _add_n("totals.training_bytes_adam", 1), "totals.training_bytes_adam"),
    ("totals-a-bool", _set("totals.unique_tensors", True), "totals.unique_tensors"),
    ("tie-names-absent-tensor", _set("tie_groups.0.tensors.0", "mlp3.weight"), "tie_groups[0].tensors[0]"),
    ("tie-misses-a-tensor", lambda r: r["tie_groups"][0]["tensors"].pop(), "tie_groups[0].tensors"),
    ("tie-names-absent-site", _set("tie_groups.0.sites.1", "mlp3.shared_layer"), "tie_groups[0].sites[1]"),
    ("tie-numel", _add_n("tie_groups.0.numel", 1), "tie_groups[0].numel"),
    ("block-names-absent-site", _set("blocks.0.sites.0", "mlp9"), "blocks[0].sites[0]"),
    ("block-params", _add_n("blocks.0.params", 1), "blocks[0].params"),
    ("block-listed-twice", lambda r: r["blocks"].append(copy.deepcopy(r["blocks"][0])), "blocks"),
    ("child-shared", _set("children.1.shared_params", 0), "children[1].shared_params"),
    ("child-absent", _set("children.1.name", "mlp7"), "children[1].name"),
    ("module-params", _add_n("modules.3.params", 1), "modules[3].params"),
    ("module-name-twice", lambda r: r["modules"][1]["aliases"].append("mlp2"), "modules[8].aliases[0]"),
    ("tensor-without-module", lambda r: r["modules"].pop(), "tensors[6].aliases[0]"),
    ("unknown-field", _set("totals.extra", 1), "totals.extra"),
    ("not-a-report", lambda r: r.update(format="something-else"), "format"),
]


@pytest.mark.parametrize(("mutate", "path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corrupt_report_is_refused_at_its_path(good: dict[str, Any], mutate: Mutation, path: str) -> None:
    read_report(json.dumps(good))  # the untouched report is fine
    bad = copy.deepcopy(good)
    mutate(bad)
    with pytest.raises(ReportError) as info:
        read_report(json.dumps(bad), "r.json")
    assert info.value.code == "bad-report"
    assert path in [p for p, _ in info.value.problems], info.value.problems
    assert path in str(info.value)


def test_reports_modelspec_writes_pass(tmp_path: Path) -> None:
    class TiedHead(torch.nn.Module):  # a parameter tie, a buffer, a non-persistent buffer
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight
            self.norm = torch.nn.BatchNorm1d(4)
            self.register_buffer("scratch", torch.zeros(3), persistent=False)

    reports = [modelspec.report(TiedHead()), modelspec.report(torch.nn.Linear(3, 2))]
    reports += [modelspec.report(modelspec.build(D2L / name, device=d)) for name in ("shared.yaml", "shared_mlp.yaml")
                for d in ("cpu", "meta")]  # fmt: skip
    for rep in reports:
        check_report(rep)
        assert read_report(rep.model_dump_json()) == rep


def test_invalid_json_names_the_root() -> None:
    with pytest.raises(ReportError) as info:
        read_report(b'{"format": "modelspec-report", ', "r.json")
    assert info.value.code == "bad-report" and info.value.problems[0][0] == "<root>"


def test_every_problem_is_collected_and_the_first_few_shown(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    for t in bad["tensors"]:
        t["bytes"] += 1
    with pytest.raises(ReportError) as info:
        read_report(json.dumps(bad))
    paths = [p for p, _ in info.value.problems]
    assert {f"tensors[{i}].bytes" for i in range(8)} <= set(paths)
    assert "totals.param_bytes" in paths
    assert f"and {len(paths) - ReportError.shown} more" in str(info.value)


def test_diff_of_an_inconsistent_report_object_is_refused(good: dict[str, Any]) -> None:
    bad = copy.deepcopy(good)
    bad["totals"]["unique_params"] += 1
    rep = modelspec.Report.model_validate(bad)  # the schema alone lets it through
    with pytest.raises(ReportError) as info:
        modelspec.diff(rep, rep)
    assert info.value.code == "bad-report"


@pytest.mark.parametrize("command", ["diff", "report"])
@pytest.mark.parametrize("case", ["tensor-listed-twice", "numel-10^400", "stats-nan", "totals-negative",
                                  "tie-names-absent-tensor"])  # fmt: skip
def test_cli_exits_2_without_traceback(tmp_path: Path, good: dict[str, Any], command: str, case: str) -> None:
    mutate, path = next(c[1:] for c in CASES if c[0] == case)
    ok, bad = tmp_path / "ok.json", tmp_path / "bad.json"
    ok.write_text(json.dumps(good), encoding="utf-8")
    corrupt = copy.deepcopy(good)
    mutate(corrupt)
    bad.write_text(json.dumps(corrupt), encoding="utf-8")
    argv = ["diff", str(ok), str(bad)] if command == "diff" else ["report", str(bad)]
    out, err = io.StringIO(), io.StringIO()
    assert main(argv, stdout=out, stderr=err) == 2
    assert "error[bad-report]" in err.getvalue() and path in err.getvalue()
    assert "Traceback" not in err.getvalue() and out.getvalue() == ""
    assert main(["diff", str(ok), str(ok)], stdout=io.StringIO(), stderr=io.StringIO()) == 0


def test_unreadable_report_has_a_code(tmp_path: Path) -> None:
    err = io.StringIO()
    assert main(["report", str(tmp_path / "missing.json")], stdout=io.StringIO(), stderr=err) == 2
    assert "error[file-error]" in err.getvalue()
