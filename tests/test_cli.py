"""The CLI: help with examples everywhere, stdout for data, stderr for diagnostics."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import D2L, ROOT

from modelspec.cli import main

COMMANDS = ["build", "validate", "schema", "report", "diff", "grads", "graph"]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_examples(command: str | None) -> None:
    rc, out, _ = run(*([command] if command else []), "--help")
    assert rc == 0
    assert "examples:" in out and "modelspec " in out


def test_build_prints_summary_and_writes_folder(tmp_path: Path) -> None:
    rc, out, err = run("build", str(D2L / "shared.yaml"), "-o", str(tmp_path / "b"))
    assert rc == 0, err
    assert "121 parameters" in out and "193" in out
    assert (tmp_path / "b" / "model.safetensors").is_file()


def test_build_json_output_is_data(tmp_path: Path) -> None:
    rc, out, _ = run("build", str(D2L / "shared_mlp.yaml"), "-o", str(tmp_path / "b"), "--format", "json")
    assert rc == 0
    payload = json.loads(out)
    assert payload["totals"]["unique_params"] == 4480
    assert payload["files"] == [
        "manifest.json",
        "model.safetensors",
        "report.html",
        "report.json",
        "report.md",
        "spec.yaml",
    ]


def test_usage_error_exits_2() -> None:
    rc, _, err = run("build")
    assert rc == 2 and "usage:" in err


def test_schema_check(tmp_path: Path) -> None:
    assert run("schema", "-o", str(tmp_path))[0] == 0
    assert run("schema", "--check", str(tmp_path))[0] == 0
    (tmp_path / "report.schema.json").write_text("{}")
    rc, _, err = run("schema", "--check", str(tmp_path))
    assert rc == 1 and "out of date" in err


def test_console_entry_point_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelspec", "validate", str(D2L / "net.yaml")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout, not an installed modelspec
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "valid" in proc.stdout


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_tty_and_for_large_work() -> None:
    from modelspec.cli import _ProgressBar

    tty, pipe = _FakeTTY(), io.StringIO()
    for stream in (tty, pipe):
        bar = _ProgressBar(stream, "checksums", min_bytes=100)
        bar(50 << 20, 100 << 20)
        bar(100 << 20, 100 << 20)
    assert "50/100 MiB" in tty.getvalue() and tty.getvalue().endswith("\n")
    assert pipe.getvalue() == ""
    small = _FakeTTY()
    _ProgressBar(small, "checksums")(10, 10)  # below the default threshold: no bar
    assert small.getvalue() == ""
