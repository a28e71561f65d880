"""Transfer: init rules with ``from:`` take a trunk's tensors from another build folder,
verified, with every mismatch listed in one error, and the provenance recorded in the
report and the checkpoint (so the built folder loads without the source)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write

import modelspec
from modelspec import _api, _transfer
from modelspec._errors import SpecError
from modelspec._report import render_json, render_text
from modelspec.cli import main

TRUNK = """\
modelspec: 1
seed: 1
model:
  - Linear: [8, 16]
  - ReLU
  - Linear: [16, 16]
"""


def trunk(tmp_path: Path, text: str = TRUNK, **kw: object) -> modelspec._api.BuildResult:  # type: ignore[name-defined]
    return modelspec.write_build(write(tmp_path, text, "trunk.yaml"), tmp_path / "trunk-build", **kw)


def big(tmp_path: Path, rule: str, body: str = "    - Linear: [8, 16]\n    - ReLU\n    - Linear: [16, 16]\n") -> Path:
    text = (
        "modelspec: 1\nseed: 2\nmodel:\n  body:\n" + body + "  head: {Linear: [16, 4]}\n"
        "init:\n  - {layer: Linear, normal: {std: 0.5}}\n" + rule
    )
    return write(tmp_path, text, "big.yaml")


RULE = "  - {params: 'body.*', from: trunk-build, rename: {body: ''}}\n"


def sha(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def test_trunk_tensors_arrive_bitwise(tmp_path: Path) -> None:
    src = trunk(tmp_path)
    m = modelspec.build(big(tmp_path, RULE))
    for name, t in src.module.state_dict().items():
        assert torch.equal(m.state_dict()[f"body.{name}"], t), name
    assert m.head.weight.std() > 0.3  # the earlier rule still acts where the transfer does not select
    info = modelspec.build_info(m)
    (t,) = info.transfers
    data = (tmp_path / "trunk-build" / "model.safetensors").read_bytes()
    ckpt = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert t.rule == 1 and t.source == "trunk-build"
    assert t.checkpoint_sha256 == ckpt["__metadata__"]["metadata_sha256"]
    assert t.spec_sha256 == src.report.spec_sha256
    assert [(x.name, x.source_name) for x in t.tensors] == [
        ("body.0.weight", "0.weight"),
        ("body.0.bias", "0.bias"),
        ("body.2.weight", "2.weight"),
        ("body.2.bias", "2.bias"),
    ]
    assert all(x.sha256 == sha(src.module.state_dict()[x.source_name]) for x in t.tensors)


def test_the_build_folder_records_it_and_loads_without_the_source(tmp_path: Path) -> None:
    trunk(tmp_path)
    out = tmp_path / "big-build"
    res = modelspec.write_build(big(tmp_path, RULE), out)
    report = json.loads((out / "report.json").read_text())
    assert [t["source"] for t in report["transfers"]] == ["trunk-build"]
    assert len(report["transfers"][0]["tensors"]) == 4
    assert "## Transferred parameters" in (out / "report.md").read_text()
    assert "init[1]: 4 tensor(s) from trunk-build" in render_text(res.report)
    shutil.rmtree(tmp_path / "trunk-build")  # the fine-tuned folder stands alone
    loaded = modelspec.load(out)
    for k, v in res.module.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert modelspec.report(loaded).transfers == res.report.transfers
    assert render_json(_api.open_target(out).report) == (out / "report.json").read_text()
    modelspec.save(loaded, out)  # a later save keeps the record
    assert json.loads((out / "report.json").read_text())["transfers"] == report["transfers"]


def test_no_transfer_no_field(tmp_path: Path) -> None:
    res = trunk(tmp_path)
    assert "transfers" not in json.loads((tmp_path / "trunk-build" / "report.json").read_text())
    assert res.report.transfers == []


def test_every_mismatch_in_one_error(tmp_path: Path) -> None:
    trunk(tmp_path)
    body = "    - Linear: [8, 12]\n    - ReLU\n    - Linear: [12, 16]\n    - Linear: [16, 16]\n"
    spec = big(tmp_path, RULE, body)
    with pytest.raises(SpecError) as e:
        modelspec.build(spec)
    (d,) = e.value.diagnostics
    assert (d.code, d.line, d.column, d.path) == ("transfer-mismatch", 12, 24, ("init", 1, "from"))
    for part in ("'body.0.weight' [12, 8]", "'body.0.bias' [12]", "'body.2.weight' [16, 12]", "no '3.weight'",
                 "no '3.bias'"):  # fmt: skip
        assert part in d.message, part
    assert "'body.2.bias'" not in d.message  # 16 = 16: that one fits
    assert "5 of 6" in d.message and d.hint


def test_dtype_mismatch_is_listed(tmp_path: Path) -> None:
    trunk(tmp_path, dtype="float64")
    with pytest.raises(SpecError) as e:
        modelspec.build(big(tmp_path, RULE))
    (d,) = e.value.diagnostics
    assert d.code == "transfer-mismatch" and "'body.0.weight' float32: '0.weight' is F64" in d.message
    assert "4 of 4" in d.message


def test_missing_names_without_rename_get_a_hint(tmp_path: Path) -> None:
    trunk(tmp_path)
    with pytest.raises(SpecError) as e:
        modelspec.build(big(tmp_path, "  - {params: 'body.*', from: trunk-build}\n"))
    (d,) = e.value.diagnostics
    assert d.code == "transfer-mismatch" and "no 'body.0.weight' in the source" in d.message
    assert "rename" in (d.hint or "")


@pytest.mark.parametrize("damage", ["missing", "not-a-build", "tensor-bytes", "metadata"])
def test_missing_or_damaged_source(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "trunk-build"
    if damage != "missing":
        trunk(tmp_path)
    ckpt = folder / "model.safetensors"
    if damage == "not-a-build":
        ckpt.unlink()
    elif damage == "tensor-bytes":
        data = bytearray(ckpt.read_bytes())
        data[-3] ^= 0xFF  # the last tensor's data
        ckpt.write_bytes(bytes(data))
    elif damage == "metadata":
        ckpt.write_bytes(ckpt.read_bytes().replace(b'"ties":"{}"', b'"ties":"{ }"'))
    with pytest.raises(SpecError) as e:
        modelspec.build(big(tmp_path, RULE))
    (d,) = e.value.diagnostics
    assert (d.code, d.path) == ("transfer-source", ("init", 1, "from"))
    code = {"missing": "not-a-folder", "not-a-build": "not-a-build-folder", "tensor-bytes": "checksum-mismatch",
            "metadata": "metadata-mismatch"}[damage]  # fmt: skip
    assert f"[{code}]" in d.message


def test_meta_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trunk(tmp_path)

    def no_read(*_: object) -> None:
        raise AssertionError("read tensor data on meta")

    monkeypatch.setattr(_transfer.Source, "read", no_read)
    m = modelspec.build(big(tmp_path, RULE), device="meta")
    assert len(modelspec.report(m).transfers[0].tensors) == 4
    assert modelspec.validate(big(tmp_path, RULE)) == []


def test_spec_text_resolves_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trunk(tmp_path)
    monkeypatch.chdir(tmp_path)
    m = modelspec.build(big(tmp_path, RULE).read_text())
    assert torch.equal(m.body[0].weight, modelspec.load(tmp_path / "trunk-build")[0].weight)


def test_rename_prefixes_are_module_paths() -> None:
    assert _transfer.rename("body.0.weight", {"body": ""}) == "0.weight"
    assert _transfer.rename("body2.weight", {"body": "x"}) == "body2.weight"
    assert _transfer.rename("a.b.w", {"a": "x", "a.b": "y.z"}) == "y.z.w"
    assert _transfer.rename("w", {"": "bert"}) == "bert.w"


def test_cli_build_and_error(tmp_path: Path) -> None:
    trunk(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    assert main(["build", str(big(tmp_path, RULE)), "-o", str(tmp_path / "o")], stdout=out, stderr=err) == 0
    shutil.rmtree(tmp_path / "trunk-build")
    out, err = io.StringIO(), io.StringIO()
    assert main(["build", str(big(tmp_path, RULE)), "-o", str(tmp_path / "o2")], stdout=out, stderr=err) == 2
    assert "transfer-source" in err.getvalue() and not (tmp_path / "o2").exists()
