"""FSDP2 (`fully_shard`, parameters as DTensors) on 2 CPU processes with gloo: every recorded number equals
that of the same computation in one process with a plain model (tests/helpers/fsdp_record.py), to 1e-5,
histogram counts exactly; and the sharded run's relative change is recomputed by hand from its saved
weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import record_differences

from sftreport.store import read_run

pytestmark = pytest.mark.slow
HELPER = Path(__file__).parent / "helpers" / "fsdp_record.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("WORLD_SIZE", None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fsdp")
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        r = subprocess.run(
            [*launcher, str(HELPER), str(d / name)], capture_output=True, text=True, cwd=d, env=ENV, timeout=300
        )
        assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_the_shards_are_uneven_and_one_is_empty(runs: Path):
    shards = [json.loads((runs / f"two.shards{r}.json").read_text()) for r in (0, 1)]
    assert shards[1]["5.weight"] == 0 and shards[1]["5.bias"] == 0  # the second process holds nothing of them
    assert (shards[0]["7.weight"], shards[1]["7.weight"]) == (2 * 64, 64)
    one = torch.load(runs / "one" / "weights" / "epoch_000.pt", weights_only=True)
    assert {n: shards[0][n] + shards[1][n] for n in shards[0]} == {n: t.numel() for n, t in one.items()}


def test_every_recorded_number_equals_the_one_process_run(runs: Path):
    one = [json.loads(line) for line in (runs / "one" / "epochs.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (runs / "two" / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in two] == [0, 1, 2]
    assert record_differences(one, two) == []
    # and the parts compared are there: weights with histograms and updates, sampled gradients, activations
    last = two[-1]
    assert len(last["weights"]) == 10
    for w in last["weights"]:  # every value counted once: in a bin, below or above the fixed range
        assert sum(w["hist"]["counts"]) + w["hist"]["below"] + w["hist"]["above"] == math.prod(w["shape"])
    assert all(w["update_sq"] is not None for w in last["weights"])
    assert [g["samples"] for g in last["gradients"]] == [3] * 10
    assert len(last["activations"]) == 5 and last["cka"] and last["val"]["count"] == 33
    info = [json.loads((runs / n / "run.json").read_text()) for n in ("one", "two")]
    assert info[0]["architecture"] == info[1]["architecture"]  # class names as written, not FSDPConv2d
    assert (info[0]["environment"]["world_size"], info[1]["environment"]["world_size"]) == (1, 2)


def test_relative_change_of_the_sharded_run_recomputed_from_its_saved_weights(runs: Path):
    run = read_run(runs / "two")
    w0 = torch.load(runs / "two" / "weights" / "epoch_000.pt", weights_only=True)
    w2 = torch.load(runs / "two" / "weights" / "epoch_002.pt", weights_only=True)
    for stat in run.epochs[-1].weights:
        a, b = w0[stat.name].double().numpy(), w2[stat.name].double().numpy()
        assert stat.diff_sq == pytest.approx(float(np.sum((b - a) ** 2)), rel=1e-6)
        assert stat.ref_sq == pytest.approx(float(np.sum(a**2)), rel=1e-6)
        assert stat.stats.mean == pytest.approx(float(b.mean()), rel=1e-6, abs=1e-12)
        assert stat.stats.std == pytest.approx(float(b.std()), rel=1e-5)
    assert (runs / "two" / "report.html").stat().st_size > 10_000
