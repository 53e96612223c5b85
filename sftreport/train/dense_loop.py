"""The fine-tuning loop of the dense tasks (segmentation, detection), top to bottom.

A task brings its data (in-memory uint8 images with per-image targets), its built model and a `forward` that
turns one batch into a loss; this module does the rest as the classifier's runner does: the Recorder
(epoch 0 is the pretrained model with its new heads), the per-epoch shuffle, the optimizer step, the stop
checks, the final status and the reports, through the runner's own `stop_meaning` and `conclude`.
One process, fp32 (no torchrun, no AMP for these tasks yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sftreport.config import RecordOptions, RunConfig
from sftreport.record.recorder import Recorder, RunDescription, environment
from sftreport.record.task import Task
from sftreport.schema import DatasetInfo, RunStatus
from sftreport.train.models import set_train_mode
from sftreport.train.optim import make_optimizer, make_schedule
from sftreport.train.progress import Progress
from sftreport.train.runner import RunOutcome, StopRequest, _epoch_line, conclude, stop_meaning

# one training batch (the images' indices) -> (loss, and for rec.step the logits and targets it may count
# accuracy from, or None, None)
Forward = Callable[[list[int]], tuple[torch.Tensor, Any, Any]]


@dataclass
class DenseRun:
    """What a dense task hands to the loop."""

    model: nn.Module  # on the device, strategy applied
    frozen: list[str]  # fully frozen modules (their BatchNorm keeps its statistics)
    weights: str  # in words, for the run's description
    new_params: set[str]
    head: str
    task: Task  # the Recorder's evaluation, feature view and pictures
    dataset: DatasetInfo
    probe: tuple[torch.Tensor, Any]
    val: Iterable  # re-iterable (inputs, targets) validation batches on the device
    forward: Forward
    doing: str  # "segmenting digit canvases": what the progress line and the run's name say
    notes: list[str] = field(default_factory=list)  # about the data, shown at the start
    options: RecordOptions | None = None  # default: cfg.record


def dense_run_dir(cfg: RunConfig, ctx: Any) -> Path:
    """Checks before any data is read: one process, and a run directory that is free. Seeds torch for the
    new heads' initialisation."""
    from sftreport.errors import UserError
    from sftreport.store import check_run_dir_free
    from sftreport.train.runner import default_run_dir

    if ctx.enabled:
        raise UserError(f"--task {cfg.task} runs in one process for now (not under torchrun)")
    torch.manual_seed(cfg.seed)
    run_dir = cfg.run_dir or default_run_dir(cfg)
    check_run_dir_free(run_dir)
    return run_dir


def run_dense(cfg: RunConfig, device: torch.device, run_dir: Path, job: DenseRun, ctx: Any) -> RunOutcome:
    model = job.model
    steps = math.ceil(job.dataset.train_size / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    optimizer = make_optimizer(
        [p for p in model.parameters() if p.requires_grad], cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay
    )
    schedule = make_schedule(optimizer, cfg.scheduler, cfg.epochs * steps)
    status: RunStatus = "completed"
    detail, unexpected, bad_input = "", False, None
    with Progress(cfg.epochs, steps, enabled=not cfg.quiet) as progress, StopRequest() as stop:
        ds = job.dataset
        progress.message(
            f"{cfg.model} ({job.weights}) {job.doing}: {ds.train_size} train / {ds.val_size} val images at "
            f"{ds.image_size} px, {len(ds.classes)} classes, {cfg.strategy}" + "".join(f"; {n}" for n in job.notes)
        )
        progress.message("epoch 0: measuring the pretrained model")
        rec = Recorder(
            model,
            probe=job.probe,
            val_data=job.val,
            run_dir=run_dir,
            class_names=ds.classes,
            new_params=job.new_params,
            head=job.head,
            options=job.options or cfg.record,
            task=job.task,
            run=RunDescription(
                name=cfg.name or f"{cfg.model} {job.doing}",
                model=cfg.model,
                weights=job.weights,
                strategy=cfg.strategy,
                planned_epochs=cfg.epochs,
                config=cfg.model_dump(mode="json"),
                dataset=ds,
                environment=environment(device, "fp32", 1),
            ),
        )
        try:
            for epoch in range(1, cfg.epochs + 1):
                set_train_mode(model, job.frozen)
                progress.start_epoch(epoch)
                order = torch.randperm(
                    job.dataset.train_size, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
                )
                for step in range(1, steps + 1):
                    loss, logits, targets = job.forward(
                        order[(step - 1) * cfg.batch_size : step * cfg.batch_size].tolist()
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    rec.step(loss, logits, targets, lr=float(schedule.get_last_lr()[0]))
                    schedule.step()
                    value = loss.item() if progress.due() else None  # a host sync: only when the line is redrawn
                    if value is not None and not math.isfinite(value):
                        raise FloatingPointError(f"training loss became {value} at epoch {epoch}, step {step}")
                    if stop.requested:
                        raise KeyboardInterrupt
                    progress.update(step, step * cfg.batch_size, value)
                snap = rec.epoch_end()
                progress.end_epoch(_epoch_line(epoch, cfg.epochs, snap))
                if snap.train_loss is not None and not math.isfinite(snap.train_loss):
                    raise FloatingPointError(f"training loss became {snap.train_loss} in epoch {epoch}")
        except (KeyboardInterrupt, Exception) as e:
            status, detail, bad_input, unexpected = stop_meaning(e, rec, cfg.epochs)
    return conclude(rec, ctx, cfg, run_dir, status, detail, bad_input, unexpected)
