"""Sharded checkpoints: how a checkpoint is cut into files, and how those files are named.

The layout is the one the big model hubs use::

    model-00001-of-00003.safetensors     tensors, back to back, in the model's order
    model-00002-of-00003.safetensors
    model-00003-of-00003.safetensors
    model.safetensors.index.json         {"metadata": {"total_size": N, ...}, "weight_map": {name: file}}

A checkpoint is cut only when its tensor data exceed ``max_shard_size`` bytes; below
that it stays one ``model.safetensors``, byte for byte as without the option. Tensors
are never split: each shard takes tensors in order until the next would make it exceed
the limit (a tensor larger than the limit gets a shard of its own).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ._errors import UsageError

__all__ = ["INDEX_SUFFIX", "index_path", "parse_size", "plan_shards", "shard_name", "shard_number"]

INDEX_SUFFIX = ".index.json"
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(size: int | str) -> int:
    """Bytes from ``500MB``, ``5GB``, ``16G`` (powers of 10), ``2GiB`` (powers of 2) or a plain
    count: ``--max-shard-size`` and ``--max-memory``.

    Raises:
        UsageError: ``bad-size`` for anything else, or a size below 1 byte.

    >>> parse_size("5GB"), parse_size("1.5GiB"), parse_size(1024)
    (5000000000, 1610612736, 1024)
    """
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise UsageError(f"a size is a number of bytes or text like '5GB', got {size!r}", code="bad-size")
    if isinstance(size, int):
        value = size
    else:
        m = _SIZE.fullmatch(size)
        unit = m.group(2).upper() if m else ""
        if m is None or unit not in _UNITS:
            raise UsageError(
                f"cannot read the size {size!r}: write a number with a unit, e.g. 500MB, 5GB or 2GiB", code="bad-size"
            )
        value = int(float(m.group(1)) * _UNITS[unit]) if "." in m.group(1) else int(m.group(1)) * _UNITS[unit]
    if value < 1:
        raise UsageError(f"a size must be at least 1 byte, got {size!r}", code="bad-size")
    return value


def plan_shards(sizes: Sequence[tuple[str, int]], max_size: int) -> list[list[str]]:
    """Tensor names per shard, in order: a new shard starts where the next tensor would exceed ``max_size``."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes:
        if shards[-1] and used + size > max_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def index_path(path: Path) -> Path:
    """``model.safetensors.index.json`` beside ``model.safetensors``."""
    return path.with_name(path.name + INDEX_SUFFIX)


def shard_name(path: Path, number: int, count: int) -> str:
    """``model-00002-of-00003.safetensors`` for ``model.safetensors``."""
    return f"{path.stem}-{number:05d}-of-{count:05d}{path.suffix}"


def shard_number(path: Path, name: str) -> tuple[int, int] | None:
    """(number, count) when ``name`` is a shard name of ``path``'s checkpoint, else None."""
    m = re.fullmatch(re.escape(path.stem) + r"-(\d{5})-of-(\d{5})" + re.escape(path.suffix), name)
    if m is None:
        return None
    number, count = int(m.group(1)), int(m.group(2))
    return (number, count) if 1 <= number <= count else None
