"""PyTorch Lightning: one callback on an unchanged LightningModule.

    from sftreport.integrations.lightning import SFTReport
    trainer = Trainer(callbacks=[SFTReport(probe=(x, y), val_data=val_loader, out="report.html")])

Where each part is read:
- epoch 0 at `on_fit_start`: the model as it came, before any step (the Recorder takes it as the
  pretrained reference and records it);
- gradients at `on_before_optimizer_step`: once per optimizer step (with gradient accumulation, after the
  last micro-batch), already unscaled by AMP and before gradient clipping; a step fp16's GradScaler skips
  counts nowhere;
- the training loss at `on_train_batch_end`, one point per optimizer step (the mean of its micro-batches),
  with the learning rate that step trained with (read at the batch's start: schedulers step before its end);
- the epoch at `on_train_epoch_end`, which Lightning calls after that epoch's validation;
- the report at `on_fit_end`; after an exception or Ctrl-C the run is marked *failed* or *interrupted* and
  rendered from the finished epochs. Each fit gets a run of its own; a finished one is never touched again.

The recorder's evaluation and probes run inside Lightning's `isolate_rng`, so the training draws the same
random numbers (shuffling, dropout) as without the callback. Only global rank 0 runs the probes and writes;
every rank records the training loss, reduced across processes at each epoch end, and evaluates its share
of `val_data`. Written for automatic optimization with one optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.seed import isolate_rng
except ImportError:  # pragma: no cover - exercised in a process without Lightning
    raise ImportError(
        "sftreport.integrations.lightning needs PyTorch Lightning: pip install 'sftreport[lightning]'"
    ) from None

from sftreport.config import RecordOptions
from sftreport.errors import UserError
from sftreport.record.gradients import skipped_by_scaler
from sftreport.record.recorder import Recorder, RunDescription, dataset_size
from sftreport.schema import RunStatus
from sftreport.store import check_output_path, check_run_dir_free


class SFTReport(pl.Callback):
    def __init__(
        self,
        *,
        probe: tuple[torch.Tensor, torch.Tensor],
        val_data: Iterable | None = None,
        out: str | Path | Iterable[str | Path] = (),
        run_dir: str | Path | None = None,
        class_names: list[str] | None = None,
        new_params: Iterable[str] = (),
        head: str | None = None,
        options: RecordOptions | None = None,
        run: RunDescription | None = None,
        loss_fn: Callable = F.cross_entropy,
        autocast: Callable = nullcontext,
    ):
        """The arguments of `Recorder` (see there), plus `out`: the report files written at the end of the
        fit (the format follows each extension). `val_data`: (inputs, targets) batches the recorder
        evaluates on at every epoch end, epoch 0 included."""
        self.probe, self.val_data = probe, val_data
        self.out = [out] if isinstance(out, (str, Path)) else list(out)
        self.run_dir, self.class_names, self.new_params = run_dir, class_names, list(new_params)
        self.head, self.options, self.run, self.loss_fn, self.autocast = head, options, run, loss_fn, autocast
        self.recorder: Recorder | None = None  # one per fit, from its start to its end
        self._optimizer_steps = 0  # trainer.global_step when the last step was seen
        self._pending: list[tuple[torch.Tensor, int]] = []  # micro-batch losses and sizes of the step under way
        self._skipped: torch.Tensor | None = None  # the step under way was skipped by fp16's GradScaler
        self._batch_lr: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder, self._pending, self._skipped, self._batch_lr = None, [], None, None
        # what only rank 0 checks (its report files, its run directory) is agreed by every rank before any
        # collective, so a refusal ends every process instead of leaving the others waiting in the first one
        refusal: Exception | None = None
        if trainer.is_global_zero:
            try:
                for path in self.out:
                    check_output_path(Path(path))
                if self.run_dir is not None:
                    check_run_dir_free(Path(self.run_dir))
            except UserError as e:
                refusal = e
        if not trainer.strategy.reduce_boolean_decision(refusal is None, all=True):
            raise refusal or UserError("the writing process (global rank 0) refused the run; see its message")
        run = replace(self.run) if self.run else RunDescription(name=f"{type(pl_module).__name__} (Lightning)")
        if run.planned_epochs is None and trainer.max_epochs and trainer.max_epochs > 0 and trainer.max_steps < 0:
            run.planned_epochs = trainer.max_epochs
        val_data = self.val_data
        if val_data is not None and trainer.world_size > 1:
            val_data = _RankShare(val_data, trainer.global_rank, trainer.world_size)
        with isolate_rng():  # evaluating draws from the global generator (a DataLoader iterator's seed)
            self.recorder = Recorder(
                pl_module,
                probe=self.probe,
                val_data=val_data,
                run_dir=self.run_dir,
                class_names=self.class_names,
                new_params=self.new_params,
                head=self.head,
                options=self.options,
                run=run,
                loss_fn=self.loss_fn,
                autocast=self.autocast,
                writer=trainer.is_global_zero,
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after a checkpoint is restored (it is, between on_fit_start and here): steps count from its global_step
        self._optimizer_steps = trainer.global_step
        rec = self.recorder
        if rec is not None and rec.info is not None and rec.info.dataset.name == "custom":
            rec.info.dataset.train_size = dataset_size(trainer.train_dataloader)  # written with run.json at the end

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_lr = _lr(trainer)  # the rate this batch trains with: schedulers step after it, before batch_end

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.recorder is None:
            return
        # after AMP's unscaling, before clipping; an fp16 step the GradScaler will skip counts nowhere
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._skipped = skipped_by_scaler(scaler, optimizer) if scaler is not None else None
        self.recorder.sample_gradients(self._skipped)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rec = self.recorder
        if rec is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Lightning hands over the loss divided by accumulate_grad_batches (the part it backpropagated)
            self._pending.append((loss.detach().float() * trainer.accumulate_grad_batches, _batch_size(batch)))
        if trainer.global_step > self._optimizer_steps:  # this batch ended an optimizer step
            self._optimizer_steps = trainer.global_step
            if self._pending:  # one point per optimizer step: its micro-batches' mean loss
                sizes = [n for _, n in self._pending]
                mean = torch.stack([loss * n for loss, n in self._pending]).sum() / sum(sizes)
                rec.record_batch(mean, lr=self._batch_lr, samples=sum(sizes))
                self._pending = []
            rec.after_optimizer_step(self._skipped)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            with isolate_rng():
                self.recorder.epoch_end()  # its learning rate: the last step's

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rec, self.recorder = self.recorder, None  # a later test() or fit() must not touch a finished run
        if rec is not None:
            rec.finish(out=self.out)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        rec, self.recorder = self.recorder, None
        if rec is None:
            return
        status: RunStatus
        if isinstance(exception, KeyboardInterrupt):
            status, detail = "interrupted", f"stopped by Ctrl-C after {rec.epoch} epochs"
        else:
            status, detail = "failed", f"{type(exception).__name__} in epoch {rec.epoch + 1}: {exception}"
        rec.finish(status=status, detail=detail[:500], out=self.out)


class _RankShare:
    """Every `world`-th batch of the validation data, from the `rank`-th: the recorder's evaluation sums its
    counts over the processes, so each batch must be evaluated by exactly one of them. (Each process still
    reads every batch and skips the others': the user's DataLoader is used as given.)"""

    def __init__(self, data: Iterable, rank: int, world: int):
        self.data, self.rank, self.world = data, rank, world
        self.dataset = getattr(data, "dataset", None)  # its size, for run.json

    def __iter__(self):
        return (b for i, b in enumerate(self.data) if i % self.world == self.rank)


def _batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its targets (an (inputs, targets) pair), else of its first tensor."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor) and batch[1].dim():
        return len(batch[1])
    first = next(iter(batch.values()), None) if isinstance(batch, dict) else batch
    return len(first) if isinstance(first, torch.Tensor) and first.dim() else 1


def _lr(trainer: pl.Trainer) -> float | None:
    """The learning rate of the first optimizer's first parameter group, as it stands now."""
    if not trainer.optimizers:
        return None
    return float(trainer.optimizers[0].param_groups[0]["lr"])
