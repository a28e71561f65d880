"""Zoo benchmarks: the bundled GPT-2 small and ResNet-18 specs against their handwritten twins.

Run: ``python benchmarks/zoo.py [--repeat N] [--no-compile]`` (``make bench`` runs it after
``run.py``). Each ratio compares two things measured in this run, on this machine:

- building from the spec (``modelspec.build``: construct, portable seeded init, the example
  pass that checks shapes, the declared ties) / constructing the handwritten twin (target <= 1.05);
- forward of the built model / forward of the twin, eager (target <= 1.02) and under
  ``torch.compile`` (target <= 1.02; the first, compiling call is not timed);
- reading and validating GPT-2 with ``n_layer=96`` / with 12 (a repeat is one node: <= 1.10).

The twins are the references the test suite proves the specs equal to (``tests/twins.py``):
same keys, same outputs. Times are the best of N rounds; built and twin alternate within a
round so that drifts of the machine hit both.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import twins  # noqa: E402  (the handwritten references of the test suite)

import modelspec  # noqa: E402

Row = tuple[str, str, str, str]


def alternate(a: Callable[[], object], b: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Best time of ``a`` and of ``b`` over ``rounds`` rounds, run a, b, a, b, ..."""
    best_a = best_b = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        a()
        best_a = min(best_a, time.perf_counter() - start)
        start = time.perf_counter()
        b()
        best_b = min(best_b, time.perf_counter() - start)
    return best_a, best_b


def row(name: str, ours: float, theirs: float, target: float | None) -> tuple[Row, bool]:
    ratio = ours / theirs
    ok = target is None or ratio <= target
    goal = f"<= {target:.2f} {'ok' if ok else 'MISSED'}" if target is not None else "—"
    return (name, f"{ours:.3f} s vs {theirs:.3f} s", f"{ratio:.2f}x", goal), ok


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forwards(model: Callable[[torch.Tensor], object], x: torch.Tensor, n: int) -> Callable[[], object]:
    return lambda: [model(x) for _ in range(n)]


def gpt2_twin() -> torch.nn.Module:
    """The twin, initialized as GPT-2 is (and as the spec's ``init:`` says), the way minimal GPT
    code does it: torch's own normal_ on every Linear and Embedding weight, zero biases, the
    residual projections at 0.02 / sqrt(2 n_layer)."""
    torch.manual_seed(0)
    model = twins.GPT(twins.GPT2_SMALL)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, 0.02 / (2 * twins.GPT2_SMALL.n_layer) ** 0.5)
            elif name.endswith(".weight") and p.dim() == 2:
                p.normal_(0.0, 0.02)
            elif name.endswith(".bias") and ".ln_" not in name and "ln_f" not in name:
                p.zero_()
    return model


def resnet_twin() -> torch.nn.Module:
    torch.manual_seed(0)
    return twins.ResNet18()


CASES = {
    # name: (spec, twin, example input, forward passes per timing)
    "GPT-2 small": ("specs/zoo/gpt2.yaml", gpt2_twin, lambda: torch.randint(0, 50257, (1, 128)), 5),
    "ResNet-18": ("specs/zoo/resnet18.yaml", resnet_twin, lambda: torch.rand(2, 3, 160, 160), 5),
}


def bench(repeat: int, compile_too: bool) -> tuple[list[Row], bool]:
    rows: list[Row] = []
    all_ok = True

    def add(r: tuple[Row, bool]) -> None:
        nonlocal all_ok
        rows.append(r[0])
        all_ok &= r[1]

    for name, (spec, twin, make_input, passes) in CASES.items():
        path = ROOT / spec
        build_s, twin_s = alternate(lambda p=path: modelspec.build(p), twin, repeat)
        add(row(f"{name}: build from spec vs construct twin", build_s, twin_s, 1.05))
        read_s = min(timed(lambda p=path: modelspec.compile_spec(p)) for _ in range(repeat))
        rows.append((f"{name}: of which reading + validating the spec", f"{read_s * 1000:.0f} ms", "", "—"))

        built, hand = modelspec.build(path).eval(), twin().eval()
        hand.load_state_dict(built.state_dict())
        x = make_input()
        with torch.no_grad():
            assert torch.allclose(built(x), hand(x), atol=1e-4), f"{name}: outputs differ"
            for _ in range(2):  # warm up both
                built(x), hand(x)
            ours, theirs = alternate(forwards(built, x, passes), forwards(hand, x, passes), repeat * 4)
        add(row(f"{name}: forward, eager ({passes} passes)", ours, theirs, 1.02))
        if compile_too:
            cb, ch = torch.compile(built), torch.compile(hand)
            with torch.no_grad():
                cb(x), ch(x)  # compiles
                ours, theirs = alternate(forwards(cb, x, passes), forwards(ch, x, passes), repeat * 4)
            add(row(f"{name}: forward, torch.compile ({passes} passes)", ours, theirs, 1.02))
    # A repeat stays one node: reading and validating a 96-layer GPT-2 costs what 12 layers do.
    path = ROOT / "specs/zoo/gpt2.yaml"
    deep = min(timed(lambda: modelspec.compile_spec(path, overrides={"n_layer": 96})) for _ in range(repeat))
    base = min(timed(lambda: modelspec.compile_spec(path)) for _ in range(repeat))
    add(row("gpt2: read + validate with n_layer=96 vs 12", deep, base, 1.10))
    return rows, all_ok


def print_table(rows: list[Row]) -> None:
    header = ("benchmark", "measured", "ratio", "target")
    width = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    for r in (header, tuple("-" * w for w in width), *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (slow to compile)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    rows, ok = bench(args.repeat, not args.no_compile)
    print_table(rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
