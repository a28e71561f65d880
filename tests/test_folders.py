"""Build folders: nothing the tool did not write is replaced, and crashes are recovered.

The crash tests kill real ``python -m modelspec build`` processes. ``MODELSPEC_TEST_FAULT``
makes the writer SIGKILL itself (``kill@POINT``), pause for a signal (``pause@POINT``) or
report each point it passes (``trace@``) so that a test can kill it a little later. All
the processes start together in one module-scoped fixture (each one imports torch; run one
after another they would take most of a minute) and each test then checks one outcome.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import modelspec
from modelspec._errors import BuildDirError
from modelspec._files import MANIFEST_FILE, _foreign, recover
from modelspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
BUILD_FILES = {MANIFEST_FILE, "model.safetensors", "report.html", "report.json", "report.md", "spec.yaml"}

SMALL = """# {name}: a small spec
modelspec: 1
name: {name}
input: {{shape: [2, 4]}}
seed: {seed}
model:
  - LazyLinear: {{out_features: 8}}
  - ReLU
  - LazyLinear: {{out_features: 1}}
"""
# about 8.4M parameters (34 MB): the write takes long enough for timed kills to land inside it
BIG = """modelspec: 1
name: {name}
input: {{shape: [1, 1024]}}
seed: {seed}
model:
  - Linear: [1024, 2048]
  - Linear: [2048, 2048]
  - Linear: [2048, 1024]
"""


def _spec(folder: Path, name: str, seed: int, template: str = SMALL) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(template.format(name=name, seed=seed))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _wrappers(out: Path) -> list[str]:
    """Temp and old folders of writers of ``out`` (``.out.tmp-*``, ``.out.old-*``)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _state(out: Path, old: dict[str, bytes] | None, new_name: str) -> str:
    """What ``out`` is, looked at without recovering anything: missing, old, new or torn."""
    if not os.path.lexists(out):
        return "missing"
    files = _snapshot(out)
    if files == old:
        return "old"
    complete = set(files) == BUILD_FILES and _foreign(out) == (None, [])
    return "new" if complete and f"name: {new_name}\n" in files["spec.yaml"].decode() else "torn"


def _loaded_name(out: Path) -> str:
    info = modelspec.build_info(modelspec.load(out))
    assert info is not None
    return info.spec.name or ""


# ------------------------------------------------------------------ processes killed while writing
@dataclass
class Crash:
    """One ``modelspec build`` of ``new`` into ``out`` (which holds ``old``'s build, if any)."""

    out: Path
    new: Path
    fault: str
    trigger: str | None = None  # a stderr fragment after which the test sends ``send``
    send: int = signal.SIGKILL
    delay: float = 0.0
    default_signals: bool = False  # start with default SIGINT/SIGTERM handling (see _argv)
    old: dict[str, bytes] | None = None
    rc: int | None = None
    stderr: str = ""


def _argv(c: Crash) -> list[str]:
    args = ["build", str(c.new), "-o", str(c.out)]
    if not c.default_signals:
        return [sys.executable, "-m", "modelspec", *args]
    # A shell starts background jobs with SIGINT ignored, and Python keeps it ignored; the
    # writer rightly leaves an ignored signal alone. Restore the defaults, then run -m modelspec.
    code = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "signal.signal(signal.SIGTERM, signal.SIG_DFL); sys.argv = ['modelspec', *sys.argv[1:]]; "
        "runpy.run_module('modelspec', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code, *args]


def _run(c: Crash) -> Crash:
    # one thread each: ten processes share two cores, and idle OpenMP threads would spin
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELSPEC_TEST_FAULT": c.fault, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_argv(c), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    if c.trigger:
        for line in proc.stderr:
            seen.append(line)
            if c.trigger in line:
                time.sleep(c.delay)
                proc.send_signal(c.send)
                break
    c.stderr = "".join(seen) + proc.communicate(timeout=120)[1]
    c.rc = proc.returncode
    return c


