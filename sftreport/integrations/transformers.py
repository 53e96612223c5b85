"""Hugging Face Trainer: one callback on an unchanged Trainer.

    from sftreport.integrations.transformers import SFTReportCallback
    trainer = Trainer(..., callbacks=[SFTReportCallback(probe=(x, y), val_data=eval_dataset, out="report.html")])

Where each part is read:
- epoch 0 at `on_train_begin`: the model as it came, before any step (the Recorder takes it as the
  pretrained reference and records it);
- the training loss: the Trainer hands no loss to its callbacks, so a forward hook on the model keeps the
  logits and labels of every training forward pass (the model is in training mode with gradients on), and
  the loss is the Recorder's `loss_fn` (cross-entropy) of them: for a classifier whose loss the model
  computes from `labels` (the default) this is the loss the Trainer optimizes, and it also gives the training
  accuracy. One point per optimizer step, over all its micro-batches, with the learning rate that step
  used. Where the Trainer takes the labels away from the model (`label_smoothing_factor`,
  `compute_loss_func`), the steps are counted but no training loss is recorded; the losses the Trainer
  logs in that epoch (`logging_steps`) are kept, averaged, as the logged metric `loss`;
- gradients at `on_pre_optimizer_step`: once per optimizer step (with gradient accumulation, after the last
  micro-batch), **after** the Trainer's gradient clipping (`max_grad_norm`, 1.0 by default) and, under fp16,
  unscaled; a step fp16's GradScaler skips counts nowhere;
- the epoch: `on_epoch_end` comes before the evaluation of that epoch (`eval_strategy="epoch"`), so the
  epoch is recorded once that evaluation is over: at the next epoch's start, a checkpoint save, the
  Trainer's final log or `on_train_end`, whichever comes first (always before `load_best_model_at_end`
  replaces the weights). The numbers `on_evaluate` hands over in that epoch (`eval_loss`, `eval_accuracy`, ...,
  the last evaluation's, every eval dataset's; not the timing ones) go into the epoch's logged metrics;
  an evaluation before the first step (`eval_on_start`) is not kept (epoch 0 is recorded before it);
- the report at `on_train_end`. The Trainer has no hook for an exception: a `train()` that raises leaves
  every finished epoch in the run directory with run.json saying *running*; run it inside
  `with record_failures(callback):` to have the run marked *failed* or *interrupted* and rendered.

The recorder's evaluation and probes run with the random number generators saved and restored, so the
training draws the same random numbers (dropout, shuffling) as without the callback. Only the world process
zero runs the probes and writes; every process records the training loss, reduced at each epoch end, and
evaluates its share of `val_data` (tested with 2 processes on the CPU). A resumed
`train(resume_from_checkpoint=...)` starts a new run directory whose epoch 0 is the resumed model.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - exercised in a process without transformers
    raise ImportError(
        "sftreport.integrations.transformers needs Hugging Face transformers: pip install 'sftreport[transformers]'"
    ) from None

from sftreport.config import RecordOptions
from sftreport.errors import UserError
from sftreport.integrations.sharing import RankShare
from sftreport.record.gradients import skipped_by_scaler
from sftreport.record.recorder import Recorder, RunDescription, dataset_size, environment
from sftreport.record.sharded import is_sharded
from sftreport.schema import RunStatus
from sftreport.store import check_output_path, check_run_dir_free

# the timing numbers of an evaluation, left out of the logged metrics (they say nothing about the model)
_TIMING = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time", "_jit_compilation_time")


class EvalBatches:
    """(inputs, targets) batches for the recorder's evaluation, from what a Trainer user has: a dataset of
    samples like the Trainer's `eval_dataset` (anything with `__len__` and `__getitem__` that is not a
    DataLoader; batched here with `collate_fn`, default torch's), or a DataLoader (any iterable) of batches.
    A batch may be a dict (`{"pixel_values": ..., "labels": ...}`: the keys `inputs` and `labels`) or an
    (inputs, targets) pair."""

    def __init__(
        self,
        data: Iterable,
        *,
        batch_size: int = 64,
        collate_fn: Callable | None = None,
        inputs: str = "pixel_values",
        labels: str = "labels",
    ):
        if not isinstance(data, DataLoader) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            data = DataLoader(data, batch_size=batch_size, collate_fn=collate_fn)  # type: ignore[arg-type]
        self.data, self.inputs, self.labels = data, inputs, labels
        self.dataset = getattr(data, "dataset", None)  # its size, for run.json
        self.share_of: RankShare | None = None

    def share(self, rank: int, world: int, equal: bool = False) -> EvalBatches:
        """This process's share of the batches under torchrun (see integrations/sharing.py)."""
        part = copy.copy(self)
        part.share_of = RankShare(self.data, rank, world, equal)
        return part

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        for batch in self.share_of if self.share_of is not None else self.data:
            if isinstance(batch, Mapping):
                if self.inputs not in batch or self.labels not in batch:
                    raise UserError(
                        f"val_data batches hold {sorted(batch)}, not {self.inputs!r} and {self.labels!r}: "
                        "name them with EvalBatches(data, inputs=..., labels=...)"
                    )
                yield batch[self.inputs], torch.as_tensor(batch[self.labels])
            else:
                yield batch[0], torch.as_tensor(batch[1])


