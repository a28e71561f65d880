"""Writing files and folders: nothing half-written, nothing of the user's ever replaced.

A build folder ``out`` is written inside a hidden wrapper folder beside it and renamed
into place::

    parent/
      out/                          the build; manifest.json lists what modelspec wrote
      .out.tmp-<pid>-<rand>/        while writing: writer.json (who) + out/ (the new build)
      .out.old-<pid>-<rand>/        while swapping: writer.json + out/ (the previous build)

Rules:
- ``out`` is replaced only when it is empty or every entry in it is a regular file that
  its ``manifest.json`` lists with the same size and sha256. Anything else (a file not
  listed, a changed file, a folder or link under a build file's name, the spec being
  built) is in the way: BuildDirError, and nothing is touched. The check runs before
  writing, again right before the swap, and once more on the moved-away old folder.
- An old build's files are removed only when its manifest vouches for them, a temp
  folder's only when its writer.json proves it ours; folders only ever with rmdir.
- Every file and the folder itself are on disk (fsync) before the folder is renamed into
  place, and the parent after: a crash leaves the old complete folder or the new one.
- SIGINT/SIGTERM while writing remove the temp folder, then act as they would have.
- A killed writer leaves at worst its wrappers (``writer.json`` names its pid, host and
  start time). :func:`recover`, run by the next build or load of ``out``, puts the old
  build back if ``out`` is missing (a crash between the two renames) and removes stale
  wrappers whose process is provably dead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import struct
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._errors import BuildDirError
from ._process import SignalGuard, alive, fault_point, start_time

__all__ = [
    "MANIFEST_FILE",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_target",
    "make_folder",
    "recover",
    "remember_digest",
    "tensors_digest",
]

#: Written last into every build folder: each file modelspec wrote, with its size and sha256.
MANIFEST_FILE = "manifest.json"
_MARKER = "writer.json"
_WRITTEN_BY = "modelspec"
_VERIFIED: set[tuple[object, ...]] = set()  # files whose sha256 matched, by identity and times
_WRITTEN: dict[tuple[int, ...], str] = {}  # tensor digests of files this process just wrote, by identity and times
_SYNCING: dict[tuple[int, ...], Future[None]] = {}  # background fsyncs of files just written (sync_later)
_SYNCER: ThreadPoolExecutor | None = None
#: the manifest's key for a checkpoint file's digest (instead of ``sha256``): see :func:`tensors_digest`
TENSORS_DIGEST = "tensors_sha256"
_WRAPPER = re.compile(r"(tmp|old)-(\d+)-[a-z0-9_]+")


# ------------------------------------------------------------------ where a path may be written
def _check_parents(path: Path) -> None:
    """Refuse a path below a file (``-o afile/out``): 'File exists' says nothing useful."""
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise BuildDirError(f"cannot write {path}: {parent} is a file, not a folder", code="not-a-folder")
            return


def make_folder(folder: Path) -> Path:
    """Create ``folder`` and its missing parents; a clear error when a file is in the way."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise BuildDirError(f"cannot create folder {folder}: it is a file", code="not-a-folder")
    _check_parents(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise BuildDirError(f"cannot create folder {folder}: {e.filename} is not a folder", code="not-a-folder") from e
    return folder


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to a temp file beside ``path`` (creating missing folders) and rename
    it into place: see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` (creating missing folders) and rename it into place.

    Replaces whatever regular file is at ``path``: callers first ask
    :func:`modelspec._outfile.check_output_file` whether it may be replaced.
    """
    target = Path(path)
    if target.is_dir():
        raise BuildDirError(f"{target} is a folder; give a file name", code="not-a-file")
    make_folder(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ what modelspec wrote
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def tensors_digest(head: bytes, tensor_sha256: Iterable[str]) -> str:
    """A safetensors file's digest: sha256 over its length prefix and header, then over the
    sha256 of each tensor's bytes in file order (as hex pairs, 32 bytes each).

    The header fixes where each tensor lies and that they fill the file, so this digest
    determines the file's bytes as a plain sha256 does; the writer computes it from the
    checksums it already has, without another pass over the data.
    """
    h = hashlib.sha256(head)
    for digest in tensor_sha256:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def _tensors_digest_of(path: Path) -> str | None:
    """:func:`tensors_digest` of the safetensors file at ``path``; None when it is not one."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            (n,) = struct.unpack("<Q", prefix)
            if n > 100_000_000:
                return None
            blob = f.read(n)
            header = json.loads(blob)
            entries = [e for k, e in header.items() if k != "__metadata__"]
            regions = sorted((e["data_offsets"][0], e["data_offsets"][1]) for e in entries)
            sums = []
            for begin, end in regions:
                f.seek(8 + n + begin)
                h, left = hashlib.sha256(), end - begin
                while left > 0:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        return None
                    h.update(chunk)
                    left -= len(chunk)
                sums.append(h.hexdigest())
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error):
        return None
    return tensors_digest(prefix + blob, sums)


def remember_digest(path: Path, digest: str) -> None:
    """Note the :func:`tensors_digest` of a safetensors file just written and synced: the
    manifest records it instead of reading the file again."""
    _WRITTEN[_identity(os.stat(path))] = digest


def sync_later(fd: int) -> None:
    """Take over ``fd`` (a file just written in a folder :func:`atomic_dir` is making): fsync
    and close it in the background, so the disk works while the rest of the folder is written.
    The folder is sealed only after every such sync has returned (and raises its error)."""
    key = _identity(os.fstat(fd))  # before the worker may close it
    _SYNCING[key] = _syncer().submit(_sync_and_close, fd)


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncer() -> ThreadPoolExecutor:
    global _SYNCER
    if _SYNCER is None:
        _SYNCER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelspec-fsync")
    return _SYNCER


def _forget_syncs() -> None:
    """In a forked child: the parent's fsync threads do not exist here, nor its files' syncs."""
    global _SYNCER
    _SYNCER = None
    _SYNCING.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_syncs)


def _drain_syncs() -> None:
    """Wait for the background fsyncs of a folder that is being discarded (a failed build),
    so that no file of it is still open; their errors no longer matter."""
    for key, sync in list(_SYNCING.items()):
        with contextlib.suppress(Exception):
            sync.result()
        _SYNCING.pop(key, None)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort (some file systems refuse it)."""
    with contextlib.suppress(OSError):
        _fsync(folder)


def _write_manifest(folder: Path) -> None:
    """Record every file in ``folder`` (all written by this process just now), and sync them all.

    The files are synced side by side (fsync waits on the disk, not the CPU), with any
    sync already started by :func:`sync_later`; the manifest is written after all of them."""
    files: dict[str, dict[str, Any]] = {}
    syncs: list[Future[None]] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            raise BuildDirError(f"internal: {entry.path} is not a regular file", code="not-a-file")
        st = entry.stat(follow_symlinks=False)
        started = _SYNCING.pop(_identity(st), None)
        if started is None:
            syncs.append(_syncer().submit(_fsync, Path(entry.path)))
        else:
            syncs.append(started)
        known = _WRITTEN.pop(_identity(st), None)  # a checkpoint file: its writer gave its digest
        if known is None:
            files[entry.name] = {"bytes": st.st_size, "sha256": _sha256(Path(entry.path)), "mtime_ns": st.st_mtime_ns}
        else:
            files[entry.name] = {"bytes": st.st_size, TENSORS_DIGEST: known, "mtime_ns": st.st_mtime_ns}
    for sync in syncs:
        sync.result()  # raises a failed fsync's OSError: the folder is not sealed
    doc = {"written_by": _WRITTEN_BY, "format": 1, "files": files}
    with open(folder / MANIFEST_FILE, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _sync_folder(folder)


def _read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The files ``folder``'s manifest lists, or None when it has no manifest of modelspec's."""
    path = folder / MANIFEST_FILE
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("written_by") != _WRITTEN_BY or not isinstance(doc.get("files"), dict):
        return None
    files = doc["files"]
    for name, rec in files.items():
        if (
            name in ("", ".", "..", MANIFEST_FILE)
            or "/" in name
            or not isinstance(rec, dict)
            or not all(isinstance(rec.get(k), int) and not isinstance(rec.get(k), bool) for k in ("bytes", "mtime_ns"))
            or sum(isinstance(rec.get(k), str) for k in ("sha256", TENSORS_DIGEST)) != 1
        ):
            return None
    return files


def _why_not_ours(entry: os.DirEntry[str], record: dict[str, Any] | None) -> str | None:
    """Why ``entry`` is not a file modelspec wrote (None when it is, unchanged)."""
    if record is None:
        return "was not written by modelspec"
    if entry.is_symlink():
        return "is a link"
    if entry.is_dir(follow_symlinks=False):
        return "is a folder"
    if not entry.is_file(follow_symlinks=False):
        return "is not a regular file"
    st = entry.stat(follow_symlinks=False)
    if st.st_size != record["bytes"]:
        return "was changed since modelspec wrote it"
    if st.st_mtime_ns == record["mtime_ns"]:  # untouched since written: no need to hash it again
        return None
    # copied or touched: the sha256 decides, once per process for the same unchanged file
    kind = TENSORS_DIGEST if TENSORS_DIGEST in record else "sha256"
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, record[kind])
    if key not in _VERIFIED:
        digest = _tensors_digest_of if kind == TENSORS_DIGEST else _sha256
        if digest(Path(entry.path)) != record[kind]:
            return "was changed since modelspec wrote it"
        _VERIFIED.add(key)
    return None


def _foreign(folder: Path) -> tuple[str | None, list[tuple[str, str]]]:
    """What in ``folder`` modelspec did not write: (error code, [(name, why)]); (None, []) if nothing."""
    entries = {e.name: e for e in os.scandir(folder)}
    if not entries:
        return None, []
    listed = _read_manifest(folder)
    if listed is None:
        return "not-a-build-folder", [(name, "was not written by modelspec") for name in sorted(entries)]
    found = []
    for name in sorted(entries):
        if name != MANIFEST_FILE and (why := _why_not_ours(entries[name], listed.get(name))):
            found.append((name, why))
    return ("in-the-way" if found else None), found


def _inside(folder: Path, path: Path) -> str | None:
    """The name of the entry of ``folder`` that holds ``path``, or None when it is elsewhere."""
    try:
        rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return None
    return rel.parts[0] if rel.parts else None


def check_target(out: Path, keep: Iterable[Path] = ()) -> None:
    """Raise BuildDirError unless ``out`` may be (re)written as a build folder.

    ``out`` may be absent, empty, or hold only files its manifest lists unchanged.
    ``keep`` are files that must survive (the spec being built).
    """
    _check_parents(out)
    if out.is_symlink():
        raise BuildDirError(f"{out} is a link; give the folder it points to", code="in-the-way")
    if not out.exists():
        return
    if not out.is_dir():
        raise BuildDirError(f"{out} is a file, not a folder; choose another output folder", code="not-a-folder")
    code, found = _foreign(out)
    if code is None:
        return
    names = {name for name, _ in found}
    for path in keep:
        if _inside(out, path) in names:
            raise BuildDirError(
                f"{out} holds the spec {path}; writing the build there would overwrite it. "
                f"Choose another output folder, e.g. -o {out / 'build'}",
                code="would-overwrite-spec",
            )
    listing = "; ".join(f"{name} {why}" for name, why in found[:5]) + ("; ..." if len(found) > 5 else "")
    if code == "not-a-build-folder":
        raise BuildDirError(
            f"{out} exists and was not written by modelspec (no {MANIFEST_FILE}): {listing}. "
            "modelspec replaces only its own build folders; choose another output folder",
            code=code,
        )
    raise BuildDirError(
        f"{out} is a modelspec build folder, but {listing}. modelspec replaces only the files it wrote; "
        "move these out or choose another output folder",
        code=code,
    )


# ------------------------------------------------------------------ the folder swap
def _make_wrapper(out: Path, kind: str) -> Path:
    pid = os.getpid()
    wrapper = Path(tempfile.mkdtemp(prefix=f".{out.name[:200]}.{kind}-{pid}-", dir=out.parent))
    started = start_time(pid)
    marker = {"written_by": _WRITTEN_BY, "target": out.name, "pid": pid, "host": socket.gethostname(),
              "started": started[1] if started else None}  # fmt: skip
    (wrapper / _MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    return wrapper


def _discard_files(folder: Path, listed: dict[str, dict[str, Any]] | None) -> None:
    """Remove the regular files in ``folder`` (those ``listed`` vouches for, when given), then
    the folder if that emptied it. Best effort: what cannot be removed stays."""
    with contextlib.suppress(OSError):
        for entry in list(os.scandir(folder)):
            if entry.name == MANIFEST_FILE or not entry.is_file(follow_symlinks=False):
                continue
            if listed is None or _why_not_ours(entry, listed.get(entry.name)) is None:
                os.unlink(entry.path)
        if (folder / MANIFEST_FILE).is_file() and os.listdir(folder) == [MANIFEST_FILE]:
            os.unlink(folder / MANIFEST_FILE)
        os.rmdir(folder)


def _discard_wrapper(wrapper: Path, inner: Path, kind: str) -> None:
    """Remove a wrapper of ours: a temp build is ours whole; an old build only as its manifest says."""
    if inner.is_dir() and not inner.is_symlink():
        if kind == "tmp":
            _discard_files(inner, None)
        else:
            listed = _read_manifest(inner)
            _discard_files(inner, listed if listed is not None else {})
    with contextlib.suppress(OSError):
        if os.listdir(wrapper) == [_MARKER]:
            os.unlink(wrapper / _MARKER)
        os.rmdir(wrapper)


@contextlib.contextmanager
def atomic_dir(out: Path, *, keep: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield an empty folder to write a build into; on success it replaces ``out`` whole.

    At every moment ``out`` is the old complete folder or the new one (for an instant
    between two renames, absent; :func:`recover` repairs that after a crash). On an error
    or SIGINT/SIGTERM the temp folder is removed and ``out`` is untouched.

    Raises:
        BuildDirError: ``out`` holds something modelspec did not write (see :func:`check_target`).
    """
    out = Path(os.path.abspath(out))
    keep = list(keep)
    recover(out)
    check_target(out, keep)
    make_folder(out.parent)
    with SignalGuard() as signals:
        wrapper: Path | None = None
        try:
            wrapper = _make_wrapper(out, "tmp")
            tmp = wrapper / out.name
            tmp.mkdir()
            fault_point("start")
            yield tmp
            _write_manifest(tmp)
            fault_point("sealed")
            check_target(out, keep)  # again: something may have appeared while we wrote
            signals.deferring = True
            _swap(tmp, out)
        except BaseException:
            signals.deferring = True
            _drain_syncs()
            if wrapper is not None:
                _discard_wrapper(wrapper, wrapper / out.name, "tmp")
            raise
        _discard_wrapper(wrapper, tmp, "tmp")
        fault_point("done")


def _swap(tmp: Path, out: Path) -> None:
    if not os.path.lexists(out):
        os.rename(tmp, out)  # fails rather than replace a folder that appeared with something in it
        _sync_folder(out.parent)
        fault_point("renamed")
        return
    old_wrapper = _make_wrapper(out, "old")
    old = old_wrapper / out.name
    os.rename(out, old)
    fault_point("moved-old")  # a crash here leaves ``out`` missing: recover() puts ``old`` back
    try:
        code, found = _foreign(old)  # added in the instant between the check and the move?
        if code is not None:
            raise BuildDirError(f"{out}: {found[0][0]} {found[0][1]}; the build was not replaced", code=code)
        os.rename(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, out)
            os.unlink(old_wrapper / _MARKER)
            os.rmdir(old_wrapper)
        raise
    _sync_folder(out.parent)
    fault_point("renamed")
    _discard_wrapper(old_wrapper, old, "old")


# ------------------------------------------------------------------ recovery after a crash
def _stale_wrappers(out: Path) -> list[tuple[str, Path, bool]]:
    """(kind, wrapper, proven) for each wrapper beside ``out`` whose writer is dead.

    ``proven``: its writer.json names ``out``, this host and a dead process. An unproven
    one (killed before it wrote writer.json) is only ever removed with rmdir.
    """
    prefix = f".{out.name[:200]}."
    found = []
    try:
        entries = [e for e in os.scandir(out.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    for entry in entries:
        m = _WRAPPER.fullmatch(entry.name[len(prefix) :])
        if not m or entry.is_symlink() or not entry.is_dir():
            continue
        kind, pid = m.group(1), int(m.group(2))
        try:
            marker = json.loads((Path(entry.path) / _MARKER).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            marker = None
        if not isinstance(marker, dict):
            if not alive(pid, None):
                found.append((kind, Path(entry.path), False))
            continue
        started = marker.get("started")
        if (
            marker.get("written_by") == _WRITTEN_BY
            and marker.get("target") == out.name
            and marker.get("pid") == pid
            and marker.get("host") == socket.gethostname()
            and not alive(pid, started if isinstance(started, int) else None)
        ):
            found.append((kind, Path(entry.path), True))
    return sorted(found, key=lambda f: (f[0], f[1].name))


def recover(out: str | os.PathLike[str]) -> None:
    """Repair what a killed writer of ``out`` left: put the old build back if ``out`` is
    missing, and remove stale temp and old folders that are provably modelspec's.

    Best effort, never raises: a folder that cannot be repaired is left as it is.
    """
    with contextlib.suppress(OSError):
        _recover(Path(os.path.abspath(out)))


def _recover(out: Path) -> None:
    stale = _stale_wrappers(out)
    if not os.path.lexists(out):  # killed between the two renames: the old build is complete
        for kind, wrapper, proven in stale:
            inner = wrapper / out.name
            if kind == "old" and proven and inner.is_dir() and not inner.is_symlink():
                with contextlib.suppress(OSError):
                    os.rename(inner, out)
                    break
    for kind, wrapper, proven in stale:
        if proven:
            _discard_wrapper(wrapper, wrapper / out.name, kind)
        else:  # killed while writing writer.json: at most that (broken) file is in it
            with contextlib.suppress(OSError):
                if os.listdir(wrapper) == [_MARKER] and (wrapper / _MARKER).is_file():
                    os.unlink(wrapper / _MARKER)
                os.rmdir(wrapper)
