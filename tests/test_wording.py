"""Numbers say what they are: a folded report agrees with its children section, and the
gradient report labels the norm of the sum as such."""

from __future__ import annotations

import io

import pytest
from conftest import D2L

import modelspec
from modelspec._report import fold, render_md, render_text
from modelspec.cli import main

LEFT_RIGHT = """
modelspec: 1
name: left-right
input: {shape: [2, 16]}
blocks:
  trunk: [{Linear: [16, 32]}, ReLU]
model:
  left: [{use: trunk}, {Linear: [32, 16]}]
  right: [{use: trunk}, {Linear: [32, 4]}]
"""


@pytest.mark.parametrize("source", [LEFT_RIGHT, D2L / "shared_mlp.yaml"], ids=["children", "models"])
def test_fold_at_depth_1_agrees_with_the_children_section(source: object) -> None:
    report = modelspec.report(modelspec.build(source, device="meta"))  # type: ignore[arg-type]
    folds = {f.name: f for f in fold(report, 1)}
    assert list(folds) == [c.name for c in report.children]
    for c in report.children:
        assert (folds[c.name].params, folds[c.name].shared, folds[c.name].tensors) == (
            c.params, c.shared_params, c.tensors)  # fmt: skip
        assert c.shared_params > 0  # both children reach the shared block


def test_fold_rows_in_text_and_md_show_the_shared_block_in_each_child() -> None:
    report = modelspec.report(modelspec.build(LEFT_RIGHT, device="meta"))
    right = next(line for line in render_text(report, depth=1).splitlines() if line.startswith("right "))
    assert right.split()[-2:] == ["544", "0"]  # shared 544 (the trunk), buffers 0
    assert "| `right` | Sequential | 4 | 676 | 544 | 0 |" in render_md(report, depth=1)


def test_a_shared_module_is_one_fold_with_its_other_names() -> None:
    report = modelspec.report(modelspec.build(D2L / "shared_mlp.yaml", device="meta"))
    rows = [(f.name, f.also, f.params, f.shared) for f in fold(report, 2)]
    assert rows == [
        ("mlp1.shared_layer", ("mlp2.shared_layer",), 3424, 3424),
        ("mlp1.linear", (), 528, 0),
        ("mlp2.linear", (), 528, 0),
    ]


def test_grads_labels_the_norm_of_the_sum() -> None:
    net = modelspec.build(D2L / "shared.yaml")
    result = modelspec.grads(net)
    out = io.StringIO()
    assert main(["grads", str(D2L / "shared.yaml")], stdout=out, stderr=io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    (group,) = result.groups
    for tensor in group.tensors:
        block = lines[lines.index(f"  {tensor}") :]
        label, value = block[3].rsplit(maxsplit=1)
        assert label.strip() == "|sum of contributions|"
        assert float(value) == pytest.approx(group.sum_norms[tensor], rel=1e-5)
        # it is not the sum of the per-use norms: those add up to more
        assert sum(s.norms[tensor] for s in group.sites) > group.sum_norms[tensor] * 1.01
        assert block[4].split()[0] == "|.grad|"
