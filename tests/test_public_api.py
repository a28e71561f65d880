"""The public surface is small and deliberate (STYLE habit 7)."""

from __future__ import annotations

import modelspec


def test_all_equals_public_names() -> None:
    public = {name for name in dir(modelspec) if not name.startswith("_") or name == "__version__"}
    modules = {name for name in public if type(getattr(modelspec, name)).__name__ == "module"}
    assert set(modelspec.__all__) == public - modules
    assert set(modelspec.__all__) == {*modelspec._WHERE, "__version__"}  # the lazy table lists every name
    for name in modelspec.__all__:
        assert getattr(modelspec, name) is not None, name


def test_importing_modelspec_does_not_import_torch() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = (
        "import sys, modelspec; assert 'torch' not in sys.modules, 'torch was imported'; print(modelspec.__version__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == modelspec.__version__


def test_unknown_attribute_is_an_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'buidl'"):
        modelspec.buidl  # noqa: B018


def test_every_public_callable_has_a_docstring() -> None:
    for name in modelspec.__all__:
        obj = getattr(modelspec, name)
        if callable(obj):
            assert obj.__doc__, name


def test_errors_share_one_base() -> None:
    for exc in (modelspec.SpecError, modelspec.CheckpointError, modelspec.BuildDirError, modelspec.TieMismatchError):
        assert issubclass(exc, modelspec.ModelspecError)


def test_no_module_shadows_a_public_name() -> None:
    """``import modelspec.build`` must not be able to mean the module instead of the function."""
    import importlib.util

    for name in modelspec.__all__:
        assert importlib.util.find_spec(f"modelspec.{name}") is None, name


def test_errors_carry_stable_codes() -> None:
    assert modelspec.CheckpointError("x").code == "checkpoint"
    assert modelspec.CheckpointError("x", code="checksum-mismatch").code == "checksum-mismatch"
    assert modelspec.UsageError("x").code == "usage" and isinstance(modelspec.UsageError("x"), ValueError)