class SFTReportCallback(TrainerCallback):
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
        training (the format follows each extension). `val_data`: what the recorder evaluates on at every
        epoch end, epoch 0 included: the Trainer's eval dataset of dict samples, or a DataLoader of
        (inputs, targets) or dict batches (see `EvalBatches`, which also takes a `collate_fn`)."""
        self.probe = probe
        self.val_data = val_data if val_data is None or isinstance(val_data, EvalBatches) else EvalBatches(val_data)
        self.out = [out] if isinstance(out, (str, Path)) else list(out)
        self.run_dir, self.class_names, self.new_params = run_dir, class_names, list(new_params)
        self.head, self.options, self.run, self.loss_fn, self.autocast = head, options, run, loss_fn, autocast
        self.recorder: Recorder | None = None  # one per train(), from its start to its end
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._skipped: torch.Tensor | None = None  # the step under way was skipped by fp16's GradScaler
        self._reset_step()
        self._logged: dict[str, float] = {}  # what on_evaluate handed over in the epoch under way
        self._trainer_losses: list[float] = []  # the training losses the Trainer logged in it
        self._pending = False  # the epoch has ended; it is recorded once its evaluation is over
        self._epoch_losses = 0  # optimizer steps of the epoch under way recorded with a loss

    def _reset_step(self) -> None:
        self._losses: list[torch.Tensor] = []  # per micro-batch of the step under way: the loss summed over samples
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._unlabelled = False  # a training forward pass of this step saw no labels

    # ------------------------------------------------------------------ start

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self._close()
        self._pending, self._logged, self._trainer_losses, self._epoch_losses = False, {}, [], 0
        self._reset_step()
        # what only process zero checks (its report files, its run directory) is agreed by every process
        # before any collective, so a refusal ends every process instead of leaving the others waiting
        refusal: Exception | None = None
        if state.is_world_process_zero:
            try:
                for path in self.out:
                    check_output_path(Path(path))
                if self.run_dir is not None:
                    check_run_dir_free(Path(self.run_dir))
            except UserError as e:
                refusal = e
        if not _all_agree(refusal is None, args.device):
            raise refusal or UserError("the writing process (world process zero) refused the run; see its message")
        run = replace(self.run) if self.run else RunDescription(name=f"{type(model).__name__} (Hugging Face Trainer)")
        if run.planned_epochs is None and args.max_steps <= 0 and state.num_train_epochs:
            run.planned_epochs = int(state.num_train_epochs)
        val_data = self.val_data
        world = _world_size()
        if run.environment is None:
            precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
            run.environment = environment(next(model.parameters()).device, precision, world)
        if isinstance(val_data, EvalBatches) and world > 1:
            val_data = val_data.share(torch.distributed.get_rank(), world, equal=is_sharded(model))
        with _isolated_rng():  # evaluating draws from the global generator (a DataLoader iterator's seed)
            rec = Recorder(
                model,
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
                writer=state.is_world_process_zero,
            )
        if rec.info is not None and rec.info.dataset.name == "custom":
            rec.info.dataset.train_size = dataset_size(train_dataloader)  # written with run.json at the end
        label = args.label_names[0] if args.label_names else "labels"
        self._hook = model.register_forward_hook(self._training_forward(label), with_kwargs=True)
        self.recorder = rec

    def _training_forward(self, label: str) -> Callable:
        def hook(module: torch.nn.Module, inputs: tuple, kwargs: dict, output: Any) -> None:
            if not (module.training and torch.is_grad_enabled()):  # an evaluation, or the recorder's probes
                return
            targets = kwargs.get(label)
            logits = getattr(output, "logits", None)
            if logits is None and isinstance(output, (tuple, list)) and len(output) > 1:
                logits = output[1]  # return_dict=False: (loss, logits, ...)
            if not (
                isinstance(targets, torch.Tensor)
                and isinstance(logits, torch.Tensor)
                and logits.dim() == 2
                and targets.shape == logits.shape[:1]
                and not targets.is_floating_point()
            ):  # no class indices to score the logits against (labels taken away, or not a classifier's)
                self._unlabelled = True
                return
            with torch.no_grad():
                logits = logits.detach().float()
                self._losses.append(self.loss_fn(logits, targets, reduction="sum").double())
            self._logits.append(logits)
            self._targets.append(targets.detach())

        return hook

    # ------------------------------------------------------------------ per step

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        rec = self.recorder
        if rec is None:
            return
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None  # this step's
        if self._losses and not self._unlabelled:
            targets = torch.cat(self._targets)
            rec.record_batch(torch.stack(self._losses).sum() / len(targets), torch.cat(self._logits), targets, lr)
            self._epoch_losses += 1
        else:  # counted, without a loss (see the module's docstring)
            rec.global_step += 1
        self._skipped = _unscale(optimizer)
        rec.sample_gradients(self._skipped)
        self._reset_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.after_optimizer_step(self._skipped)
        self._skipped = None

    # ------------------------------------------------------------------ per epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.recorder is None:
            return
        self._pending = True
        if not control.should_evaluate:  # no evaluation follows: nothing to wait for
            self._record_epoch()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.recorder is None or state.global_step == 0:  # eval_on_start: epoch 0 is already recorded
            return
        for name, value in (metrics or {}).items():
            if name != "epoch" and not name.endswith(_TIMING):
                self._logged[name] = value

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs and isinstance(logs["loss"], (int, float)):
            self._trainer_losses.append(float(logs["loss"]))
        if "train_runtime" in logs:  # the Trainer's final log, before it may load the best model
            self._record_epoch()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._record_epoch()

    def on_save(self, args, state, control, **kwargs):
        self._record_epoch()

    def _record_epoch(self) -> None:
        rec = self.recorder
        if rec is None or not self._pending:
            return
        logged = dict(self._logged)
        if not self._epoch_losses and self._trainer_losses:  # no loss of our own: the Trainer's, as it logged them
            logged["loss"] = sum(self._trainer_losses) / len(self._trainer_losses)
        with _isolated_rng():
            rec.epoch_end(logged=logged)  # its learning rate: the last step's
        self._pending, self._logged, self._trainer_losses, self._epoch_losses = False, {}, [], 0

    # ------------------------------------------------------------------ the end

    def on_train_end(self, args, state, control, **kwargs):
        self._record_epoch()
        rec = self._close()  # a later train() or evaluate() must not touch a finished run
        if rec is not None:
            rec.finish(out=self.out)

    def fail(self, exception: BaseException) -> None:
        """Mark the run *failed* (*interrupted* for Ctrl-C) and render its finished epochs; what
        `record_failures` calls when `trainer.train()` raises."""
        rec = self._close()
        if rec is None:
            return
        status: RunStatus
        if isinstance(exception, KeyboardInterrupt):
            status, detail = "interrupted", f"stopped by Ctrl-C after {rec.epoch} epochs"
        else:
            status, detail = "failed", f"{type(exception).__name__} in epoch {rec.epoch + 1}: {exception}"
        rec.finish(status=status, detail=detail[:500], out=self.out)

    def _close(self) -> Recorder | None:
        """Take the recorder off the callback and the hook off the model."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        rec, self.recorder = self.recorder, None
        self._pending = False
        return rec


