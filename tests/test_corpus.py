"""The corpus of bad input: every case exits 2 with its expected code (and position), without a
traceback, and writes nothing.

Two kinds of case:

* ``tests/corpus/spec/<case>.yaml``: a bad spec. Its first lines say what to expect, one line per
  error diagnostic in the order the CLI prints them::

      # expect: unknown-layer 4:5
      # expect: file-error              (a diagnostic without a position)
      # build only: why                 (optional: validate accepts it, only the build finds it)

  Positions count these header lines too. ``modelspec build`` must print exactly these
  ``error[...]`` diagnostics, and ``modelspec validate`` too unless the case needs the build.
* ``GENERATED`` below: bad specs too large to keep as files, made by the test.
* ``ARTEFACTS`` below: a function that damages a copy of a fresh build folder (checkpoint,
  folder layout, its spec.yaml) or of its ``report.json``, the commands that must refuse it, and
  the expected code.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch

import modelspec
from modelspec import ModelspecError, SpecError
from modelspec.cli import main

CORPUS = Path(__file__).resolve().parent / "corpus"
SPEC_CASES = sorted((CORPUS / "spec").glob("*.yaml"))
#: codes that only the build finds (constructors, the example pass); validate does not run those
BUILD_ONLY = frozenset({"build-error", "missing-input", "copied-block"})

_EXPECT = re.compile(rb"^# expect: ([a-z0-9-]+)(?: (\d+):(\d+))?\s*$")

Expected = tuple[str, int | None, int | None]


def expected(case: Path) -> list[Expected]:
    """The ``# expect:`` lines at the top of a corpus file."""
    found = []
    for line in case.read_bytes().splitlines():
        m = _EXPECT.match(line)
        if m is None:
            break
        code, ln, col = m.groups()
        found.append((code.decode(), int(ln) if ln else None, int(col) if col else None))
    assert found, f"{case.name} starts with no '# expect: CODE LINE:COL' line"
    return found


def build_only(case: Path, want: list[Expected]) -> bool:
    """Whether only the build finds the problem (so ``validate`` accepts the spec)."""
    head = case.read_bytes()[:4096].splitlines()
    return any(code in BUILD_ONLY for code, _, _ in want) or any(line.startswith(b"# build only") for line in head)


def diagnostics(stderr: str, file: Path) -> list[Expected]:
    """The error diagnostics the CLI printed for ``file``: (code, line, column)."""
    pattern = re.compile(rf"^{re.escape(str(file))}(?::(\d+):(\d+))?: error\[([a-z0-9-]+)\]", re.M)
    return [(code, int(ln) if ln else None, int(col) if col else None) for ln, col, code in pattern.findall(stderr)]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def assert_clean_refusal(rc: int, err: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err, err


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): to prove nothing was written."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


# ------------------------------------------------------------------ bad specs
@pytest.mark.parametrize("case", SPEC_CASES, ids=lambda p: p.stem)
def test_bad_spec(tmp_path: Path, case: Path) -> None:
    want = expected(case)
    spec = tmp_path / case.name
    shutil.copyfile(case, spec)
    check_refused(tmp_path, spec, want, build_only(case, want))


def check_refused(tmp_path: Path, spec: Path, want: list[Expected], only_build: bool) -> None:
    out_dir = tmp_path / "out"

    rc, stdout, err = run("build", str(spec), "-o", str(out_dir))
    assert_clean_refusal(rc, err)
    assert diagnostics(err, spec) == want, err
    assert stdout == ""
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]  # no temp folder either

    if not only_build:
        rc, _, err = run("validate", str(spec))
        assert_clean_refusal(rc, err)
        assert diagnostics(err, spec) == want, err


