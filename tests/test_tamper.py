"""Tampered and damaged checkpoints are refused with a precise code, before anything is allocated.

Each case takes a real build folder and edits ``model.safetensors`` the way a person or
an accident would: the safetensors JSON header rewritten (dtype relabelled, shape or
offsets changed, metadata fields blanked or edited), bytes cut off, appended or flipped.
``modelspec.load`` must raise CheckpointError with the expected code, and the CLI must
exit 2 with ``error[CODE]`` and no traceback.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from conftest import D2L
from torch import nn

import modelspec
from modelspec._errors import CheckpointError, TieMismatchError
from modelspec.cli import main

Header = dict[str, Any]
CKPT = "model.safetensors"


def edit_header(path: Path, edit: Callable[[Header], None]) -> None:
    """Parse the 8-byte length and the JSON header, let ``edit`` change it, pad and write it back.

    The tensor data after the header is kept byte for byte.
    """
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    blob = json.dumps(header).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def edit_meta(**changes: str | None) -> Callable[[Header], None]:
    """An edit that sets metadata fields (``None`` removes one)."""

    def edit(header: Header) -> None:
        meta = header["__metadata__"]
        for key, value in changes.items():
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value

    return edit


def edit_json_field(key: str, change: Callable[[Any], None]) -> Callable[[Header], None]:
    """An edit of one JSON-valued metadata field (``ties``, ``sha256``, ``frozen``, ``tensors``)."""

    def edit(header: Header) -> None:
        value = json.loads(header["__metadata__"][key])
        change(value)
        header["__metadata__"][key] = json.dumps(value)

    return edit


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _rename(header: Header) -> None:
    header["0.weightx"] = header.pop("0.weight")


def _overlap(header: Header) -> None:
    # 2.weight ends where 2.bias begins; start 2.bias 4 bytes early so the two overlap
    begin, end = header["2.bias"]["data_offsets"]
    header["2.bias"]["data_offsets"] = [begin - 4, end - 4]


def _add_tensor(path: Path) -> None:
    def edit(header: Header) -> None:
        end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
        header["extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [end, end + 4]}

    edit_header(path, edit)
    with path.open("ab") as f:
        f.write(b"\0\0\0\0")


def _append(path: Path, data: bytes = b"\0" * 8) -> None:
    with path.open("ab") as f:
        f.write(data)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def _foreign(path: Path) -> None:  # a plain safetensors file from elsewhere
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path))


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x10\0\0\0\0\0\0\0not json at all!")


def _duplicate_entry(path: Path) -> None:  # JSON keeps the last of two keys silently; the header may not
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header)
    blob = (text[:-1] + ', "0.weight": ' + json.dumps(header["0.weight"]) + "}").encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def _huge_header_length(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**62) + raw[8:])


def _old_format(path: Path) -> None:  # what modelspec wrote before format 2
    edit_header(path, edit_meta(format_version=None, metadata_sha256=None, tensors=None))


OTHER_HEX = "ab" * 32

# (case, dtype of the build, how the file is changed, expected code)
CASES: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("dtype-bf16-to-f16", "bfloat16", lambda p: edit_header(p, lambda h: h["0.weight"].update(dtype="F16")),
     "dtype-mismatch"),
    ("dtype-f32-to-i32", "float32", lambda p: edit_header(p, lambda h: h["0.weight"].update(dtype="I32")),
     "dtype-mismatch"),
    ("dtype-unknown", "float32", lambda p: edit_header(p, lambda h: h["0.weight"].update(dtype="F33")),
     "dtype-mismatch"),
    ("shape-same-numel", "float32", lambda p: edit_header(p, lambda h: h["0.weight"].update(shape=[4, 8])),
     "shape-mismatch"),
    ("spec-sha256-blank", "float32", lambda p: edit_header(p, edit_meta(spec_sha256="")), "metadata-missing"),
    ("spec-sha256-missing", "float32", lambda p: edit_header(p, edit_meta(spec_sha256=None)), "metadata-missing"),
    ("spec-sha256-altered", "float32", lambda p: edit_header(p, edit_meta(spec_sha256=OTHER_HEX)),
     "metadata-mismatch"),
    ("frozen-edited", "float32", lambda p: edit_header(p, edit_meta(frozen='["0.weight"]')), "metadata-mismatch"),
    ("frozen-blank", "float32", lambda p: edit_header(p, edit_meta(frozen="")), "metadata-missing"),
    ("ties-edited", "float32", lambda p: edit_header(p, edit_meta(ties="{}")), "metadata-mismatch"),
    ("ties-missing", "float32", lambda p: edit_header(p, edit_meta(ties=None)), "metadata-missing"),
    ("sha256-edited", "float32", lambda p: edit_header(p, edit_json_field("sha256", _set("0.weight", OTHER_HEX))),
     "metadata-mismatch"),
    ("record-edited", "float32",
     lambda p: edit_header(p, edit_json_field("tensors", lambda v: v["0.weight"].update(shape=[4, 8]))),
     "metadata-mismatch"),
    ("digest-edited", "float32", lambda p: edit_header(p, edit_meta(metadata_sha256=OTHER_HEX)),
     "metadata-mismatch"),
    ("digest-missing", "float32", lambda p: edit_header(p, edit_meta(metadata_sha256=None)), "metadata-missing"),
    ("format-missing", "float32", lambda p: edit_header(p, edit_meta(format=None)), "metadata-missing"),
    ("format-version-missing", "float32", lambda p: edit_header(p, edit_meta(format_version=None)),
     "metadata-missing"),
    ("format-version-newer", "float32", lambda p: edit_header(p, edit_meta(format_version="3")),
     "unsupported-format"),
    ("unknown-field", "float32", lambda p: edit_header(p, edit_meta(note="hi")), "metadata-damaged"),
    ("tensor-renamed", "float32", lambda p: edit_header(p, _rename), "names-mismatch"),
    ("tensor-removed", "float32", lambda p: edit_header(p, lambda h: h.pop("6.bias")), "names-mismatch"),
    ("tensor-added", "float32", _add_tensor, "names-mismatch"),
    ("offsets-overlap", "float32", lambda p: edit_header(p, _overlap), "layout-mismatch"),
    ("truncated", "float32", _truncate, "layout-mismatch"),
    ("trailing-bytes", "float32", _append, "layout-mismatch"),
    ("data-byte-flipped", "float32", _flip_last_byte, "checksum-mismatch"),
    ("old-format", "float32", _old_format, "old-format"),
    ("foreign-safetensors", "float32", _foreign, "not-modelspec"),
    ("not-safetensors", "float32", _garbage, "unreadable"),
    ("empty-file", "float32", lambda p: p.write_bytes(b""), "unreadable"),
    ("header-length-huge", "float32", _huge_header_length, "unreadable"),
    ("header-duplicate-entry", "float32", _duplicate_entry, "unreadable"),
]  # fmt: skip


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real build folder per dtype; each test works on a copy."""
    root = tmp_path_factory.mktemp("templates")
    return {dt: modelspec.write_build(D2L / "shared.yaml", root / dt, dtype=dt).out for dt in ("float32", "bfloat16")}


