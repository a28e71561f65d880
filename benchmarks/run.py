"""modelspec benchmarks: each target is a ratio to a baseline measured in the same run.

Run: ``make bench`` (or ``python benchmarks/run.py [--repeat N]``). Prints a table;
exits 1 when a target is missed. Times are the best of N runs (default 3).

Targets
- report(GPT-2 small) <= 1.3x hashing the same bytes with sha256 in a plain single-thread
  loop; its unique total is 124,439,808 and its naive total 163,037,184.
- the same <= 2x while another process keeps one core busy: the benchmark starts a
  spinning subprocess and measures both sides while it runs.
- diff of two GPT-2-small reports (one after an optimizer step): absolute time.
- writing a checkpoint (the unique tensors, checksums known from the report as in a
  build) <= 1.10x writing the same bytes to a file and fsync; one file, and sharded
  (100MB shards).
- loading and verifying a checkpoint into an allocated model (every sha256 checked)
  <= 1.10x safetensors.torch.load_file + sha256 of every tensor on all usable cores;
  one file, and sharded.
- building a GPT-2-small-sized MLP (30 x Linear(2048, 2048): 125,890,560 parameters) from
  a spec vs constructing it by hand (<= 1.10x), and the built model's forward pass vs
  the handwritten one's (<= 1.02x).
- portable init: modelspec's bit-exact normal_ (used while a spec is built) on a tensor the
  size of GPT-2's token embedding (50257 x 768) vs torch's own normal_ (<= 3x).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2 import gpt2_small
from timing import best

import modelspec
from modelspec._checkpoint import open_checkpoint, save_checkpoint, unique_state
from modelspec._diff import diff_reports
from modelspec._rng import normal_ as portable_normal_
from modelspec._stats import raw_bytes, usable_cores

INDEX_NAME = "model.safetensors.index.json"


def plain_hash_loop(module: torch.nn.Module) -> list[str]:
    """The baseline: sha256 of every unique parameter's bytes, one after another."""
    out = []
    for p in module.parameters():  # parameters() lists a tied tensor once
        t = p.detach().contiguous()
        n = t.numel() * t.element_size()
        out.append(hashlib.sha256((ctypes.c_char * n).from_address(t.data_ptr())).hexdigest())
    return out


@contextlib.contextmanager
def one_core_busy() -> Iterator[None]:
    """Another process spinning on one core while the block runs (contention, made on purpose)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        yield
    finally:
        spinner.kill()
        spinner.wait()


def raw_write(path: Path, parts: list[memoryview]) -> None:
    """The baseline for writing: the same bytes to one file, then fsync."""
    with open(path, "wb", buffering=0) as f:
        for part in parts:
            while part:
                part = part[f.write(part) :]
        os.fsync(f.fileno())


def load_file_and_hash(path: Path) -> None:
    """The baseline for a verified load: safetensors' load_file, then sha256 of every tensor on all cores."""
    tensors = safetensors.torch.load_file(str(path))
    with ThreadPoolExecutor(max_workers=usable_cores()) as pool:
        list(pool.map(lambda t: hashlib.sha256(raw_bytes(t)).hexdigest(), tensors.values()))


MLP_LAYERS, MLP_WIDTH = 30, 2048