#: bad specs made by the test (too large to keep as files): name -> (bytes, expected diagnostics)
GENERATED: dict[str, tuple[bytes, list[Expected]]] = {
    # PyYAML recursed before any depth cap; the nesting is refused at the level that passes the cap
    "yaml-nested-100000-deep": (b"modelspec: 1\nmodel: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
                                [("too-deep", 2, 107)]),
    # 5 MB without a single alias once took 90 s and was reported as alias-limit: the size cap comes first
    "yaml-5mb-without-aliases": (b"modelspec: 1\nmodel:\n" + b"  - ReLU\n" * 560_000, [("too-large", 1, 1)]),
    "yaml-5mb-comment": (b"modelspec: 1\nmodel: [ReLU]\n# " + b"x" * 5_000_000 + b"\n", [("too-large", 1, 1)]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_bad_generated_spec(tmp_path: Path, name: str) -> None:
    data, want = GENERATED[name]
    spec = tmp_path / f"{name}.yaml"
    spec.write_bytes(data)
    check_refused(tmp_path, spec, want, only_build=False)


# ------------------------------------------------------------------ damaged build folders and reports
GOOD_SPEC = """\
modelspec: 1
name: corpus
input: {shape: [2, 4]}
blocks:
  shared: {Linear: [8, 8]}
model:
  - Linear: [4, 8]
  - use: shared
  - ReLU
  - use: shared
  - BatchNorm1d: 8
  - Linear: [8, 2]
"""
OTHER_SPEC = "modelspec: 1\nname: other\ninput: {shape: [2, 4]}\nmodel:\n  - Linear: [4, 3]\n"
CKPT = "build/model.safetensors"
FOLDER_SPEC = "build/spec.yaml"
REPORT = "build/report.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh build folder ``build/`` of GOOD_SPEC, ``bf16/``, the same in bfloat16, and ``other/``, a
    build of another spec."""
    root = tmp_path_factory.mktemp("pristine")
    (root / "good.yaml").write_text(GOOD_SPEC, encoding="utf-8")
    (root / "other.yaml").write_text(OTHER_SPEC, encoding="utf-8")
    modelspec.write_build(root / "good.yaml", root / "build")
    modelspec.write_build(root / "other.yaml", root / "other")
    modelspec.write_build(root / "good.yaml", root / "bf16", dtype="bfloat16")
    return root


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_header(path: Path, header: object, data: bytes) -> None:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def edit_header(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Damage: change the checkpoint's JSON header (its data bytes are kept)."""

    def damage(w: Path) -> None:
        header, data = _header(w / CKPT)
        edit(header)
        _write_header(w / CKPT, header, data)

    return damage


def set_meta(key: str, value: str | None) -> Callable[[Path], None]:
    """Damage: set (or, with None, remove) one metadata field of the checkpoint."""

    def edit(header: dict) -> None:
        if value is None:
            del header["__metadata__"][key]
        else:
            header["__metadata__"][key] = value

    return edit_header(edit)


def edit_meta_json(key: str, edit: Callable[[object], object]) -> Callable[[Path], None]:
    """Damage: decode a JSON metadata field, change it, encode it again."""

    def change(header: dict) -> None:
        header["__metadata__"][key] = json.dumps(edit(json.loads(header["__metadata__"][key])))

    return edit_header(change)


def write_bytes(rel: str, data: bytes) -> Callable[[Path], None]:
    return lambda w: (w / rel).write_bytes(data)


def truncate(rel: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        raw = (w / rel).read_bytes()
        (w / rel).write_bytes(raw[: keep(len(raw))])

    return damage


def flip_last_byte(w: Path) -> None:
    raw = bytearray((w / CKPT).read_bytes())
    raw[-1] ^= 0x01
    (w / CKPT).write_bytes(bytes(raw))


def replace_text(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        text = (w / rel).read_text(encoding="utf-8")
        assert old in text, (rel, old)
        (w / rel).write_text(text.replace(old, new, 1), encoding="utf-8")

    return damage


def remove(rel: str) -> Callable[[Path], None]:
    return lambda w: (w / rel).unlink()


def make_dir(rel: str) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        (w / rel).unlink()
        (w / rel).mkdir()

    return damage


def edit_report(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        data = json.loads((w / REPORT).read_text(encoding="utf-8"))
        edit(data)
        (w / REPORT).write_text(json.dumps(data), encoding="utf-8")

    return damage


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def _del(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key)


def _first_tensor(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d["tensors"][0].__setitem__(key, value)


def _rename_tensor(h: dict) -> None:
    h["9.weight"] = h.pop("0.weight")


def _drop_tensor(h: dict) -> None:
    h.pop("5.bias")


def _reshape_tensor(h: dict) -> None:
    h["1.weight"]["shape"] = [64]


def _int_dtype(h: dict) -> None:
    h["0.weight"]["dtype"] = "I32"  # same size as F32: the bytes alone do not tell


def _overlap(h: dict) -> None:
    h["0.bias"]["data_offsets"] = h["0.weight"]["data_offsets"]


def _offsets_past_end(h: dict) -> None:
    start, end = h["5.bias"]["data_offsets"]
    h["5.bias"]["data_offsets"] = [start, end + 4096]


def _wrong_digest(d: object) -> object:
    assert isinstance(d, dict)
    return {**d, "0.weight": "0" * 64}


def _header_is_list(w: Path) -> None:
    _, data = _header(w / CKPT)
    _write_header(w / CKPT, [], data)


def _foreign_checkpoint(w: Path) -> None:
    shutil.copyfile(w / "other/model.safetensors", w / CKPT)


def _plain_safetensors(w: Path) -> None:
    safetensors.torch.save_file({"0.weight": torch.zeros(8, 4)}, str(w / CKPT))


def _huge_header_length(w: Path) -> None:
    raw = (w / CKPT).read_bytes()
    (w / CKPT).write_bytes(struct.pack("<Q", 1 << 60) + raw[8:])


def _dangling_spec_link(w: Path) -> None:
    (w / FOLDER_SPEC).unlink()
    (w / FOLDER_SPEC).symlink_to(w / "nowhere.yaml")


def _foreign_file_in_out(w: Path) -> None:
    (w / "build/notes.txt").write_text("mine")


def _out_is_a_file(w: Path) -> None:
    (w / "out").write_text("mine")


def _empty_build_folder(w: Path) -> None:
    for p in (w / "build").iterdir():
        p.unlink()


def _bf16_relabelled_f16(w: Path) -> None:
    """The bfloat16 build in place of ``build/``, every BF16 tensor relabelled F16 in the header
    (the same size: the bytes alone do not tell; |w| would change several-fold)."""
    shutil.rmtree(w / "build")
    shutil.copytree(w / "bf16", w / "build")
    header, data = _header(w / CKPT)
    for entry in header.values():
        if isinstance(entry, dict) and entry.get("dtype") == "BF16":
            entry["dtype"] = "F16"
    _write_header(w / CKPT, header, data)


def _user_folder_with_spec(w: Path) -> None:
    (w / "m").mkdir()
    shutil.copyfile(w / "good.yaml", w / "m/spec.yaml")
    with (w / "m/spec.yaml").open("a", encoding="utf-8") as f:
        f.write("# my notes, kept\n")


def _user_folder_named_report_md(w: Path) -> None:
    (w / "build/report.md").unlink()
    (w / "build/report.md").mkdir()
    (w / "build/report.md/notes.txt").write_text("mine")


def _spec_file(rel: str, text: str) -> Callable[[Path], None]:
    return lambda w: (w / rel).write_text(text, encoding="utf-8")


def _tensor_twice(d: dict) -> None:
    d["tensors"].append(d["tensors"][0])


def _stat(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d["tensors"][0]["stats"].__setitem__(key, value)


def _total(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d["totals"].__setitem__(key, value)


def _tie_group_names_absent(d: dict) -> None:
    d["tie_groups"][0]["tensors"] = ["9.weight", "9.bias"]


# commands that must refuse a damaged build folder / report.json ({good}: an undamaged one)
ON_FOLDER = (("report", "{b}"), ("diff", "{good}", "{b}"), ("grads", "{b}"), ("graph", "{b}"))
ON_REPORT = (("report", "{r}"), ("diff", "{goodr}", "{r}"), ("graph", "{r}"))


@dataclass(frozen=True)
class Damage:
    """One damaged artefact: how to damage a copy of the pristine tree, the expected code, and
    the commands that must refuse it. ``at`` is ``LINE:COL`` when the error is a diagnostic in
    the folder's spec.yaml."""

    damage: Callable[[Path], object]
    code: str
    commands: tuple[tuple[str, ...], ...] = ON_FOLDER
    at: str | None = None


# fmt: off
ARTEFACTS: dict[str, Damage] = {
    # ---- checkpoints: the file itself
    "ckpt-empty-file": Damage(write_bytes(CKPT, b""), "unreadable"),
    "ckpt-truncated-in-length": Damage(truncate(CKPT, lambda n: 5), "unreadable"),
    "ckpt-truncated-in-header": Damage(truncate(CKPT, lambda n: 40), "unreadable"),
    "ckpt-truncated-in-data": Damage(truncate(CKPT, lambda n: n - 16), "layout-mismatch"),
    "ckpt-garbage": Damage(write_bytes(CKPT, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "unreadable"),
    "ckpt-header-length-huge": Damage(_huge_header_length, "unreadable"),
    "ckpt-header-not-json": Damage(write_bytes(CKPT, struct.pack("<Q", 8) + b"{not js}"), "unreadable"),
    "ckpt-header-is-a-list": Damage(_header_is_list, "unreadable"),
    "ckpt-is-a-folder": Damage(make_dir(CKPT), "not-a-build-folder"),
    "ckpt-plain-safetensors": Damage(_plain_safetensors, "not-modelspec"),
    "ckpt-of-another-spec": Damage(_foreign_checkpoint, "spec-mismatch"),
    "ckpt-data-byte-flipped": Damage(flip_last_byte, "checksum-mismatch"),
    # ---- checkpoints: tensor entries in the header
    "ckpt-tensor-renamed": Damage(edit_header(_rename_tensor), "names-mismatch"),
    "ckpt-tensor-dropped": Damage(edit_header(_drop_tensor), "names-mismatch"),
    "ckpt-tensor-reshaped": Damage(edit_header(_reshape_tensor), "shape-mismatch"),
    "ckpt-tensor-dtype-float-to-int": Damage(edit_header(_int_dtype), "dtype-mismatch"),
    "ckpt-tensor-offsets-overlap": Damage(edit_header(_overlap), "layout-mismatch"),
    "ckpt-tensor-offsets-past-end": Damage(edit_header(_offsets_past_end), "layout-mismatch"),
    # ---- checkpoints: metadata
    "ckpt-meta-removed": Damage(edit_header(lambda h: h.pop("__metadata__")), "not-modelspec"),
    "ckpt-meta-format-other": Damage(set_meta("format", "pt"), "not-modelspec"),
    "ckpt-meta-format-removed": Damage(set_meta("format", None), "metadata-missing"),
    "ckpt-meta-ties-not-json": Damage(set_meta("ties", "{3.weight: 1.weight"), "metadata-damaged"),
    "ckpt-meta-ties-removed": Damage(set_meta("ties", None), "metadata-missing"),
    "ckpt-meta-ties-a-list": Damage(set_meta("ties", '["3.weight"]'), "metadata-damaged"),
    "ckpt-meta-ties-not-strings": Damage(set_meta("ties", '{"3.weight": 1}'), "metadata-damaged"),
    "ckpt-meta-ties-alias-dropped": Damage(edit_meta_json("ties", lambda t: {}), "metadata-mismatch"),
    "ckpt-meta-ties-alias-added": Damage(edit_meta_json("ties", lambda t: {**t, "5.weight": "0.weight"}), "metadata-mismatch"),
    "ckpt-meta-sha256-removed": Damage(set_meta("sha256", None), "metadata-missing"),
    "ckpt-meta-sha256-not-json": Damage(set_meta("sha256", "sha256"), "metadata-damaged"),
    "ckpt-meta-sha256-wrong-digest": Damage(edit_meta_json("sha256", _wrong_digest), "metadata-mismatch"),
    "ckpt-meta-frozen-not-json": Damage(set_meta("frozen", "[0.weight"), "metadata-damaged"),
    "ckpt-meta-frozen-a-mapping": Damage(set_meta("frozen", '{"0.weight": "yes"}'), "metadata-damaged"),
    "ckpt-meta-spec-sha256-blank": Damage(set_meta("spec_sha256", ""), "metadata-missing"),
    "ckpt-meta-frozen-edited": Damage(edit_meta_json("frozen", lambda f: ["0.weight"]), "metadata-mismatch"),
    "ckpt-tensor-dtype-bf16-to-f16": Damage(_bf16_relabelled_f16, "dtype-mismatch"),
    "ckpt-meta-spec-sha256-other": Damage(set_meta("spec_sha256", "0" * 64), "metadata-mismatch"),
    # ---- build folders: layout
    "folder-spec-removed": Damage(remove(FOLDER_SPEC), "not-a-build-folder"),
    "folder-checkpoint-removed": Damage(remove(CKPT), "not-a-build-folder"),
    "folder-spec-is-a-folder": Damage(make_dir(FOLDER_SPEC), "not-a-build-folder"),
    "folder-spec-dangling-link": Damage(_dangling_spec_link, "not-a-build-folder"),
    "folder-empty": Damage(_empty_build_folder, "not-a-build-folder"),
    # ---- build folders: spec.yaml edited after the build
    "folder-spec-edited-seed": Damage(replace_text(FOLDER_SPEC, "seed: 0", "seed: 1"), "spec-mismatch"),
    # allocating the enormous layer before the spec-hash check once ran out of memory
    "folder-spec-edited-enormous-layer": Damage(replace_text(FOLDER_SPEC, "out_features: 2", "out_features: 10000000000000"), "spec-mismatch"),
    "folder-spec-edited-size": Damage(replace_text(FOLDER_SPEC, "out_features: 2", "out_features: 3"), "spec-mismatch"),
    "folder-spec-emptied": Damage(write_bytes(FOLDER_SPEC, b""), "empty-spec", at="1:1"),
    "folder-spec-yaml-syntax": Damage(write_bytes(FOLDER_SPEC, b"modelspec: 1\nmodel: [ReLU\n"), "yaml-syntax", at="2:8"),
    "folder-spec-not-utf8": Damage(write_bytes(FOLDER_SPEC, b"modelspec: 1\nname: \xff\n"), "bad-encoding", at="2:7"),
    "folder-spec-python-tag": Damage(write_bytes(FOLDER_SPEC, b"modelspec: 1\nmodel: !!python/object/apply:os.system [id]\n"), "yaml-tag", at="2:8"),
    "folder-spec-unknown-layer": Damage(replace_text(FOLDER_SPEC, "ReLU", "Relu"), "unknown-layer", at="21:3"),
    "folder-spec-unknown-block": Damage(replace_text(FOLDER_SPEC, "use: shared", "use: shard"), "unknown-block", at="20:3"),
    # ---- build: where the folder goes
    "build-into-foreign-folder": Damage(_foreign_file_in_out, "in-the-way", commands=(("build", "{spec}", "-o", "{b}"),)),
    "build-onto-a-file": Damage(lambda w: None, "not-a-folder", commands=(("build", "{spec}", "-o", "{spec}"),)),
    "build-on-meta": Damage(lambda w: None, "meta-device", commands=(("build", "{spec}", "-o", "{w}/new", "--device", "meta"),)),
    "build-device-unknown": Damage(lambda w: None, "bad-device", commands=(("build", "{spec}", "-o", "{w}/new", "--device", "tpu9"),)),
    "build-dtype-integer": Damage(lambda w: None, "bad-dtype", commands=(("build", "{spec}", "-o", "{w}/new", "--dtype", "int64"),)),
    "build-spec-into-its-own-folder": Damage(_user_folder_with_spec, "would-overwrite-spec", commands=(("build", "{w}/m/spec.yaml", "-o", "{w}/m"),)),
    "build-over-user-folder-report-md": Damage(_user_folder_named_report_md, "in-the-way", commands=(("build", "{spec}", "-o", "{b}"),)),
    "build-below-a-file": Damage(lambda w: None, "not-a-folder", commands=(("build", "{spec}", "-o", "{spec}/out"),)),
    "build-device-cpu-99": Damage(lambda w: None, "bad-device", commands=(("build", "{spec}", "-o", "{w}/new", "--device", "cpu:99"),)),
    "build-device-xla": Damage(lambda w: None, "bad-device", commands=(("build", "{spec}", "-o", "{w}/new", "--device", "xla"),)),
    "build-input-too-large": Damage(_spec_file("huge.yaml", "modelspec: 1\ninput: {shape: [100000, 100000, 100000]}\nmodel:\n  - Linear: [100000, 2]\n"), "too-large",
                                    commands=(("build", "{w}/huge.yaml", "-o", "{w}/new"), ("report", "{w}/huge.yaml"))),
    "build-input-shape-2-pow-64": Damage(_spec_file("huge.yaml", "modelspec: 1\ninput: {shape: [18446744073709551616, 4]}\nmodel:\n  - Linear: [4, 2]\n"), "too-large",
                                         commands=(("build", "{w}/huge.yaml", "-o", "{w}/new"), ("report", "{w}/huge.yaml", "--device", "meta"))),
    "build-spec-never-ends": Damage(lambda w: None, "too-large", commands=(("build", "/dev/zero", "-o", "{w}/new"), ("validate", "/dev/zero"))),
    "grads-batch-too-large": Damage(lambda w: None, "too-large", commands=(("grads", "{b}", "--batch", "1000000000000"),)),
    # ---- report.json
    "report-tensor-listed-twice": Damage(edit_report(_tensor_twice), "bad-report", ON_REPORT),
    "report-tensor-numel-1e400": Damage(edit_report(_first_tensor("numel", 10**400)), "bad-report", ON_REPORT),
    "report-tensor-shape-strings": Damage(edit_report(_first_tensor("shape", ["8", "4"])), "bad-report", ON_REPORT),
    "report-stats-nan": Damage(edit_report(_stat("mean", float("nan"))), "bad-report", ON_REPORT),
    "report-totals-negative": Damage(edit_report(_total("unique_params", -146)), "bad-report", ON_REPORT),
    "report-tie-group-absent-tensors": Damage(edit_report(_tie_group_names_absent), "bad-report", ON_REPORT),
    "report-empty": Damage(write_bytes(REPORT, b""), "bad-report", ON_REPORT),
    "report-not-json": Damage(write_bytes(REPORT, b"tensors: []\n"), "bad-report", ON_REPORT),
    "report-truncated": Damage(truncate(REPORT, lambda n: n // 2), "bad-report", ON_REPORT),
    "report-not-utf8": Damage(write_bytes(REPORT, b'{"format": "\xff"}'), "bad-report", ON_REPORT),
    "report-null": Damage(write_bytes(REPORT, b"null"), "bad-report", ON_REPORT),
    "report-a-list": Damage(write_bytes(REPORT, b"[]"), "bad-report", ON_REPORT),
    "report-deeply-nested": Damage(write_bytes(REPORT, b"[" * 100_000 + b"]" * 100_000), "bad-report", ON_REPORT),
    "report-format-other": Damage(edit_report(_set("format", "torchinfo")), "bad-report", ON_REPORT),
    "report-version-2": Damage(edit_report(_set("version", 2)), "bad-report", ON_REPORT),
    "report-totals-missing": Damage(edit_report(_del("totals")), "bad-report", ON_REPORT),
    "report-unknown-field": Damage(edit_report(_set("tensor_count", 9)), "bad-report", ON_REPORT),
    "report-tensors-a-mapping": Damage(edit_report(_set("tensors", {})), "bad-report", ON_REPORT),
    "report-tensor-kind-unknown": Damage(edit_report(_first_tensor("kind", "weight")), "bad-report", ON_REPORT),
    "report-tensor-numel-float": Damage(edit_report(_first_tensor("numel", 32.5)), "bad-report", ON_REPORT),
    "report-missing": Damage(remove(REPORT), "file-error", ON_REPORT),
}
# fmt: on


@pytest.mark.parametrize("name", sorted(ARTEFACTS))
def test_damaged_artefact(tmp_path: Path, pristine: Path, name: str) -> None:
    case = ARTEFACTS[name]
    w = tmp_path / "w"
    shutil.copytree(pristine, w, symlinks=True)
    case.damage(w)
    before = snapshot(w)
    fields = {"w": w, "b": w / "build", "r": w / REPORT, "spec": w / "good.yaml", "good": pristine / "build",
              "goodr": pristine / REPORT}  # fmt: skip
    for command in case.commands:
        argv = [a.format(**fields) for a in command]
        rc, stdout, err = run(*argv)
        assert_clean_refusal(rc, err)
        if case.at is None:
            assert re.search(rf"^modelspec: error\[{re.escape(case.code)}\]: |: error\[{re.escape(case.code)}\] ",
                             err, re.M), (argv, err)  # fmt: skip
        else:
            line, col = map(int, case.at.split(":"))
            assert diagnostics(err, w / FOLDER_SPEC) == [(case.code, line, col)], (argv, err)
        assert stdout == "", argv
        assert snapshot(w) == before, f"{argv} wrote or changed files"


@pytest.mark.parametrize("name", sorted(n for n, c in ARTEFACTS.items() if c.commands in (ON_FOLDER, ON_REPORT)))
def test_damaged_artefact_api(tmp_path: Path, pristine: Path, name: str) -> None:
    """The Python API raises the same code (and nothing but a ModelspecError)."""
    case = ARTEFACTS[name]
    w = tmp_path / "w"
    shutil.copytree(pristine, w, symlinks=True)
    case.damage(w)
    with pytest.raises(ModelspecError) as info:
        if case.commands is ON_FOLDER:
            modelspec.load(w / "build")
        else:
            modelspec.diff(pristine / REPORT, w / REPORT)
    codes = info.value.codes if isinstance(info.value, SpecError) else [info.value.code]
    assert codes == [case.code]


def test_corpus_is_large_and_covers_every_area() -> None:
    assert len(SPEC_CASES) + len(GENERATED) + len(ARTEFACTS) >= 200
    prefixes = {n.split("-")[0] for n in ARTEFACTS}
    assert {"ckpt", "folder", "build", "report"} <= prefixes
    assert sum(p.stem.startswith("yaml-") for p in SPEC_CASES) + len(GENERATED) >= 40


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1"])
def test_grads_seed_out_of_range(pristine: Path, seed: str) -> None:
    """torch's generators take seeds below 2**64: a larger one is a usage error, not an internal one."""
    rc, _, err = run("grads", str(pristine / "build"), "--seed", seed)
    assert_clean_refusal(rc, err)
    assert "--seed" in err


def test_example_input_too_large_on_meta_does_not_suggest_meta(tmp_path: Path) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text("modelspec: 1\ninput: {shape: [18446744073709551616, 4]}\nmodel:\n  - Linear: [4, 2]\n")
    rc, _, err = run("report", str(spec), "--device", "meta")
    assert_clean_refusal(rc, err)
    assert "error[too-large]" in err and "--device meta" not in err
    rc, _, err = run("report", str(spec))
    assert_clean_refusal(rc, err)
    assert "error[too-large]" in err and "--device meta" in err


@pytest.mark.parametrize("name", ["N", "y", "1e5", "0o17", "010", "1:00", "off", "true", "null", "<<"])
def test_a_build_folder_reads_back_its_own_spec(tmp_path: Path, name: str) -> None:
    """The resolved spec.yaml quotes every text that would read back as something else
    (found by fuzzing: ``name: 'N'`` was written as ``name: N``, which load then refused)."""
    spec = tmp_path / "s.yaml"
    spec.write_text(f"modelspec: 1\nname: {json.dumps(name)}\nmodel:\n  - Linear: [4, 2]\n", encoding="utf-8")
    modelspec.write_build(spec, tmp_path / "b")
    assert modelspec.load(tmp_path / "b").__class__ is modelspec.build(spec).__class__
    rc, _, err = run("validate", str(tmp_path / "b/spec.yaml"))
    assert rc == 0, err
