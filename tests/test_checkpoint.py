"""Build folders and checkpoints: each tensor once, ties restored, bitwise round trips."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors
import torch
from conftest import D2L, write
from torch import nn

import modelspec
from modelspec._errors import BuildDirError, CheckpointError, TieMismatchError


def _assert_bitwise_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_build_folder_contents(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    modelspec.write_build(D2L / "shared.yaml", out)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "report.html",
        "report.json",
        "report.md",
        "spec.yaml",
    ]
    with safetensors.safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = sorted(f.keys())
        meta = f.metadata()
    assert keys == ["0.bias", "0.weight", "2.bias", "2.weight", "6.bias", "6.weight"]  # shared stored once
    assert json.loads(meta["ties"]) == {"4.weight": "2.weight", "4.bias": "2.bias"}
    assert meta["modelspec_version"] == modelspec.__version__
    assert len(meta["spec_sha256"]) == 64
    report = json.loads((out / "report.json").read_text())
    assert meta["spec_sha256"] == report["spec_sha256"]
    assert json.loads(meta["sha256"]) == {t["name"]: t["sha256"] for t in report["tensors"]}


def test_safetensors_size_is_unique_bytes_plus_header(tmp_path: Path) -> None:
    out = tmp_path / "b"
    modelspec.write_build(D2L / "shared_mlp.yaml", out)
    raw = (out / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    report = json.loads((out / "report.json").read_text())
    unique_bytes = sum(t["bytes"] for t in report["tensors"])
    assert len(raw) == 8 + header_len + unique_bytes
    m = modelspec.build(D2L / "shared_mlp.yaml")
    naive_bytes = sum(v.numel() * v.element_size() for v in m.state_dict().values())
    assert unique_bytes < naive_bytes  # the shared tensors are not duplicated


@pytest.mark.parametrize("spec", ["net.yaml", "shared.yaml", "nest_mlp.yaml", "shared_mlp.yaml"])
def test_build_load_round_trip_is_bitwise(tmp_path: Path, spec: str) -> None:
    built = modelspec.write_build(D2L / spec, tmp_path / "b").module
    loaded = modelspec.load(tmp_path / "b")
    _assert_bitwise_equal(built, loaded)
    assert modelspec.report(loaded) == modelspec.report(built)


def test_load_restores_identity_across_models(tmp_path: Path) -> None:
    modelspec.write_build(D2L / "shared_mlp.yaml", tmp_path / "b")
    m = modelspec.load(tmp_path / "b")
    assert m["mlp1"].shared_layer is m["mlp2"].shared_layer
    assert not any(p.is_meta for p in m.parameters())


def test_train_save_load_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(D2L / "shared.yaml", out).module
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
    assert not torch.equal(before["2.weight"], net[2].weight)
    assert net[2] is net[4]
    modelspec.save(net, out)
    loaded = modelspec.load(out)
    _assert_bitwise_equal(net, loaded)
    assert loaded[2] is loaded[4]


def test_two_builds_with_same_seed_have_equal_checksums(tmp_path: Path) -> None:
    a = modelspec.write_build(D2L / "shared_mlp.yaml", tmp_path / "a")
    b = modelspec.write_build(D2L / "shared_mlp.yaml", tmp_path / "b")
    assert [t.sha256 for t in a.report.tensors] == [t.sha256 for t in b.report.tensors]
    assert (tmp_path / "a" / "report.json").read_bytes() == (tmp_path / "b" / "report.json").read_bytes()
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_save_refuses_module_whose_ties_changed(tmp_path: Path) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(D2L / "shared.yaml", out).module
    before = (out / "model.safetensors").read_bytes()
    net[4] = nn.Linear(8, 8)  # untie by hand
    with pytest.raises(TieMismatchError, match=r"4\.weight"):
        modelspec.save(net, out)
    assert (out / "model.safetensors").read_bytes() == before  # nothing written


def test_save_refuses_tie_added_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(D2L / "nest_mlp.yaml", out).module
    net.net[2] = net.linear  # shapes differ too, but the tie is what is reported
    with pytest.raises(TieMismatchError):
        modelspec.save(net, out)


def test_save_of_a_plain_module_uses_folder_spec(tmp_path: Path) -> None:
    out = tmp_path / "b"
    modelspec.write_build(D2L / "nest_mlp.yaml", out)
    from conftest import NestMLP

    hand = NestMLP()
    modelspec.save(hand, out)
    _assert_bitwise_equal(hand, modelspec.load(out))


def test_load_detects_damaged_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "b"
    modelspec.write_build(D2L / "net.yaml", out)
    path = out / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # flip bits of the last tensor's last byte
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        modelspec.load(out)


def test_load_detects_spec_edited_after_build(tmp_path: Path) -> None:
    out = tmp_path / "b"
    modelspec.write_build(D2L / "shared.yaml", out)
    spec = (out / "spec.yaml").read_text()
    (out / "spec.yaml").write_text(spec.replace("- ReLU", "- Tanh"))  # same tensors, another model
    with pytest.raises(CheckpointError, match="spec was edited after the build"):
        modelspec.load(out)


def _rewrite_metadata(path: Path, *, reseal: bool = False, **changes: str) -> None:
    """Replace metadata fields; ``reseal`` also recomputes the metadata digest (a consistent forgery)."""
    from modelspec._checkpoint import metadata_digest, write_safetensors

    with safetensors.safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # clone: the file is memory-mapped
        meta = {**f.metadata(), **changes}
    if reseal:
        meta["metadata_sha256"] = metadata_digest(meta)
    write_safetensors(path.with_suffix(".new"), tensors, meta)
    path.with_suffix(".new").replace(path)


def test_load_detects_tie_map_that_disagrees_with_spec(tmp_path: Path) -> None:
    out = tmp_path / "b"
    modelspec.write_build(D2L / "shared.yaml", out)
    _rewrite_metadata(out / "model.safetensors", ties="{}", reseal=True)  # consistent file, but not this spec's ties
    with pytest.raises(CheckpointError, match="ties differ") as e:
        modelspec.load(out)
    assert e.value.code == "tie-mismatch"


@pytest.mark.parametrize(
    ("key", "value"),
    [("ties", "[1, 2]"), ("sha256", "5"), ("frozen", "5"), ("frozen", "{"), ("ties", '{"a": 1}')],
)
def test_load_rejects_damaged_metadata(tmp_path: Path, key: str, value: str) -> None:
    out = tmp_path / "b"
    modelspec.write_build(D2L / "shared.yaml", out)
    _rewrite_metadata(out / "model.safetensors", **{key: value})
    with pytest.raises(CheckpointError, match=f"damaged metadata '{key}'") as e:
        modelspec.load(out)
    assert e.value.code == "metadata-damaged"


def test_load_rejects_non_build_folder(tmp_path: Path) -> None:
    with pytest.raises(BuildDirError):
        modelspec.load(tmp_path)


def test_build_refuses_to_replace_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(BuildDirError):
        modelspec.write_build(D2L / "net.yaml", out)
    assert (out / "thesis.tex").read_text() == "do not delete"
    assert [p.name for p in tmp_path.iterdir()] == ["precious"]  # no temp folder left


def test_rebuild_replaces_previous_build(tmp_path: Path) -> None:
    out = tmp_path / "b"
    modelspec.write_build(D2L / "net.yaml", out)
    modelspec.write_build(D2L / "shared.yaml", out)
    assert "shared" in (out / "spec.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "b"

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("modelspec._api.save_checkpoint", boom)
    with pytest.raises(OSError):
        modelspec.write_build(D2L / "net.yaml", out)
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_build_round_trip(tmp_path: Path) -> None:
    built = modelspec.write_build(D2L / "shared.yaml", tmp_path / "b", dtype="bfloat16").module
    loaded = modelspec.load(tmp_path / "b")
    assert loaded[0].weight.dtype == torch.bfloat16
    _assert_bitwise_equal(built, loaded)


def test_buffers_round_trip(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        """
modelspec: 1
input: {shape: [4, 3]}
model:
  - LazyLinear: 5
  - BatchNorm1d: 5
""",
    )
    built = modelspec.write_build(spec, tmp_path / "b").module
    assert int(built[1].num_batches_tracked) == 0  # the sizing pass did not touch running stats
    assert torch.equal(built[1].running_mean, torch.zeros(5))
    built.train()
    built(torch.rand(4, 3))
    modelspec.save(built, tmp_path / "b")
    loaded = modelspec.load(tmp_path / "b")
    _assert_bitwise_equal(built, loaded)


def test_mixed_precision_save_load(tmp_path: Path) -> None:
    out = tmp_path / "b"
    net = modelspec.write_build(D2L / "shared_mlp.yaml", out).module
    net["mlp1"].shared_layer.to(torch.bfloat16)  # half the model in bfloat16, ties intact
    modelspec.save(net, out)
    loaded = modelspec.load(out)
    assert loaded["mlp2"].shared_layer[0].weight.dtype == torch.bfloat16
    assert loaded["mlp1"].linear.weight.dtype == torch.float32
    assert loaded["mlp1"].shared_layer is loaded["mlp2"].shared_layer
    _assert_bitwise_equal(net, loaded)


def test_integer_dtype_for_parameters_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="float32"):
        modelspec.build(D2L / "net.yaml", dtype="int64")
