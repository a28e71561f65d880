"""Every file of a build folder is on disk before the folder is sealed, though the checkpoint's
fsync runs in the background while the reports are written; a failed fsync seals nothing."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

import modelspec
from modelspec._files import MANIFEST_FILE, atomic_dir, sync_later

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "specs" / "zoo" / "lenet.yaml"


def test_every_file_is_synced_before_the_manifest_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fsync
    events: list[tuple[str, int]] = []  # ("sync", inode) when an fsync returned; ("manifest", inode) when it began
    lock = threading.Lock()

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        real(fd)
        with lock:
            events.append(("sync", st.st_ino))

    monkeypatch.setattr(os, "fsync", recording)
    out = tmp_path / "lenet"
    modelspec.write_build(LENET, out)
    inodes = {p.name: p.stat().st_ino for p in out.iterdir()}
    synced = [ino for kind, ino in events if kind == "sync"]
    assert set(inodes.values()) <= set(synced)  # every file, the manifest included
    manifest_at = synced.index(inodes[MANIFEST_FILE])
    others = {ino for name, ino in inodes.items() if name != MANIFEST_FILE}
    assert others <= set(synced[:manifest_at])  # all of them done before the manifest was synced
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("failing", ["model.safetensors", "report.html"])
def test_a_failed_fsync_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    real = os.fsync

    def failing_for(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(failing):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name an open file")
    monkeypatch.setattr(os, "fsync", failing_for)
    out = tmp_path / "lenet"
    with pytest.raises(OSError) as e:
        modelspec.write_build(LENET, out)
    assert e.value.errno == errno.EIO
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp folder left beside it


def test_a_failed_build_leaves_no_sync_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelspec import _files

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(modelspec._api, "render_html", fail)  # after the checkpoint's sync was started
    with pytest.raises(OSError):
        modelspec.write_build(LENET, tmp_path / "lenet")
    assert _files._SYNCING == {}
    assert [p.name for p in tmp_path.iterdir()] == []


def _seal_a_folder(out: Path) -> None:
    """A build folder of one file whose fsync runs in the background (as a checkpoint's)."""
    with atomic_dir(out) as tmp:
        with open(tmp / "data.bin", "wb") as f:
            f.write(b"x" * 4096)
            sync_later(os.dup(f.fileno()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_seals_a_folder_after_its_parent_did(tmp_path: Path) -> None:
    # a child forked after the parent's fsync threads started has none of them: with the
    # parent's pool it would wait forever for a sync no thread runs
    import multiprocessing

    _seal_a_folder(tmp_path / "parent")
    child = multiprocessing.get_context("fork").Process(target=_seal_a_folder, args=(tmp_path / "child",))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert (tmp_path / "child" / MANIFEST_FILE).is_file()
