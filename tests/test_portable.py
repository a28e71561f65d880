"""Same seed, same weights, same report.json bytes on every machine (BRIEF rule 10).

The CPU kernels torch picks depend on ``ATEN_CPU_CAPABILITY`` (the SIMD level: default,
avx2, avx512) and the thread count; this runs builds and statistics in subprocesses
under each level this CPU can run and with 1 and 2 threads, and requires identical bytes.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from conftest import RecordOps

from modelspec._stats import summarize

ROOT = Path(__file__).resolve().parent.parent


def capabilities() -> list[str]:
    """The ATEN_CPU_CAPABILITY values worth comparing on this CPU.

    avx512 only where /proc/cpuinfo lists avx512f: torch ignores a level the CPU lacks
    and would silently run avx2 again. On other architectures only ``default`` can be
    forced; the native kernels run with the variable unset (``""``).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["default", ""]
    levels = ["default", "avx2"]
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512f" in flags.split():
        levels.append("avx512")
    return levels


# Builds a spec whose init uses uniform_ (Linear, LazyLinear, LSTM) and normal_ (Embedding),
# writes the build folder, and prints report.json, the init of other dtypes and statistics
# of tensors whose values do not depend on the machine (made from integer draws).
SNIPPET = r"""
import hashlib, sys, tempfile, torch
from pathlib import Path
import modelspec
from modelspec._rng import normal_, uniform_
from modelspec._stats import summarize
torch.set_num_threads(int(sys.argv[1]))
spec = '''modelspec: 1
seed: 3
input: {shape: [2, 5], dtype: int64}
model:
  - Embedding: [40, 24]
  - LazyLinear: {out_features: 33}
  - GELU
  - Linear: [33, 7]
'''
with tempfile.TemporaryDirectory() as tmp:
    modelspec.write_build(spec, Path(tmp) / "b")
    print((Path(tmp) / "b" / "report.json").read_text())
lstm = modelspec.build("modelspec: 1\nseed: 1\nmodel: [{LSTM: [6, 5]}]\n")
print([hashlib.sha256(p.detach().numpy().tobytes()).hexdigest() for p in lstm.parameters()])
for dtype in (torch.float16, torch.bfloat16, torch.float64):
    g = torch.Generator().manual_seed(1)
    a = uniform_(torch.empty(1001, dtype=dtype), -0.3, 0.7, generator=g)
    b = normal_(torch.empty(1001, dtype=dtype), 0.5, 2.0, generator=g)
    print(dtype, hashlib.sha256(a.view(torch.uint8).numpy().tobytes() + b.view(torch.uint8).numpy().tobytes()).hexdigest())
g = torch.Generator().manual_seed(2)
for n in (1, 3, 4097, 300_001):
    x = torch.randint(-2**53, 2**53, (n,), generator=g).double() * 2.0**-60 + 0.1
    print(n, summarize(x), summarize(x.float()), summarize(x.to(torch.bfloat16)))
"""


def run_snippet(capability: str, threads: int) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run(
        [sys.executable, "-c", SNIPPET, str(threads)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_build_and_report_json_are_identical_under_every_simd_level_and_thread_count() -> None:
    runs = {(cap, threads): run_snippet(cap, threads) for cap in capabilities() for threads in (1, 2)}
    first_key, first = next(iter(runs.items()))
    assert '"format": "modelspec-report"' in first
    for key, out in runs.items():
        assert out == first, f"{key} differs from {first_key}"


def test_statistics_use_only_elementwise_operations() -> None:
    """A reduction (sum, norm, dot, mean, var) orders its additions by the vector width:
    statistics made from one would differ between machines in the last digits."""
    x = torch.linspace(-1, 1, 70_001)
    with RecordOps() as ops:
        summarize(x)
        summarize(x.to(torch.bfloat16))
        summarize(torch.tensor([1.0, float("nan")]))
    allowed = {
        "aten::_to_copy", "aten::abs", "aten::add_", "aten::aminmax", "aten::eq", "aten::ne", "aten::bitwise_not", "aten::copy_", "aten::detach",
        "aten::empty", "aten::isfinite", "aten::lift_fresh", "aten::mul", "aten::select", "aten::slice",
        "aten::sub_", "aten::sum", "aten::view", "aten::zero_", "aten::_local_scalar_dense", "aten::alias",
        "aten::split", "aten::zeros", "aten::unbind",
    }  # fmt: skip
    assert ops.names <= allowed, ops.names - allowed
    # sum appears only to count non-finite values (an integer count: exact in any order)
    with RecordOps() as ops:
        summarize(x)
    assert "aten::sum" not in ops.names and "aten::linalg_vector_norm" not in ops.names
