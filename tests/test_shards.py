"""Sharded checkpoints: model-0000K-of-0000N.safetensors + model.safetensors.index.json.

Past ``max_shard_size`` a build folder holds shards and an index (the hub layout) instead of
one ``model.safetensors``; every guarantee of the single file holds for the set: each tie
group stored once, checksums, the spec digest, tamper detection per shard and for the
index, atomic replacement of the whole set, and lazy reads of only the tensors needed.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors
import torch
from conftest import D2L, write

import modelspec
from modelspec import _checkpoint
from modelspec._checkpoint import find_checkpoint, metadata_digest, open_checkpoint
from modelspec._errors import CheckpointError, UsageError
from modelspec._shards import parse_size, plan_shards
from modelspec.cli import main

SPEC = D2L / "shared.yaml"  # 0: 4->8, 2 (= 4): 8->8, 6: 8->1; float32: 484 bytes in 5 stored tensors
INDEX = "model.safetensors.index.json"
LIMIT = 200  # bytes: 0.weight (128) | 0.bias (32) | 2.weight (256) | 2.bias, 6.weight, 6.bias (68)


def shards_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))


def index_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / INDEX).read_text())


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sharded build folder; each test that changes it works on a copy."""
    return modelspec.write_build(SPEC, tmp_path_factory.mktemp("t") / "b", max_shard_size=LIMIT).out


def copy(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "b"))


# ------------------------------------------------------------------ sizes and layout
@pytest.mark.parametrize(
    ("text", "size"),
    [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1.5KiB", 1536), ("64", 64),
     (" 10 kb ", 10_000), (4096, 4096)],
)  # fmt: skip
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1GB", "0", "GB", "1e9", True, 2.5])
def test_bad_sizes(text: Any) -> None:
    with pytest.raises(UsageError) as e:
        parse_size(text)
    assert e.value.code == "bad-size"


def test_plan_keeps_order_and_never_splits_a_tensor() -> None:
    sizes = [("a", 128), ("b", 32), ("c", 256), ("d", 32), ("e", 32), ("f", 4)]
    assert plan_shards(sizes, 200) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert plan_shards(sizes, 10**9) == [["a", "b", "c", "d", "e", "f"]]


def test_layout_is_the_hub_layout(template: Path) -> None:
    names = shards_of(template)
    assert names == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                     "model-00003-of-00003.safetensors"]  # fmt: skip
    assert not (template / "model.safetensors").exists()
    index = index_of(template)
    assert set(index) == {"metadata", "weight_map"}
    # the tie group (2.weight is 4.weight) is stored once, under its canonical name only
    assert index["weight_map"] == {
        "0.weight": names[0], "0.bias": names[0], "2.weight": names[1],
        "2.bias": names[2], "6.weight": names[2], "6.bias": names[2],
    }  # fmt: skip
    assert json.loads(index["metadata"]["ties"]) == {"4.bias": "2.bias", "4.weight": "2.weight"}
    stored = 0
    for name in names:
        with safetensors.safe_open(str(template / name), framework="pt") as f:
            keys = set(f.keys())
            assert keys == {k for k, v in index["weight_map"].items() if v == name}
            stored += sum(f.get_tensor(k).numel() * 4 for k in keys)
            assert f.metadata()["checkpoint_sha256"] == index["metadata"]["metadata_sha256"]
    assert index["metadata"]["total_size"] == stored == 484


def test_below_the_limit_the_single_file_is_unchanged(tmp_path: Path) -> None:
    plain = modelspec.write_build(SPEC, tmp_path / "plain").out
    roomy = modelspec.write_build(SPEC, tmp_path / "roomy", max_shard_size="5GB").out
    assert (plain / "model.safetensors").read_bytes() == (roomy / "model.safetensors").read_bytes()
    assert not (roomy / INDEX).exists() and shards_of(roomy) == []


