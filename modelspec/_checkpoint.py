"""Checkpoints: each unique tensor once, in safetensors, with the tie map and checksums.

``state_dict()`` lists a shared tensor under every alias and ``safetensors.save_file``
refuses such a dict, so tensors are grouped by object identity: the file holds one
entry per unique tensor under its canonical name (the first in traversal order) and
the metadata maps every other alias to it. Loading copies into an already built module
(whose ties come from the spec, never from the file) and checks that the file's tie
map, names, shapes, dtypes and sha256 checksums all agree. No pickle is involved.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from ._errors import CheckpointError
from ._stats import raw_bytes, sha256_of
from ._version import __version__

__all__ = ["FORMAT", "load_checkpoint", "read_metadata", "save_checkpoint", "unique_state"]

FORMAT = "modelspec"


def unique_state(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict's tensors once each, by canonical name, and ``{alias: canonical}``."""
    tensors: dict[str, torch.Tensor] = {}
    ties: dict[str, str] = {}
    canonical_of: dict[int, str] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        first = canonical_of.setdefault(id(t), name)
        if first == name:
            tensors[name] = t
        else:
            ties[name] = first
    return tensors, ties


def save_checkpoint(
    module: nn.Module, path: Path, *, spec_sha256: str | None, dtype: str = "", hashes: dict[str, str] | None = None
) -> dict[str, str]:
    """Write ``module``'s unique tensors to ``path``; return the metadata written.

    ``hashes`` (canonical name -> sha256) may come from a report computed just before,
    to avoid hashing twice.
    """
    tensors, ties = unique_state(module)
    data = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    digests = {name: (hashes or {}).get(name) or sha256_of(t) for name, t in data.items()}
    metadata = {
        "format": FORMAT,
        "modelspec_version": __version__,
        "spec_sha256": spec_sha256 or "",
        "ties": json.dumps(ties, sort_keys=True),
        "sha256": json.dumps(digests, sort_keys=True),
        # requires_grad is not part of a tensor's bytes; keep it so a frozen layer stays frozen
        "frozen": json.dumps(
            sorted(n for n, t in tensors.items() if isinstance(t, nn.Parameter) and not t.requires_grad)
        ),
    }
    write_safetensors(path, data, metadata)
    return metadata


_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the safetensors format with a deterministic header.

    ``safetensors.torch.save_file`` writes its metadata in hash-map order, so two saves
    of the same model differ in bytes. This writer sorts the header, streams each
    tensor's memory to disk without copying it, and is read by the safetensors library.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _ST_DTYPES:
            raise CheckpointError(f"'{name}': dtype {t.dtype} cannot be stored in safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            f.write(raw_bytes(t))


def read_metadata(path: Path) -> dict[str, str]:
    """The checkpoint's metadata; raises CheckpointError if it is not modelspec's."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, safetensors.SafetensorError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a modelspec checkpoint (no 'format: {FORMAT}' in its metadata)")
    return meta


def _json_field(path: Path, meta: dict[str, str], key: str, kind: type, default: str | None = None) -> Any:
    """A JSON value from the metadata, of the expected kind with string contents."""
    try:
        value = json.loads(meta[key] if default is None else meta.get(key, default))
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: damaged metadata '{key}': {e}") from e
    items = value.items() if isinstance(value, dict) else value if isinstance(value, list) else None
    if (
        not isinstance(value, kind)
        or items is None
        or not all(isinstance(x, str) for item in items for x in (item if isinstance(item, tuple) else (item,)))
    ):
        raise CheckpointError(f"{path}: damaged metadata '{key}': expected a JSON {kind.__name__} of strings")
    return value


def load_checkpoint(module: nn.Module, path: Path, *, spec_sha256: str | None = None) -> dict[str, str]:
    """Copy the checkpoint at ``path`` into ``module`` in place, verifying everything.

    Raises CheckpointError when names, the tie map, shapes, dtypes or checksums
    differ, or when ``spec_sha256`` is given and the file was written for another
    spec; ``module`` is unchanged in that case.
    """
    meta = read_metadata(path)
    file_ties = _json_field(path, meta, "ties", dict)
    digests = _json_field(path, meta, "sha256", dict)
    frozen = set(_json_field(path, meta, "frozen", list, default="[]"))
    if spec_sha256 and meta.get("spec_sha256") and meta["spec_sha256"] != spec_sha256:
        raise CheckpointError(
            f"{path}: written for spec {meta['spec_sha256'][:12]}, but the folder's spec.yaml is "
            f"{spec_sha256[:12]}: the spec was edited after the build; rebuild, or restore the spec"
        )
    targets, ties = unique_state(module)
    if ties != file_ties:
        raise CheckpointError(_tie_difference(path, ties, file_ties))
    data = safetensors.torch.load_file(str(path))
    problems: list[str] = []
    if set(data) != set(targets):
        missing = sorted(set(targets) - set(data))
        extra = sorted(set(data) - set(targets))
        problems.append(f"tensor names differ (missing: {missing[:5]}, unexpected: {extra[:5]})")
    common = sorted(set(data) & set(targets))
    with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib releases the GIL: verify in parallel
        hashes = dict(zip(common, pool.map(lambda n: sha256_of(data[n]), common), strict=True))
    for name in common:
        src, dst = data[name], targets[name]
        if src.shape != dst.shape or (
            src.dtype != dst.dtype and not (src.is_floating_point() and dst.is_floating_point())
        ):
            problems.append(f"{name}: file has {list(src.shape)} {src.dtype}, model has {list(dst.shape)} {dst.dtype}")
        elif digests.get(name) != hashes[name]:
            problems.append(f"{name}: checksum mismatch (the file is damaged)")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    with torch.no_grad():
        for name, src in data.items():
            dst = targets[name]
            if dst.dtype != src.dtype:  # e.g. a bfloat16 or mixed-precision save of a float32 spec
                dst.data = torch.empty(src.shape, dtype=src.dtype, device=dst.device)  # keeps the object: ties hold
            dst.copy_(src)
            if isinstance(targets[name], nn.Parameter):
                targets[name].requires_grad_(name not in frozen)
    return meta


def _tie_difference(path: Path, model: dict[str, Any], file: dict[str, Any]) -> str:
    lines = [f"{path}: the checkpoint's ties differ from the model's"]
    for alias in sorted(set(model) | set(file)):
        if model.get(alias) != file.get(alias):
            lines.append(f"  {alias}: model ties it to {model.get(alias)!r}, file to {file.get(alias)!r}")
    return "\n".join(lines[:12])
