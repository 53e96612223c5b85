"""The default run with 1 and with 2 CPU processes (torchrun, gloo), the model replicated (DDP) and sharded
(`--shard fsdp`): wall time, training time per epoch, and what recording costs at each epoch end.

    python tests/benchmarks/bench_distributed.py [--epochs 10] [--model digits_resnet] [--weights DEFAULT]

On a 2-core machine this measures correctness and overhead, not speed-up: two processes share the same
two cores (torchrun sets OMP_NUM_THREADS=1 per process; the 1-process run uses both cores). Replicated,
only rank 0 runs the probes; sharded, every process measures its own shards of the weights and gradients
and the pieces are combined across processes (exact statistics), and the probe set's forward passes run
on every process. "weights" and "gradients" are those probes' seconds per epoch end (rank 0's clock),
"recording" everything the recorder does at an epoch end after the evaluation.
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
    ap.add_argument("--model", default="digits_resnet")
    ap.add_argument("--weights", default="DEFAULT")
    a = ap.parse_args()
    env = {**os.environ, "CI": "true"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    ways = [("1", [sys.executable], "none"), ("2, DDP", torchrun, "none"), ("2, FSDP", torchrun, "fsdp")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, launcher, shard in ways:
            run_dir = Path(tmp) / f"{label.replace(', ', '-')}"
            args = ["-m", "sftreport", "run", "--model", a.model, "--weights", a.weights, "--epochs", str(a.epochs)]
            args += ["--quiet", "--run-dir", str(run_dir), "--out", str(Path(tmp) / f"{run_dir.name}.md")]
            if shard != "none":
                args += ["--shard", shard]
            wall = timed_run(launcher + args, env)
            run = read_run(run_dir)
            epochs = run.epochs[1:]
            rows.append(
                (
                    label,
                    wall,
                    statistics.mean(e.timing.train_s for e in epochs),
                    statistics.mean(e.timing.samples_per_s or 0 for e in epochs),
                    statistics.mean(e.timing.probes.get("weights", 0) for e in epochs),
                    statistics.mean(e.timing.probes.get("gradients", 0) for e in epochs),
                    statistics.mean(e.timing.record_s for e in epochs),
                    run.epochs[-1].val.accuracy if run.epochs[-1].val else float("nan"),
                )
            )
    print(f"{a.model} ({a.weights}) on digits, {a.epochs} epochs, {os.cpu_count()} CPU cores")
    print(
        "| processes | wall time | train time per epoch | images/s (training) | weights | gradients "
        "| recording per epoch end | final val accuracy |\n|---|---|---|---|---|---|---|---|"
    )
    for label, wall, train, ips, w, g, rec, acc in rows:
        print(
            f"| {label} | {wall:.1f} s | {train:.2f} s | {ips:,.0f} | {w * 1000:.0f} ms | {g * 1000:.1f} ms "
            f"| {rec:.2f} s | {acc:.1%} |"
        )
    print(f"scaling (images/s, 2 vs 1 process, DDP): {rows[1][3] / rows[0][3]:.2f}×")


if __name__ == "__main__":
    main()
