"""Memory limits: refuse a tensor that cannot fit before allocating it.

An allocation far beyond what the machine has ends in the allocator's RuntimeError (or,
with overcommit, in the OOM killer once the pages are touched). So a size we know in
advance (an example input, a ``grads`` batch) is compared with the memory available
first; where it is not known in advance (a layer's constructor), the allocator's failure
is recognised by :func:`is_out_of_memory` and reported as the same ``too-large`` error.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ._errors import UsageError
from ._fmt import human_bytes

__all__ = ["allocating", "available_bytes", "is_out_of_memory", "tensor_bytes"]

#: refuse a single tensor larger than this share of the available memory: the pass that
#: uses it needs room for activations as well
SHARE = 0.8
#: the largest tensor PyTorch can describe, in bytes
MAX_BYTES = 2**63 - 1


def tensor_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def available_bytes(device: torch.device) -> int | None:
    """Memory that can be allocated now on ``device``; None when unknown (no check then)."""
    if device.type == "cpu":
        return _cpu_available()
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):  # no driver, or no such device
            return None
    return None


def _cpu_available() -> int | None:
    found = []
    try:  # MemAvailable: what can be allocated without swapping
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    try:  # a container's limit (cgroup v2) may be far below the machine's
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(max(int(limit) - int(used), 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


@contextlib.contextmanager
def allocating(nbytes: int, device: torch.device, what: str, fix: str) -> Iterator[None]:
    """Guard the allocation of one tensor of ``nbytes`` on ``device``.

    Refuses before allocating when it cannot fit in the memory available now, and turns
    the allocator's own refusal into the same error. Raises UsageError ``too-large``;
    ``what`` names the tensor (``"the example input [2, 4]"``), ``fix`` says what to change.
    """
    if nbytes > MAX_BYTES:  # not even on meta: PyTorch computes sizes in int64
        raise _too_large(nbytes, "any tensor can hold", device, what, fix)
    free = None if device.type == "meta" else available_bytes(device)
    if free is not None and nbytes > SHARE * free:
        raise _too_large(nbytes, f"the {human_bytes(free)} available", device, what, fix)
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise _too_large(nbytes, "what can be allocated", device, what, fix) from e


def _too_large(nbytes: int, limit: str, device: torch.device, what: str, fix: str) -> UsageError:
    return UsageError(f"{what} needs {human_bytes(nbytes)}, more than {limit} on {device}; {fix}", code="too-large")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocator's refusal.

    CUDA raises ``torch.OutOfMemoryError``; the CPU allocator raises a plain
    RuntimeError, recognisable only by its text ("can't allocate memory" / "not enough
    memory"), which is why this is the one place that reads an exception's message.
    """
    if isinstance(e, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
