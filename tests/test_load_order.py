"""Loading hashes the largest tensors first, in one file as in shards.

The safetensors header lists tensors by name, so in name order a model's biggest tensor
(GPT-2's 154 MB token embedding, ``wte.weight``) was hashed last, by one core while the
others had nothing left to do. With one worker thread the hashing order is the order the
tensors are handed out, which is what these tests record.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modelspec import _checkpoint
from modelspec._checkpoint import open_checkpoint, save_checkpoint

INDEX = "model.safetensors.index.json"


class Names(nn.Module):
    """Sizes that do not follow name order: the largest tensor sorts last by name."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)  # 12 + 3
        self.m = nn.Linear(20, 10)  # 200 + 10
        self.z = nn.Embedding(300, 16)  # 4800, the largest
        self.b = nn.LayerNorm(7)  # 7 + 7


@pytest.mark.parametrize("shard_size", [None, 2000], ids=["one file", "shards"])
def test_tensors_are_hashed_largest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard_size: int | None):
    torch.manual_seed(0)
    model = Names()
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, spec_sha256="0" * 64, max_shard_size=shard_size)
    opened = path if shard_size is None else tmp_path / INDEX
    assert opened.is_file()
    hashed: list[int] = []
    real = _checkpoint._hex_sha256

    def spy(data: memoryview) -> str:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(_checkpoint, "_hex_sha256", spy)
    monkeypatch.setattr(_checkpoint, "usable_cores", lambda: 1)  # one worker: hashed in the order handed out
    target = Names()
    open_checkpoint(opened).load_into(target)
    sizes = sorted((p.numel() * p.element_size() for p in model.parameters()), reverse=True)
    assert hashed == sizes
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_a_damaged_large_tensor_is_still_found(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Names()
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, spec_sha256="0" * 64)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1  # the last bytes of the data are in the last tensor by offset
    path.write_bytes(bytes(raw))
    target = Names()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(_checkpoint.CheckpointError) as err:
        open_checkpoint(path).load_into(target)
    assert err.value.code == "checksum-mismatch"
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
