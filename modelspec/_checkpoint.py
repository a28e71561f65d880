"""Checkpoints: each unique tensor once, in safetensors, with the tie map and checksums.

``state_dict()`` lists a shared tensor under every alias and ``safetensors.save_file``
refuses such a dict, so tensors are grouped by object identity: the file holds one
entry per unique tensor under its canonical name (the first in traversal order) and
the metadata maps every other alias to it. No pickle is involved.

What gives the bytes their meaning is bound to them. The metadata records each
tensor's dtype and shape beside the sha256 of its bytes, and ``metadata_sha256`` is a
digest over every other metadata field (format version, spec hash, ties, transposed
ties, frozen parameters, the tensor records, transfers). ``transfers`` (written only
when init rules took tensors from other build folders, see ``_transfer``) records the
source folder, its checkpoint's digest and each tensor taken.

Ties: ``ties`` maps each alias of a stored tensor to its canonical name (one tensor
under several names: a shared block, or a parameter tie); ``transposed_ties`` maps each
parameter that a module reads transposed from another (a tied autoencoder's
``decoder.weight``) to the canonical name of its source. That parameter has no tensor of
its own, so nothing extra is stored. ``transposed_ties`` is written only when the model
has such ties, so other checkpoints are byte for byte as before, and format-2 files from
before it load as having none. Loading compares both maps with the model rebuilt from
the spec. Opening a checkpoint checks, before any tensor data
is read or any memory allocated: that every field is present and well formed, the
digest, that the safetensors header names exactly the recorded tensors with the
recorded dtypes and shapes, and that their data lie back to back and fill the file.
Loading then checks each tensor's sha256. This is integrity (accidents, truncation,
naive edits), not authenticity: whoever can write the file can write a consistent one.

Past ``max_shard_size`` the tensors go into shards (see :mod:`modelspec._shards`):
``model-00001-of-00003.safetensors`` ... and ``model.safetensors.index.json``, whose
``metadata`` holds the fields above plus ``total_size`` and whose ``weight_map`` maps
each stored tensor to its shard. ``metadata_sha256`` then also covers the weight map and
``total_size``, and each shard's own metadata holds only ``format``, ``format_version``
and ``checkpoint_sha256`` (that digest): a shard of another save, stale or swapped in,
is refused (``shard-mismatch``), and every shard's header is checked as a single file's
is. Shards are read with ``safetensors.safe_open``, only the tensors needed.

Error codes (``CheckpointError.code``): ``unreadable``, ``not-modelspec``,
``old-format``, ``unsupported-format``, ``metadata-missing``, ``metadata-damaged``,
``metadata-mismatch``, ``names-mismatch``, ``dtype-mismatch``, ``shape-mismatch``,
``layout-mismatch``, ``spec-mismatch``, ``tie-mismatch``, ``checksum-mismatch``,
``unsupported-dtype``; for shards also ``shard-missing``, ``shard-mismatch``, and
``ambiguous`` (a folder with both a single file and an index).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from ._errors import CheckpointError
from ._files import remember_digest, sync_later, tensors_digest
from ._shards import INDEX_SUFFIX, index_path, parse_size, plan_shards, shard_name, shard_number
from ._stats import raw_bytes, sha256_of, usable_cores
from ._ties import OUTSIDE, transposed_map
from ._transfer import Transfer, transfers_of, transfers_to_json
from ._version import __version__

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "find_checkpoint",
    "metadata_digest",
    "open_checkpoint",
    "save_checkpoint",
    "unique_state",
]

#: The checkpoint's name in a build folder.
CHECKPOINT_FILE = "model.safetensors"
FORMAT = "modelspec"
#: "2": dtype/shape records and ``metadata_sha256``; files without it are refused as old.
FORMAT_VERSION = "2"
#: the metadata fields covered by ``metadata_sha256``; all are required and non-empty
FIELDS = ("format", "format_version", "modelspec_version", "spec_sha256", "ties", "tensors", "sha256", "frozen")
#: covered by ``metadata_sha256`` when present; absent means empty (files written before it)
OPTIONAL_FIELDS = ("transposed_ties", "transfers")
#: also covered by ``metadata_sha256`` in a sharded checkpoint (canonical JSON and decimal text)
SHARD_FIELDS = ("weight_map", "total_size")
#: the whole metadata of each shard besides ``format`` and ``format_version``
SHARD_DIGEST = "checkpoint_sha256"
DIGEST = "metadata_sha256"
_MAX_HEADER = 100_000_000  # the safetensors library's own limit
_HEX64 = re.compile(r"[0-9a-f]{64}")

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip
_ITEMSIZE = {name: dt.itemsize for dt, name in _ST_DTYPES.items()}
_TORCH_DTYPES = {name: dt for dt, name in _ST_DTYPES.items()}
_FLOATING = {name for dt, name in _ST_DTYPES.items() if dt.is_floating_point}


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


def metadata_digest(meta: Mapping[str, str]) -> str:
    """sha256 of the canonical JSON of the fields in ``FIELDS`` (all must be present) and
    of those in ``OPTIONAL_FIELDS`` and ``SHARD_FIELDS`` that are present."""
    record = {k: meta[k] for k in FIELDS}
    record.update({k: meta[k] for k in (*OPTIONAL_FIELDS, *SHARD_FIELDS) if k in meta})
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _st_dtype(name: str, t: torch.Tensor) -> str:
    if t.dtype not in _ST_DTYPES:
        raise CheckpointError(f"'{name}': dtype {t.dtype} cannot be stored in safetensors", code="unsupported-dtype")
    return _ST_DTYPES[t.dtype]


def save_checkpoint(
    module: nn.Module,
    path: Path,
    *,
    spec_sha256: str,
    hashes: dict[str, str] | None = None,
    transfers: tuple[Transfer, ...] = (),
    max_shard_size: int | str | None = None,
    sync: bool = True,
) -> dict[str, str]:
    """Write ``module``'s unique tensors to ``path``; return the metadata written.

    ``spec_sha256`` is the canonical hash of the spec the module was built from.
    ``hashes`` (canonical name -> sha256) may come from a report computed just before,
    to avoid hashing twice. ``transfers``: what init rules took from other build folders.
    ``max_shard_size`` (bytes, or text like ``"5GB"``): when the tensor data exceed it, they
    are written as shards beside ``path`` with an index file instead of ``path`` itself.
    Every file is on disk (fsync) when this returns; with ``sync=False`` (inside a build
    folder being written) the fsyncs run in the background and the folder waits for them
    before it is sealed.
    """
    if not _HEX64.fullmatch(spec_sha256 or ""):
        raise CheckpointError(f"a checkpoint needs the spec's sha256, got {spec_sha256!r}", code="metadata-missing")
    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    tensors, ties = unique_state(module)
    transposed = transposed_map(module)
    outside = sorted(n for n, source in transposed.items() if source.startswith(OUTSIDE))
    if outside:
        raise CheckpointError(
            f"'{outside[0]}' reads a parameter that is not in the model (its source module was replaced): "
            "modelspec.retie(model) restores the declared tie",
            code="tie-mismatch",
        )
    data = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    records = {name: {"dtype": _st_dtype(name, t), "shape": list(t.shape)} for name, t in data.items()}
    digests = {name: (hashes or {}).get(name) or sha256_of(t) for name, t in data.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modelspec_version": __version__,
        "spec_sha256": spec_sha256,
        "ties": json.dumps(ties, sort_keys=True),
        "tensors": json.dumps(records, sort_keys=True, separators=(",", ":")),
        "sha256": json.dumps(digests, sort_keys=True),
        # requires_grad is not part of a tensor's bytes; keep it so a frozen layer stays frozen
        "frozen": json.dumps(
            sorted(n for n, t in tensors.items() if isinstance(t, nn.Parameter) and not t.requires_grad)
        ),
    }
    if transposed:
        metadata["transposed_ties"] = json.dumps(transposed, sort_keys=True)
    if transfers:  # written only when there are some: other checkpoints stay as they were
        metadata["transfers"] = transfers_to_json(transfers)
    sizes = [(name, t.numel() * t.element_size()) for name, t in data.items()]
    total = sum(size for _, size in sizes)
    if limit is None or total <= limit:
        metadata[DIGEST] = metadata_digest(metadata)
        write_safetensors(path, data, metadata, digests, sync=sync)
        return metadata
    shards = plan_shards(sizes, limit)
    files = [shard_name(path, i + 1, len(shards)) for i in range(len(shards))]
    weight_map = {name: file for names, file in zip(shards, files, strict=True) for name in names}
    metadata[DIGEST] = metadata_digest({**metadata, **_shard_fields(weight_map, total)})
    for names, file in zip(shards, files, strict=True):
        shard_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, SHARD_DIGEST: metadata[DIGEST]}
        write_safetensors(path.parent / file, {n: data[n] for n in names}, shard_meta, digests, sync=sync)
    index = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
    _write_durably(index_path(path), [(json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")], sync=sync)
    return metadata


def _shard_fields(weight_map: dict[str, str], total: int) -> dict[str, str]:
    """The index's weight map and total size as the metadata digest covers them."""
    return {"weight_map": json.dumps(weight_map, sort_keys=True, separators=(",", ":")), "total_size": str(total)}


