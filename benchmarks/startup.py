"""Whole-process startup: the command line against ``python -c "import torch"``.

Run: ``python benchmarks/startup.py [--repeat N]``. Each command runs as its own process,
N times (default 5), the commands taking turns within each round so that drifts of the
machine hit all of them; the figure is the median wall time, and the peak resident memory
of each process comes from ``os.wait4``. Targets (issue 9), as ratios to importing torch
measured in the same run:

- ``modelspec build`` of the bundled LeNet and ResNet-18 specs (writes a build folder): <= 1.15;
- ``modelspec report --device meta`` of the bundled Llama-3-70B-shaped spec: <= 1.2 and
  <= 400 MB peak RSS.

Exits 1 when a target is missed. On a busy machine the ratios mean little: other
processes slow the import and the commands unequally.

The ``modelspec`` command imports torch with Python's cyclic garbage collector off (see
``modelspec.cli.run``), which makes the import itself about a quarter faster than in
``python -c "import torch"``. The table also shows that import alone ("collector off", no
target), so what modelspec adds on top of it can be read off too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs" / "zoo"
MB = 1e6


def run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one process (its output is discarded)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err}")
    return elapsed, usage.ru_maxrss * 1024  # Linux reports kilobytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="processes per command (median)")
    args = parser.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "import torch": [py, "-c", "import torch"],
            # for reference, no target: how modelspec's own process imports torch (cli.run)
            "import torch, collector off": [py, "-c", "import gc; gc.disable(); import torch; gc.freeze()"],
            "build lenet": [py, "-m", "modelspec", "build", str(SPECS / "lenet.yaml"), "-o", f"{tmp}/lenet"],
            "build resnet18": [py, "-m", "modelspec", "build", str(SPECS / "resnet18.yaml"), "-o", f"{tmp}/resnet"],
            "report llama3_70b --device meta": [
                py,
                "-m",
                "modelspec",
                "report",
                str(SPECS / "llama3_70b.yaml"),
                "--device",
                "meta",
                "-o",
                f"{tmp}/llama.txt",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        peaks: dict[str, int] = dict.fromkeys(commands, 0)
        run(commands["import torch"])  # warm the file cache: the first import reads torch from disk
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                elapsed, rss = run(cmd)
                times[name].append(elapsed)
                peaks[name] = max(peaks[name], rss)
    base = statistics.median(times["import torch"])
    targets = {"build lenet": 1.15, "build resnet18": 1.15, "report llama3_70b --device meta": 1.2}
    rss_targets = {"report llama3_70b --device meta": 400 * MB}
    ok = True
    print(f"{'command':<34} {'median':>8} {'ratio':>7} {'peak RSS':>9}  target")
    for name in commands:
        med = statistics.median(times[name])
        ratio = med / base
        goal = ""
        if name in targets:
            hit = ratio <= targets[name] and peaks[name] <= rss_targets.get(name, float("inf"))
            ok &= hit
            goal = f"<= {targets[name]:.2f}x"
            if name in rss_targets:
                goal += f", <= {rss_targets[name] / MB:.0f} MB"
            goal += " ok" if hit else " MISSED"
        print(f"{name:<34} {med:7.2f}s {ratio:6.2f}x {peaks[name] / MB:7.0f}MB  {goal}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
