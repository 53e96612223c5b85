"""Evaluation: loss, accuracy, per-class accuracy and the confusion matrix over a validation set.

Sums (loss, counts, confusion cells) stay on the device and are reduced across processes when a
process group is running, so a sharded evaluation gives exactly the numbers of an unsharded one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sftreport.record.stats import count_bins
from sftreport.schema import Evaluation


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def logits_of(out: object) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, or the `.logits` of an output object (a Hugging
    Face model's ImageClassifierOutput); anything else is not a classifier's output."""
    logits = getattr(out, "logits", out)
    if isinstance(logits, dict) and "out" in logits:  # torchvision's segmentation models: {"out", "aux"}
        logits = logits["out"]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, neither logits nor an object with .logits")
    return logits


def evaluation_from_sums(loss_sum: float, confusion: list[list[int]]) -> Evaluation:
    count = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(len(confusion)))
    per_class = [(row[i] / sum(row)) if sum(row) else None for i, row in enumerate(confusion)]
    return Evaluation(
        loss=loss_sum / count if count else float("nan"),
        accuracy=correct / count if count else 0.0,
        count=count,
        confusion=confusion,
        per_class_accuracy=per_class,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Iterable,
    num_classes: int,
    device: torch.device,
    loss_fn: Callable = F.cross_entropy,
    autocast: Callable = nullcontext,
    buckets: torch.Tensor | None = None,
) -> Evaluation:
    """`data` yields (inputs, targets) ready for the model. The model's train/eval mode is restored.
    `buckets`: the confusion-matrix class (0..num_classes-1) of each of the model's outputs, for a model
    with more outputs than the classes evaluated; targets and predictions are counted in their bucket
    (the loss and the predictions still use every output)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    try:
        for x, y in data:
            x = x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x
            y = y.to(device, non_blocking=True)
            with autocast():
                logits = logits_of(model(x))
            logits = logits.float()
            loss_sum += loss_fn(logits, y, reduction="sum").double()
            pred = logits.argmax(dim=1)
            if buckets is not None:
                y, pred = buckets[y], buckets[pred]
            confusion += count_bins(y * num_classes + pred, num_classes * num_classes)
    finally:
        model.train(was_training)
    packed = torch.cat([loss_sum.reshape(1), confusion.double()])  # one reduction, one transfer
    sums = all_reduce_sum(packed).tolist()
    cells = [round(v) for v in sums[1:]]
    return evaluation_from_sums(sums[0], [cells[i * num_classes : (i + 1) * num_classes] for i in range(num_classes)])
