"""Validation without torch: the layer table's description (shipped and cached) gives the
same entries and the same diagnostics as reading torch's classes, and ``modelspec validate``
does not import torch unless the spec's checks need a built model (ties, trainable, init)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelspec import SpecError, _description, _diff, _schema, cli
from modelspec import _registry as registry
from modelspec._validate import compile_spec, validate

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("**/*.yaml"))
CORPUS = sorted((ROOT / "tests" / "corpus" / "spec").glob("*.yaml"))


def _needs_build(spec: Path) -> bool:
    s = compile_spec(spec).spec
    return bool(s.ties or s.freezes or s.init)


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MODELSPEC_NO_CACHE"}
    return {**env, "PYTHONPATH": str(ROOT), **more}


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No shipped description, an empty cache folder, nothing remembered by the process."""
    monkeypatch.setattr(_description, "SHIPPED", tmp_path / "none.json")
    monkeypatch.setenv("MODELSPEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MODELSPEC_NO_CACHE", raising=False)
    monkeypatch.setattr(_description, "_current", _description._UNSET)
    yield tmp_path / "cache"
    monkeypatch.setattr(_description, "_current", _description._UNSET)


# ---------------------------------------------------------------- no torch
def test_validate_imports_no_torch_for_every_bundled_spec_without_ties() -> None:
    plain = [s for s in SPECS if not _needs_build(s)]
    assert len(plain) >= 6
    code = (
        "import sys\nfrom modelspec.cli import main\n"
        f"for spec in {[str(s) for s in plain]!r}:\n"
        "    assert main(['validate', spec]) == 0, spec\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'safetensors' not in sys.modules, 'safetensors was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_spec_error_is_reported_without_torch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("modelspec: 1\nname: x\nmodel:\n  - Linear: {in_features: 4, out_feature: 2}\n  - Relu\n")
    code = (
        "import sys\nfrom modelspec.cli import main\n"
        f"rc = main(['validate', {str(bad)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "4:30: error[bad-argument]" in done.stderr and "5:5: error[unknown-layer]" in done.stderr


def test_help_imports_no_torch() -> None:
    code = (
        "import sys\nfrom modelspec.cli import main\n"
        "assert main(['--help']) == 0\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cli_constants_equal_their_modules() -> None:
    assert cli.KINDS == _diff.KINDS
    assert cli.SCHEMA_FILES == _schema.SCHEMA_FILES


# ---------------------------------------------------------------- the same answers
def test_described_entries_equal_the_classes() -> None:
    described = _description.Description(_description.describe(_description.key() or {}))
    live = registry.live_entries()
    assert described.names == sorted(live)
    for name, entry in live.items():
        back = described.layer(name)
        assert back is not None
        for p, q in zip(entry.params, back.params, strict=True):
            # a default that is no plain data (a function) is kept by its repr: it is never written
            if isinstance(q.default, _description._Opaque):
                assert not registry._jsonable(p.default) and not registry._jsonable(q.default)
                q = dataclasses.replace(q, default=p.default)
            assert p == q and repr(p.annotation) == repr(q.annotation), (name, p.name)
        assert dataclasses.replace(back, params=entry.params) == entry, name
        assert back.forward_signature() == entry.forward_signature() or str(back.forward_signature()) == str(
            entry.forward_signature()
        )
        assert back.json_schema() == entry.json_schema(), name
    assert described.reserved == registry.live_reserved_names()


def _diagnostics(spec: Path) -> list[dict[str, object]] | str:
    try:
        return [d.to_dict() for d in validate(spec)]
    except SpecError as e:
        return [d.to_dict() for d in e.diagnostics]
    except Exception as e:  # noqa: BLE001 - compared, not raised: both ways must fail alike
        return f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("spec", [*CORPUS, *SPECS], ids=lambda p: p.name)
def test_same_diagnostics_with_and_without_the_description(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSPEC_NO_CACHE", raising=False)
    monkeypatch.setattr(_description, "_current", _description._UNSET)
    assert registry._described() is not None  # the shipped description is used
    described = _diagnostics(spec)
    monkeypatch.setenv("MODELSPEC_NO_CACHE", "1")
    monkeypatch.setattr(_description, "_current", _description._UNSET)
    assert registry._described() is None  # torch's classes are read
    assert _diagnostics(spec) == described


def test_a_registered_layer_reads_the_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn as nn

    class Twice(nn.Module):
        def forward(self, x: object) -> object:
            return x

    monkeypatch.setitem(registry._registered, "Twice", Twice)
    registry._table.cache_clear()
    try:
        assert registry._described() is None and "Twice" in registry.layer_names()
    finally:
        monkeypatch.delitem(registry._registered, "Twice")
        registry._table.cache_clear()


# ---------------------------------------------------------------- shipped and cached
def test_shipped_description_is_current() -> None:
    """Fails when torch.nn or modelspec's layer code changed: run 'python -m modelspec._description'."""
    assert _description.main(["--check"]) == 0
    assert json.loads(_description.SHIPPED.read_text())["key"] == _description.key()


def test_key_names_the_torch_version_and_the_code() -> None:
    k = _description.key()
    assert k is not None
    assert k["torch"] == importlib.metadata.version("torch").split("+")[0]
    assert k["modelspec"] == __import__("modelspec").__version__ and len(k["code"]) == 16


def test_first_run_writes_the_cache_and_the_next_reads_it(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _description.current()
    assert made is not None
    files = list(fresh.glob("layers-*.json"))
    assert len(files) == 1 and not list(fresh.glob(".layers-*"))  # written whole, no temporary left
    monkeypatch.setattr(_description, "_current", _description._UNSET)
    monkeypatch.setattr(_description, "describe", _must_not_run)
    again = _description.current()
    assert again is not None and again.names == made.names


def _must_not_run(*args: object) -> None:
    raise AssertionError("described again instead of reading the cache")


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # cut short
        lambda text: "\x00garbage",
        lambda text: "[]",
        lambda text: json.dumps({**json.loads(text), "layers": {"Linear": {"qualname": 1}}}),
        lambda text: json.dumps({**json.loads(text), "key": {**json.loads(text)["key"], "torch": "1.0.0"}}),  # stale
    ],
    ids=["truncated", "garbage", "not-a-description", "wrong-entries", "other-torch"],
)
def test_a_corrupt_or_stale_cache_falls_back_and_is_rewritten(
    fresh: Path, monkeypatch: pytest.MonkeyPatch, damage
) -> None:
    good = _description.current()
    assert good is not None
    (path,) = fresh.glob("layers-*.json")
    text = path.read_text()
    path.write_text(damage(text))
    monkeypatch.setattr(_description, "_current", _description._UNSET)
    again = _description.current()
    assert again is not None and again.names == good.names
    assert again.layer("Linear") == good.layer("Linear")
    assert path.read_text() == text  # rewritten whole


def test_an_unwritable_cache_is_no_error(fresh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MODELSPEC_CACHE_DIR", str(blocker / "cache"))
    found = _description.current()
    assert found is not None and "Linear" in found.names
    assert blocker.read_text() == "not a folder"


def test_no_cache_reads_the_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSPEC_NO_CACHE", "1")
    monkeypatch.setattr(_description, "_current", _description._UNSET)
    assert registry._described() is None
    assert registry.get_layer("Linear") is not None and "Linear" in registry.layer_names()


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODELSPEC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _description.cache_dir() == tmp_path / "modelspec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _description.cache_dir() == Path.home() / ".cache" / "modelspec"
    monkeypatch.setenv("MODELSPEC_CACHE_DIR", str(tmp_path / "x"))
    assert _description.cache_dir() == tmp_path / "x"