@contextmanager
def record_failures(callback: SFTReportCallback) -> Iterator[SFTReportCallback]:
    """`with record_failures(callback): trainer.train()`: if training raises (or is stopped with Ctrl-C),
    the run is marked *failed* (*interrupted*) and rendered from its finished epochs, then the exception
    goes on. (The Trainer has no exception hook of its own.)"""
    try:
        yield callback
    except BaseException as e:
        callback.fail(e)
        raise


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_agree(ok: bool, device: torch.device) -> bool:
    """True when every process says ok (one all-reduce; no collective in a single process)."""
    if _world_size() == 1:
        return ok
    refusals = torch.tensor([0 if ok else 1], device=device)
    torch.distributed.all_reduce(refusals)
    return int(refusals.item()) == 0


def _unscale(optimizer: Any) -> torch.Tensor | None:
    """Under fp16 (Accelerate's optimizer wrapper holds a GradScaler): unscale the gradients if the clipping
    has not already (GradScaler.step then does not do it again), and return the device-side flag that the
    scaler will skip this step. None without a scaler."""
    scaler = getattr(optimizer, "scaler", None)
    inner = getattr(optimizer, "optimizer", None)
    if scaler is None or inner is None or not scaler.is_enabled():
        return None
    with suppress(RuntimeError):  # "unscale_() has already been called on this optimizer since the last update()"
        scaler.unscale_(inner)
    return skipped_by_scaler(scaler, inner)


@contextmanager
def _isolated_rng() -> Iterator[None]:
    """Save torch's (CPU and current CUDA device), Python's and numpy's random states and restore them."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)
