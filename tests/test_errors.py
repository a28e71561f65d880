"""Bad input: a clear message with file:line:col, the path in the spec, a fix; exit 2; nothing written."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from conftest import write

import modelspec
from modelspec._errors import SpecError
from modelspec.cli import main

HEAD = "modelspec: 1\n"

#: name -> (spec text, expected code, expected line, expected path in the message, a phrase of the fix)
MALFORMED: dict[str, tuple[str, str, int, str, str | None]] = {
    "syntax-error": (HEAD + "model: [Linear: [1, 2]\n", "yaml-syntax", 2, "", "close it with ']'"),  # at the open [
    "bad-indent": (HEAD + "model:\n  - ReLU\n - ReLU\n", "yaml-syntax", 4, "", None),
    "duplicate-key": (HEAD + "seed: 1\nseed: 2\nmodel: [ReLU]\n", "duplicate-key", 3, "seed", "remove or rename"),
    "python-tag": (
        HEAD + "model: !!python/object/apply:os.system ['echo hi']\n",
        "yaml-tag",
        2,
        "model",
        "remove the tag",
    ),
    "unknown-layer": (HEAD + "model:\n  - Lienar: [2, 3]\n", "unknown-layer", 3, "model[0]", "did you mean 'Linear'"),
    "lowercase-layer": (HEAD + "model: [relu]\n", "unknown-layer", 2, "model[0]", "did you mean 'ReLU'"),
    "bad-argument-name": (
        HEAD + "model:\n  - Linear: {in_features: 2, out_features: 3, bais: false}\n",
        "bad-argument",
        3,
        "model[0].Linear.bais",
        "did you mean 'bias'",
    ),
    "too-many-arguments": (
        HEAD + "model:\n  - Linear: [1, 2, true, 4]\n",
        "bad-argument",
        3,
        "model[0].Linear[3]",
        "Linear(in_features, out_features, bias)",
    ),
    "missing-argument": (HEAD + "model:\n  - Linear: [4]\n", "missing-argument", 3, "model[0].Linear", "out_features"),
    "wrong-argument-type": (
        HEAD + 'model:\n  - Linear: [4, "sixty"]\n',
        "wrong-type",
        3,
        "model[0].Linear[1]",
        "'out_features' takes int",
    ),
    "unknown-block": (
        HEAD + "blocks:\n  shared: {Linear: [2, 2]}\nmodel:\n  - use: sahred\n",
        "unknown-block",
        5,
        "model[0].use",
        "did you mean 'shared'",
    ),
    "self-referencing-block": (
        HEAD + "blocks:\n  a: [ReLU, {use: a}]\nmodel: {use: a}\n",
        "block-cycle",
        3,
        "blocks.a[1].use",
        "cannot contain itself",
    ),
    "block-cycle": (
        HEAD + "blocks:\n  a: {use: b}\n  b: {use: a}\nmodel: {use: a}\n",
        "block-cycle",
        4,
        "blocks.b.use",
        None,
    ),
    "unknown-version": ("modelspec: 7\nmodel: [ReLU]\n", "unknown-version", 1, "modelspec", "modelspec: 1"),
    "missing-version": ("model: [ReLU]\n", "missing-key", 1, "", "modelspec: 1"),
    "unknown-top-level-key": (HEAD + "modle: [ReLU]\n", "unknown-key", 2, "modle", "did you mean 'model'"),
    "wrong-type-seed": (HEAD + "seed: lots\nmodel: [ReLU]\n", "wrong-type", 2, "seed", None),
    "wrong-type-node": (HEAD + "model: 42\n", "wrong-type", 2, "model", None),
    "no-model": (HEAD + "seed: 0\n", "missing-key", 1, "", "add 'model:'"),
    "empty-list": (HEAD + "model: []\n", "empty-node", 2, "model", None),
    "two-layer-keys": (HEAD + "model:\n  - {Linear: [2, 2], ReLU: null}\n", "bad-layer", 3, "model[0]", None),
    "use-with-extra": (
        HEAD + "blocks:\n  b: ReLU\nmodel:\n  - {use: b, Linear: [2, 2]}\n",
        "bad-use",
        5,
        "model[0]",
        None,
    ),
    "bad-child-name": (HEAD + "model:\n  my-net: ReLU\n", "bad-name", 3, "model.my-net", None),
    "lazy-without-input": (HEAD + "model:\n  - LazyLinear: 8\n", "missing-input", 3, "model[0]", "input:"),
    "shape-mismatch": (
        HEAD + "input: {shape: [2, 4]}\nmodel:\n  - Linear: [5, 3]\n",
        "build-error",
        4,
        "model[0]",
        "input.shape",
    ),
    "bad-value": (HEAD + "model:\n  - Linear: [4, -1]\n", "build-error", 3, "model[0]", None),
    "device-in-spec": (
        HEAD + "model:\n  - Linear: {in_features: 2, out_features: 2, device: cuda}\n",
        "bad-argument",
        3,
        "model[0].Linear.device",
        "--device",
    ),
    "empty-file": ("", "empty-spec", 1, "", "modelspec: 1"),
    "not-a-mapping": ("- ReLU\n", "wrong-type", 1, "", None),
    "input-shape-zero": (HEAD + "input: {shape: [0, 4]}\nmodel: [ReLU]\n", "wrong-type", 2, "input.shape[0]", None),
    "input-shape-string": (HEAD + 'input: {shape: [2, "8"]}\nmodel: [ReLU]\n', "wrong-type", 2, "input.shape[1]", None),
    "version-as-float": ("modelspec: 1.0\nmodel: [ReLU]\n", "unknown-version", 1, "modelspec", None),
    "yaml-boolean-key": (HEAD + "model:\n  on: ReLU\n", "bad-key", 3, "model", "quote it"),
    "module-argument": (
        HEAD + "model:\n  - TransformerEncoder: [7, 2]\n",
        "wrong-type",
        3,
        "model[0].TransformerEncoder[0]",
        "write a layer as",
    ),
    "container-name": (
        HEAD + "model: {ModuleList: [ReLU]}\n",
        "unknown-layer",
        2,
        "model",
        "write the layers as a list",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_cli_build_rejects_malformed_spec(tmp_path: Path, name: str) -> None:
    text, code, line, path, fix = MALFORMED[name]
    spec = write(tmp_path, text, f"{name}.yaml")
    out_dir = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    rc = main(["build", str(spec), "-o", str(out_dir)], stdout=stdout, stderr=stderr)
    err = stderr.getvalue()
    assert rc == 2, err
    assert "Traceback" not in err
    assert f"error[{code}]" in err, err
    assert re.search(rf"{re.escape(str(spec))}:{line}:\d+: error\[{re.escape(code)}\]", err), err
    if path:
        assert f"] {path}:" in err, err
    if fix:
        assert fix in err, err
    assert stdout.getvalue() == ""
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]  # no temp folder either


def test_at_least_fifteen_malformed_cases() -> None:
    assert len(MALFORMED) >= 15


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "modle: 1\nmodel:\n  - Lienar: [2, 3]\n  - Linear: [2, bad]\n  - use: nope\n")
    with pytest.raises(SpecError) as info:
        modelspec.validate(spec)
    assert info.value.codes[:3] == ["unknown-key", "unknown-layer", "wrong-type"]
    # the unknown block is found by the next stage, after these are fixed
    lines = [d.line for d in info.value.diagnostics]
    assert lines == sorted(lines)


def test_validate_exit_codes_and_json(tmp_path: Path) -> None:
    good = write(tmp_path, HEAD + "model: [ReLU]\n", "good.yaml")
    bad = write(tmp_path, HEAD + "model: [Relu]\n", "bad.yaml")
    assert main(["validate", str(good)], stdout=io.StringIO(), stderr=io.StringIO()) == 0
    out = io.StringIO()
    assert main(["validate", str(bad), "--format", "json"], stdout=out, stderr=io.StringIO()) == 2
    import json

    payload = json.loads(out.getvalue())
    assert payload["valid"] is False
    assert payload["errors"][0]["code"] == "unknown-layer" and payload["errors"][0]["line"] == 2


def test_unused_block_is_a_warning(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "blocks:\n  spare: {Linear: [2, 2]}\nmodel: [ReLU]\n")
    err = io.StringIO()
    assert main(["validate", str(spec)], stdout=io.StringIO(), stderr=err) == 0
    assert "warning[unused-block] blocks.spare" in err.getvalue() and ":3:" in err.getvalue()
    with pytest.warns(modelspec.SpecWarning, match="never used"):
        modelspec.build(spec)


def test_missing_file(tmp_path: Path) -> None:
    err = io.StringIO()
    assert main(["build", str(tmp_path / "nope.yaml")], stdout=io.StringIO(), stderr=err) == 2
    assert "cannot read the spec" in err.getvalue() and "Traceback" not in err.getvalue()


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = [HEAD, "a0: &a0 [ReLU, ReLU, ReLU, ReLU, ReLU, ReLU, ReLU, ReLU, ReLU, ReLU]\n"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n")
    spec = write(tmp_path, "".join(lines) + "model: [ReLU]\n")
    with pytest.raises(SpecError) as info:
        modelspec.validate(spec)
    assert "alias-limit" in info.value.codes


def test_dates_stay_strings(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "name: 2024-01-01\nmodel: [ReLU]\n")
    assert modelspec.compile_spec(spec).spec.name == "2024-01-01"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "{spec}", "--dtype", "int64"], "cannot hold parameters"),
        (["build", "{spec}", "--device", "bogus"], "unknown device"),
        (["build", "{spec}", "--device", "cuda:7"], "cuda:7"),
        (["report", "{spec}", "--device", "bogus"], "unknown device"),
        (["grads", "{noparams}"], "no trainable parameters"),
        (["grads", "{spec}", "--input", "{wrong}"], "does not fit the model"),
        (["grads", "{spec}", "--batch", "0"], "expected a number >= 1"),
        (["report", "{spec}", "-o", "{tmp}"], "is a folder"),
        (["report", "{spec}", "-o", "{spec}/below/a/file.txt"], "error[not-a-folder]"),
        (["schema", "--check", "{tmp}/nope"], "is not a folder"),
    ],
)
def test_bad_options_exit_2_without_traceback(tmp_path: Path, argv: list[str], message: str) -> None:
    import safetensors.torch
    import torch

    spec = write(tmp_path, HEAD + "input: {shape: [2, 4]}\nmodel: [{Linear: [4, 2]}]\n", "s.yaml")
    noparams = write(tmp_path, HEAD + "input: {shape: [2, 4]}\nmodel: [ReLU]\n", "n.yaml")
    wrong = tmp_path / "x.safetensors"
    safetensors.torch.save_file({"input": torch.rand(3, 5)}, str(wrong))
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(spec=spec, noparams=noparams, wrong=wrong, tmp=tmp_path) for a in argv]
    err = io.StringIO()
    assert main(args, stdout=io.StringIO(), stderr=err) == 2
    assert message in err.getvalue() and "Traceback" not in err.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp file left


def test_build_refuses_folder_with_foreign_files(tmp_path: Path) -> None:
    spec = write(tmp_path, HEAD + "model: [{Linear: [4, 2]}]\n", "s.yaml")
    out = tmp_path / "out"
    assert main(["build", str(spec), "-o", str(out)], stdout=io.StringIO(), stderr=io.StringIO()) == 0
    (out / "notes.txt").write_text("mine")
    err = io.StringIO()
    assert main(["build", str(spec), "-o", str(out)], stdout=io.StringIO(), stderr=err) == 2
    assert "notes.txt" in err.getvalue() and (out / "notes.txt").read_text() == "mine"


def test_one_line_string_without_colon_is_a_path() -> None:
    with pytest.raises(SpecError) as info:
        modelspec.build("nosuchfile")
    assert info.value.codes == ["file-error"]
