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

Error codes (``CheckpointError.code``): ``unreadable``, ``not-modelspec``,
``old-format``, ``unsupported-format``, ``metadata-missing``, ``metadata-damaged``,
``metadata-mismatch``, ``names-mismatch``, ``dtype-mismatch``, ``shape-mismatch``,
``layout-mismatch``, ``spec-mismatch``, ``tie-mismatch``, ``checksum-mismatch``,
``unsupported-dtype``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from ._errors import CheckpointError
from ._stats import raw_bytes, sha256_of
from ._ties import OUTSIDE, transposed_map
from ._transfer import Transfer, transfers_of, transfers_to_json
from ._version import __version__

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "load_checkpoint",
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
    of those in ``OPTIONAL_FIELDS`` that are present."""
    record = {k: meta[k] for k in FIELDS}
    record.update({k: meta[k] for k in OPTIONAL_FIELDS if k in meta})
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
) -> dict[str, str]:
    """Write ``module``'s unique tensors to ``path``; return the metadata written.

    ``spec_sha256`` is the canonical hash of the spec the module was built from.
    ``hashes`` (canonical name -> sha256) may come from a report computed just before,
    to avoid hashing twice. ``transfers``: what init rules took from other build folders.
    """
    if not _HEX64.fullmatch(spec_sha256 or ""):
        raise CheckpointError(f"a checkpoint needs the spec's sha256, got {spec_sha256!r}", code="metadata-missing")
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
    metadata[DIGEST] = metadata_digest(metadata)
    write_safetensors(path, data, metadata)
    return metadata


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the safetensors format with a deterministic header.

    ``safetensors.torch.save_file`` writes its metadata in hash-map order, so two saves
    of the same model differ in bytes. This writer sorts the header, streams each
    tensor's memory to disk without copying it, and is read by the safetensors library.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _st_dtype(name, t), "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            f.write(raw_bytes(t))


# ------------------------------------------------------------------ reading and verifying
class _Record(NamedTuple):
    dtype: str  # the safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]


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

        ``module`` is unchanged when anything does not match.
        """
        self.check_structure(module)
        targets, _ = unique_state(module)
        try:
            data = safetensors.torch.load_file(str(self.path))
        except (OSError, safetensors.SafetensorError) as e:
            raise CheckpointError(f"{self.path}: cannot read the tensors: {e}", code="unreadable") from e
        # the file as read must be the one whose header was checked (it may change in between)
        if set(data) != set(self.tensors) or any(
            _ST_DTYPES.get(t.dtype) != self.tensors[n].dtype or tuple(t.shape) != self.tensors[n].shape
            for n, t in data.items()
        ):
            raise CheckpointError(f"{self.path}: the file changed while it was being loaded", code="unreadable")
        names = sorted(data)
        with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib releases the GIL: verify in parallel
            hashes = dict(zip(names, pool.map(lambda n: sha256_of(data[n]), names), strict=True))
        bad = [n for n in names if hashes[n] != self.sha256[n]]
        if bad:
            raise CheckpointError(
                f"{self.path}: checksum mismatch in {len(bad)} tensor(s), e.g. '{bad[0]}': the file is damaged",
                code="checksum-mismatch",
            )
        with torch.no_grad():
            for name, src in data.items():
                dst = targets[name]
                if dst.dtype != src.dtype:  # e.g. a bfloat16 or mixed-precision save of a float32 spec
                    dst.data = torch.empty(src.shape, dtype=src.dtype, device=dst.device)  # keeps the object
                dst.copy_(src)
                if isinstance(dst, nn.Parameter):
                    dst.requires_grad_(name not in self.frozen)


def _fail(path: Path, code: str, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {message}", code=code)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice")
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the number of bytes after it."""
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
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, "unreadable", f"the safetensors header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise _fail(path, "unreadable", "the safetensors header is not a JSON object")
    return header, size - 8 - n


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


def open_checkpoint(path: Path) -> Checkpoint:
    """Read and verify a checkpoint's header and metadata (no tensor data is read).

    Raises:
        CheckpointError: with the code of the first problem found (see the module docstring).
    """
    header, data_size = _read_header(path)
    meta = _check_format(path, header.pop("__metadata__", None))
    entries = _entries(path, header)
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
    if metadata_digest(meta) != meta[DIGEST]:
        raise _fail(path, "metadata-mismatch", "the metadata was edited after it was written (its digest differs)")
    tensors = {n: _Record(r["dtype"], tuple(r["shape"])) for n, r in records.items()}
    _check_header(path, entries, tensors, data_size)
    if any(t.name not in records and t.name not in ties for r in transfers for t in r.tensors):
        raise _fail(path, "metadata-damaged", "damaged metadata: 'transfers' names a tensor that is not there")
    return Checkpoint(path, meta, ties, tensors, sums, frozenset(frozen), transposed, transfers)


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


def load_checkpoint(module: nn.Module, path: Path, *, spec_sha256: str) -> dict[str, str]:
    """Copy the checkpoint at ``path`` into ``module`` in place, verifying everything.

    Raises CheckpointError when the header or metadata are damaged or edited, when the
    file was written for another spec, or when names, ties, shapes, dtypes or checksums
    differ; ``module`` is unchanged in that case.
    """
    ckpt = open_checkpoint(path)
    ckpt.check_spec(spec_sha256)
    ckpt.load_into(module)
    return ckpt.metadata


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
