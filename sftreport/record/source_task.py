"""Forgetting of the source task: the model's backbone as it is now, with the pretrained classifier head kept
aside, evaluated on held-out data of the task it was pretrained for, at every epoch end (epoch 0 included).

The kept-aside head reads what the model's own head reads: a forward hook on the model's head replaces
its output with the pretrained head's, so the backbone runs exactly as in training (any module after the
head, SqueezeNet's pooling, runs on the pretrained head's output). Under torchrun every process evaluates
its share of the source data and the sums are reduced, as for the validation set (evaluation.py).

When the pretrained head has classes the source data has no images of (ImageNet's 1000 against a folder of
a few of them), the prediction is still the argmax over every output: a prediction of a class without
images is wrong, and the confusion matrix counts it in one last column, "other".

    rec = Recorder(model, probe=..., val_data=..., source=SourceTask(
        head=pretrained_fc, data=source_loader, classes=["tench", "goldfish"], targets=[0, 1], name="ImageNet"))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from sftreport.errors import UserError
from sftreport.record.evaluation import evaluate
from sftreport.schema import Evaluation, SourceTaskInfo

OTHER = "other"


@dataclass
class SourceTask:
    """The task the model was pretrained for.

    `head`: the pretrained classifier head, kept aside (it takes what the model's head takes); `data`:
    (inputs, targets) batches of held-out source images, targets being indices of the head's outputs;
    `classes`: the names of the classes with images, `targets` their output indices (default 0, 1, ...);
    `name`, `source`: what the task is and where its data came from, in words; `image_size`: its input side."""

    head: nn.Module
    data: Iterable
    classes: list[str]
    targets: list[int] | None = None
    name: str = "source task"
    source: str = ""
    image_size: int = 0

    def __post_init__(self) -> None:
        outputs = getattr(self.head, "out_features", None) or getattr(self.head, "out_channels", None)
        if not outputs:
            raise UserError(f"the source task's head must be a Linear or a Conv2d, not {type(self.head).__name__}")
        self.outputs = int(outputs)
        targets = self.targets if self.targets is not None else list(range(len(self.classes)))
        if not self.classes or len(targets) != len(self.classes):
            raise UserError(f"the source task names {len(self.classes)} classes and {len(targets)} head outputs")
        if len(set(targets)) != len(targets) or not all(0 <= t < self.outputs for t in targets):
            raise UserError(f"the source task's classes must be distinct outputs 0..{self.outputs - 1} of its head")
        self.targets = targets
        self.other = len(targets) < self.outputs

    def buckets(self, device: torch.device) -> torch.Tensor:
        """The confusion-matrix class of each head output: the class's position, or the last one, "other"."""
        assert self.targets is not None
        b = torch.full((self.outputs,), len(self.classes), dtype=torch.long)
        b[torch.tensor(self.targets)] = torch.arange(len(self.classes))
        return b.to(device)

    def info(self, head: str, size: int) -> SourceTaskInfo:
        return SourceTaskInfo(
            name=self.name,
            classes=self.classes + ([OTHER] if self.other else []),
            other=self.other,
            head=head,
            head_classes=self.outputs,
            size=size,
            image_size=self.image_size,
            source=self.source,
        )


@contextmanager
def kept_aside_head(model: nn.Module, head: str, pretrained: nn.Module):
    """While inside, the model's head answers with the pretrained head's output on the same input."""

    def hook(module, args, output):
        return pretrained(args[0])

    handle = model.get_submodule(head).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def evaluate_source(
    model: nn.Module,
    head: str,
    task: SourceTask,
    device: torch.device,
    loss_fn: Callable,
    autocast: Callable = nullcontext,
) -> Evaluation:
    task.head.to(device).eval()
    classes = len(task.classes) + (1 if task.other else 0)
    with kept_aside_head(model, head, task.head):
        return evaluate(model, task.data, classes, device, loss_fn, autocast, buckets=task.buckets(device))
