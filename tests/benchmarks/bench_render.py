"""Time rendering run directories into HTML and PDF, and print the sizes. Run by hand (pytest does not
collect it):

    python tests/benchmarks/bench_render.py RUN_DIR [RUN_DIR ...] [--repeat 3] [--out DIR]
    python tests/benchmarks/bench_render.py --epochs 10,100,300    # synthetic resnet50 runs of that length

For each run and format it reports:
- cold: a fresh Python process, as `sftreport render` would be (interpreter, imports, vl-convert's start-up);
- first: the first render inside this process (imports already done, vl-convert not yet warm);
- warm: the median of --repeat further renders in the same process (what a second report costs).
Targets for a resnet50 run of 10 epochs: HTML ≤ 1.2 s cold; PDF ≤ 3 s warm and ≤ 5 s cold. At 100 epochs:
HTML ≤ 3 MB and ≤ 1.5 s, PDF ≤ 5 s; at 300 epochs: HTML ≤ 4 MB (a report must not grow with the run).

The synthetic runs (tests/report/synthetic_run.py) have resnet50's 161 parameter tensors, 200 step points
an epoch (the recorder's cap), a probe set of 256 images at 224 px and the default 32 histogram bins.
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
TARGETS = {  # (epochs up to, format) -> (seconds cold, seconds warm, bytes)
    (10, "html"): (1.2, None, 3_000_000),
    (10, "pdf"): (5.0, 3.0, 3_000_000),
    (100, "html"): (1.5, None, 3_000_000),
    (100, "pdf"): (5.0, None, 3_000_000),
    (300, "html"): (None, None, 4_000_000),
    (300, "pdf"): (None, None, 4_000_000),
}


def cold(run_dir: Path, out: Path) -> float:
    code = (
        "from pathlib import Path; from sftreport.report.render import render_run; "
        f"render_run(Path({str(run_dir)!r}), [Path({str(out)!r})])"
    )
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"cold render failed:\n{r.stderr[-2000:]}")
    return wall


def synthetic(epochs: int, where: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "report"))
    from synthetic_run import build_run

    return build_run(
        where / f"resnet50-{epochs}",
        arch="resnet50",
        epochs=epochs,
        probe_size=256,
        steps_per_epoch=200,
        image_size=224,
    )


def verdict(epochs: int, fmt: str, cold_s: float | None, warm_s: float, size: int) -> str:
    limits = next((v for (n, f), v in sorted(TARGETS.items()) if f == fmt and epochs <= n), None)
    if limits is None:
        return ""
    c, w, b = limits
    parts, ok = [], True
    if c is not None and cold_s is not None:
        parts.append(f"cold ≤ {c:g} s")
        ok &= cold_s <= c
    if w is not None:
        parts.append(f"warm ≤ {w:g} s")
        ok &= warm_s <= w
    parts.append(f"≤ {b / 1e6:g} MB")
    ok &= size <= b
    return ", ".join(parts) + (": ok" if ok else ": OVER")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", type=Path, nargs="*")
    ap.add_argument("--epochs", help="comma-separated lengths of synthetic resnet50 runs to build and time")
    ap.add_argument("--repeat", type=int, default=3, help="warm renders per format (median reported)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the reports (default: a temporary one)")
    ap.add_argument("--no-cold", action="store_true", help="skip the fresh-process measurement")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="sftreport-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = list(a.run_dirs) + [synthetic(int(n), out) for n in (a.epochs.split(",") if a.epochs else [])]
    if not runs:
        ap.error("give a RUN_DIR or --epochs")

    t = time.perf_counter()
    from sftreport.report.render import render_run
    from sftreport.store import read_run

    print(f"import of the render stage: {time.perf_counter() - t:.2f} s")
    print(f"\n{'epochs':>6} {'format':6} {'cold':>7} {'first':>7} {'warm':>7} {'best':>7} {'size':>9}   target")
    for run_dir in runs:
        epochs = len(read_run(run_dir).epochs) - 1
        for fmt in ("html", "pdf"):
            path = out / f"{run_dir.name}.{fmt}"
            c = None if a.no_cold else cold(run_dir, out / f"{run_dir.name}-cold.{fmt}")
            t = time.perf_counter()
            render_run(run_dir, [path])
            first = time.perf_counter() - t
            warm = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                render_run(run_dir, [path])
                warm.append(time.perf_counter() - t)
            size = path.stat().st_size
            cold_txt = f"{c:6.2f}s" if c is not None else "      –"
            print(
                f"{epochs:6d} {fmt:6} {cold_txt} {first:6.2f}s {statistics.median(warm):6.2f}s {min(warm):6.2f}s "
                f"{size / 1e6:7.2f}MB   {verdict(epochs, fmt, c, statistics.median(warm), size)}",
                flush=True,
            )
    print(f"\nreports in {out}")


if __name__ == "__main__":
    main()
