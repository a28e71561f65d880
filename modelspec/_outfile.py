"""Single output files (``report -o FILE``, ``graph -o FILE``, ``schema -o DIR``): what may be replaced.

Rules, checked before the work starts and again right before the write:

1. FILE is never one of the command's inputs (the spec, the ``report.json`` being read,
   a file of the build folder being read), whatever the options: ``would-overwrite-input``.
2. An existing FILE is replaced only when it is empty or recognisably modelspec's output
   (see :func:`written_by_modelspec`); a user's regular file only with
   ``force``. A link, a folder or a device at FILE is never replaced: ``in-the-way`` or
   ``not-a-file``.

Every format modelspec writes says so within its first few KiB: ``report.json`` has
``"format": "modelspec-report"``, HTML a ``<meta name="generator">``, SVG and Mermaid a
comment (``written by modelspec``), Markdown the Mermaid comment under its title, DOT the graph name
``modelspec``, ONNX its ``doc_string``. Text and CSV cannot carry a comment; their fixed first lines
identify them.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from ._errors import BuildDirError
from ._files import _check_parents, atomic_write_text
from ._fmt import MARKER
from ._report import CSV_COLUMNS

__all__ = ["check_output_file", "write_output_file", "written_by_modelspec"]

_HEAD = 8 << 10  # bytes read to recognise a file
_M = re.escape(MARKER)
_SUMMARY = r"[^\n]*: [\d,]+ parameters in \d+ tensors?( and \d+ buffers?)? \(naive count [\d,]+; sharing saves [\d,]+\)"
_TEXT_HEADER = r"(tensor +shape +dtype +numel +grad +mean +std +block|module +type +tensors +params +shared +buffers)"
_HTML_HEAD = r'<!DOCTYPE html>\n<html lang="en">\n<head>\n(<meta [^\n]*>\n)*?'
_SCHEMA_HEAD = r'\{\n  "\$schema": "https://json-schema\.org/[^"\n]*",\n  "\$id": "https://github\.com/modelspec/'
_OURS = {  # each format's first lines, matched at the start of the file
    "json": re.compile(r'\{\n  "format": "modelspec-report",\n'),
    "md": re.compile(rf"# Parameter report: [^\n]*\n.*?\n```mermaid\nflowchart TD\n  %% {_M}\n", re.S),
    "html": re.compile(_HTML_HEAD + r'<meta name="generator" content="modelspec"'),
    "mermaid": re.compile(rf"flowchart TD\n  %% {_M}\n"),
    "svg": re.compile(rf'<svg xmlns="http://www\.w3\.org/2000/svg" class="ms-graph" [^\n]*>\n<!-- {_M} -->\n'),
    "dot": re.compile(r"digraph modelspec \{\n  graph \[rankdir="),
    "text": re.compile(rf"{_SUMMARY}\n\n{_TEXT_HEADER}\n-"),  # summary line, blank line, table header
    "csv": re.compile(re.escape(",".join(CSV_COLUMNS) + "\n")),  # the fixed header row
    "schema": re.compile(_SCHEMA_HEAD + r"modelspec/schemas/"),
    # ONNX (protobuf): ir_version (field 1), the producer's fields, then doc_string (field 6,
    # tag 0x32) with the marker, all before the graph
    "onnx": re.compile(rf"\x08[\x01-\x7f].{{0,200}}?\x32[\x01-\x7f]{_M}: ", re.S),
}


def written_by_modelspec(head: str) -> bool:
    """Whether ``head`` (the start of a file) is the start of something modelspec writes."""
    return any(pattern.match(head) for pattern in _OURS.values())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _inputs_hit(target: Path, inputs: Iterable[Path]) -> Path | None:
    """The input ``target`` would overwrite: the same file, or an existing file inside an input folder."""
    for path in inputs:
        if path.is_dir():
            inside = os.path.realpath(target).startswith(os.path.join(os.path.realpath(path), ""))
            if inside and os.path.lexists(target):
                return path
        elif _same_file(target, path):
            return path
    return None


def check_output_file(path: str | os.PathLike[str], *, inputs: Iterable[Path] = (), force: bool = False) -> None:
    """Raise BuildDirError unless ``path`` may be written as one output file.

    Raises:
        BuildDirError: ``would-overwrite-input`` (``path`` is one of ``inputs`` or an existing
            file in an input folder; ``force`` does not help), ``not-a-file`` (a folder),
            ``in-the-way`` (a link, a device, or a regular file modelspec did not write,
            unless ``force``).
    """
    target = Path(path)
    hit = _inputs_hit(target, inputs)
    if hit is not None:
        what = f"is the input {hit}" if _same_file(target, hit) else f"is a file of the input folder {hit}"
        raise BuildDirError(
            f"{target} {what}; writing there would overwrite it. Choose another output file",
            code="would-overwrite-input",
        )
    _check_parents(target)  # ``-o afile/out``: not-a-folder
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise BuildDirError(f"{target} is a folder; give a file name", code="not-a-file")
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        kind = "a link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise BuildDirError(
            f"{target} is {kind}; modelspec replaces only regular files. Remove it or choose another name",
            code="in-the-way",
        )
    if force or st.st_size == 0:
        return
    with open(target, "rb") as f:
        head = f.read(_HEAD).decode("utf-8", errors="replace")
    if written_by_modelspec(head):
        return
    raise BuildDirError(
        f"{target} exists and modelspec did not write it (it does not start like any of modelspec's outputs). "
        "Remove it, choose another name, or pass --force to replace it",
        code="in-the-way",
    )


def write_output_file(
    path: str | os.PathLike[str], text: str, *, inputs: Iterable[Path] = (), force: bool = False
) -> Path:
    """Check ``path`` (see :func:`check_output_file`), then write ``text`` there atomically."""
    inputs = list(inputs)
    check_output_file(path, inputs=inputs, force=force)
    return atomic_write_text(path, text)
