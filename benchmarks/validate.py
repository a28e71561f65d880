"""Validation benchmarks: ``modelspec validate`` without torch, and validating a deep spec.

Run: ``python benchmarks/validate.py [--repeat N]``. Measured in this run, on this machine:

- ``modelspec validate SPEC`` as a whole process, for every bundled spec (``specs/**/*.yaml``),
  median of N: target <= 0.5 s, and its ratio to ``python -c "import torch"`` (the floor of any
  command that imports torch). Specs with ``ties:``, ``trainable:`` or ``init:`` are checked on
  a torch-free skeleton of the model (marked "skeleton"); one that needs a build on ``meta``
  instead (a layer the skeleton does not describe) imports torch and is marked so;
- validating a 1,000-layer spec in a warm process (``modelspec.validate`` on its text, best of
  N): target <= 60 ms, split into reading the YAML and the rest; written out layer by layer,
  and as ``repeat: 500`` of a two-layer block (for information).

Exits 1 if a target is missed. Processes run with ``MODELSPEC_NO_CACHE`` unset, so the layer
table's shipped (or cached) description is used, and write and read bytecode, as for any user.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelspec._source import load_text  # noqa: E402
from modelspec._validate import compile_spec, validate  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import best  # noqa: E402

PROCESS_TARGET = 0.5  # s, whole process
DEEP_TARGET = 0.060  # s, in process
DEEP_LAYERS = 1000


def _env() -> dict[str, str]:
    # bytecode written and read as on any installation: torch's is (pip compiles it), so
    # modelspec's must be too, or the comparison counts compiling modelspec's source each time
    env = {k: v for k, v in os.environ.items() if k not in ("MODELSPEC_NO_CACHE", "PYTHONDONTWRITEBYTECODE")}
    return {**env, "PYTHONPATH": str(ROOT)}


def process_time(argv: list[str], repeat: int) -> float:
    """Median wall time of a whole process (start-up included), after one run that is not timed."""
    subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
    return statistics.median(times)


def deep_spec(layers: int = DEEP_LAYERS) -> str:
    lines = ["modelspec: 1", "name: deep", "input: {shape: [2, 64]}", "model:"]
    for i in range(layers):
        lines.append("  - Linear: {in_features: 64, out_features: 64}" if i % 2 == 0 else "  - ReLU")
    return "\n".join(lines) + "\n"


def repeat_spec(layers: int = DEEP_LAYERS) -> str:
    return (
        "modelspec: 1\nname: deep\ninput: {shape: [2, 64]}\nmodel:\n"
        f"  repeat: {layers // 2}\n  of:\n    - Linear: {{in_features: 64, out_features: 64}}\n    - ReLU\n"
    )


def _how_checked(spec: Path) -> str:
    """How validate checks the spec's ties, trainable and init: '' (it has none), on the
    skeleton, or by building on meta."""
    from modelspec._skeleton import check_without_torch

    resolved = compile_spec(spec)
    s = resolved.spec
    if not (s.ties or s.freezes or s.init):
        return ""
    return " (ties/trainable/init: skeleton)" if check_without_torch(resolved) else " (builds on meta: imports torch)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    ok = True
    torch_s = process_time([python, "-c", "import torch"], args.repeat)
    print(f"python -c 'import torch': {torch_s:.3f} s (median of {args.repeat})")
    print(f"{'spec':36} {'validate':>9} {'/ torch':>8}  target")
    for spec in sorted((ROOT / "specs").glob("**/*.yaml")):
        seconds = process_time([python, "-m", "modelspec", "validate", str(spec)], args.repeat)
        hit = seconds <= PROCESS_TARGET
        ok &= hit
        why = _how_checked(spec)
        name = str(spec.relative_to(ROOT / "specs"))
        verdict = "ok" if hit else "MISSED"
        print(f"{name:36} {seconds:8.3f}s {seconds / torch_s:7.2f}x  <= {PROCESS_TARGET} s {verdict}{why}")
    text = deep_spec()
    whole = best(lambda: validate(text), args.repeat, warm=True)
    yaml_s = best(lambda: load_text(text), args.repeat, warm=True)
    hit = whole <= DEEP_TARGET
    ok &= hit
    print(
        f"validate a {DEEP_LAYERS}-layer spec in process: {whole * 1e3:.1f} ms (YAML {yaml_s * 1e3:.1f} ms, "
        f"the rest {(whole - yaml_s) * 1e3:.1f} ms; best of {args.repeat})  <= {DEEP_TARGET * 1e3:.0f} ms "
        f"{'ok' if hit else 'MISSED'}"
    )
    short = best(lambda: validate(repeat_spec()), args.repeat, warm=True)
    print(f"the same as 'repeat: {DEEP_LAYERS // 2}' of [Linear, ReLU]: {short * 1e3:.1f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