def write_safetensors(
    path: Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    digests: Mapping[str, str] | None = None,
    *,
    sync: bool = True,
) -> None:
    """Write the safetensors format with a deterministic header, and fsync it.

    ``safetensors.torch.save_file`` writes its metadata in hash-map order, so two saves
    of the same model differ in bytes. This writer sorts the header, streams each
    tensor's memory to disk without copying it, and is read by the safetensors library.
    ``digests`` (name -> sha256 of the tensor's bytes, e.g. from the report) give the
    file's digest for the build folder's manifest without another pass over the data.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _st_dtype(name, t), "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    head = struct.pack("<Q", len(blob)) + blob
    _write_durably(path, [head, *(raw_bytes(t) for t in tensors.values())], sync=sync)
    in_file_order = sorted(tensors, key=lambda n: header[n]["data_offsets"])
    sums = [(digests or {}).get(n) or sha256_of(tensors[n]) for n in in_file_order]
    remember_digest(path, tensors_digest(head, sums))


def _write_durably(path: Path, parts: list[bytes | memoryview], *, sync: bool = True) -> None:
    """Write ``parts`` to ``path`` and fsync it (``sync=False``: in the background, awaited
    before the build folder being written is sealed; see :func:`~modelspec._files.sync_later`)."""
    with open(path, "wb", buffering=0) as f:
        for part in parts:
            view = memoryview(part).cast("B")
            while view:  # a write may take less than asked (e.g. above 2 GiB on Linux)
                view = view[f.write(view) :]
        if sync:
            os.fsync(f.fileno())
        else:
            sync_later(os.dup(f.fileno()))


# ------------------------------------------------------------------ reading and verifying
class _Record(NamedTuple):
    dtype: str  # the safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]


class _FileLayout(NamedTuple):
    """What was verified of one file: its exact header bytes and where each tensor lies."""

    header: bytes  # the 8-byte length and the JSON header, as read
    offsets: dict[str, tuple[int, int]]  # name -> (begin, end) in the data after the header


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose header and metadata have been verified; no tensor data read yet."""

    path: Path
    metadata: dict[str, str]
    ties: dict[str, str]
    tensors: dict[str, _Record]  # canonical name -> recorded dtype (safetensors name) and shape
    sha256: dict[str, str]
    frozen: frozenset[str]
    transposed: dict[str, str]  # parameter read transposed -> canonical name of its source
    transfers: tuple[Transfer, ...] = ()  # what init rules took from other build folders
    #: each file holding tensors (``path`` itself, or the shards) -> its verified header
    files: dict[Path, _FileLayout] = field(default_factory=dict)

    def file_of(self, name: str) -> Path:
        """The file that holds the stored tensor ``name`` (canonical)."""
        return next(p for p, layout in self.files.items() if name in layout.offsets)

    def check_spec(self, spec_sha256: str) -> None:
        """Refuse a checkpoint written for another spec (code ``spec-mismatch``)."""
        if self.metadata["spec_sha256"] != spec_sha256:
            raise CheckpointError(
                f"{self.path}: written for spec {self.metadata['spec_sha256'][:12]}, but the folder's spec.yaml is "
                f"{spec_sha256[:12]}: the spec was edited after the build; rebuild, or restore the spec",
                code="spec-mismatch",
            )

    def check_structure(self, module: nn.Module) -> None:
        """Ties, names, shapes and dtypes against ``module`` (which may be on ``meta``)."""
        targets, ties = unique_state(module)
        if ties != self.ties:
            raise CheckpointError(_tie_difference(self.path, ties, self.ties), code="tie-mismatch")
        transposed = transposed_map(module)
        if transposed != self.transposed:
            raise CheckpointError(_transposed_difference(self.path, transposed, self.transposed), code="tie-mismatch")
        if set(targets) != set(self.tensors):
            missing = sorted(set(targets) - set(self.tensors))
            extra = sorted(set(self.tensors) - set(targets))
            raise CheckpointError(
                f"{self.path}: tensor names differ from the model's (missing: {missing[:5]}, unexpected: {extra[:5]})",
                code="names-mismatch",
            )
        for name, t in targets.items():
            rec, have = self.tensors[name], _ST_DTYPES.get(t.dtype)
            if rec.shape != tuple(t.shape):
                raise CheckpointError(
                    f"{self.path}: '{name}' is {list(rec.shape)} in the file, {list(t.shape)} in the model",
                    code="shape-mismatch",
                )
            # a float tensor may be saved in another float dtype (a bfloat16 or mixed-precision save)
            if rec.dtype != have and not (rec.dtype in _FLOATING and t.is_floating_point()):
                raise CheckpointError(
                    f"{self.path}: '{name}' is {rec.dtype} in the file, {t.dtype} in the model", code="dtype-mismatch"
                )

    def load_into(self, module: nn.Module) -> None:
        """Copy the tensors into ``module`` in place after checking every sha256.

        ``module`` is unchanged when anything does not match. A tensor of ``module`` on
        the CPU then takes the verified memory (``.data``: the same object, so every tie
        holds); one on another device gets it copied. Like ``safetensors.torch.load_file``,
        the CPU tensors use the file's pages copy-on-write: replacing the file (as a
        build does, by renaming) is safe, truncating it in place while they live is not.
        """
        self.check_structure(module)
        targets, _ = unique_state(module)
        data = self._read_verified()
        with torch.no_grad():
            for name, src in data.items():
                dst = targets[name]
                if dst.device.type == "cpu" and dst._base is None:  # a view must keep sharing its base
                    dst.data = src
                else:
                    if dst.dtype != src.dtype:  # e.g. a bfloat16 or mixed-precision save of a float32 spec
                        dst.data = torch.empty(src.shape, dtype=src.dtype, device=dst.device)  # keeps the object
                    dst.copy_(src)
                if isinstance(dst, nn.Parameter):
                    dst.requires_grad_(name not in self.frozen)

    def _read_verified(self) -> dict[str, torch.Tensor]:
        """Every stored tensor, from the files whose headers were verified, sha256 checked.

        As ``safetensors.torch.load_file`` does, each file is mapped copy-on-write: the
        tensors use the file's pages (nothing is copied; writing to a tensor copies its
        pages, never changes the file) and are hashed straight from them on all usable
        cores. A tensor whose offset does not suit its dtype's alignment is copied.
        """
        data: dict[str, torch.Tensor] = {}
        pieces: list[tuple[str, memoryview]] = []  # (name, its bytes in the mapping)
        with ThreadPoolExecutor(max_workers=usable_cores()) as pool:  # hashlib releases the GIL
            for path, layout in self.files.items():
                start = len(layout.header)
                end = start + max((e for _, e in layout.offsets.values()), default=0)
                try:
                    with open(path, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
                except (OSError, ValueError) as e:
                    raise _fail(path, "unreadable", f"cannot read the tensors: {e}") from e
                # the file as mapped must be the one whose header was checked (it may change in between)
                if mapped is None or size != end or mapped[:start] != layout.header:
                    raise _fail(path, "unreadable", "the file changed while it was being loaded")
                view = memoryview(mapped)
                for name, (begin, stop) in layout.offsets.items():
                    pieces.append((name, view[start + begin : start + stop]))
                    data[name] = _tensor_at(mapped, start + begin, stop - begin, self.tensors[name])
            # largest first: a big tensor hashed last would leave the other cores idle meanwhile
            # (the header lists tensors by name, so GPT-2's 154 MB embedding came last)
            pieces.sort(key=lambda piece: -len(piece[1]))
            futures = {name: pool.submit(_hex_sha256, piece) for name, piece in pieces}
            bad = sorted(n for n, fut in futures.items() if fut.result() != self.sha256[n])
        if bad:
            raise CheckpointError(
                f"{self.file_of(bad[0])}: checksum mismatch in {len(bad)} tensor(s), e.g. '{bad[0]}': "
                "the file is damaged",
                code="checksum-mismatch",
            )
        return data

    def read(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The stored tensors ``names`` (canonical), each checked against its sha256.

        Reads only those tensors, with ``safetensors.safe_open`` on the file(s) holding them.
        """
        out: dict[str, torch.Tensor] = {}
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.file_of(name), []).append(name)
        for path, wanted in by_file.items():
            try:
                with safetensors.safe_open(str(path), framework="pt") as f:
                    for name in wanted:
                        out[name] = f.get_tensor(name)
            except (OSError, safetensors.SafetensorError) as e:
                raise _fail(path, "unreadable", f"cannot read the tensors: {e}") from e
            for name in wanted:
                t, rec = out[name], self.tensors[name]
                if _ST_DTYPES.get(t.dtype) != rec.dtype or tuple(t.shape) != rec.shape:
                    raise _fail(path, "unreadable", "the file changed after it was opened")
                if sha256_of(t) != self.sha256[name]:
                    raise _fail(path, "checksum-mismatch", f"checksum mismatch in '{name}': the file is damaged")
        return out


def _hex_sha256(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_at(mapped: mmap.mmap, offset: int, nbytes: int, rec: _Record) -> torch.Tensor:
    """The tensor ``rec`` describes at ``offset`` of a copy-on-write file mapping."""
    dtype = _TORCH_DTYPES[rec.dtype]
    if nbytes and offset % dtype.itemsize == 0:
        return torch.frombuffer(mapped, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).view(rec.shape)
    t = torch.empty(rec.shape, dtype=dtype)  # empty, or not aligned for its dtype (after an odd-sized tensor)
    if nbytes:
        raw_bytes(t)[:] = memoryview(mapped)[offset : offset + nbytes]
    return t


def _fail(path: Path, code: str, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {message}", code=code)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _read_header(path: Path) -> tuple[dict[str, Any], int, bytes]:
    """The parsed JSON header, the number of bytes after it, and the header's bytes as read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, "unreadable", f"not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", prefix)
            if n > _MAX_HEADER or 8 + n > size:
                raise _fail(path, "unreadable", f"not a safetensors file (header of {n} bytes in a file of {size})")
            blob = f.read(n)
    except OSError as e:
        raise _fail(path, "unreadable", f"cannot read: {e.strerror or e}") from e
    header = _parse_json(path, blob, "the safetensors header")
    return header, size - 8 - n, prefix + blob


def _parse_json(path: Path, blob: bytes, what: str) -> dict[str, Any]:
    """A JSON object from ``blob``: no duplicate keys, no NaN; else ``unreadable``."""
    try:
        value = json.loads(blob.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, "unreadable", f"{what} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise _fail(path, "unreadable", f"{what} is not a JSON object")
    return value


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(type(x) is int and x >= 0 for x in value)


def _entries(path: Path, header: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """name -> (dtype, shape, begin, end) from the header's tensor entries."""
    out = {}
    for name, e in header.items():
        if (
            not isinstance(e, dict)
            or set(e) != {"dtype", "shape", "data_offsets"}
            or not isinstance(e["dtype"], str)
            or not _ints(e["shape"])
            or not _ints(e["data_offsets"])
            or len(e["data_offsets"]) != 2
            or e["data_offsets"][0] > e["data_offsets"][1]
        ):
            raise _fail(path, "unreadable", f"the safetensors header entry {name!r} is malformed")
        out[name] = (e["dtype"], tuple(e["shape"]), *e["data_offsets"])
    return out


def _check_format(path: Path, meta: Any) -> dict[str, str]:
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        if meta is None:
            raise _fail(path, "not-modelspec", "not a modelspec checkpoint (its header has no metadata)")
        raise _fail(path, "metadata-damaged", "damaged metadata: not a map of strings")
    ours = set(meta) & {*FIELDS, *OPTIONAL_FIELDS, DIGEST}
    if meta.get("format") != FORMAT:
        if not meta.get("format") and ours - {"format"}:
            raise _fail(path, "metadata-missing", "the metadata field 'format' is missing or empty")
        raise _fail(path, "not-modelspec", f"not a modelspec checkpoint (no 'format: {FORMAT}' in its metadata)")
    if "format_version" not in meta and DIGEST not in meta:
        raise CheckpointError(
            f"{path}: written by an older modelspec (checkpoint format 1, without dtype/shape records and "
            f"metadata digest); rebuild it with `modelspec build {path.parent / 'spec.yaml'}`, or re-save trained "
            "weights once as the README shows ('Checkpoints from earlier versions')",
            code="old-format",
        )
    missing = [k for k in (*FIELDS, DIGEST) if not meta.get(k)]
    if missing:
        raise _fail(path, "metadata-missing", f"the metadata field(s) {missing} are missing or empty")
    version = meta["format_version"]
    if version != FORMAT_VERSION:
        if version.isdigit() and int(version) > int(FORMAT_VERSION):
            raise _fail(
                path,
                "unsupported-format",
                f"checkpoint format {version} was written by a newer modelspec; this one reads {FORMAT_VERSION}",
            )
        raise _fail(path, "metadata-damaged", f"damaged metadata 'format_version': {version!r}")
    unknown = sorted(set(meta) - {*FIELDS, *OPTIONAL_FIELDS, DIGEST})
    if unknown:
        raise _fail(path, "metadata-damaged", f"unexpected metadata field(s) {unknown[:5]}")
    return meta


def _json_field(path: Path, meta: dict[str, str], key: str, ok: Any) -> Any:
    """A JSON value from the metadata, accepted by ``ok``; else ``metadata-damaged``."""
    try:
        value = json.loads(meta[key], object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except ValueError as e:
        raise _fail(path, "metadata-damaged", f"damaged metadata '{key}': {e}") from e
    if not ok(value):
        raise _fail(path, "metadata-damaged", f"damaged metadata '{key}': not of the expected form")
    return value


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _is_record(r: Any) -> bool:
    return isinstance(r, dict) and set(r) == {"dtype", "shape"} and r["dtype"] in _ITEMSIZE and _ints(r["shape"])


def find_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of a build folder: ``model.safetensors``, or the index of its shards.

    Raises:
        CheckpointError: ``ambiguous`` when the folder holds both.
    """
    single, index = folder / CHECKPOINT_FILE, index_path(folder / CHECKPOINT_FILE)
    if single.is_file() and index.is_file():
        raise CheckpointError(
            f"{folder} holds both {single.name} and {index.name}: keep the one that belongs to spec.yaml",
            code="ambiguous",
        )
    return single if single.is_file() else index if index.is_file() else None


def open_checkpoint(path: Path) -> Checkpoint:
    """Read and verify a checkpoint's header and metadata (no tensor data is read).

    ``path`` is a ``.safetensors`` file or the ``.index.json`` of a sharded checkpoint,
    whose shards' headers are all verified too.

    Raises:
        CheckpointError: with the code of the first problem found (see the module docstring).
    """
    if path.name.endswith(INDEX_SUFFIX):
        return _open_sharded(path)
    header, data_size, raw = _read_header(path)
    meta = _check_format(path, header.pop("__metadata__", None))
    entries = _entries(path, header)
    ckpt = _verified_metadata(path, meta, meta)
    _check_header(path, entries, ckpt.tensors, data_size)
    return replace(ckpt, files={path: _FileLayout(raw, {n: (b, e) for n, (_, _, b, e) in entries.items()})})


def _verified_metadata(path: Path, meta: dict[str, str], covered: dict[str, str]) -> Checkpoint:
    """The checkpoint ``meta`` describes, every field checked; ``covered``: what its digest covers."""
    ties = _json_field(path, meta, "ties", _str_map)
    records = _json_field(path, meta, "tensors", lambda v: isinstance(v, dict) and all(map(_is_record, v.values())))
    sums = _json_field(path, meta, "sha256", lambda v: _str_map(v) and all(map(_HEX64.fullmatch, v.values())))
    frozen = _json_field(path, meta, "frozen", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
    transposed = _json_field(path, meta, "transposed_ties", _str_map) if "transposed_ties" in meta else {}
    transfers = transfers_of(_json_field(path, meta, "transfers", lambda v: isinstance(v, list)), path) if (
        "transfers" in meta) else ()  # fmt: skip
    if not _HEX64.fullmatch(meta["spec_sha256"]) or not _HEX64.fullmatch(meta[DIGEST]):
        raise _fail(path, "metadata-damaged", "damaged metadata: 'spec_sha256' and 'metadata_sha256' are sha256 hex")
    if set(sums) != set(records) or not set(frozen) <= set(records) or not set(ties.values()) <= set(records):
        raise _fail(path, "metadata-damaged", "damaged metadata: 'tensors', 'sha256', 'frozen' and 'ties' disagree")
    if not set(transposed.values()) <= set(records) or set(transposed) & (set(records) | set(ties)):
        raise _fail(path, "metadata-damaged", "damaged metadata: 'transposed_ties' disagrees with 'tensors' and 'ties'")
    if metadata_digest(covered) != meta[DIGEST]:
        raise _fail(path, "metadata-mismatch", "the metadata was edited after it was written (its digest differs)")
    tensors = {n: _Record(r["dtype"], tuple(r["shape"])) for n, r in records.items()}
    if any(t.name not in records and t.name not in ties for r in transfers for t in r.tensors):
        raise _fail(path, "metadata-damaged", "damaged metadata: 'transfers' names a tensor that is not there")
    return Checkpoint(path, meta, ties, tensors, sums, frozenset(frozen), transposed, transfers)


def _open_sharded(index: Path) -> Checkpoint:
    """Verify a sharded checkpoint: the index as a single file's metadata, then each shard's header."""
    try:
        with open(index, "rb") as f:
            blob = f.read(_MAX_HEADER + 1)
    except OSError as e:
        raise _fail(index, "unreadable", f"cannot read: {e.strerror or e}") from e
    if len(blob) > _MAX_HEADER:
        raise _fail(index, "unreadable", f"an index of over {_MAX_HEADER} bytes is not a checkpoint index")
    doc = _parse_json(index, blob, "the index")
    if set(doc) != {"metadata", "weight_map"} or not isinstance(doc["metadata"], dict):
        raise _fail(index, "unreadable", "not a checkpoint index (it needs exactly 'metadata' and 'weight_map')")
    meta = dict(doc["metadata"])
    total = meta.pop("total_size", None)
    meta = _check_format(index, meta)
    weight_map = doc["weight_map"]
    if type(total) is not int or total < 0:
        raise _fail(index, "metadata-damaged", "damaged metadata 'total_size': not a byte count")
    checkpoint = index.with_name(index.name.removesuffix(INDEX_SUFFIX))
    numbers = {f: shard_number(checkpoint, f) for f in set(weight_map.values())} if _str_map(weight_map) else {}
    if (
        not numbers
        or None in numbers.values()
        or sorted(numbers.values()) != [(i + 1, len(numbers)) for i in range(len(numbers))]
    ):
        raise _fail(index, "metadata-damaged", f"damaged 'weight_map': it must map each tensor to one of the shards "
                    f"{shard_name(checkpoint, 1, len(numbers) or 1)} ...")  # fmt: skip
    ckpt = _verified_metadata(index, meta, {**meta, **_shard_fields(weight_map, total)})
    if set(weight_map) != set(ckpt.tensors):
        missing, extra = sorted(set(ckpt.tensors) - set(weight_map)), sorted(set(weight_map) - set(ckpt.tensors))
        raise _fail(index, "names-mismatch", f"the weight map's tensors differ from the metadata's: "
                    f"missing {missing[:5]}, unexpected {extra[:5]}")  # fmt: skip
    if total != sum(_ITEMSIZE[r.dtype] * _numel(r.shape) for r in ckpt.tensors.values()):
        raise _fail(index, "metadata-damaged", "damaged metadata: 'total_size' is not the size of the tensors")
    expected = {"format": FORMAT, "format_version": FORMAT_VERSION, SHARD_DIGEST: meta[DIGEST]}
    files = {}
    for file in sorted(numbers):
        shard = index.parent / file
        if not shard.is_file():
            raise _fail(shard, "shard-missing", f"shard {file} of {index.name} is missing")
        header, data_size, raw = _read_header(shard)
        if header.pop("__metadata__", None) != expected:
            raise _fail(shard, "shard-mismatch", f"not a shard of {index.name} (it belongs to another save, or was "
                        "edited): rebuild, or restore the shards written with this index")  # fmt: skip
        entries = _entries(shard, header)
        mine = {n: r for n, r in ckpt.tensors.items() if weight_map[n] == file}
        _check_header(shard, entries, mine, data_size)
        files[shard] = _FileLayout(raw, {n: (b, e) for n, (_, _, b, e) in entries.items()})
    return replace(ckpt, files=files)


def _check_header(
    path: Path, entries: dict[str, tuple[str, tuple[int, ...], int, int]], tensors: dict[str, _Record], data_size: int
) -> None:
    """The header lists exactly the recorded tensors, as recorded, back to back, filling the file."""
    if set(entries) != set(tensors):
        missing, extra = sorted(set(tensors) - set(entries)), sorted(set(entries) - set(tensors))
        raise _fail(path, "names-mismatch", f"the header's tensors differ from the metadata's: "
                    f"missing {missing[:5]}, unexpected {extra[:5]}")  # fmt: skip
    for name, (dtype, shape, _, _) in sorted(entries.items()):
        rec = tensors[name]
        if dtype != rec.dtype:
            raise _fail(path, "dtype-mismatch", f"'{name}' is {dtype} in the header but was written as {rec.dtype}")
        if shape != rec.shape:
            raise _fail(
                path, "shape-mismatch", f"'{name}' is {list(shape)} in the header but was written as {list(rec.shape)}"
            )
    end = 0
    for name, (dtype, shape, begin, stop) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != end:
            raise _fail(path, "layout-mismatch", f"'{name}' starts at byte {begin} of the data, expected {end} "
                        "(tensors overlap or leave gaps)")  # fmt: skip
        if stop - begin != _ITEMSIZE[dtype] * _numel(shape):
            raise _fail(path, "layout-mismatch", f"'{name}' spans {stop - begin} bytes; {dtype} {list(shape)} needs "
                        f"{_ITEMSIZE[dtype] * _numel(shape)}")  # fmt: skip
        end = stop
    if end > data_size:
        raise _fail(path, "layout-mismatch", f"the file is truncated: {end - data_size} bytes of tensor data missing")
    if end < data_size:
        raise _fail(path, "layout-mismatch", f"{data_size - end} unexpected bytes after the last tensor")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _tie_difference(path: Path, model: dict[str, str], file: dict[str, str]) -> str:
    return _difference(path, "ties", model, file, "shares '{}'", "is its own tensor")


def _transposed_difference(path: Path, model: dict[str, str], file: dict[str, str]) -> str:
    return _difference(path, "transposed ties", model, file, "reads '{}' transposed", "is not read transposed")


def _difference(path: Path, what: str, model: dict[str, str], file: dict[str, str], tied: str, untied: str) -> str:
    """Up to 11 names whose tie differs between the model and the file, each said both ways."""
    lines = [f"{path}: the checkpoint's {what} differ from the model's"]
    for name in sorted(set(model) | set(file)):
        if model.get(name) != file.get(name):
            have = tied.format(model[name]) if name in model else untied
            want = tied.format(file[name]) if name in file else untied
            lines.append(f"  '{name}': in the model it {have}, in the file it {want}")
    return "\n".join(lines[:12])