def _copy(templates: dict[str, Path], dtype: str, dest: Path) -> Path:
    return Path(shutil.copytree(templates[dtype], dest / "b"))


def _cli(folder: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["report", str(folder)], stdout=out, stderr=err)
    return code, err.getvalue()


@pytest.mark.parametrize(("dtype", "damage", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampered_checkpoint_is_refused(
    templates: dict[str, Path], tmp_path: Path, dtype: str, damage: Callable[[Path], None], code: str
) -> None:
    folder = _copy(templates, dtype, tmp_path)
    modelspec.load(folder)  # the untouched copy loads
    damage(folder / CKPT)
    with pytest.raises(CheckpointError) as e:
        modelspec.load(folder)
    assert e.value.code == code, str(e.value)
    status, err = _cli(folder)
    assert status == 2
    assert f"error[{code}]" in err
    assert "Traceback" not in err and "internal error" not in err


def test_relabelled_dtype_would_change_the_values(templates: dict[str, Path], tmp_path: Path) -> None:
    """Why the dtype check matters: the same bytes read as F16 are other numbers."""
    folder = _copy(templates, "bfloat16", tmp_path)
    path = folder / CKPT
    before = safetensors.torch.load_file(str(path))["0.weight"]
    edit_header(path, lambda h: h["0.weight"].update(dtype="F16"))
    after = safetensors.torch.load_file(str(path))["0.weight"]  # safetensors itself accepts it
    assert not torch.equal(before.float(), after.float())
    with pytest.raises(CheckpointError) as e:
        modelspec.load(folder)
    assert e.value.code == "dtype-mismatch"


def _reseal(path: Path, edit: Callable[[Header], None]) -> None:
    """Edit the header, then recompute the metadata digest: a consistent forgery."""
    from modelspec._checkpoint import metadata_digest

    def both(header: Header) -> None:
        edit(header)
        header["__metadata__"]["metadata_sha256"] = metadata_digest(header["__metadata__"])

    edit_header(path, both)


def test_consistent_forgery_still_checked_against_the_spec(templates: dict[str, Path], tmp_path: Path) -> None:
    """A resealed file whose records agree with its header is still compared with the model."""
    folder = _copy(templates, "float32", tmp_path)

    def reshape(header: Header) -> None:
        header["0.weight"]["shape"] = [4, 8]
        edit_json_field("tensors", lambda v: v["0.weight"].update(shape=[4, 8]))(header)

    _reseal(folder / CKPT, reshape)
    with pytest.raises(CheckpointError) as e:
        modelspec.load(folder)
    assert e.value.code == "shape-mismatch"


def test_spec_edited_to_an_enormous_layer_fails_fast(templates: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(templates, "float32", tmp_path)
    spec = folder / "spec.yaml"
    text = spec.read_text()
    last = "- LazyLinear:\n    out_features: 1\n"
    huge = "- LazyLinear:\n    out_features: 1000000\n- Linear:\n    in_features: 1000000\n    out_features: 1000000\n"
    assert text.endswith(last)
    spec.write_text(text.replace(last, huge))  # a valid spec with 10^12 more weights: 4 TB
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        modelspec.load(folder)
    assert time.perf_counter() - start < 3.0  # refused before anything is built or allocated
    assert e.value.code == "spec-mismatch"
    status, err = _cli(folder)
    assert status == 2 and "error[spec-mismatch]" in err and "Traceback" not in err


def test_spec_hash_is_checked_before_building(
    templates: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy(templates, "float32", tmp_path)
    spec = folder / "spec.yaml"
    spec.write_text(spec.read_text().replace("- ReLU", "- Tanh"))

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("built before the spec hash was checked")

    monkeypatch.setattr("modelspec._api.build_module", no_build)
    with pytest.raises(CheckpointError) as e:
        modelspec.load(folder)
    assert e.value.code == "spec-mismatch"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_untouched_build_round_trips(templates: dict[str, Path], tmp_path: Path, dtype: str) -> None:
    folder = _copy(templates, dtype, tmp_path)
    built = modelspec.build(D2L / "shared.yaml", dtype=dtype)
    loaded = modelspec.load(folder)
    assert loaded[0].weight.dtype == getattr(torch, dtype)
    assert loaded[2] is loaded[4]
    for k, v in built.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_frozen_parameter_stays_frozen(tmp_path: Path) -> None:
    net = modelspec.write_build(D2L / "shared.yaml", tmp_path / "b").module
    net[0].weight.requires_grad_(False)
    modelspec.save(net, tmp_path / "b")
    loaded = modelspec.load(tmp_path / "b")
    assert not loaded[0].weight.requires_grad and loaded[0].bias.requires_grad


# ---- save refuses a module whose ties no longer match: both names, never "None"
def test_save_names_both_tensors_of_a_broken_tie(tmp_path: Path) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(D2L / "shared.yaml", out).module
    net[4] = nn.Linear(8, 8)  # the spec says net[4] is net[2]
    with pytest.raises(TieMismatchError) as e:
        modelspec.save(net, out)
    assert e.value.code == "tie-mismatch"
    message = str(e.value)
    assert "None" not in message
    assert "'4.weight'" in message and "'2.weight'" in message


def test_save_names_both_tensors_of_an_extra_tie(tmp_path: Path) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(D2L / "shared.yaml", out).module
    net[2].bias = net[0].bias  # a parameter tie the spec does not declare; the keys stay the same
    with pytest.raises(TieMismatchError) as e:
        modelspec.save(net, out)
    assert e.value.code == "tie-mismatch"
    message = str(e.value)
    assert "None" not in message
    assert "'2.bias' and '0.bias'" in message
