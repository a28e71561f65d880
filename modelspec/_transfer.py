"""Transfer: init rules with ``from:`` take parameters from another build folder's checkpoint.

A rule ``{from: ../trunk, block: trunk, rename: {trunk: ""}}`` initialises each selected
parameter with a tensor of the build folder ``../trunk`` (relative to the spec file's
folder): the parameter's name with the longest matching ``rename`` prefix replaced (a
prefix is a module path: ``trunk`` matches ``trunk.0.weight``, not ``trunk2.weight``;
``""`` matches every name), then followed through the source's tie map to the tensor it
stores. Every selected parameter must find a tensor of the same shape and dtype there,
or the rule gets one ``transfer-mismatch`` error listing them all.

The source is read with the checkpoint code of :mod:`modelspec._checkpoint` (header,
metadata digest and records verified before any data is read; never pickle), and each
tensor taken is checked against its recorded sha256. A missing, incomplete or damaged
source is a ``transfer-source`` error. On ``meta`` the header is checked and nothing is
read.

What was taken is recorded as :class:`Transfer` records (source folder as written, the
source checkpoint's metadata digest and spec hash, and every tensor with its source name
and sha256): in ``BuildInfo.transfers``, the build folder's ``report.json`` and the
checkpoint's metadata, so a loaded folder reports the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import torch
from pydantic import BaseModel, ConfigDict, Field

from ._errors import CheckpointError

__all__ = ["Source", "Transfer", "TransferredTensor", "rename", "transfers_of"]

_SHA256 = r"^[0-9a-f]{64}$"


class TransferredTensor(BaseModel):
    """One parameter initialised from the source: our name, the source's, the bytes' sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(description="the parameter's canonical name in this model")
    source_name: str = Field(description="the tensor's canonical name in the source checkpoint")
    sha256: str = Field(pattern=_SHA256, description="sha256 of the bytes taken (as the source recorded them)")


class Transfer(BaseModel):
    """What one init rule with ``from:`` took from another build folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rule: int = Field(ge=0, description="the rule's index in the spec's 'init' list")
    source: str = Field(description="the source build folder as the spec writes it (relative to the spec's folder)")
    spec_sha256: str = Field(pattern=_SHA256, description="the canonical sha256 of the source's spec")
    checkpoint_sha256: str = Field(pattern=_SHA256, description="the source checkpoint's metadata digest")
    tensors: list[TransferredTensor]


def rename(name: str, mapping: dict[str, str]) -> str:
    """``name`` with its longest prefix in ``mapping`` replaced; prefixes are module paths.

    >>> rename("trunk.0.weight", {"trunk": "body", "": "model"})
    'body.0.weight'
    >>> rename("head.weight", {"trunk": "body", "": "model"})
    'model.head.weight'
    """
    best: str | None = None
    for ours in mapping:
        if (ours == "" or name == ours or name.startswith(ours + ".")) and (best is None or len(ours) > len(best)):
            best = ours
    if best is None:
        return name
    rest = name[len(best) :].lstrip(".") if best else name
    theirs = mapping[best]
    return f"{theirs}.{rest}" if theirs and rest else theirs or rest


class Source:
    """A verified source checkpoint: header and metadata checked, tensors read on demand."""

    def __init__(self, folder: Path) -> None:
        # _checkpoint stores our records: imported late
        from ._checkpoint import CHECKPOINT_FILE, find_checkpoint, open_checkpoint

        self.folder = folder
        if not folder.is_dir():
            what = "does not exist" if not folder.exists() else "is not a folder"
            raise CheckpointError(f"{folder} {what}", code="not-a-folder")
        path = find_checkpoint(folder)  # model.safetensors, or the index of its shards
        if path is None:
            raise CheckpointError(
                f"{folder} is not a build folder (it has no {CHECKPOINT_FILE})", code="not-a-build-folder"
            )
        self.checkpoint = open_checkpoint(path)

    def find(self, name: str) -> str | None:
        """The canonical name of the tensor the source stores for ``name``, or None."""
        name = self.checkpoint.ties.get(name, name)
        return name if name in self.checkpoint.tensors else None

    def dtype_shape(self, name: str) -> tuple[str, tuple[int, ...]]:
        rec = self.checkpoint.tensors[name]
        return rec.dtype, rec.shape

    def read(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (canonical), each checked against its recorded sha256."""
        return self.checkpoint.read(names)


def transfers_to_json(transfers: Sequence[Transfer]) -> str:
    """The checkpoint metadata field ``transfers``."""
    return json.dumps([t.model_dump() for t in transfers], sort_keys=True, separators=(",", ":"))


def transfers_of(value: Any, path: Path) -> tuple[Transfer, ...]:
    """Records read back from a checkpoint's metadata; ``metadata-damaged`` if malformed."""
    try:
        return tuple(pydantic.TypeAdapter(list[Transfer]).validate_python(value))
    except pydantic.ValidationError as e:
        raise CheckpointError(
            f"{path}: damaged metadata 'transfers': {e.error_count()} problem(s)", code="metadata-damaged"
        ) from e
