"""Exceptions and diagnostics.

Every error modelspec raises derives from :class:`ModelspecError`::

    ModelspecError          missing-dependency (matplotlib for histograms), report-mismatch,
    │                       plugin-error (a --plugin module or an entry point failed to load),
    │                       export-failed (PyTorch cannot export the model to ONNX; missing-dependency
    │                       also for the onnx extra)
    ├── SpecError           the spec is invalid; carries ranked Diagnostics with positions
    │                       (code spec; each Diagnostic has its own code)
    ├── UsageError          an option is invalid: device, dtype, batch, input tensor (also a ValueError)
    │                       bad-device, bad-dtype, bad-option, too-large, no-input, input-mismatch,
    │                       no-gradient, no-model, no-values, unreadable-input, ambiguous-input;
    │                       register_layer: not-a-layer, bad-layer-name, shadowed-layer, layer-name-taken
    ├── BuildDirError       a build folder or output file is missing, incomplete or in the way
    │                       not-a-build-folder, in-the-way, would-overwrite-spec, would-overwrite-input,
    │                       not-a-folder, not-a-file, no-spec, meta-device, interrupted
    ├── CheckpointError     a checkpoint is corrupt, its checksums or ties do not match
    │                       unreadable, not-modelspec, old-format, metadata-missing, metadata-damaged,
    │                       metadata-mismatch, spec-mismatch, tie-mismatch, names-mismatch,
    │                       shape-mismatch, dtype-mismatch, layout-mismatch, checksum-mismatch,
    │                       unsupported-dtype
    ├── ReportError         a report.json is malformed or contradicts itself; carries JSON paths
    │                       bad-report, file-error
    └── TieMismatchError    a module's sharing no longer matches its spec (on save), or a state
                            dict does not fit a model's ties (load_state_dict)
                            tie-mismatch, names-mismatch, shape-mismatch, aliases-disagree

A :class:`Diagnostic` is one finding about a spec: a stable ``code`` (tests match on
it, never on prose), the file/line/column, the path inside the spec (``model[2].use``),
the message and, where obvious, a hint that says how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "BuildDirError",
    "CheckpointError",
    "Diagnostic",
    "ModelspecError",
    "ReportError",
    "SpecError",
    "SpecWarning",
    "TieMismatchError",
    "UsageError",
    "did_you_mean",
    "first_line",
    "format_path",
]

Severity = Literal["error", "warning"]
PathPart = str | int
SpecPath = tuple[PathPart, ...]


def format_path(path: Sequence[PathPart]) -> str:
    """Render a path inside a spec the way a user reads it: ``models.mlp1[2].use``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` is most likely a slip for, or None when nothing is close."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    if word.lower() in lowered:  # case slip: 'linear' for 'Linear'
        return lowered[word.lower()]
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.7)
    return match[0] if match else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """Return a hint naming the closest candidate, or None when nothing is close."""
    match = closest(word, candidates)
    return f"did you mean '{match}'?" if match else None


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a spec, with where it is and how to fix it."""

    code: str
    message: str
    path: SpecPath = ()
    file: str = "<spec>"
    line: int | None = None
    column: int | None = None
    hint: str | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        text = f"{where}: {self.severity}[{self.code}] {format_path(self.path)}: {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": format_path(self.path),
            "message": self.message,
            "hint": self.hint,
        }


class ModelspecError(Exception):
    """Base class of every error modelspec raises.

    ``code`` is stable (tests and scripts match on it, never on the message): each class
    has a default and a raise site may give a more precise one, e.g.
    ``CheckpointError("...", code="checksum-mismatch")``.
    """

    default_code = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code


class SpecError(ModelspecError):
    """The spec is invalid. ``diagnostics`` holds every error found, ranked by position."""

    default_code = "spec"

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        ranked = sorted(diagnostics, key=lambda d: (d.file, d.line or 0, d.column or 0, d.code))
        self.diagnostics: tuple[Diagnostic, ...] = tuple(ranked)
        count = len(self.diagnostics)
        head = f"{count} error{'s' if count != 1 else ''} in spec"
        super().__init__(head + ":\n" + "\n".join(str(d) for d in self.diagnostics), code=self.default_code)

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]


class SpecWarning(UserWarning):
    """A spec is valid but has something worth fixing (e.g. a block never used)."""


class UsageError(ModelspecError, ValueError):
    """An argument is invalid: an unknown device or dtype, an input tensor that does not fit."""

    default_code = "usage"


class BuildDirError(ModelspecError):
    """A build folder is missing, incomplete, or not written by modelspec; or an output file
    (``-o FILE``) is in the way: not modelspec's, or an input of the same command."""

    default_code = "build-dir"


class CheckpointError(ModelspecError):
    """A checkpoint is corrupt: checksums, tensor names or tie map do not match."""

    default_code = "checkpoint"


class ReportError(ModelspecError):
    """A ``report.json`` is not one: malformed, out of range, or contradicting itself.

    ``problems`` lists every finding as ``(json path, message)``, e.g.
    ``("tensors[3].numel", "10 but shape [2, 3] has 6 elements")``.
    """

    default_code = "bad-report"
    shown = 8  # problems named in the message; all are in ``problems``

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = (), *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)

    @classmethod
    def of(cls, source: str, what: str, problems: Sequence[tuple[str, str]]) -> ReportError:
        """``SOURCE WHAT (N problems):`` and the first few, one per line."""
        n = len(problems)
        lines = [f"{source} {what} ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"    {path}: {message}" for path, message in problems[: cls.shown]]
        if n > cls.shown:
            lines.append(f"    ... and {n - cls.shown} more")
        return cls("\n".join(lines), problems)


class TieMismatchError(ModelspecError):
    """A module's parameter sharing no longer matches its spec, or a state dict does not fit its ties."""

    default_code = "tie-mismatch"


@dataclass
class Collector:
    """Gathers diagnostics across a stage so all errors are reported at once."""

    file: str = "<spec>"
    positions: dict[SpecPath, tuple[int, int]] = field(default_factory=dict)
    items: list[Diagnostic] = field(default_factory=list)

    def add(
        self,
        code: str,
        message: str,
        path: Sequence[PathPart] = (),
        hint: str | None = None,
        severity: Severity = "error",
        at: tuple[int, int] | None = None,
    ) -> None:
        """Record a finding; ``at`` overrides the position looked up from ``path``."""
        path = tuple(path)
        line, column = at if at is not None else self.position(path)
        self.items.append(Diagnostic(code, message, path, self.file, line, column, hint, severity))

    def position(self, path: SpecPath) -> tuple[int | None, int | None]:
        """The position of the deepest node on ``path`` that the source recorded."""
        for cut in range(len(path), -1, -1):
            pos = self.positions.get(path[:cut])
            if pos is not None:
                return pos
        return None, None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "warning"]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise SpecError(self.errors)


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (with the code of a ModelspecError), for messages
    that quote an exception raised by code modelspec called."""
    text = str(e).strip().splitlines()
    head = type(e).__name__ + (f"[{e.code}]" if isinstance(e, ModelspecError) else "")
    return f"{head}: {text[0] if text else ''}"
