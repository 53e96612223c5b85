"""Time rendering a run directory into HTML and PDF, and print the sizes. Run by hand (pytest does not
collect it):

    python tests/benchmarks/bench_render.py RUN_DIR [--repeat 3] [--out DIR]

For each format it reports:
- cold: a fresh Python process, as `sftreport render` would be (interpreter, imports, vl-convert's start-up);
- first: the first render inside this process (imports already done, vl-convert not yet warm);
- warm: the median of --repeat further renders in the same process (what a second report costs).
Targets for a recorded resnet50 run of 10 epochs: HTML ≤ 1 s and ≤ 3 MB, PDF ≤ 5 s and ≤ 3 MB.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"html": (1.0, 3_000_000), "pdf": (5.0, 3_000_000)}


def cold(run_dir: Path, out: Path) -> float:
    code = (
        "import sys, time; t = time.perf_counter(); from pathlib import Path; "
        "from sftreport.report.render import render_run; "
        f"render_run(Path({str(run_dir)!r}), [Path({str(out)!r})]); print(time.perf_counter() - t)"
    )
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(f"cold render failed:\n{r.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--repeat", type=int, default=3, help="warm renders per format (median reported)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the reports (default: a temporary one)")
    ap.add_argument("--no-cold", action="store_true", help="skip the fresh-process measurement")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="sftreport-bench-"))
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    from sftreport.report.render import render_run
    from sftreport.store import read_run

    import_s = time.perf_counter() - t
    run = read_run(a.run_dir)
    print(
        f"run: {a.run_dir} ({run.info.model}, {len(run.epochs)} snapshots, "
        f"{len(run.epochs[-1].weights) if run.epochs else 0} parameter tensors, status {run.info.status})"
    )
    print(f"import of the render stage: {import_s:.2f} s")
    rows = []
    for fmt in ("html", "pdf"):
        path = out / f"report.{fmt}"
        c = None if a.no_cold else cold(a.run_dir, out / f"cold.{fmt}")
        t = time.perf_counter()
        render_run(a.run_dir, [path])
        first = time.perf_counter() - t
        warm = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            render_run(a.run_dir, [path])
            warm.append(time.perf_counter() - t)
        size = path.stat().st_size
        rows.append((fmt, c, first, statistics.median(warm), min(warm), size, path))
    print(f"\n{'format':6} {'cold':>7} {'first':>7} {'warm':>7} {'best':>7} {'size':>9}   target")
    for fmt, c, first, warm, best, size, _path in rows:
        limit_s, limit_b = TARGETS[fmt]
        ok = "ok" if warm <= limit_s and size <= limit_b else "OVER"
        cold_txt = f"{c:6.2f}s" if c is not None else "      –"
        print(
            f"{fmt:6} {cold_txt} {first:6.2f}s {warm:6.2f}s {best:6.2f}s {size / 1e6:7.2f}MB   "
            f"≤ {limit_s:g} s, ≤ {limit_b / 1e6:g} MB: {ok}"
        )
    print(f"\nreports in {out}")


if __name__ == "__main__":
    main()