def test_sharding_is_deterministic(template: Path, tmp_path: Path) -> None:
    again = modelspec.write_build(SPEC, tmp_path / "again", max_shard_size=LIMIT).out
    for name in [*shards_of(template), INDEX]:
        assert (template / name).read_bytes() == (again / name).read_bytes(), name


# ------------------------------------------------------------------ load, report, diff
def test_load_restores_values_and_ties(template: Path) -> None:
    built = modelspec.build(SPEC)
    loaded = modelspec.load(template)
    assert loaded[2] is loaded[4]
    for k, v in built.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_report_and_diff_of_a_sharded_folder(template: Path, tmp_path: Path) -> None:
    single = modelspec.write_build(SPEC, tmp_path / "single").out
    assert (template / "report.json").read_text() == (single / "report.json").read_text()
    code, out, _ = cli("report", str(template), "--format", "json")
    assert code == 0 and json.loads(out) == json.loads((single / "report.json").read_text())
    assert cli("diff", str(template), str(single))[0] == 0
    trained = modelspec.load(template)
    with torch.no_grad():
        trained[6].bias.add_(1.0)
    modelspec.save(trained, tmp_path / "trained", spec=template / "spec.yaml", max_shard_size=LIMIT)
    assert modelspec.diff(template, tmp_path / "trained").value[0].name == "6.bias"


def test_only_the_needed_shard_is_read(template: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = open_checkpoint(template / INDEX)
    opened: list[str] = []
    real = safetensors.safe_open

    def spy(path: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(_checkpoint.safetensors, "safe_open", spy)
    (t,) = ckpt.read(["2.weight"]).values()
    assert t.shape == (8, 8)
    assert opened == ["model-00002-of-00003.safetensors"]


def test_transfer_from_a_sharded_build(tmp_path: Path) -> None:
    trunk = write(tmp_path, "modelspec: 1\nseed: 1\nmodel:\n  - Linear: [8, 16]\n  - ReLU\n  - Linear: [16, 16]\n",
                  "trunk.yaml")  # fmt: skip
    src = modelspec.write_build(trunk, tmp_path / "trunk-build", max_shard_size=300)
    assert len(shards_of(src.out)) > 1
    text = ("modelspec: 1\nseed: 2\nmodel:\n  body:\n    - Linear: [8, 16]\n    - ReLU\n    - Linear: [16, 16]\n"
            "  head: {Linear: [16, 4]}\ninit:\n  - {params: 'body.*', from: trunk-build, rename: {body: ''}}\n")  # fmt: skip
    m = modelspec.build(write(tmp_path, text, "big.yaml"))
    for name, t in src.module.state_dict().items():
        assert torch.equal(m.state_dict()[f"body.{name}"], t), name


# ------------------------------------------------------------------ replacing a folder
def test_stale_shards_of_a_larger_save_do_not_survive(tmp_path: Path) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(SPEC, out, max_shard_size=100).module
    assert len(shards_of(out)) == 4
    modelspec.save(net, out, max_shard_size=LIMIT)
    assert len(shards_of(out)) == 3 and set(index_of(out)["weight_map"].values()) == set(shards_of(out))
    modelspec.load(out)
    modelspec.save(net, out)  # back to one file: no shard and no index left
    assert shards_of(out) == [] and not (out / INDEX).exists()
    modelspec.load(out)


def test_a_failed_save_leaves_the_old_complete_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(SPEC, out, max_shard_size=LIMIT).module
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = _checkpoint.write_safetensors, []

    def fail_on_second_shard(path: Path, *args: Any, **kwargs: Any) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, *args, **kwargs)

    monkeypatch.setattr(_checkpoint, "write_safetensors", fail_on_second_shard)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    with pytest.raises(OSError):
        modelspec.save(net, out, max_shard_size=100)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temp folder left


def test_cli_build_writes_shards_and_refuses_bad_sizes(tmp_path: Path) -> None:
    code, out, _ = cli("build", str(SPEC), "-o", str(tmp_path / "b"), "--max-shard-size", "200B", "--format", "json")
    assert code == 0
    assert INDEX in json.loads(out)["files"] and len(shards_of(tmp_path / "b")) == 3
    code, _, err = cli("build", str(SPEC), "-o", str(tmp_path / "c"), "--max-shard-size", "lots")
    assert code == 2 and "error[bad-size]" in err and not (tmp_path / "c").exists()


def test_both_layouts_in_one_folder_are_ambiguous(template: Path, tmp_path: Path) -> None:
    folder = copy(template, tmp_path)
    shutil.copyfile(modelspec.write_build(SPEC, tmp_path / "single").out / "model.safetensors",
                    folder / "model.safetensors")  # fmt: skip
    with pytest.raises(CheckpointError) as e:
        find_checkpoint(folder)
    assert e.value.code == "ambiguous"


# ------------------------------------------------------------------ tampering, per shard and for the index
S1, S2, S3 = (f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))


