"""Writing files and folders so that nothing half-written is ever left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._errors import BuildDirError

__all__ = ["BUILD_FILES", "atomic_dir", "atomic_write_text"]

#: Every file a build folder may hold; a folder with anything else is not replaced.
BUILD_FILES = frozenset({"spec.yaml", "model.safetensors", "report.json", "report.md", "report.html"})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temp file beside ``path`` and rename it into place."""
    target = Path(path)
    if target.is_dir():
        raise BuildDirError(f"{target} is a folder; give a file name")
    if not target.parent.is_dir():
        raise BuildDirError(f"cannot write {target}: folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _replaceable(path: Path) -> bool:
    """Only a folder holding nothing but a previous build (or nothing) is replaced."""
    return path.is_dir() and {p.name for p in path.iterdir()} <= BUILD_FILES


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success it replaces ``out`` whole.

    At every moment ``out`` is either the old complete folder or the new one (for an
    instant between two renames, absent); on error the temp folder is removed.
    """
    out = out.absolute()
    if out.exists() and not _replaceable(out):
        others = sorted(p.name for p in out.iterdir() if p.name not in BUILD_FILES) if out.is_dir() else []
        detail = f" (it holds {', '.join(others[:3])})" if others else ""
        raise BuildDirError(f"{out} exists and is not a modelspec build folder{detail}; choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        mask = _umask()
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes the folder private
        for f in tmp.iterdir():
            f.chmod(0o666 & ~mask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
