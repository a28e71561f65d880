"""Memory limits: refuse a tensor or a model that cannot fit before allocating it.

An allocation far beyond what the machine has ends in the allocator's RuntimeError (or,
with overcommit, in the OOM killer once the pages are touched). So a size we know in
advance (an example input, a ``grads`` batch) is compared with the memory available
first; where it is not known in advance (a layer's constructor), the allocator's failure
is recognised by :func:`is_out_of_memory` and reported as the same ``too-large`` error.

A whole model is judged by :class:`MemoryEstimate`, computed from its tensors' element
counts (a build on ``meta``: nothing allocated): weights, gradients and Adam's two moment
buffers, in each floating dtype, as accelerate's ``estimate-memory`` shows them.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ._errors import UsageError
from ._fmt import human_bytes

__all__ = [
    "Footprint",
    "MemoryEstimate",
    "allocating",
    "available_bytes",
    "estimate_from_entries",
    "is_out_of_memory",
    "tensor_bytes",
]

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


# ------------------------------------------------------------------ whole-model estimates
#: bytes per element by dtype name (as reports write dtypes)
ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "complex128": 16, "complex64": 8,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}  # fmt: skip
_FLOATING = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Footprint:
    """What a model takes with its floating-point tensors in one dtype, in bytes.

    ``weights``: every unique parameter and buffer (integer buffers keep their own dtype);
    ``gradients``: one per trainable parameter; ``adam``: Adam's two moment buffers per
    trainable parameter. Activations are not included: they depend on the batch.
    """

    dtype: str
    weights: int
    gradients: int
    adam: int

    @property
    def training(self) -> int:
        """Weights, gradients and Adam's moments: training with Adam, before activations."""
        return self.weights + self.gradients + self.adam


@dataclass(frozen=True)
class MemoryEstimate:
    """A model's memory in each floating dtype (see :class:`Footprint`), before allocating it.

    ``dtype`` is the one its floating tensors have now (``"float32"`` unless built with
    ``dtype=``); ``rows`` holds float32 and bfloat16 (float16 takes the same), and the
    model's own dtype if it is another. ``params`` and ``trainable`` count elements.

    Example:
        >>> est = modelspec.estimate_memory("specs/zoo/llama3_70b.yaml")
        >>> est["bfloat16"].weights / 1e9
        141.1...
    """

    dtype: str
    params: int
    trainable: int
    rows: tuple[Footprint, ...]

    def __getitem__(self, dtype: str) -> Footprint:
        """The footprint in ``dtype`` (float16 reads the bfloat16 row: the same sizes)."""
        want = "bfloat16" if dtype == "float16" else dtype
        for row in self.rows:
            if row.dtype == want:
                return row
        raise KeyError(dtype)

    @property
    def current(self) -> Footprint:
        """The footprint in the dtype the model has now."""
        return self[self.dtype]


#: (element count, dtype name, is a parameter, requires grad) of one unique tensor
Entry = tuple[int, str, bool, bool]


def estimate_from_entries(entries: Iterable[Entry]) -> MemoryEstimate:
    """A :class:`MemoryEstimate` from each unique tensor's count, dtype and flags."""
    items = list(entries)
    floating = {dtype for _, dtype, _, _ in items if dtype in _FLOATING}
    own = "float32" if not floating else max(floating, key=lambda d: (ITEMSIZE[d], d))
    names = list(dict.fromkeys([*(["float64"] if own == "float64" else []), "float32", "bfloat16"]))
    if own not in names and own != "float16":
        names.append(own)
    rows = []
    for name in names:
        size = ITEMSIZE[name]
        weights = grads = 0
        for numel, dtype, is_param, requires_grad in items:
            weights += numel * (size if dtype in _FLOATING else ITEMSIZE.get(dtype, 8))
            if is_param and requires_grad and dtype in _FLOATING:
                grads += numel * size
        rows.append(Footprint(name, weights, grads, 2 * grads))
    params = sum(n for n, _, is_param, _ in items if is_param)
    trainable = sum(n for n, _, is_param, rg in items if is_param and rg)
    return MemoryEstimate("bfloat16" if own == "float16" else own, params, trainable, tuple(rows))
