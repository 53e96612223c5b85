"""The fine-tuning run, top to bottom: data, model, optimizer, the loop, the recorder, the report.

The loop is a plain PyTorch loop; everything sftreport measures goes through the public Recorder API
(`Recorder(...)`, `rec.step(...)`, `rec.epoch_end()`, `rec.finish(...)`), exactly as in a user's loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from sftreport.config import RunConfig
from sftreport.errors import ExitCode, StorageError, UserError, one_line
from sftreport.record.activations import check_modules, default_modules
from sftreport.record.gradients import skipped_by_scaler
from sftreport.record.recorder import Recorder, RunDescription, check_forward, environment
from sftreport.schema import DatasetInfo, EpochSnapshot, RunStatus, TrainingInfo
from sftreport.store import check_run_dir_free
from sftreport.train import distributed, hf
from sftreport.train.data import DevicePipeline, ImageTensors, TrainBatches, eval_batches, load_data
from sftreport.train.models import apply_strategy, build_model, default_image_size, set_train_mode
from sftreport.train.optim import make_optimizer, make_schedule
from sftreport.train.progress import Progress
from sftreport.train.source import source_task
from sftreport.train.strategies import apply_lora, frozen_modules, optimizer_groups, param_groups, unfreeze_all

CHECK_EVERY = 20  # the loss is checked for NaN (and, under torchrun, ranks agree on stopping) this often


@dataclass
class RunOutcome:
    status: str  # completed | interrupted | diverged | failed
    run_dir: Path
    reports: list[Path]
    detail: str = ""
    problems: list[str] = field(default_factory=list)  # what went wrong after training: run.json, the reports
    unexpected: bool = False  # failed by an exception nobody anticipated: SFTREPORT_DEBUG=1 shows its traceback

    @property
    def exit_code(self) -> int:
        codes = {"completed": ExitCode.COMPLETED, "interrupted": ExitCode.INTERRUPTED, "diverged": ExitCode.DIVERGED}
        code = codes.get(self.status, ExitCode.FAILED)
        return ExitCode.FAILED if code == ExitCode.COMPLETED and self.problems else code


class StopRequest:
    """Ctrl-C (or SIGTERM, from a scheduler or torchrun) sets a flag the loop checks after each step, so
    the run stops after a clean write. A second signal interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = signal.Signals(signum).name

        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): default signal behaviour
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class _Diverged(Exception):
    pass


