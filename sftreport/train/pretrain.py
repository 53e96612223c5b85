"""Pretraining of the embedded default's model: DigitsResNet on digits 0–4 (the source task).

`sftreport pretrain` rebuilds the checkpoint shipped in sftreport/train/weights/ from scratch, on the
CPU, deterministically (fixed seed, single thread order of the in-memory pipeline). The default run then
fine-tunes it on digits 5–9 with a new head: real transfer learning on data that ships with scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from sftreport.record.evaluation import evaluate
from sftreport.train.data import DIGITS_SOURCE_CLASSES, DevicePipeline, TrainBatches, load_digits_split
from sftreport.train.digits_resnet import DigitsResNet
from sftreport.train.models import DIGITS_WEIGHTS_FILE
from sftreport.train.optim import make_optimizer, make_schedule

PACKAGE_WEIGHTS = Path(__file__).parent / "weights" / DIGITS_WEIGHTS_FILE


def pretrain_digits(
    out: Path = PACKAGE_WEIGHTS, epochs: int = 30, seed: int = 0, lr: float = 0.05, batch_size: int = 64, log=print
) -> float:
    """Train from scratch on digits 0–4, save the state_dict to `out`; return validation accuracy."""
    torch.manual_seed(seed)
    device = torch.device("cpu")
    train_data, val_data = load_digits_split(DIGITS_SOURCE_CLASSES)
    model = DigitsResNet(num_classes=len(DIGITS_SOURCE_CLASSES))
    pipeline = DevicePipeline(device, 32, hflip=False, channels_last=False)
    batches = TrainBatches(train_data, batch_size, seed, 0, 1, device, None, None)
    optimizer = make_optimizer(model.parameters(), "sgd", lr, momentum=0.9, weight_decay=5e-4)
    schedule = make_schedule(optimizer, "cosine", epochs * len(batches))
    val = [(pipeline.eval_batch(val_data.images), val_data.labels)]
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y, aug in batches.epoch(epoch, hflip=False):
            loss = F.cross_entropy(model(pipeline.train_batch(x, aug)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch % 5 == 0 or epoch == epochs:
            ev = evaluate(model, val, len(DIGITS_SOURCE_CLASSES), device)
            log(f"pretrain epoch {epoch}/{epochs}: val loss {ev.loss:.4f} acc {ev.accuracy:.1%}")
    ev = evaluate(model, val, len(DIGITS_SOURCE_CLASSES), device)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    log(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB), source-task val accuracy {ev.accuracy:.1%}")
    return ev.accuracy