#: kill@POINT -> (state right after the kill, how it is recovered, state after that)
POINTS = {
    "wrote-checkpoint": ("old", "load", "old"),
    "sealed": ("old", "build", "new"),
    "moved-old": ("missing", "load", "old"),  # the crash between the two renames
    "renamed": ("new", "load", "new"),
}
TIMED = (0.0, 0.1)


@pytest.fixture(scope="module")
def crashes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Crash]:
    base = tmp_path_factory.mktemp("crashes")
    runs: dict[str, Crash] = {}

    def prepare(key: str, fault: str, template: str = SMALL, **kw: object) -> None:
        folder = base / key
        folder.mkdir()
        new = _spec(folder, "new", 1, template)
        out = folder / "b"
        modelspec.write_build(_spec(folder, "old", 0, template), out)
        old = _snapshot(out)
        runs[key] = Crash(out, new, fault, old=old, **kw)  # type: ignore[arg-type]

    for key in POINTS:
        prepare(key, f"kill@{key}")
    for delay in TIMED:
        prepare(f"timed-{delay}", "trace@", BIG, trigger="at start", delay=delay)
    prepare("sigterm", "pause@wrote-checkpoint", trigger="paused at", send=signal.SIGTERM, default_signals=True)
    prepare("sigint", "pause@wrote-checkpoint", trigger="paused at", send=signal.SIGINT, default_signals=True)
    prepare("sigterm-in-swap", "pause@moved-old", trigger="paused at", send=signal.SIGTERM, default_signals=True)
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        list(pool.map(_run, runs.values()))
    return runs


@pytest.mark.parametrize("key", POINTS)
def test_kill_at_each_point_leaves_old_or_new_build(crashes: dict[str, Crash], key: str) -> None:
    c = crashes[key]
    right_after, recovery, recovered = POINTS[key]
    assert c.rc == -signal.SIGKILL, c.stderr
    assert _state(c.out, c.old, "new") == right_after  # never torn
    assert _wrappers(c.out)  # the kill left something to recover
    if recovery == "load":
        assert _loaded_name(c.out) == recovered  # load recovers, then loads a complete build
    else:
        modelspec.write_build(c.new, c.out)
    assert _wrappers(c.out) == []
    assert _state(c.out, c.old, "new") == recovered
    assert _loaded_name(c.out) == recovered


@pytest.mark.parametrize("delay", TIMED)
def test_timed_kill_leaves_old_or_new_build(crashes: dict[str, Crash], delay: float) -> None:
    c = crashes[f"timed-{delay}"]
    assert c.rc in (-signal.SIGKILL, 0), c.stderr
    state = _state(c.out, c.old, "new")
    assert state in ("old", "new", "missing")  # never torn
    assert _loaded_name(c.out) in (("old",) if state == "missing" else (state,))
    assert _wrappers(c.out) == []


@pytest.mark.parametrize(("key", "rc"), [("sigterm", -signal.SIGTERM), ("sigint", 130)])
def test_sigterm_and_sigint_clean_up(crashes: dict[str, Crash], key: str, rc: int) -> None:
    c = crashes[key]
    assert c.rc == rc, c.stderr
    assert _wrappers(c.out) == []  # cleaned up by the process itself, before any recovery
    assert _state(c.out, c.old, "new") == "old"
    if key == "sigint":
        assert "interrupted" in c.stderr and "Traceback" not in c.stderr


def test_signal_during_the_swap_waits_for_it(crashes: dict[str, Crash]) -> None:
    c = crashes["sigterm-in-swap"]
    assert c.rc == -signal.SIGTERM, c.stderr
    assert _wrappers(c.out) == [] and _state(c.out, c.old, "new") == "new"


# ------------------------------------------------------------------ never replace what the user wrote
def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    rc = main(list(argv), stdout=io.StringIO(), stderr=err)
    return rc, err.getvalue()


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    """(spec, out): a build folder of a small spec, and its spec."""
    spec = _spec(tmp_path, "old", 0)
    out = tmp_path / "b"
    modelspec.write_build(spec, out)
    return spec, out