class EvalData:
    """Re-iterable validation batches of this process, prepared on the device."""

    def __init__(
        self,
        data,
        pipeline: DevicePipeline | hf.TokenPipeline,
        batch: int,
        ctx,
        workers,
        device,
        equal_batches: bool = False,
        relabel: list[int] | None = None,
    ):
        self.data, self.pipeline, self.batch, self.ctx, self.workers, self.device = (
            data,
            pipeline,
            batch,
            ctx,
            workers,
            device,
        )
        self.equal_batches = equal_batches
        # the label each class index stands for (the source task's: an output of the pretrained head)
        self.relabel = torch.tensor(relabel, device=device) if relabel is not None else None

    def __iter__(self):
        for x, y in eval_batches(
            self.data, self.batch, self.ctx.rank, self.ctx.world_size, self.workers, self.device, self.equal_batches
        ):
            y = y.to(self.device, non_blocking=True)
            yield self.pipeline.eval_batch(x), (self.relabel[y] if self.relabel is not None else y)


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<time>-<model>-<dataset>, with a suffix when two runs start in the same second."""
    base = Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{cfg.dataset}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run(cfg: RunConfig) -> RunOutcome:
    ctx, device = distributed.setup(cfg.device)
    finished = False
    try:
        outcome = _run(cfg, ctx, device)
        finished = outcome.status == "completed"  # every rank got here; a failed rank may be alone
        return outcome
    finally:
        distributed.teardown(finished)


def _run(cfg: RunConfig, ctx: distributed.DistContext, device: torch.device) -> RunOutcome:
    if cfg.task == "segment":
        from sftreport.train.segmentation import run_segmentation

        return run_segmentation(cfg, ctx, device)
    if cfg.task == "detect":
        from sftreport.train.detection import run_detection

        return run_detection(cfg, ctx, device)
    torch.manual_seed(cfg.seed)  # the same on every rank: identical initial heads, identical shuffles
    run_dir = cfg.run_dir or default_run_dir(cfg)
    if ctx.is_main:
        check_run_dir_free(run_dir)  # before minutes of loading, not after
    if cfg.shard == "fsdp" and not ctx.enabled:
        raise UserError(
            "--shard fsdp shards the model across the processes of a torchrun job, and this is one process: "
            "start it with torchrun --nproc-per-node N (N ≥ 2)"
        )
    if cfg.shard == "fsdp" and (cfg.strategy == "lp-ft" or cfg.lora_rank is not None):
        raise UserError(f"--strategy {cfg.strategy} under --shard fsdp is not supported yet: use DDP (--shard none)")

    # ---- data and model
    text = cfg.dataset == "text" or cfg.model.startswith(hf.PREFIX)
    if text:  # the tokenizer comes with the model, and the head's classes with the data
        data, bundle = hf.load_text_task(cfg)
    else:
        data = load_data(cfg, default_image_size(cfg.model))
        bundle = build_model(cfg.model, cfg.weights, data.num_classes)
    training = TrainingInfo(lp_epochs=cfg.lp_epochs, lr_decay=cfg.lr_decay)
    if cfg.lora_rank is not None:
        training.lora, adapters = apply_lora(bundle.model, cfg.lora_rank, cfg.lora_alpha, bundle.head, cfg.lora_targets)
        bundle.new_params |= adapters
        frozen = frozen_modules(bundle.model)
    else:  # lp-ft starts as a linear probe
        frozen = apply_strategy(bundle.model, "linear-probe" if cfg.strategy == "lp-ft" else cfg.strategy, bundle.head)
    check_modules(bundle.model, cfg.record.activations or [])  # before anything is printed or written
    use_amp = cfg.amp and device.type == "cuda"
    if device.type == "cuda":  # fixed input sizes: let cuDNN pick the fastest kernels once per shape
        torch.backends.cudnn.benchmark = True
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    model = bundle.model.to(device)
    if use_amp and not text:
        model = model.to(memory_format=torch.channels_last)
    pipeline = (
        hf.TokenPipeline(device) if text else DevicePipeline(device, data.image_size, data.hflip, channels_last=use_amp)
    )
    train = TrainBatches(
        data.train, cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size, device, cfg.workers, cfg.max_steps_per_epoch
    )
    if isinstance(data.val, ImageTensors):  # in-memory validation data lives on the device too
        data.val = ImageTensors(data.val.images.to(device), data.val.labels.to(device))
    # a sharded forward is a collective: every process then evaluates the same number of batches
    val = EvalData(data.val, pipeline, cfg.batch_size, ctx, cfg.workers, device, equal_batches=cfg.shard == "fsdp")
    probe = (pipeline.eval_batch(data.probe.images), data.probe.labels.to(device))
    check_forward(model, probe[0][:2])  # the model runs on these inputs: checked before anything is printed

    def source_batches(images, size: int, targets: list[int]) -> EvalData:
        if isinstance(images, ImageTensors):
            images = ImageTensors(images.images.to(device), images.labels.to(device))
        source_pipeline = DevicePipeline(device, size, hflip=False, channels_last=use_amp)
        return EvalData(images, source_pipeline, cfg.batch_size, ctx, cfg.workers, device, cfg.shard == "fsdp", targets)

    source = source_task(cfg.model, cfg.weights, cfg.source_data, bundle.source_head, source_batches)

    train_model = model
    if ctx.enabled:
        if device.type == "cuda":  # CPU has no SyncBatchNorm; see README on what that changes
            model = train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.shard == "fsdp":  # in place: the parameters become DTensors, each process holding its shards
            distributed.fully_shard_blocks(model, default_modules(model, bundle.head))
        else:
            train_model = _ddp(model, device)

    # ---- optimizer and schedule (per step); lp-ft rebuilds both for its second phase
    def optimizer_and_schedule(epochs: int):
        groups = param_groups(model, bundle.head, cfg.lr, cfg.lr_decay)
        built = make_optimizer(optimizer_groups(groups), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        return built, make_schedule(built, cfg.scheduler, epochs * len(train)), groups

    lp_epochs = cfg.lp_epochs if cfg.strategy == "lp-ft" else None
    optimizer, schedule, groups = optimizer_and_schedule(lp_epochs or cfg.epochs)
    if cfg.lr_decay is not None and lp_epochs is None:
        training.param_groups = [g.info for g in groups]
    if lp_epochs is not None:
        training.schedule = (
            f"{cfg.scheduler} over the {lp_epochs} linear-probe epochs, then the optimizer rebuilt over every "
            f"parameter and the {cfg.scheduler} schedule restarted over the {cfg.epochs - lp_epochs} remaining epochs"
        )
        if cfg.lr_decay is not None:  # the groups of the second phase, when every block trains
            with _all_trainable(model):
                training.param_groups = [g.info for g in param_groups(model, bundle.head, cfg.lr, cfg.lr_decay)]
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

    # ---- the recorder (epoch 0: the pretrained model, before any step) and the loop
    status: RunStatus = "completed"
    detail, unexpected = "", False
    bad_input: UserError | None = None
    with Progress(cfg.epochs, len(train), enabled=ctx.is_main and not cfg.quiet) as progress, StopRequest() as stop:
        progress.message(
            f"{cfg.model} ({bundle.weights}) on {data.name}: {len(data.train)} train / {len(data.val)} "
            f"val images at {data.image_size} px, {cfg.strategy}, device {device}"
            f"{' ×' + str(ctx.world_size) if ctx.enabled else ''}"
            f"{', ' + str(amp_dtype).split('.')[-1] if use_amp else ''}"
        )
        progress.message("epoch 0: measuring the pretrained model")
        rec = Recorder(
            model,
            probe=probe,
            val_data=val,
            run_dir=run_dir,
            class_names=data.classes,
            new_params=bundle.new_params,
            head=bundle.head,
            options=cfg.record,
            autocast=autocast,
            writer=ctx.is_main,
            source=source,
            run=RunDescription(
                name=cfg.resolved_name(),
                model=cfg.model,
                weights=bundle.weights,
                strategy=cfg.strategy,
                planned_epochs=cfg.epochs,
                config=cfg.model_dump(mode="json"),
                dataset=DatasetInfo(
                    name=data.name,
                    classes=data.classes,
                    train_size=len(data.train),
                    val_size=len(data.val),
                    image_size=data.image_size,
                    source=data.source,
                    modality="text" if text else "images",
                ),
                environment=environment(device, str(amp_dtype).split(".")[-1] if use_amp else "fp32", ctx.world_size),
                training=training if training.model_dump(exclude_defaults=True) else None,
            ),
        )
        if rec.last is not None and rec.last.val is not None:
            source_txt = f", source task acc {rec.last.source.accuracy:.1%}" if rec.last.source is not None else ""
            progress.message(f"epoch 0: val loss {rec.last.val.loss:.4f} acc {rec.last.val.accuracy:.1%}{source_txt}")

        try:
            for epoch in range(1, cfg.epochs + 1):
                if lp_epochs is not None and epoch == lp_epochs + 1:  # lp-ft: every layer trains from now on
                    frozen = unfreeze_all(model)
                    optimizer, schedule, _ = optimizer_and_schedule(cfg.epochs - lp_epochs)
                    if ctx.enabled:  # DDP reduces the gradients of the parameters that trained when it was built
                        train_model = _ddp(model, device)
                    rec.trainable_changed()
                    progress.message(f"epoch {epoch}: linear probe done, every layer trains from now on")
                set_train_mode(model, frozen)
                progress.start_epoch(epoch)
                for step, (x, y, aug) in enumerate(train.epoch(epoch, data.hflip), 1):
                    x = pipeline.train_batch(x, aug)
                    with autocast():
                        logits = train_model(x)
                        loss = F.cross_entropy(logits.float(), y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)  # the recorder sees the true gradients
                    skipped = skipped_by_scaler(scaler, optimizer)  # fp16 overflow: GradScaler skips the step
                    scaler.step(optimizer)
                    scaler.update()
                    rec.step(loss, logits, y, lr=float(schedule.get_last_lr()[0]), skipped=skipped)
                    schedule.step()

                    value = None
                    if step % CHECK_EVERY == 0 or (not ctx.enabled and progress.due()):  # a host sync: rarely
                        value = loss.item()
                        diverged, stopping = distributed.any_flags(
                            device, not math.isfinite(value), bool(stop.requested)
                        )
                        if diverged:
                            raise _Diverged(f"training loss became {value} at epoch {epoch}, step {step}")
                        if stopping:
                            raise KeyboardInterrupt
                    progress.update(step, step * cfg.batch_size, value)
                snap = rec.epoch_end()
                progress.end_epoch(_epoch_line(epoch, cfg.epochs, snap))
                if snap.train_loss is not None and not math.isfinite(snap.train_loss):
                    raise _Diverged(f"training loss became {snap.train_loss} in epoch {epoch}")
                if distributed.any_flags(device, bool(stop.requested))[0]:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            by = "the user (Ctrl-C)" if stop.requested in (None, "SIGINT") else stop.requested
            status, detail = "interrupted", f"stopped by {by} after {rec.epoch} of {cfg.epochs} epochs"
        except _Diverged as e:
            status, detail = "diverged", str(e)
            if rec.epoch < epoch:  # keep the diverging epoch's evidence (NaN weights, gradients)
                rec.epoch_end()
        except UserError as e:  # bad input met mid-run (an unreadable image): keep what was done, exit 2
            status, detail, bad_input = "failed", one_line(e), e
        except StorageError as e:  # the disk refused an epoch: the epochs before it are intact
            status, detail = "failed", str(e)
        except Exception as e:
            if os.environ.get("SFTREPORT_DEBUG"):
                traceback.print_exc()
            first = one_line(e)
            if ctx.enabled and "closed by peer" in first:  # gloo's word for "another rank died"
                first = "another process of the job failed (its own message says why)"
            status, detail, unexpected = "failed", f"{type(e).__name__} in epoch {rec.epoch + 1}: {first}", True

    return conclude(rec, ctx, cfg, run_dir, status, detail, bad_input, unexpected)


def stop_meaning(e: BaseException, rec: Recorder, epochs: int) -> tuple[RunStatus, str, UserError | None, bool]:
    """What an exception that ended a task's training loop means for the run (segmentation, detection):
    (status, detail, the bad input to report after finishing, whether it was unexpected)."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", f"stopped after {rec.epoch} of {epochs} epochs", None, False
    if isinstance(e, FloatingPointError):
        return "diverged", str(e), None, False
    if isinstance(e, UserError):
        return "failed", one_line(e), e, False
    if os.environ.get("SFTREPORT_DEBUG"):
        traceback.print_exc()
    return "failed", f"{type(e).__name__} in epoch {rec.epoch + 1}: {one_line(e)}", None, True


