"""The benchmarks are run by hand, but they must keep working: the GPU benchmark's CPU mode runs here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_in_its_tiny_cpu_mode(tmp_path: Path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "benchmarks" / "bench_gpu.py"), "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == {}
    run = results["sftreport"]
    assert run["status"] == "completed" and run["missing_probes"] == [] and run["report_bytes"] > 100_000
    assert run["images_per_s"] > 0 and set(run["probes"]) >= {"weights", "activations", "features"}
    assert results["plain"]["steps"] == 2 and results["sftreport_no_record"]["record_s"] < 0.01
    assert "| speed-up over the plain loop |" in r.stdout and (tmp_path / "run.tar.gz").stat().st_size > 10_000
