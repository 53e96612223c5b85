"""Time `sftreport diff` of two resnet50 state_dicts (random weights, `torchvision.models.resnet50()` with two
seeds: no download) with the spectral summary, as a user runs it: a fresh process per diff. Run by hand
(pytest does not collect it):

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_diff.py [--repeat 3] [--out DIR] [--pdf] [--accuracy [RUN_DIR ...]]

Prints the wall time of each run and their median, and where the time goes in one in-process diff (loading and
checking, the weights probe, the spectrum, the report). Target: ≤ 10 s for the HTML report.
Random weights are the hardest case for the spectrum: the change is full-rank, with a flat spectrum.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET_S = 10.0


def checkpoints(where: Path) -> tuple[Path, Path]:
    import torch
    import torchvision

    paths = []
    for seed in (0, 1):
        path = where / f"resnet50-seed{seed}.pt"
        if not path.exists():
            torch.manual_seed(seed)
            torch.save(torchvision.models.resnet50().state_dict(), path)
        paths.append(path)
    return paths[0], paths[1]


def breakdown(base: Path, tuned: Path, out: Path) -> None:
    """Where the time of one in-process diff goes (imports already done)."""
    import sftreport.diff as D
    import sftreport.record.spectrum as S
    import sftreport.record.weights as W
    import sftreport.report.diff as R

    seconds: dict[str, float] = {}

    def timed(name, f):
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t

        return g

    D.load_pair = timed("load and check the checkpoints", D.load_pair)
    W.WeightProbe.measure = timed("weights probe (twice)", W.WeightProbe.measure)
    S.spectrum = timed("spectrum", S.spectrum)
    R.render_diff = timed("report", R.render_diff)
    t = time.perf_counter()
    D.diff_checkpoints(base, tuned, "resnet50", [out])
    total = time.perf_counter() - t
    for name, s in seconds.items():
        print(f"  {name:34} {s:6.2f} s")
    print(f"  {'in all (imports done)':34} {total:6.2f} s")


def accuracy(base: Path, tuned: Path, runs: list[Path]) -> None:
    """The randomized route's top singular value and effective-rank estimate against the full spectrum, on every
    matrix of the two checkpoints and of the given run directories' first and last saved weights."""
    import math
    import statistics

    import torch

    from sftreport.record.spectrum import layer_spectrum

    pairs = [("two random resnet50", base, tuned)]
    for run in runs:
        files = sorted((run / "weights").glob("epoch_*.pt"))
        pairs.append((f"{run.name}: {files[0].name} → {files[-1].name}", files[0], files[-1]))
    for label, a_path, b_path in pairs:
        a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
        top, er = [], []
        for k, v in a.items():
            if v.dim() < 2 or min(v.shape[0], v.numel() // v.shape[0]) <= 16 or k not in b or b[k].shape != v.shape:
                continue
            r = layer_spectrum(k, v, b[k], full_flops=0)
            f = layer_spectrum(k, v, b[k], full_flops=math.inf)
            if f.singular_values:
                top.append(r.singular_values[0] / f.singular_values[0] - 1)
                er.append(r.effective_rank / f.effective_rank - 1)
        if top:
            print(
                f"  {label}: {len(top)} matrices; top singular value {statistics.median(top):+.2%} "
                f"[{min(top):+.2%} … {max(top):+.2%}], effective rank {statistics.median(er):+.2%} "
                f"[{min(er):+.2%} … {max(er):+.2%}] (median [range])"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="folder for the checkpoints and reports")
    ap.add_argument("--pdf", action="store_true", help="also time the PDF report")
    ap.add_argument(
        "--accuracy",
        type=Path,
        nargs="*",
        metavar="RUN_DIR",
        help="also check the randomized spectrum against the "
        "full one (on the two checkpoints and on these runs' saved weights)",
    )
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="sftreport-bench-diff-"))
    out.mkdir(parents=True, exist_ok=True)
    base, tuned = checkpoints(out)
    for fmt in ("html", "pdf") if a.pdf else ("html",):
        walls = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-m", "sftreport", "diff", str(base), str(tuned), "--model", "resnet50",
                 "--out", str(out / f"diff.{fmt}")],
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            walls.append(time.perf_counter() - t)
            if r.returncode:
                sys.exit(f"diff failed:\n{r.stderr[-2000:]}")
        med = statistics.median(walls)
        size = (out / f"diff.{fmt}").stat().st_size
        print(
            f"diff of two resnet50 state_dicts, {fmt.upper()}: "
            + ", ".join(f"{w:.2f} s" for w in walls)
            + f"; median {med:.2f} s (target ≤ {TARGET_S:g} s: {'ok' if med <= TARGET_S else 'OVER'}); "
            f"report {size / 1e6:.2f} MB",
            flush=True,
        )
    print("in one process:")
    breakdown(base, tuned, out / "diff-in-process.html")
    if a.accuracy is not None:
        print("randomized spectrum against the full one:")
        accuracy(base, tuned, a.accuracy)
    print(f"reports in {out}")


if __name__ == "__main__":
    main()