def conclude(
    rec: Recorder,
    ctx,
    cfg: RunConfig,
    run_dir: Path,
    status: RunStatus,
    detail: str,
    bad_input: UserError | None,
    unexpected: bool,
) -> RunOutcome:
    """Final status and reports (see _finish); bad input met mid-run is raised after them (exit 2)."""
    reports, problems = _finish(rec, ctx, cfg, run_dir, status, detail)
    if bad_input is not None:
        raise UserError(f"{one_line(bad_input)} (run directory {run_dir} holds the {rec.epoch} finished epochs)")
    return RunOutcome(status, Path(run_dir), reports, detail, problems, unexpected)


def _finish(
    rec: Recorder, ctx, cfg: RunConfig, run_dir: Path, status: RunStatus, detail: str
) -> tuple[list[Path], list[str]]:
    """Final status into run.json and the reports (rank 0). Returns the reports written and, in words, what
    could not be done; the finished epochs are on disk whatever happens here."""
    if not ctx.is_main:
        return [], []
    outs = cfg.out or [Path(run_dir) / "report.html"]
    started = time.perf_counter()
    problems: list[str] = []
    reports: list[Path] = []
    try:
        rec.finish(status, detail)
    except StorageError as e:  # the reports below still hold the status
        problems.append(f"the final status could not be saved in run.json ({one_line(e)})")
    try:
        reports = rec.render(outs)
    except Exception as e:
        if os.environ.get("SFTREPORT_DEBUG"):
            traceback.print_exc()
        problems.append(
            f"the report could not be written ({one_line(e)}); the recorded epochs are in {run_dir}: "
            f"`sftreport render {run_dir} --out FILE` renders them elsewhere"
        )
    if not cfg.quiet:
        for r in reports:
            print(f"report: {r}", flush=True)
        print(
            f"run directory: {run_dir}  (status {status}; reports rendered in {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    return reports, problems


def _epoch_line(epoch: int, epochs: int, snap: EpochSnapshot) -> str:
    parts = [f"epoch {epoch}/{epochs}"]
    if snap.train_loss is not None:
        parts.append(f"train loss {snap.train_loss:.4f}")
    if snap.train_accuracy is not None:
        parts.append(f"acc {snap.train_accuracy:.1%}")
    if snap.val is not None and snap.val.task == "detect":  # a detector has no validation loss
        parts.append(f"| val mAP {snap.val.map:.3f}  mAP@.5 {snap.val.map_50:.3f}")
    elif snap.val is not None:
        parts.append(f"| val loss {snap.val.loss:.4f} acc {snap.val.accuracy:.1%}")
        if snap.val.task == "segment":
            parts.append(f"mIoU {snap.val.miou:.3f}")
    if snap.source is not None:
        parts.append(f"| source acc {snap.source.accuracy:.1%}")
    t = snap.timing
    parts.append(f"| {t.train_s:.1f} s train, {t.eval_s:.1f} s eval, {t.record_s:.2f} s probes")
    return "  ".join(parts)


def _ddp(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def _all_trainable(model: torch.nn.Module):
    """Every parameter trainable while inside (to describe lp-ft's second phase in advance)."""
    was = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        yield
    finally:
        for p, w in zip(model.parameters(), was):
            p.requires_grad_(w)
