"""The default run with 1 and with 2 CPU processes (torchrun, gloo): wall time and training time per epoch.

    python tests/benchmarks/bench_distributed.py [--epochs 10]

On a 2-core machine this measures correctness and overhead, not speed-up: two processes share the same
two cores (torchrun sets OMP_NUM_THREADS=1 per process; the 1-process run uses both cores).
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

from sftreport.store import read_run


def timed_run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    a = ap.parse_args()
    env = {**os.environ, "CI": "true"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            run_dir = Path(tmp) / f"n{n}"
            args = [
                "run",
                "--epochs",
                str(a.epochs),
                "--quiet",
                "--run-dir",
                str(run_dir),
                "--out",
                str(Path(tmp) / f"{n}.md"),
            ]
            launcher = (
                [sys.executable, "-m", "sftreport"]
                if n == 1
                else [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc-per-node",
                    str(n),
                    "-m",
                    "sftreport",
                ]
            )
            wall = timed_run(launcher + args, env)
            run = read_run(run_dir)
            epochs = run.epochs[1:]
            rows.append(
                (
                    n,
                    wall,
                    statistics.mean(e.timing.train_s for e in epochs),
                    statistics.mean(e.timing.samples_per_s for e in epochs),
                    run.epochs[-1].val.accuracy,
                )
            )
    print(f"default run, {a.epochs} epochs, {os.cpu_count()} CPU cores")
    print(
        "| processes | wall time | train time per epoch | images/s (training) | final val accuracy |\n|---|---|---|---|---|"
    )
    for n, wall, train, ips, acc in rows:
        print(f"| {n} | {wall:.1f} s | {train:.2f} s | {ips:,.0f} | {acc:.1%} |")
    print(f"scaling (images/s, 2 vs 1 process): {rows[1][3] / rows[0][3]:.2f}×")


if __name__ == "__main__":
    main()