def test_files_added_while_building_are_kept(built: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    spec, out = built
    before = _snapshot(out)
    from modelspec import _api

    real = _api.save_checkpoint

    def save_and_meanwhile_add_a_file(*args: object, **kwargs: object) -> object:
        (out / "notes.txt").write_text("written during the build")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_api, "save_checkpoint", save_and_meanwhile_add_a_file)
    with pytest.raises(BuildDirError) as info:
        modelspec.write_build(spec, out)
    assert info.value.code == "in-the-way" and "notes.txt" in str(info.value)
    assert (out / "notes.txt").read_text() == "written during the build"
    assert {k: v for k, v in _snapshot(out).items() if k != "notes.txt"} == before
    assert _wrappers(out) == []


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda out: (out / "notes.txt").write_text("mine"), "in-the-way"),
        (lambda out: (out / "report.md").write_text((out / "report.md").read_text() + "my notes\n"), "in-the-way"),
        (lambda out: (out / "report.json").write_bytes(b"x" * (out / "report.json").stat().st_size), "in-the-way"),
        (lambda out: ((out / "report.md").unlink(), (out / "report.md").mkdir(), (out / "report.md/n").touch()), "in-the-way"),
        (lambda out: ((out / "report.md").unlink(), (out / "report.md").symlink_to(out.parent / "old.yaml")), "in-the-way"),
        (lambda out: (out / MANIFEST_FILE).unlink(), "not-a-build-folder"),
        (lambda out: (out / MANIFEST_FILE).write_text("{}"), "not-a-build-folder"),
    ],
    ids=["extra-file", "edited", "same-size-edit", "folder-named-report.md", "link", "no-manifest", "bad-manifest"],
)  # fmt: skip
def test_what_the_user_wrote_is_never_replaced(
    built: tuple[Path, Path], change: Callable[[Path], object], code: str
) -> None:
    spec, out = built
    change(out)
    before = {p.name: (p.is_dir(), p.read_bytes() if p.is_file() else None) for p in out.iterdir()}
    rc, err = _cli("build", str(spec), "-o", str(out))
    assert rc == 2 and f"error[{code}]" in err
    assert {p.name: (p.is_dir(), p.read_bytes() if p.is_file() else None) for p in out.iterdir()} == before
    assert _wrappers(out) == []


def test_a_touched_or_copied_build_folder_is_still_replaced(built: tuple[Path, Path], tmp_path: Path) -> None:
    spec, out = built
    os.utime(out / "report.md")  # same bytes, new time: the sha256 decides
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    for folder in (out, copy):
        assert _cli("build", str(spec), "-o", str(folder))[0] == 0


def test_foreign_folder_with_build_file_names_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "s", 0)
    out = tmp_path / "out"
    (out / "report.md").mkdir(parents=True)
    (out / "report.md" / "notes.txt").write_text("mine")
    rc, err = _cli("build", str(spec), "-o", str(out))
    assert rc == 2 and "error[not-a-build-folder]" in err
    assert (out / "report.md" / "notes.txt").read_text() == "mine"


def test_building_a_spec_into_its_own_folder_keeps_the_spec(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    spec = folder / "spec.yaml"
    text = "# my comments\n" + SMALL.format(name="m", seed=0).replace("  - ReLU\n", "  - &act ReLU\n  - *act\n")
    spec.write_text(text)
    rc, err = _cli("build", str(spec), "-o", str(folder))
    assert rc == 2 and "error[would-overwrite-spec]" in err
    assert spec.read_text() == text and sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]
    assert _wrappers(folder) == []


def test_rebuilding_a_build_folder_from_its_own_spec_is_fine(built: tuple[Path, Path]) -> None:
    _, out = built
    assert _cli("build", str(out / "spec.yaml"), "-o", str(out))[0] == 0
    assert _loaded_name(out) == "old"


