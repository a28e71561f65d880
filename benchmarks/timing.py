"""The timing helper every benchmark script uses."""

from __future__ import annotations

import time
from collections.abc import Callable


def best(fn: Callable[[], object], repeat: int, *, warm: bool = False) -> float:
    """The shortest of ``repeat`` timed calls of ``fn``, in seconds (after one untimed call
    with ``warm``: imports, caches, pydantic's validators)."""
    if warm:
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
