"""The public surface is small and deliberate (STYLE habit 7)."""

from __future__ import annotations

import modelspec


def test_all_equals_public_names() -> None:
    public = {name for name in vars(modelspec) if not name.startswith("_") or name == "__version__"}
    modules = {name for name, value in vars(modelspec).items() if type(value).__name__ == "module"}
    assert set(modelspec.__all__) == public - modules


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