def test_save_refuses_a_folder_with_user_files(built: tuple[Path, Path]) -> None:
    _, out = built
    model = modelspec.load(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildDirError) as info:
        modelspec.save(model, out)
    assert info.value.code == "in-the-way" and (out / "notes.txt").read_text() == "mine"


def test_output_that_is_a_file_or_a_link(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "s", 0)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for out, code in [(afile, "not-a-folder"), (afile / "out", "not-a-folder"), (tmp_path / "link", "in-the-way")]:
        rc, err = _cli("build", str(spec), "-o", str(out))
        assert rc == 2 and f"error[{code}]" in err and "Errno" not in err
    assert afile.read_text() == "mine" and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("command", ["report", "graph"])
def test_report_and_graph_create_folders_and_refuse_a_path_below_a_file(tmp_path: Path, command: str) -> None:
    spec = _spec(tmp_path, "s", 0)
    rc, _ = _cli(command, str(spec), "-o", str(tmp_path / "new" / "deep" / "out.txt"))
    assert rc == 0 and (tmp_path / "new" / "deep" / "out.txt").stat().st_size > 0
    rc, err = _cli(command, str(spec), "-o", str(spec / "out.txt"))
    assert rc == 2 and "error[not-a-folder]" in err and "Errno" not in err


def test_schema_below_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    rc, err = _cli("schema", "-o", str(tmp_path / "afile" / "schemas"))
    assert rc == 2 and "error[not-a-folder]" in err and (tmp_path / "afile").read_text() == "mine"


def test_signal_handlers_are_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    spec = _spec(tmp_path, "s", 0)
    modelspec.write_build(spec, tmp_path / "b")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("modelspec._api.save_checkpoint", disk_full)
    with pytest.raises(OSError, match="disk full"):
        modelspec.write_build(spec, tmp_path / "b")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert _wrappers(tmp_path / "b") == [] and _loaded_name(tmp_path / "b") == "s"


# ------------------------------------------------------------------ recovery touches only what is provably its own
def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _fake_wrapper(out: Path, kind: str, pid: int, marker: bool = True) -> Path:
    import json
    import socket

    wrapper = out.parent / f".{out.name}.{kind}-{pid}-abcd1234"
    (wrapper / out.name).mkdir(parents=True)
    (wrapper / out.name / "model.safetensors").write_bytes(b"partial")
    if marker:
        doc = {"written_by": "modelspec", "target": out.name, "pid": pid, "host": socket.gethostname(), "started": None}
        (wrapper / "writer.json").write_text(json.dumps(doc))
    return wrapper


def test_recovery_leaves_what_is_not_provably_stale(built: tuple[Path, Path]) -> None:
    _, out = built
    dead = _dead_pid()
    stale = _fake_wrapper(out, "tmp", dead)
    live = _fake_wrapper(out, "tmp", os.getpid())  # a writer still running: this very process
    unmarked = _fake_wrapper(out, "old", dead, marker=False)  # no writer.json: not provably ours
    legacy = out.parent / f".{out.name}.tmp-k3j2h1g0"  # an older modelspec's temp folder: no pid, no marker
    legacy.mkdir()
    half_marked = out.parent / f".{out.name}.tmp-{dead}-zz99yy88"  # killed while writing writer.json
    half_marked.mkdir()
    (half_marked / "writer.json").write_text('{"written_by": "mod')
    recover(out)
    assert not stale.exists() and not half_marked.exists()
    assert live.exists() and unmarked.exists() and legacy.exists()
    assert (unmarked / out.name / "model.safetensors").read_bytes() == b"partial"


def test_a_first_build_killed_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "b"
    _fake_wrapper(out, "tmp", _dead_pid())  # the partial temp folder of a killed first build
    with pytest.raises(BuildDirError) as info:
        modelspec.load(out)
    assert info.value.code == "not-a-folder" and _wrappers(out) == [] and not out.exists()
