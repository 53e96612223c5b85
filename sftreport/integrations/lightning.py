"""PyTorch Lightning: one callback on an unchanged LightningModule.

    from sftreport.integrations.lightning import SFTReport
    trainer = Trainer(callbacks=[SFTReport(probe=(x, y), val_data=val_loader, out="report.html")])

Where each part is read:
- epoch 0 at `on_fit_start`: the model as it came, before any step (the Recorder takes it as the
  pretrained reference and records it);
- gradients at `on_before_optimizer_step`: once per real optimizer step (with gradient accumulation, after
  the last micro-batch), already unscaled by AMP and before gradient clipping;
- the training loss at `on_train_batch_end`, one point per optimizer step (the mean of its micro-batches);
- the epoch at `on_train_epoch_end`, which Lightning calls after that epoch's validation;
- the report at `on_fit_end`; after an exception or Ctrl-C the run is marked *failed* or *interrupted* and
  rendered from the finished epochs.

Only global rank 0 runs the probes and writes; every rank records the training loss, which is reduced
across processes at each epoch end (a collective every rank takes part in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised in a process without Lightning
    raise ImportError(
        "sftreport.integrations.lightning needs PyTorch Lightning: pip install 'sftreport[lightning]'"
    ) from None

from sftreport.config import RecordOptions
from sftreport.record.recorder import Recorder, RunDescription
from sftreport.schema import RunStatus
from sftreport.store import check_output_path


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
    ):
        """The arguments of `Recorder` (see there), plus `out`: the report files written at the end of the
        fit (the format follows each extension). `val_data`: (inputs, targets) batches the recorder
        evaluates on at every epoch end, epoch 0 included."""
        self.probe, self.val_data = probe, val_data
        self.out = [out] if isinstance(out, (str, Path)) else list(out)
        self.run_dir, self.class_names, self.new_params = run_dir, class_names, list(new_params)
        self.head, self.options, self.run, self.loss_fn = head, options, run, loss_fn
        self.recorder: Recorder | None = None
        self._optimizer_steps = 0  # trainer.global_step when the last step was seen
        self._pending: list[tuple[torch.Tensor, int]] = []  # micro-batch losses and sizes of the step under way

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for path in self.out:  # refused now, in one line, not after the first epoch
            check_output_path(Path(path))
        run = self.run or RunDescription(name=f"{type(pl_module).__name__} (Lightning)")
        if run.planned_epochs is None and trainer.max_epochs and trainer.max_epochs > 0:
            run.planned_epochs = trainer.max_epochs
        val_data = self.val_data
        if val_data is not None and trainer.world_size > 1:
            val_data = _RankShare(val_data, trainer.global_rank, trainer.world_size)
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
            writer=trainer.is_global_zero,
        )
        self._optimizer_steps = trainer.global_step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The training data is known by now: its size goes into run.json (written again at the end)."""
        rec = self.recorder
        if rec is not None and rec.info is not None and rec.info.dataset.name == "custom":
            rec.info.dataset.train_size = _samples(trainer.train_dataloader)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.recorder is not None:
            self.recorder.sample_gradients()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rec = self.recorder
        if rec is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Lightning hands over the loss divided by accumulate_grad_batches (the part it backpropagated)
            targets = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
            n = len(targets) if isinstance(targets, torch.Tensor) and targets.dim() >= 1 else 1
            self._pending.append((loss.detach().float() * trainer.accumulate_grad_batches, n))
        if trainer.global_step > self._optimizer_steps:  # this batch ended an optimizer step
            self._optimizer_steps = trainer.global_step
            if self._pending:  # one point per optimizer step: its micro-batches' mean loss
                sizes = [n for _, n in self._pending]
                mean = torch.stack([loss * n for loss, n in self._pending]).sum() / sum(sizes)
                rec.record_batch(mean, lr=_lr(trainer), samples=sum(sizes))
                self._pending = []
            rec.after_optimizer_step()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            self.recorder.epoch_end(lr=_lr(trainer))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            self.recorder.finish(out=self.out)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.recorder is None:
            return
        status: RunStatus
        if isinstance(exception, KeyboardInterrupt):
            status, detail = "interrupted", f"stopped by Ctrl-C after {self.recorder.epoch} epochs"
        else:
            status, detail = "failed", f"{type(exception).__name__} in epoch {self.recorder.epoch + 1}: {exception}"
        self.recorder.finish(status=status, detail=detail[:500], out=self.out)


class _RankShare:
    """Every `world`-th batch of the validation data, from the `rank`-th: the recorder's evaluation sums its
    counts over the processes, so each batch must be evaluated by exactly one of them."""

    def __init__(self, data: Iterable, rank: int, world: int):
        self.data, self.rank, self.world = data, rank, world

    def __iter__(self):
        return (b for i, b in enumerate(self.data) if i % self.world == self.rank)


def _samples(loader: Any) -> int:
    """Samples in a DataLoader's dataset, the whole of it on every process (0 when it cannot be told)."""
    try:
        return len(loader.dataset)
    except (TypeError, AttributeError):
        return 0


def _lr(trainer: pl.Trainer) -> float | None:
    """The learning rate of the first optimizer's first parameter group, as it stands now."""
    if not trainer.optimizers:
        return None
    return float(trainer.optimizers[0].param_groups[0]["lr"])
