"""Pretraining of the embedded models (digits_resnet, digits_lstm, digits_transformer) on digits 0–4, the
source task.

`sftreport pretrain [--model NAME]` rebuilds a checkpoint shipped in sftreport/train/weights/ from scratch,
on the CPU, deterministically (fixed seed, single thread order of the in-memory pipeline). The runs then
fine-tune it on digits 5–9 with a new head: real transfer learning on data that ships with scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from sftreport.record.evaluation import evaluate
from sftreport.train.data import DIGITS_SOURCE_CLASSES, DevicePipeline, TrainBatches, load_digits_split
from sftreport.train.models import DIGITS_MODEL, EMBEDDED
from sftreport.train.optim import make_optimizer, make_schedule

WEIGHTS_DIR = Path(__file__).parent / "weights"
PACKAGE_WEIGHTS = WEIGHTS_DIR / EMBEDDED[DIGITS_MODEL].weights_file(DIGITS_MODEL)
# the optimizer each model learns well with from scratch (SGD suits the ResNet, AdamW the sequence models)
RECIPES = {DIGITS_MODEL: ("sgd", 0.05), "digits_lstm": ("adamw", 0.01), "digits_transformer": ("adamw", 0.003)}


def pretrain_digits(
    out: Path | None = None,
    epochs: int = 30,
    seed: int = 0,
    batch_size: int = 64,
    log=print,
    model_name: str = DIGITS_MODEL,
) -> float:
    """Train `model_name` from scratch on digits 0–4, save the state_dict to `out` (default: the package's
    copy); return the validation accuracy."""
    out = out or WEIGHTS_DIR / EMBEDDED[model_name].weights_file(model_name)
    torch.manual_seed(seed)
    device = torch.device("cpu")
    train_data, val_data = load_digits_split(DIGITS_SOURCE_CLASSES)
    embedded = EMBEDDED[model_name]
    model = embedded.build(num_classes=len(DIGITS_SOURCE_CLASSES))
    pipeline = DevicePipeline(device, embedded.image_size, hflip=False, channels_last=False)
    batches = TrainBatches(train_data, batch_size, seed, 0, 1, device, None, None)
    kind, lr = RECIPES[model_name]
    optimizer = make_optimizer(model.parameters(), kind, lr, momentum=0.9, weight_decay=5e-4)
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