def edit_shard_header(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def edit_index(folder: Path, edit: Callable[[dict[str, Any]], None], reseal: bool = False) -> None:
    index = index_of(folder)
    edit(index)
    if reseal:  # a consistent forgery: the digest recomputed over the edited fields
        meta = {k: v for k, v in index["metadata"].items() if k != "total_size"}
        meta["weight_map"] = json.dumps(index["weight_map"], sort_keys=True, separators=(",", ":"))
        meta["total_size"] = str(index["metadata"]["total_size"])
        index["metadata"]["metadata_sha256"] = metadata_digest(meta)
    (folder / INDEX).write_text(json.dumps(index))


def flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))


def swap_shards(folder: Path) -> None:
    a, b = folder / S1, folder / S3
    a.rename(folder / "tmp")
    b.rename(a)
    (folder / "tmp").rename(b)


def move_tensor(index: dict[str, Any]) -> None:
    index["weight_map"]["0.bias"] = S2


def other_checksum(index: dict[str, Any]) -> None:
    sums = json.loads(index["metadata"]["sha256"])
    sums["0.weight"] = "ab" * 32
    index["metadata"]["sha256"] = json.dumps(sums)


def stale_shard(folder: Path) -> None:  # the same layout from a build with another seed
    other_spec = write(folder.parent, SPEC.read_text().replace("seed: 0", "seed: 7"), "other.yaml")
    other = modelspec.write_build(other_spec, folder.parent / "other", max_shard_size=LIMIT).out
    shutil.copyfile(other / S2, folder / S2)


CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("shard-byte-flipped", lambda f: flip_last_byte(f / S2), "checksum-mismatch"),
    ("shard-truncated", lambda f: (f / S3).write_bytes((f / S3).read_bytes()[:-4]), "layout-mismatch"),
    ("shard-trailing-bytes", lambda f: (f / S1).write_bytes((f / S1).read_bytes() + b"\0" * 8), "layout-mismatch"),
    ("shard-missing", lambda f: (f / S2).unlink(), "shard-missing"),
    ("shard-from-another-save", stale_shard, "shard-mismatch"),
    ("shards-swapped", swap_shards, "names-mismatch"),
    ("shard-dtype-relabelled", lambda f: edit_shard_header(f / S2, lambda h: h["2.weight"].update(dtype="I32")),
     "dtype-mismatch"),
    ("shard-shape-edited", lambda f: edit_shard_header(f / S2, lambda h: h["2.weight"].update(shape=[4, 16])),
     "shape-mismatch"),
    ("shard-digest-edited", lambda f: edit_shard_header(
        f / S1, lambda h: h["__metadata__"].update(checkpoint_sha256="ab" * 32)), "shard-mismatch"),
    ("shard-foreign", lambda f: safetensors.torch.save_file({"0.weight": torch.zeros(8, 4)}, str(f / S1)),
     "shard-mismatch"),
    ("index-tensor-moved", lambda f: edit_index(f, move_tensor), "metadata-mismatch"),
    ("index-total-size-edited", lambda f: edit_index(f, lambda i: i["metadata"].update(total_size=400)),
     "metadata-mismatch"),
    ("index-total-size-resealed", lambda f: edit_index(f, lambda i: i["metadata"].update(total_size=400), True),
     "metadata-damaged"),
    ("index-ties-edited", lambda f: edit_index(f, lambda i: i["metadata"].update(ties="{}")), "metadata-mismatch"),
    ("index-sha256-edited", lambda f: edit_index(f, other_checksum), "metadata-mismatch"),
    ("index-spec-sha256-missing", lambda f: edit_index(f, lambda i: i["metadata"].pop("spec_sha256")),
     "metadata-missing"),
    ("index-path-escapes", lambda f: edit_index(f, lambda i: i["weight_map"].update({"0.bias": "../" + S1})),
     "metadata-damaged"),
    ("index-tensor-dropped-resealed", lambda f: edit_index(f, lambda i: i["weight_map"].pop("6.bias"), True),
     "names-mismatch"),
    ("index-not-json", lambda f: (f / INDEX).write_text("{not json"), "unreadable"),
    ("index-extra-key", lambda f: edit_index(f, lambda i: i.update(note=1)), "unreadable"),
    ("index-newer-format", lambda f: edit_index(f, lambda i: i["metadata"].update(format_version="3")),
     "unsupported-format"),
]  # fmt: skip


@pytest.mark.parametrize(("damage", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampered_shards_and_index_are_refused(
    template: Path, tmp_path: Path, damage: Callable[[Path], None], code: str
) -> None:
    folder = copy(template, tmp_path)
    damage(folder)
    with pytest.raises(CheckpointError) as e:
        modelspec.load(folder)
    assert e.value.code == code, str(e.value)
    status, _, err = cli("report", str(folder))
    assert status == 2 and f"error[{code}]" in err and "Traceback" not in err


def test_a_shard_changed_after_opening_is_caught_by_its_checksum(template: Path, tmp_path: Path) -> None:
    folder = copy(template, tmp_path)
    ckpt = open_checkpoint(folder / INDEX)
    flip_last_byte(folder / S3)
    with pytest.raises(CheckpointError) as e:
        ckpt.read(["6.bias"])
    assert e.value.code == "checksum-mismatch"
    with pytest.raises(CheckpointError) as e:
        ckpt.load_into(modelspec.build(SPEC))
    assert e.value.code == "checksum-mismatch"


# ------------------------------------------------------------------ the manifest's digest of checkpoint files
@pytest.mark.parametrize("limit", [None, LIMIT])
def test_a_copied_folder_is_still_replaced_and_an_edited_shard_is_not(tmp_path: Path, limit: int | None) -> None:
    """Checkpoint files carry a digest built from their tensors' checksums: a copy (new times,
    same bytes) is recognised as modelspec's, a same-size edit is not."""
    out = modelspec.write_build(SPEC, tmp_path / "b", max_shard_size=limit).out
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    checkpoint_files = [n for n in manifest if n.endswith(".safetensors")]
    assert checkpoint_files and all(
        set(manifest[n]) == {"bytes", "tensors_sha256", "mtime_ns"} for n in checkpoint_files
    )
    assert all("sha256" in manifest[n] for n in manifest if n not in checkpoint_files)
    copied = tmp_path / "copy"
    copied.mkdir()
    for p in out.iterdir():
        (copied / p.name).write_bytes(p.read_bytes())  # new modification times: the digests decide
    modelspec.write_build(SPEC, copied, max_shard_size=limit)
    flip_last_byte(copied / checkpoint_files[-1])  # same size, new time, other bytes
    with pytest.raises(modelspec.BuildDirError) as e:
        modelspec.write_build(SPEC, copied, max_shard_size=limit)
    assert e.value.code == "in-the-way"
