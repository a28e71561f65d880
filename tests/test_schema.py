"""The committed JSON Schemas equal what the code generates, and describe real files."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, SMALL_VARS, bundled_specs

import modelspec
from modelspec._schema import SCHEMA_FILES, render_schemas

SCHEMAS = ROOT / "schemas"


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_committed_schema_is_up_to_date(name: str) -> None:
    committed = (SCHEMAS / name).read_text(encoding="utf-8")
    assert committed == render_schemas()[name], f"run 'modelspec schema -o schemas' and commit {name}"


@functools.cache  # checking the schema itself against the metaschema takes seconds
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("spec", bundled_specs(), ids=lambda p: p.name)
def test_bundled_specs_validate_against_schema(spec: Path) -> None:
    text = spec.read_text()
    assert text.startswith("# yaml-language-server: $schema=")
    ref = text.splitlines()[0].split("$schema=")[1]
    assert (spec.parent / ref).resolve() == (SCHEMAS / "modelspec.schema.json").resolve()
    errors = list(_validator("modelspec.schema.json").iter_errors(yaml.safe_load(text)))
    assert errors == []


@pytest.mark.parametrize(
    "bad",
    [
        {"modelspec": 1, "model": [{"Linear": {"bais": True}}]},  # unknown argument
        {"modelspec": 1, "model": ["Lienar"]},  # unknown layer
        {"modelspec": 1, "model": [{"Linear": {"in_features": "x", "out_features": 2}}]},  # wrong type
        {"modelspec": 1, "modle": []},  # unknown key
        {"modelspec": 1, "model": {"use": "a", "extra": 1}},
    ],
)
def test_schema_rejects_what_the_validator_rejects(bad: dict) -> None:
    assert list(_validator("modelspec.schema.json").iter_errors(bad))


def test_schema_accepts_every_documented_layer_form() -> None:
    forms = [{"Dropout": 0.1}, {"LazyLinear": 10}, "ReLU", {"Linear": [2, 3]}, {"Linear": {"in_features": 2, "out_features": 3}},
             {"Conv2d": [3, 16, {"kernel_size": 3, "padding": 1}]}, {"use": "b"}, {"net": ["ReLU"]}]  # fmt: skip
    for form in forms:
        doc = {"modelspec": 1, "blocks": {"b": "ReLU"}, "model": [form]}
        assert list(_validator("modelspec.schema.json").iter_errors(doc)) == [], form
        modelspec.validate(yaml.safe_dump(doc))


def test_schema_offers_layer_names_and_arguments_for_completion() -> None:
    schema = json.loads((SCHEMAS / "modelspec.schema.json").read_text())
    assert schema["$defs"]["Layer"]["properties"]["Linear"] == {"$ref": "#/$defs/layer.Linear"}
    linear = schema["$defs"]["layer.Linear"]
    kwargs = linear["anyOf"][-1]
    assert set(kwargs["properties"]) == {"in_features", "out_features", "bias"}
    bias = kwargs["properties"]["bias"]  # a boolean, or a '$' expression over the spec's vars
    assert bias["default"] is True and bias["type"] == ["boolean", "string"] and bias["pattern"] == r"^\$(?!\$)"
    bare = schema["$defs"]["Node"]["anyOf"][0]
    assert "ReLU" in bare["enum"] and "LazyLinear" in bare["enum"]
    # inside a graph's nodes: layers, ops, use/call and 'in' complete as keys of one entry
    entry = next(a for a in schema["$defs"]["GraphEntry"]["anyOf"] if a.get("type") == "object")
    assert {"Linear", "add", "attention", "use", "call", "Sequential", "in"} <= set(entry["properties"])


@pytest.mark.parametrize("spec", bundled_specs(), ids=lambda p: p.name)
def test_emitted_reports_validate_against_schema(tmp_path: Path, spec: Path) -> None:
    modelspec.write_build(spec, tmp_path / "b", overrides=SMALL_VARS.get(spec.name))
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert list(_validator("report.schema.json").iter_errors(report)) == []
    meta_report = json.loads(modelspec.report(modelspec.build(spec, device="meta")).model_dump_json())
    assert list(_validator("report.schema.json").iter_errors(meta_report)) == []


def test_resolved_spec_in_build_folder_is_a_valid_spec(tmp_path: Path) -> None:
    modelspec.write_build(ROOT / "specs/d2l/shared_mlp.yaml", tmp_path / "b")
    data = yaml.safe_load((tmp_path / "b" / "spec.yaml").read_text())
    assert list(_validator("modelspec.schema.json").iter_errors(data)) == []
    again = modelspec.compile_spec(tmp_path / "b" / "spec.yaml").spec
    assert again.sha256 == modelspec.compile_spec(ROOT / "specs/d2l/shared_mlp.yaml").spec.sha256
