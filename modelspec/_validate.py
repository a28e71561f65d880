"""Load, validate and resolve a spec: the half of the API that needs no torch.

``modelspec validate`` runs only this (and the modules it reads: _source, _spec, _nodes,
_vars, _resolve, _registry with the layer table's description), so checking a spec does
not import PyTorch. A spec whose checks need the built model's parameter names and
shapes (``ties:``, ``trainable:``, ``init:``) is checked on a skeleton of the model
(:mod:`modelspec._skeleton`); only where the skeleton cannot stand in (a layer it does not
describe, plugins, an init rule reading another build) is it built on ``meta``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._errors import Diagnostic
from ._resolve import Resolved, resolve
from ._source import load_text, read_file
from ._spec import parse

__all__ = ["Overrides", "SpecSource", "compile_spec", "validate"]

SpecSource = str | os.PathLike[str]
Overrides = Mapping[str, Any]


def _read(source: SpecSource) -> tuple[str, str]:
    """(text, file name) of a spec given as a path or as YAML text."""
    # YAML text of a spec has a newline or at least a 'key:'; a one-line string without
    # a colon can only be meant as a path (and gets "cannot read" if it is not one).
    is_path = isinstance(source, os.PathLike) or (
        "\n" not in source and (":" not in source or source.endswith((".yaml", ".yml")) or Path(source).is_file())
    )
    if not is_path:
        return str(source), "<spec>"
    path = Path(source)
    return read_file(path), str(path)  # at most MAX_BYTES, UTF-8, else a SpecError


def compile_spec(source: SpecSource, *, overrides: Overrides | None = None) -> Resolved:
    """Load, validate and resolve a spec (a path or YAML text) without building it.

    ``overrides`` replace values of the spec's ``vars`` (as ``--set NAME=VALUE`` does).

    Raises:
        SpecError: listing every problem, each with file:line:col and a path in the spec.
    """
    text, file = _read(source)
    return resolve(parse(load_text(text, file), dict(overrides) if overrides else None))


def validate(source: SpecSource, *, overrides: Overrides | None = None) -> list[Diagnostic]:
    """Check a spec; return its warnings (e.g. unused blocks). Raises SpecError.

    Parameter ties name parameters of the built model, so a spec with ``ties:`` (or with
    ``trainable:``, which must agree across a shared tensor, or ``init:`` rules, whose
    selectors name parameters) is checked against the names, shapes and dtypes the build
    would give, read from a skeleton of the model without torch; where the skeleton cannot
    tell (see :func:`~modelspec._skeleton.check_without_torch`), it is built on ``meta``
    (shapes only, nothing allocated), which imports torch. The example input is not run
    through the model either way: ``build`` does that."""
    resolved = compile_spec(source, overrides=overrides)
    spec = resolved.spec
    if spec.ties or spec.freezes or spec.init:
        from ._skeleton import check_without_torch

        if not check_without_torch(resolved):
            from ._build import build_module

            build_module(resolved, device="meta")
    return list(resolved.spec.warnings)
