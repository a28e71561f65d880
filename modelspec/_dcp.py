"""Distributed checkpoints (``torch.distributed.checkpoint``) that store each tie group once.

A plain ``dcp.save(model.state_dict())`` writes every alias of a tied tensor again (a
shared block under two names, ``lm_head.weight`` and ``wte.weight``): twice the bytes. Here
only each tensor's canonical name (the first ``state_dict`` key that reaches it, as in
``model.safetensors``) is written, and ``modelspec-dcp.json`` beside DCP's files records
the tie map. Loading checks that map against the model, loads the canonical names (the
aliases are the same tensors, so they follow) and verifies that every tie still holds.

Works in one process and with any number of ranks (FSDP2-sharded models included: each
rank writes and reads its own shards). Every rank must call ``dcp_save``/``dcp_load``.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn

from ._checkpoint import unique_state
from ._errors import BuildDirError, CheckpointError
from ._ties import transposed_map
from ._version import __version__
from ._wrap import unwrap

__all__ = ["SIDE_FILE", "dcp_load", "dcp_save"]

#: beside DCP's ``.metadata`` and ``*.distcp`` files: what makes the folder modelspec's
SIDE_FILE = "modelspec-dcp.json"
FORMAT = "modelspec-dcp"
FORMAT_VERSION = "1"


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _all_agree(ok: bool) -> bool:
    """True when ``ok`` on every rank (one process: ``ok``)."""
    if not _distributed():
        return ok
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """Without DCP's warnings about what is meant here: one process when there is no process
    group, and overwriting a folder that ``dcp_save`` wrote before."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        warnings.filterwarnings("ignore", "Detected an existing checkpoint", UserWarning)
        yield


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _distributed() else 0


def dcp_save(model: nn.Module, checkpoint_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a distributed checkpoint that stores each tie group once.

    Every rank calls it (FSDP2: each rank writes its own shards). ``checkpoint_dir`` is
    created; an existing one is reused only if it is empty or a previous ``dcp_save``
    wrote it.

    Returns:
        ``checkpoint_dir`` as a Path.

    Raises:
        BuildDirError: ``in-the-way`` (the folder holds files modelspec did not write there).

    Example:
        >>> modelspec.dcp_save(modelspec.shard(model), "ckpt/step-100")  # on every rank
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    out = Path(checkpoint_dir)
    inner = unwrap(model)
    canonical, ties = unique_state(inner)
    ours = not out.exists() or (out.is_dir() and (not any(out.iterdir()) or (out / SIDE_FILE).is_file()))
    if not _all_agree(ours):
        raise BuildDirError(
            f"{out} holds files that dcp_save did not write there (no {SIDE_FILE}): choose another folder",
            code="in-the-way",
        )
    full = get_model_state_dict(inner)
    state = {name: full[name] for name in canonical}  # the aliases are the same tensors: not again
    if _rank() == 0:
        # DCP rewrites the data files in place and its .metadata last: without the old .metadata,
        # a save that dies half-way leaves a folder that fails to load instead of mixed weights
        (out / ".metadata").unlink(missing_ok=True)
    _all_agree(True)  # no rank writes before that
    with _quietly():
        # overwrite: only a folder this function wrote gets here (checked above)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(out, overwrite=True), no_dist=not _distributed())
    if _rank() == 0:
        from ._api import build_info

        info = build_info(inner)
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "modelspec_version": __version__,
            "spec_sha256": info.spec.sha256 if info is not None else None,
            "ties": ties,
            "transposed_ties": transposed_map(inner),
        }
        tmp = out / (SIDE_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, out / SIDE_FILE)
            written = True
        except OSError as e:
            failure = f"cannot write {out / SIDE_FILE}: {e}"
            written = False
    else:
        written, failure = True, "rank 0 could not write the tie map"
    if not _all_agree(written):  # no rank returns before the tie map is written (or fails to be)
        raise CheckpointError(failure, code="unwritable")
    return out


def _read_side(folder: Path) -> dict[str, object]:
    path = folder / SIDE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{folder} is not a checkpoint written by modelspec.dcp_save (no {SIDE_FILE})",
                              code="not-modelspec") from e  # fmt: skip
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}", code="unreadable") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a modelspec DCP tie map", code="not-modelspec")
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {record.get('format_version')!r} is not supported",
                              code="unsupported-format")  # fmt: skip
    for key in ("ties", "transposed_ties"):
        value = record.get(key)
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise CheckpointError(f"{path}: '{key}' is not a map of names", code="metadata-damaged")
    return record


def _tie_differences(saved: dict[str, str], have: dict[str, str], kind: str) -> list[str]:
    out = []
    for alias in sorted(saved.keys() | have.keys()):
        a, b = saved.get(alias), have.get(alias)
        if a != b:
            was = f"'{a}'" if a else "nothing"
            now = f"'{b}'" if b else "nothing"
            out.append(f"'{alias}' was {kind} {was} in the checkpoint, {now} in the model")
    return out


def dcp_load(model: nn.Module, checkpoint_dir: str | os.PathLike[str]) -> nn.Module:
    """Load a checkpoint written by :func:`dcp_save` into ``model``, in place.

    Every rank calls it. The model must have the ties the checkpoint was saved with;
    its tensors keep their identity, so every tie holds afterwards.

    Returns:
        ``model``.

    Raises:
        CheckpointError: ``not-modelspec`` (no tie map: not written by ``dcp_save``),
            ``tie-mismatch`` (the model ties other tensors than the checkpoint),
            ``unreadable`` (DCP could not read it: missing tensors, other shapes).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    folder = Path(checkpoint_dir)
    record = _read_side(folder)
    inner = unwrap(model)
    canonical, ties = unique_state(inner)
    transposed = transposed_map(inner)
    problems = _tie_differences(record["ties"], ties, "an alias of")  # type: ignore[arg-type]
    problems += _tie_differences(record["transposed_ties"], transposed, "read transposed from")  # type: ignore[arg-type]
    if problems:
        raise CheckpointError("the model's ties differ from the checkpoint's: " + "; ".join(problems[:8]),
                              code="tie-mismatch")  # fmt: skip
    full = get_model_state_dict(inner)
    state = {name: full[name] for name in canonical}
    try:
        with _quietly():
            dcp.load(state, checkpoint_id=str(folder), no_dist=not _distributed())
    except Exception as e:  # DCP raises its own wrapper around what each rank hit
        raise CheckpointError(f"cannot load {folder}: {type(e).__name__}: {e}", code="unreadable") from e
    result = set_model_state_dict(inner, state, options=StateDictOptions(strict=False))
    if result.unexpected_keys or not set(result.missing_keys) <= set(ties):
        raise CheckpointError(
            f"the model does not fit {folder}: missing {sorted(set(result.missing_keys) - set(ties))[:8]}, "
            f"unexpected {sorted(result.unexpected_keys)[:8]}",
            code="names-mismatch",
        )
    if unique_state(inner)[1] != ties or transposed_map(inner) != transposed:
        raise CheckpointError("loading broke a tie", code="tie-mismatch")
    return model
