"""Time `sftreport compare` of 4 synthetic resnet50-size runs of 10 epochs into HTML and PDF, and print the sizes.
Run by hand (pytest does not collect it):

    python tests/benchmarks/bench_compare.py [--runs 4] [--epochs 10] [--repeat 3] [--out DIR]

Each run is a synthetic resnet50 run (tests/report/synthetic_run.py: 161 parameter tensors, 200 step points an
epoch, a probe set of 256 images at 224 px) with a strategy of its own, and a spectrum of its 54 weight matrices
written into run.json as `Recorder.finish` writes it. "cold" is a fresh `sftreport compare` process per format
(interpreter, imports, vl-convert's start-up); "warm" the median of --repeat renders inside one process.
Targets: HTML ≤ 2 s, PDF ≤ 8 s, each ≤ 4 MB.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {"html": (2.0, 4_000_000), "pdf": (8.0, 4_000_000)}
STRATEGIES = ["full", "linear-probe", "freeze-until:layer3", "lp-ft", "full", "linear-probe"]


def spectrum_of(run_dir: Path, seed: int) -> None:
    """A plausible spectrum for every weight matrix of the run's last epoch (decaying singular values that hold
    exactly its recorded ‖ΔW‖²), written into run.json."""
    import numpy as np

    from sftreport.schema import LayerSpectrum, Spectrum
    from sftreport.store import RunWriter, read_run

    run = read_run(run_dir)
    last = run.epochs[-1]
    rng = np.random.default_rng(seed)
    layers = []
    for w in last.weights:
        if len(w.shape) < 2:
            continue
        rank = min(w.shape[0], math.prod(w.shape[1:]))
        if w.diff_sq == 0:
            layers.append(
                LayerSpectrum(name=w.name, module=w.module, shape=w.shape, rank=rank, diff_sq=0.0, ref_sq=w.ref_sq)
            )
            continue
        decay = rng.uniform(0.02, 0.3)
        s = np.exp(-decay * np.arange(rank))
        s *= math.sqrt(w.diff_sq / float((s**2).sum()))
        p = s / s.sum()
        layers.append(
            LayerSpectrum(
                name=w.name,
                module=w.module,
                shape=w.shape,
                rank=rank,
                diff_sq=w.diff_sq,
                ref_sq=w.ref_sq,
                singular_values=[float(x) for x in s[:8]],
                effective_rank=float(min(rank, np.exp(-(p * np.log(p)).sum()))),
                exact=rank * rank * math.prod(w.shape) <= 3e7,
            )
        )
    run.info.spectrum = Spectrum(epoch=last.epoch, top=8, layers=layers)
    RunWriter(run_dir, resume=True).write_run(run.info)


def synthetic(n: int, epochs: int, where: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT / "tests" / "report"))
    from synthetic_run import build_run

    runs = []
    for i in range(n):
        strategy = STRATEGIES[i % len(STRATEGIES)]
        path = build_run(
            where / f"resnet50-{i}-{strategy.replace(':', '_')}",
            name="resnet50 on cifar10",
            arch="resnet50",
            epochs=epochs,
            probe_size=256,
            steps_per_epoch=200,
            image_size=224,
            strategy="linear-probe" if strategy == "linear-probe" else "full",
            seed=i,
            config={"model": "resnet50", "epochs": epochs, "lr": 0.001 * (i + 1), "strategy": strategy},
        )
        spectrum_of(path, i)
        runs.append(path)
    return runs


def cold(runs: list[Path], out: Path) -> float:
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "sftreport", "compare", *map(str, runs), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"compare failed:\n{r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="folder for the runs and reports (default: a temporary one)")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="sftreport-bench-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    runs = synthetic(a.runs, a.epochs, out)
    print(f"{a.runs} synthetic resnet50 runs of {a.epochs} epochs written in {time.perf_counter() - t:.1f} s")

    from sftreport.report.compare import compare_runs

    print(f"\n{'format':6} {'cold':>7} {'warm':>7} {'size':>9}   target")
    for fmt in ("html", "pdf"):
        path = out / f"compare.{fmt}"
        colds = [cold(runs, path) for _ in range(a.repeat)]
        compare_runs(runs, [path])
        warm = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            compare_runs(runs, [path])
            warm.append(time.perf_counter() - t)
        size = path.stat().st_size
        limit_s, limit_b = TARGETS[fmt]
        c = statistics.median(colds)
        ok = c <= limit_s and size <= limit_b
        print(
            f"{fmt:6} {c:6.2f}s {statistics.median(warm):6.2f}s {size / 1e6:7.2f}MB   "
            f"≤ {limit_s:g} s, ≤ {limit_b / 1e6:g} MB: {'ok' if ok else 'OVER'}",
            flush=True,
        )
    print(f"\nreports in {out}")


if __name__ == "__main__":
    main()
