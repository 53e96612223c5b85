"""PyTorch Lightning: one callback on an unchanged LightningModule.

    from sftreport.integrations.lightning import SFTReport
    trainer = Trainer(callbacks=[SFTReport(probe=(x, y), out="report.html")])

Where each part is read:
- epoch 0 at `on_fit_start`: the model as it came, before any step (the Recorder takes it as the
  pretrained reference and records it);
- gradients at `on_before_optimizer_step`: once per optimizer step (with gradient accumulation, after the
  last micro-batch), already unscaled by AMP and before gradient clipping; a step fp16's GradScaler skips
  counts nowhere;
- the training loss at `on_train_batch_end`, one point per optimizer step (the mean of its micro-batches),
  with the learning rate that step trained with (read at the batch's start: schedulers step before its end);
- the epoch at `on_train_epoch_end`, which Lightning calls after that epoch's validation, with the metrics
  the module logged (`self.log`) read from `trainer.callback_metrics`: by default those its validation
  logged in that epoch whose names start with `val` (epoch 0 has none; the sanity check's values are not
  kept, nor a validation's values in the epochs that do not validate), or the names given in `metrics`;
- the report at `on_fit_end`; after an exception or Ctrl-C the run is marked *failed* or *interrupted* and
  rendered from the finished epochs. Each fit gets a run of its own; a finished one is never touched again,
  unless a fit resumes from one of its checkpoints.

Resuming: the callback's state goes into Lightning's checkpoints (`state_dict`: the run directory, the run's
id, the epoch and step recorded last), so `trainer.fit(model, ckpt_path=...)` continues the same run
directory: epoch 0 is not recorded again, epochs are numbered on, and every measure keeps the references
fixed at the run's start (W₀, histogram bins, CKA, PCA axes: the run directory's reference.pt). Epochs
recorded after the checkpoint are moved to epochs.superseded.jsonl. A checkpoint saved without the
callback, or whose run directory is gone or holds another run, is refused at fit start in one line.

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
    from lightning.pytorch.utilities import rank_zero_warn
    from lightning.pytorch.utilities.seed import isolate_rng
except ImportError:  # pragma: no cover - exercised in a process without Lightning
    raise ImportError(
        "sftreport.integrations.lightning needs PyTorch Lightning: pip install 'sftreport[lightning]'"
    ) from None

from sftreport.config import RecordOptions
from sftreport.errors import UserError
from sftreport.integrations.sharing import RankShare
from sftreport.record.gradients import skipped_by_scaler
from sftreport.record.recorder import Recorder, RunDescription, dataset_size
from sftreport.record.reference import load_reference
from sftreport.record.sharded import is_sharded
from sftreport.schema import RunStatus
from sftreport.store import check_output_path, check_run_dir_free, recorded_steps

# strategies whose parameters the recorder cannot read as whole tensors or as DTensor shards
_UNREAD_STRATEGIES = {
    "FSDPStrategy": "FSDP1 flattens the parameters into per-process shards that are not DTensors",
    "DeepSpeedStrategy": "DeepSpeed partitions the parameters itself",
}


class SFTReport(pl.Callback):
    def __init__(
        self,
        *,
        probe: tuple[torch.Tensor, torch.Tensor],
        val_data: Iterable | None = None,
        metrics: Iterable[str] | None = None,
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
        fit (the format follows each extension), and `metrics`: the names of the metrics the module logs
        (`self.log`) to record with each epoch (default: those its validation logs whose names start with
        `val`; a name never logged is left out). `val_data` (optional): (inputs, targets) batches the recorder
        evaluates on itself at every epoch end, epoch 0 included (confusion matrix, per-class accuracy).
        `run_dir`: when resuming, the run directory if it moved (default: the checkpoint's)."""
        self.probe, self.val_data = probe, val_data
        self.metrics = None if metrics is None else [metrics] if isinstance(metrics, str) else list(metrics)
        self.out = [out] if isinstance(out, (str, Path)) else list(out)
        self.run_dir, self.class_names, self.new_params = run_dir, class_names, list(new_params)
        self.head, self.options, self.run, self.loss_fn, self.autocast = head, options, run, loss_fn, autocast
        self.recorder: Recorder | None = None  # one per fit, from its start to its end
        self._state: dict = {}  # the run as a checkpoint holds it (see state_dict)
        self._restored: dict | None = None  # the state of the checkpoint a fit resumes from
        self._resuming: dict | None = None  # the same, from on_fit_start until the run is continued
        self._replayed_end_at: int | None = None  # the step of a recorded epoch whose end Lightning runs again
        self._optimizer_steps = 0  # trainer.global_step when the last step was seen
        self._pending: list[tuple[torch.Tensor, int]] = []  # micro-batch losses and sizes of the step under way
        self._skipped: torch.Tensor | None = None  # the step under way was skipped by fp16's GradScaler
        self._batch_lr: float | None = None
        self._before_val: dict[str, Any] = {}  # callback_metrics as the validation under way found them
        self._val_logged: dict[str, Any] = {}  # what this epoch's validation logged
        self._val_names: set[str] = set()  # every name a validation of this fit logged
        self._recorded_names: set[str] = set()  # names in `metrics` recorded in this fit

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What Lightning stores in a checkpoint: the run directory, the run's id, and the epoch and step recorded
        last; a fit resumed from the checkpoint continues that run (the references it is measured against are
        in the run directory's reference.pt)."""
        return dict(self._state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    def _checkpoint_state(self) -> dict[str, Any]:
        rec = self.recorder
        assert rec is not None
        return {
            "run_dir": str(rec.run_dir.resolve()),
            "run_id": rec.run_id,
            "epoch": rec.epoch,
            "step": rec.global_step,
        }

    # ------------------------------------------------------------------ the fit

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.recorder, self._pending, self._skipped, self._batch_lr = None, [], None, None
        self._val_logged, self._val_names, self._recorded_names = {}, set(), set()
        # a state restored by an earlier validate() or test() with a checkpoint is not this fit's
        resume = self._restored if trainer.ckpt_path is not None else None
        self._state, self._resuming, self._restored = {}, None, None
        self._replayed_end_at = None
        unread = next((c.__name__ for c in type(trainer.strategy).__mro__ if c.__name__ in _UNREAD_STRATEGIES), None)
        if unread:  # every process sees the same strategy: each refuses on its own
            raise UserError(
                f"SFTReport cannot read parameters under Lightning's {unread} ({_UNREAD_STRATEGIES[unread]}); "
                "sharded training is recorded under ModelParallelStrategy with fully_shard (FSDP2)"
            )
        # what only rank 0 checks (its report files, its run directory) is agreed by every rank before any
        # collective, so a refusal ends every process instead of leaving the others waiting in the first one
        refusal: Exception | None = None
        if trainer.is_global_zero:
            try:
                for path in self.out:
                    check_output_path(Path(path))
                if resume is not None:
                    self._check_run_to_continue(resume, trainer.ckpt_path)
                elif trainer.ckpt_path is not None:
                    raise UserError(
                        f"checkpoint {trainer.ckpt_path} holds no SFTReport state (a fit without the callback saved "
                        "it): there is no run to continue; to record a new run, load its weights into the module "
                        "and fit without ckpt_path"
                    )
                elif self.run_dir is not None:
                    check_run_dir_free(Path(self.run_dir))
            except UserError as e:
                refusal = e
        if not trainer.strategy.reduce_boolean_decision(refusal is None, all=True):
            raise refusal or UserError("the writing process (global rank 0) refused the run; see its message")
        if resume is not None:  # continued at on_train_start, once Lightning has restored its loops
            self._resuming = resume
            return
        with isolate_rng():  # evaluating draws from the global generator (a DataLoader iterator's seed)
            self.recorder = self._recorder(trainer, pl_module, self.run_dir)
        self._state = self._checkpoint_state()

    def _recorder(self, trainer: pl.Trainer, pl_module: pl.LightningModule, run_dir: Any, **resume: Any) -> Recorder:
        run = replace(self.run) if self.run else RunDescription(name=f"{type(pl_module).__name__} (Lightning)")
        if run.planned_epochs is None and trainer.max_epochs and trainer.max_epochs > 0 and trainer.max_steps < 0:
            run.planned_epochs = trainer.max_epochs
        val_data = self.val_data
        if val_data is not None and trainer.world_size > 1:
            # a sharded model's forward is a collective: then every process runs as many batches
            val_data = RankShare(val_data, trainer.global_rank, trainer.world_size, equal=is_sharded(pl_module))
        return Recorder(
            pl_module,
            probe=self.probe,
            val_data=val_data,
            run_dir=run_dir,
            class_names=self.class_names,
            new_params=self.new_params,
            head=self.head,
            options=self.options,
            run=run,
            loss_fn=self.loss_fn,
            autocast=self.autocast,
            writer=trainer.is_global_zero,
            **resume,
        )

    def _run_dir_to_continue(self, state: dict[str, Any]) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else Path(state["run_dir"])

    def _check_run_to_continue(self, state: dict[str, Any], ckpt_path: Any) -> None:
        """The checkpoint's run directory is there and holds the checkpoint's run (checked on rank 0)."""
        run_dir = self._run_dir_to_continue(state)
        if not run_dir.is_dir():
            raise UserError(
                f"cannot continue the run of checkpoint {ckpt_path}: its run directory {run_dir} is gone "
                "(pass run_dir= if it moved)"
            )
        if load_reference(run_dir)["run_id"] != state["run_id"]:
            raise UserError(f"cannot continue the run of checkpoint {ckpt_path}: {run_dir} holds another run")

    def _continue_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: dict[str, Any]) -> None:
        """Continue the checkpoint's run after the epoch it was saved in or after. A checkpoint saved after an
        epoch's last step but before this callback recorded the epoch (by ModelCheckpoint at that step, or
        after a validation that does not run every epoch) holds the weights of that epoch's end: if the fit
        that saved it went on to record the epoch, its line is kept and the run continues after it; if not,
        the epoch is recorded in this fit, without the training loss only that fit saw. Lightning counts the
        first kind of epoch done (the fit goes on with the next), and runs only the second kind's end again."""
        run_dir = self._run_dir_to_continue(state)
        done, step = trainer.current_epoch, trainer.global_step
        after: int | None = None
        refusal: Exception | None = None
        if trainer.is_global_zero:
            try:
                recorded = recorded_steps(run_dir)
                if done == state["epoch"]:
                    ended = recorded.get(done + 1) == step and step > recorded.get(done, step)
                    after = done + 1 if ended else done  # ended: skip the epoch end Lightning runs again
                elif done == state["epoch"] + 1:
                    after = done if recorded.get(done) == step else state["epoch"]  # not recorded: record it now
                else:
                    raise UserError(
                        f"cannot continue the run in {run_dir}: the checkpoint's training has done {done} epochs, "
                        f"while its run recorded {state['epoch']}"
                    )
            except UserError as e:
                refusal = e
        after = trainer.strategy.broadcast(after, src=0)
        if after is None:
            raise refusal or UserError("the writing process (global rank 0) cannot continue the run; see its message")
        try:
            with isolate_rng():
                self.recorder = self._recorder(trainer, pl_module, run_dir, resume_after=after, resume_step=step)
        except UserError as e:
            refusal = e
        if not trainer.strategy.reduce_boolean_decision(refusal is None, all=True):
            raise refusal or UserError("the writing process (global rank 0) cannot continue the run; see its message")
        assert self.recorder is not None
        if after < done:
            with isolate_rng():
                self.recorder.epoch_end()
        self._replayed_end_at = step if after > done else None
        self._state = self._checkpoint_state()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored is not None:  # restored after on_fit_start: the run has started afresh meanwhile
            raise UserError(
                f"SFTReport cannot continue a run under {type(trainer.strategy).__name__}, which restores "
                "checkpoints after on_fit_start"
            )
        if self._resuming is not None:
            state, self._resuming = self._resuming, None
            self._continue_run(trainer, pl_module, state)
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

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:  # Lightning discards the sanity check's metrics; so does the callback
            self._before_val = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # what this validation logged: each value it logs is a new tensor; an older epoch's stays the same object
        fresh = {k: v for k, v in trainer.callback_metrics.items() if self._before_val.get(k) is not v}
        self._val_logged.update(fresh)  # validating several times an epoch: the last value
        self._val_names.update(fresh)
        self._before_val = {}

    def _logged(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The metrics to record with the epoch just ended. callback_metrics, not logged_metrics: it holds what
        the module logged with logger=False too, each epoch-level metric under its plain name, the same values
        ModelCheckpoint and EarlyStopping read. It also keeps a validation's values through the epochs that
        do not validate (check_val_every_n_epoch): those are left out, as the sanity check's are."""
        if self.metrics is None:
            chosen = {k: v for k, v in self._val_logged.items() if k.startswith("val")}
            # logged on_step and on_epoch, a metric is also there as NAME_epoch: once is enough
            return {k: v for k, v in chosen.items() if not (k.endswith("_epoch") and k[: -len("_epoch")] in chosen)}
        now = trainer.callback_metrics
        out = {}
        for name in self.metrics:
            if name in self._val_logged:
                out[name] = self._val_logged[name]
            elif name in now and name not in self._val_names:  # a training metric (a validation's would be stale)
                out[name] = now[name]
        self._recorded_names.update(out)
        return out

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        replayed = self._replayed_end_at is not None and trainer.global_step == self._replayed_end_at
        self._replayed_end_at = None
        if self.recorder is not None and not replayed:  # an epoch end Lightning runs again is recorded once
            logged = self._logged(trainer)
            with isolate_rng():
                self.recorder.epoch_end(logged=logged)  # its learning rate: the last step's
            self._state = self._checkpoint_state()  # before ModelCheckpoint saves (it comes after this hook)
        self._val_logged = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        unlogged = [n for n in self.metrics or () if n not in self._recorded_names]
        if unlogged and self.recorder is not None and self.recorder.epoch > 0:
            rank_zero_warn(f"SFTReport: the module never logged {', '.join(unlogged)} (in `metrics`)")
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
