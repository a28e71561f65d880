"""Single output files: ``report -o FILE``, ``graph -o FILE`` and ``schema -o DIR`` replace only
what modelspec wrote (or an empty file), never an input of the same command; ``--force``
replaces a user's regular file but never an input, a link or a folder. Also: every error a
command can end with has its own code (none prints ``error[error]``)."""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

import modelspec
from modelspec._errors import BuildDirError, ModelspecError, UsageError
from modelspec._outfile import written_by_modelspec
from modelspec._plots import save_histograms
from modelspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "d2l" / "shared.yaml"
REPORT_FORMATS = ("text", "md", "json", "csv", "html")
GRAPH_FORMATS = ("mermaid", "dot", "svg")
USER_TEXT = b"my notes\nnot from modelspec\n"


def _cli(*argv: str | Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main([str(a) for a in argv], stdout=out, stderr=err)
    return rc, err.getvalue()


def _code(err: str) -> str | None:
    m = re.search(r"error\[([a-z0-9-]+)\]", err)
    return m[1] if m else None


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    shutil.copyfile(SPEC, path)
    return path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("out") / "b"
    modelspec.write_build(SPEC, folder)
    return folder


def _commands(fmt: str) -> list[str]:
    return ["report" if fmt in REPORT_FORMATS else "graph", "--format", fmt]


# ------------------------------------------------------------------ rule 1: never an input
@pytest.mark.parametrize("command", ["report", "graph"])
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_the_input_spec_is_never_overwritten(spec: Path, command: str, force: list[str]) -> None:
    before = spec.read_bytes()
    rc, err = _cli(command, spec, "-o", spec, *force)
    assert (rc, _code(err)) == (2, "would-overwrite-input")
    assert spec.read_bytes() == before
    link = spec.parent / "link.yaml"
    link.symlink_to(spec.name)
    rc, err = _cli(command, link, "-o", spec, *force)  # the same file under another name
    assert (rc, _code(err)) == (2, "would-overwrite-input")
    rc, err = _cli(command, spec, "-o", link, *force)
    assert (rc, _code(err)) == (2, "would-overwrite-input")
    assert spec.read_bytes() == before and link.is_symlink()


@pytest.mark.parametrize("name", ["report.json", "report.md", "spec.yaml", "model.safetensors", "manifest.json"])
def test_a_file_of_the_build_folder_being_read_is_never_overwritten(build: Path, name: str) -> None:
    before = (build / name).read_bytes()
    for argv in (["report", build, "--format", "md"], ["graph", build]):
        rc, err = _cli(*argv, "-o", build / name, "--force")
        assert (rc, _code(err)) == (2, "would-overwrite-input")
        assert (build / name).read_bytes() == before


def test_the_report_json_being_read_is_never_overwritten(build: Path, tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    shutil.copyfile(build / "report.json", path)
    before = path.read_bytes()
    for command in ("report", "graph"):
        rc, err = _cli(command, path, "--format", "json" if command == "report" else "dot", "-o", path, "--force")
        assert (rc, _code(err)) == (2, "would-overwrite-input")
    assert path.read_bytes() == before


# ------------------------------------------------------------------ rule 2: only modelspec's own output
@pytest.mark.parametrize("fmt", REPORT_FORMATS + GRAPH_FORMATS)
def test_a_users_file_is_refused_and_replaced_with_force(spec: Path, fmt: str) -> None:
    out = spec.parent / f"notes.{fmt}"
    out.write_bytes(USER_TEXT)
    rc, err = _cli(*_commands(fmt), spec, "-o", out)
    assert (rc, _code(err)) == (2, "in-the-way") and "--force" in err
    assert out.read_bytes() == USER_TEXT
    rc, err = _cli(*_commands(fmt), spec, "-o", out, "--force")
    assert rc == 0, err
    assert out.read_bytes() != USER_TEXT and written_by_modelspec(out.read_text())


@pytest.mark.parametrize("fmt", REPORT_FORMATS + GRAPH_FORMATS)
def test_rerunning_over_its_own_output_works(spec: Path, fmt: str) -> None:
    out = spec.parent / f"out.{fmt}"
    assert _cli(*_commands(fmt), spec, "-o", out) == (0, f"wrote {out}\n")
    first = out.read_bytes()
    assert written_by_modelspec(first.decode())
    assert _cli(*_commands(fmt), spec, "-o", out, "--depth", "1") == (0, f"wrote {out}\n")
    assert _cli(*_commands(fmt), spec, "-o", out) == (0, f"wrote {out}\n")
    assert out.read_bytes() == first


def test_any_of_modelspecs_outputs_may_be_replaced_by_another(spec: Path) -> None:
    out = spec.parent / "out.txt"
    for fmt in (*REPORT_FORMATS, *GRAPH_FORMATS, "text"):
        rc, err = _cli(*_commands(fmt), spec, "-o", out)
        assert rc == 0, (fmt, err)


@pytest.mark.parametrize(
    "text",
    [
        '{\n  "format": "something-else",\n  "version": 1\n}\n',  # JSON, not a modelspec report
        "# Parameter report: mine\n\nhand-written notes\n",  # a title alone is not enough
        "flowchart TD\n  a --> b\n",  # a user's Mermaid diagram
        '<svg xmlns="http://www.w3.org/2000/svg"><title>mine</title></svg>\n',
        "digraph mine {\n  a -> b;\n}\n",
        "name,aliases\nx,y\n",  # CSV with another header
        "<!DOCTYPE html>\n<html><head><title>mine</title></head></html>\n",
        "mine: 3 parameters in 1 tensor (my own words)\n",
    ],
)
def test_lookalikes_are_not_taken_for_modelspecs_output(spec: Path, text: str) -> None:
    out = spec.parent / "look.out"
    out.write_text(text)
    rc, err = _cli("report", spec, "-o", out)
    assert (rc, _code(err)) == (2, "in-the-way")
    assert out.read_text() == text


def test_an_empty_file_may_be_replaced(spec: Path) -> None:
    out = spec.parent / "empty.md"
    out.touch()
    assert _cli("report", spec, "--format", "md", "-o", out)[0] == 0
    assert out.stat().st_size > 0


def test_a_link_or_folder_is_in_the_way_even_with_force(spec: Path) -> None:
    mine = spec.parent / "mine.txt"
    mine.write_bytes(USER_TEXT)
    link = spec.parent / "link.txt"
    link.symlink_to(mine.name)
    folder = spec.parent / "folder"
    folder.mkdir()
    for force in ([], ["--force"]):
        rc, err = _cli("graph", spec, "-o", link, *force)
        assert (rc, _code(err)) == (2, "in-the-way")
        rc, err = _cli("report", spec, "-o", folder, *force)
        assert (rc, _code(err)) == (2, "not-a-file")
    assert link.is_symlink() and mine.read_bytes() == USER_TEXT and os.listdir(folder) == []


def test_the_output_is_checked_before_any_work(spec: Path) -> None:
    out = spec.parent / "mine.txt"
    out.write_bytes(USER_TEXT)
    rc, err = _cli("report", spec, "--histograms", spec.parent / "plots", "-o", out)
    assert (rc, _code(err)) == (2, "in-the-way")
    assert not (spec.parent / "plots").exists()  # refused before the histograms were drawn


# ------------------------------------------------------------------ schema -o DIR
def test_schema_files_follow_the_same_rule(tmp_path: Path) -> None:
    assert _cli("schema", "-o", tmp_path)[0] == 0
    assert _cli("schema", "-o", tmp_path)[0] == 0  # its own files: replaced
    spec_schema = tmp_path / "modelspec.schema.json"
    spec_schema.write_text('{"$id": "mine"}\n')
    (tmp_path / "report.schema.json").unlink()
    rc, err = _cli("schema", "-o", tmp_path)
    assert (rc, _code(err)) == (2, "in-the-way")
    assert spec_schema.read_text() == '{"$id": "mine"}\n'
    assert not (tmp_path / "report.schema.json").exists()  # nothing written when one is in the way
    assert _cli("schema", "-o", tmp_path, "--force")[0] == 0
    assert _cli("schema", "--check", tmp_path)[0] == 0


# ------------------------------------------------------------------ codes instead of error[error]
def test_cli_errors_have_specific_codes(spec: Path, build: Path, tmp_path: Path) -> None:
    rc, err = _cli("grads", build / "report.json")
    assert (rc, _code(err)) == (2, "no-model")
    rc, err = _cli("report", build / "report.json", "--histograms", tmp_path / "plots")
    assert (rc, _code(err)) == (2, "no-values")
    rc, err = _cli("report", spec, "--device", "meta", "--histograms", tmp_path / "plots")
    assert (rc, _code(err)) == (2, "no-values")
    rc, err = _cli("schema", "--check", spec)
    assert (rc, _code(err)) == (2, "not-a-folder")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    rc, err = _cli("grads", spec, "--input", bad)
    assert (rc, _code(err)) == (2, "unreadable-input")
    two = tmp_path / "two.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)}, str(two))
    rc, err = _cli("grads", spec, "--input", two)
    assert (rc, _code(err)) == (2, "ambiguous-input")


def test_api_errors_have_specific_codes(spec: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildDirError) as e:
        modelspec.write_build(spec, tmp_path / "m", device="meta")
    assert e.value.code == "meta-device"
    with pytest.raises(UsageError) as u:
        modelspec.write_build(spec, tmp_path / "m", dtype="int64")
    assert u.value.code == "bad-dtype"
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(BuildDirError) as e:
        modelspec.save(net, tmp_path / "nowhere")
    assert e.value.code == "no-spec"
    module = modelspec.build(spec)
    rep = modelspec.report(module)
    for kwargs in ({"by": "layer"}, {"bins": 0}):
        with pytest.raises(UsageError) as u:
            save_histograms(module, rep, tmp_path / "plots", **kwargs)  # type: ignore[arg-type]
        assert u.value.code == "bad-option"
    with pytest.raises(ModelspecError) as m:
        save_histograms(net, rep, tmp_path / "plots")
    assert m.value.code == "report-mismatch"
    meta = modelspec.build(spec, device="meta")
    with pytest.raises(UsageError) as u:
        save_histograms(meta, modelspec.report(meta), tmp_path / "plots")
    assert u.value.code == "no-values"


def test_every_raise_site_names_its_code() -> None:
    """A ModelspecError raised without ``code=`` would print the class's generic default."""
    classes = {"ModelspecError", "BuildDirError", "CheckpointError", "ReportError", "UsageError", "TieMismatchError"}
    missing = []
    for path in sorted((ROOT / "modelspec").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                if not any(k.arg == "code" for k in node.keywords):
                    missing.append(f"{path.name}:{node.lineno}")
    assert missing == []
