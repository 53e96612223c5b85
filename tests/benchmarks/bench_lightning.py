"""What the Lightning callback costs, against what the Recorder costs in an own loop doing the same training.

    python tests/benchmarks/bench_lightning.py [--epochs 3] [--repeat 2]

The embedded default's pretrained digits_resnet, fine-tuned on digits 5-9 (whole epochs, batch 64, SGD),
four ways: a Lightning fit without and with `SFTReport`, and the same training as an own loop without and
with `Recorder` (same probes: the recorder's defaults, 128 probe images, evaluation on the validation set).
Each way is run `--repeat` times and its fastest kept. Target: the callback adds at most what the
Recorder adds to the own loop, + 5 % of the plain fit's time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sftreport.integrations.lightning import SFTReport
from sftreport.record.recorder import Recorder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from lightning_module import Finetune, digits  # the tests' fit: one definition

LR, BATCH = 0.01, 64


def lightning_fit(train, val, epochs: int, tmp: Path, record: bool) -> float:
    callbacks = []
    if record:
        probe = (val.tensors[0][:128], val.tensors[1][:128])
        callbacks = [SFTReport(probe=probe, val_data=DataLoader(val, batch_size=256), run_dir=tmp / f"pl{time.time()}")]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    module = Finetune(LR)
    t = time.perf_counter()
    trainer.fit(module, DataLoader(train, batch_size=BATCH))
    return time.perf_counter() - t


def own_loop(train, val, epochs: int, tmp: Path, record: bool) -> float:
    model = Finetune(LR)
    opt = model.configure_optimizers()
    t = time.perf_counter()
    rec = None
    if record:
        probe = (val.tensors[0][:128], val.tensors[1][:128])
        rec = Recorder(model, probe=probe, val_data=DataLoader(val, batch_size=256), run_dir=tmp / f"own{time.time()}")
    for _ in range(epochs):
        model.train()
        for x, y in DataLoader(train, batch_size=BATCH):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rec is not None:
                rec.step(loss, targets=y)
        if rec is not None:
            rec.epoch_end()
    if rec is not None:
        rec.finish()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    train, val = digits(val_size=None)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeat):  # interleaved, so a slow moment of the machine touches every way alike
            for name, fn, record in (
                ("lightning", lightning_fit, False),
                ("lightning + SFTReport", lightning_fit, True),
                ("own loop", own_loop, False),
                ("own loop + Recorder", own_loop, True),
            ):
                s = fn(train, val, a.epochs, Path(tmp), record)
                times[name] = min(times.get(name, float("inf")), s)
    cb = times["lightning + SFTReport"] - times["lightning"]
    rec = times["own loop + Recorder"] - times["own loop"]
    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()} threads, {a.epochs} epochs"
    )
    print("| way | wall time |\n|---|---|")
    for name, s in times.items():
        print(f"| {name} | {s:.2f} s |")
    limit = rec + 0.05 * times["lightning"]
    verdict = "ok" if cb <= limit else "over"
    print(f"callback adds {cb:.2f} s; the Recorder adds {rec:.2f} s to the own loop; limit {limit:.2f} s: {verdict}")


if __name__ == "__main__":
    main()
