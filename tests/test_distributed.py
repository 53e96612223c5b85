"""torchrun with 2 CPU processes (gloo): one run directory, one report, the same numbers as 1 process, with
the model replicated (DDP) and sharded (`--shard fsdp`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support import record_differences

from sftreport.store import read_run

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ARGS = ["run", "--epochs", "2", "--probe-size", "32", "--batch-size", "64", "--quiet"]
ENV = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ddp")
    out = {}
    for name, launcher, extra in (
        ("one", [sys.executable, "-m", "sftreport"], []),
        ("two", [*TORCHRUN, "-m", "sftreport"], []),
        ("fsdp", [*TORCHRUN, "-m", "sftreport"], ["--shard", "fsdp"]),
    ):
        r = _run(
            [
                *launcher,
                *ARGS,
                *extra,
                "--strategy",
                "linear-probe",
                "--run-dir",
                str(d / name),
                "--out",
                str(d / f"{name}.html"),
            ],
            cwd=d,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = d
    return {"dir": d}


def test_one_run_directory_and_one_report_from_two_processes(runs):
    d = runs["dir"]
    assert sorted(p.name for p in d.iterdir()) == ["fsdp", "fsdp.html", "one", "one.html", "two", "two.html"]
    run = read_run(d / "two")
    assert run.info.environment.world_size == 2 and run.info.status == "completed"
    assert [e.epoch for e in run.epochs] == [0, 1, 2]


def test_two_processes_report_the_numbers_of_one(runs):
    d = runs["dir"]
    one, two = read_run(d / "one"), read_run(d / "two")
    for a, b in zip(one.epochs, two.epochs, strict=True):
        assert a.val.confusion == b.val.confusion and a.val.count == b.val.count == 225
        assert b.val.loss == pytest.approx(a.val.loss, rel=1e-5)
        if a.epoch:
            assert b.train_loss == pytest.approx(a.train_loss, rel=1e-5)
            assert b.train_accuracy == pytest.approx(a.train_accuracy, rel=1e-9)
            assert [p.loss for p in b.steps] == pytest.approx([p.loss for p in a.steps], rel=1e-5)
        wa, wb = {w.name: w for w in a.weights}, {w.name: w for w in b.weights}
        assert wb["fc.weight"].rel_change == pytest.approx(wa["fc.weight"].rel_change, rel=1e-5)
        ga, gb = {g.name: g for g in a.gradients}, {g.name: g for g in b.gradients}
        for name in ga:  # statistics of the synchronised gradient
            assert gb[name].norm_sum == pytest.approx(ga[name].norm_sum, rel=1e-4)


def test_sharded_by_fsdp_two_processes_record_every_number_of_one(runs):
    """A linear probe keeps BatchNorm in eval mode, so the sharded run computes what one process computes:
    every recorded statistic (weights, histograms, updates, gradients, activations, features, evaluation)
    equals it to 1e-5, counts exactly."""
    d = runs["dir"]
    one, fsdp = (
        [json.loads(line) for line in (d / n / "epochs.jsonl").read_text().splitlines()] for n in ("one", "fsdp")
    )
    assert [e["epoch"] for e in fsdp] == [0, 1, 2]
    assert record_differences(one, fsdp) == []
    run = read_run(d / "fsdp")
    assert run.info.environment.world_size == 2 and run.info.config["shard"] == "fsdp"
    assert run.info.environment.sharding == "fsdp" and read_run(d / "two").info.environment.sharding is None
    assert "cpu, fp32, 2 processes, parameters sharded (FSDP)" in (d / "fsdp.html").read_text()
    assert run.info.architecture == read_run(d / "one").info.architecture
    saved = torch.load(d / "fsdp" / run.epochs[-1].weights_file, weights_only=True)  # gathered whole
    assert {k: tuple(v.shape) for k, v in saved.items() if k.endswith("weight")} == {
        w.name: tuple(w.shape) for w in run.epochs[-1].weights if w.name.endswith("weight")
    }


def test_shard_fsdp_in_one_process_is_refused_in_one_line(tmp_path: Path):
    r = _run([sys.executable, "-m", "sftreport", *ARGS, "--shard", "fsdp", "--run-dir", str(tmp_path / "r")], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "r").exists()
    assert r.stderr.strip().splitlines() == [
        "sftreport: error: --shard fsdp shards the model across the processes of a torchrun job, and this is one "
        "process: start it with torchrun --nproc-per-node N (N ≥ 2)"
    ]


def test_a_failure_on_one_rank_ends_the_job_with_a_message_not_a_hang(tmp_path: Path):
    script = Path(__file__).parent / "helpers" / "ddp_fault.py"
    started = time.time()
    r = _run(
        [*TORCHRUN, str(script), *ARGS, "--epochs", "50", "--run-dir", str(tmp_path / "run")], cwd=tmp_path, timeout=240
    )
    assert r.returncode != 0
    assert "injected failure on rank 1" in r.stderr
    assert time.time() - started < 200