def mlp_pair() -> tuple[str, Callable[[], torch.nn.Module]]:
    """The same GPT-2-small-sized MLP as a spec and as handwritten PyTorch."""
    layers = "".join(f"  - Linear: [{MLP_WIDTH}, {MLP_WIDTH}]\n  - GELU\n" for _ in range(MLP_LAYERS))
    spec = f"modelspec: 1\nseed: 0\ninput: {{shape: [2, {MLP_WIDTH}]}}\nmodel:\n{layers}"

    def hand() -> torch.nn.Module:
        mods: list[torch.nn.Module] = []
        for _ in range(MLP_LAYERS):
            mods += [torch.nn.Linear(MLP_WIDTH, MLP_WIDTH), torch.nn.GELU()]
        return torch.nn.Sequential(*mods)

    return spec, hand


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write checkpoints (default: the system's temp folder)")
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    failed = False

    def check(name: str, value: float, baseline: float, target: float | None, unit: str = "s") -> None:
        nonlocal failed
        ratio = value / baseline
        ok = target is None or ratio <= target
        failed |= not ok
        goal = f"<= {target:.2f}" if target is not None else "—"
        rows.append(
            (
                name,
                f"{value:.3f} {unit} vs {baseline:.3f} {unit}",
                f"{ratio:.2f}x",
                f"{goal} {'ok' if ok else 'MISSED'}",
            )
        )

    model = gpt2_small()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)

    report = modelspec.report(model)
    t = report.totals
    assert t.unique_params == 124_439_808, t.unique_params
    assert t.naive_params == 163_037_184, t.naive_params
    rows.append(("GPT-2 small: unique / naive params", f"{t.unique_params:,} / {t.naive_params:,}", "", "exact ok"))

    hash_s = best(lambda: plain_hash_loop(model), args.repeat)
    report_s = best(lambda: modelspec.report(model), args.repeat)
    check("report() vs plain sha256 loop", report_s, hash_s, 1.3)
    with one_core_busy():
        busy_hash_s = best(lambda: plain_hash_loop(model), args.repeat)
        busy_report_s = best(lambda: modelspec.report(model), args.repeat)
    check("report() vs plain sha256 loop, one core kept busy", busy_report_s, busy_hash_s, 2.0)

    stepped = gpt2_small()
    with torch.no_grad():
        stepped.h[0].mlp["c_fc"].weight.add_(1e-3)
    other = modelspec.report(stepped)
    diff_s = best(lambda: diff_reports(report, other), args.repeat)
    changed = diff_reports(report, other).value
    assert [v.name for v in changed] == ["h.0.mlp.c_fc.weight"], changed
    rows.append(("diff of two GPT-2-small reports", f"{diff_s * 1000:.1f} ms", "", "1 value change found ok"))

    hashes = {e.name: e.sha256 for e in report.tensors if e.sha256}
    spec_sha = "0" * 64  # a stand-in: this module was not built from a spec
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        raw, one, sharded = Path(tmp) / "raw.bin", Path(tmp) / "one", Path(tmp) / "sharded"
        one.mkdir()
        sharded.mkdir()
        tensors = [raw_bytes(t) for t in unique_state(model)[0].values()]
        raw_s = best(lambda: raw_write(raw, tensors), args.repeat)
        for folder, limit, label in ((one, None, "one file"), (sharded, "100MB", "100MB shards")):
            path = folder / "model.safetensors"

            def ours(path: Path = path, limit: str | None = limit) -> None:
                save_checkpoint(model, path, spec_sha256=spec_sha, hashes=hashes, max_shard_size=limit)

            check(f"checkpoint write ({label}) vs raw write+fsync", best(ours, args.repeat), raw_s, 1.10)
        plain_load_s = best(lambda: load_file_and_hash(one / "model.safetensors"), args.repeat)
        target = gpt2_small()
        for path, label in ((one / "model.safetensors", "one file"), (sharded / INDEX_NAME, "100MB shards")):
            ours_load_s = best(lambda path=path: open_checkpoint(path).load_into(target), args.repeat)
            check(f"checkpoint load+verify ({label}) vs load_file+sha256", ours_load_s, plain_load_s, 1.10)
        loaded, original = target.state_dict(), model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in original.items())

    mlp_spec, mlp_hand = mlp_pair()
    torch.manual_seed(0)
    build_s = best(lambda: modelspec.build(mlp_spec), args.repeat)
    hand_s = best(mlp_hand, args.repeat)
    check("build 126M-param MLP spec vs handwritten construction", build_s, hand_s, 1.10)
    built, hand = modelspec.build(mlp_spec), mlp_hand()
    x = torch.rand(64, MLP_WIDTH)
    with torch.no_grad():
        for _ in range(3):  # warm up both
            built(x), hand(x)
        fwd_built = best(lambda: [built(x) for _ in range(20)], args.repeat * 3)
        fwd_hand = best(lambda: [hand(x) for _ in range(20)], args.repeat * 3)
    check("forward: built vs handwritten (20 passes)", fwd_built, fwd_hand, 1.02)

    embedding = torch.empty(50257, 768)
    g = torch.Generator()
    torch_init_s = best(lambda: embedding.normal_(0.0, 0.02, generator=g.manual_seed(0)), args.repeat)
    portable_s = best(lambda: portable_normal_(embedding, 0.0, 0.02, generator=g.manual_seed(0)), args.repeat)
    check("portable init vs torch init (normal_, 38.6M values)", portable_s, torch_init_s, 3.0)

    width = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("benchmark", "measured", "ratio", "target")
    width = [max(w, len(h)) for w, h in zip(width, header, strict=True)]
    for r in (header, tuple("-" * w for w in width), *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
