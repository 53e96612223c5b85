"""Recorder: the public API that turns any training loop into a run directory (and a report).

    rec = Recorder(model, probe=(x_probe, y_probe), val_data=val_loader, run_dir="runs/mine")
    for epoch in range(epochs):
        for x, y in train_loader:
            ...; loss.backward(); optimizer.step()
            rec.step(loss, logits, y)
        rec.epoch_end()
    rec.finish(out="report.html")

Constructing the Recorder takes the model as it is now as the pretrained reference and records epoch 0
(evaluation and every probe) before any step. `step` is cheap: it keeps the loss on the device, samples
gradient norms every k-th step, and measures one update per epoch. `epoch_end` evaluates, runs the
probes and appends one validated snapshot to epochs.jsonl. sftreport's own runner uses exactly this API.

Under torchrun every process constructs a Recorder and calls the same methods (evaluation and the train
metrics are reduced across processes); only the process given `writer=True` (rank 0) runs the probes
and writes the run directory. With sharded parameters (FSDP2's `fully_shard`) every process measures
its own shards of the weights and gradients and the statistics are combined across processes (see
record/sharded.py); the probe set's forward passes run on every process, as the sharded forward needs,
and `val_data` must give every process the same number of batches.

Resuming from a checkpoint continues the same run directory:

    model.load_state_dict(ckpt["model"]); optimizer.load_state_dict(ckpt["optimizer"])  # your checkpoint
    rec = Recorder(model, probe=probe, val_data=val_loader, run_dir="runs/mine", resume_after=ckpt["epoch"])
    for epoch in range(ckpt["epoch"], epochs): ...  # as above

`resume_after`: the epoch at whose end the checkpoint was saved (the model must hold those weights). Epoch 0
is not recorded again; the next `epoch_end` records epoch `resume_after + 1`, and every measure keeps its
reference from the run's start: the relative change is from the pretrained weights W₀, histogram bins, CKA
and the PCA axes are those fixed at epoch 0 (kept in RUN_DIR/reference.pt, see record/reference.py; W₀ is
weights/epoch_000.pt, which save_weights "none" does not keep: such a run cannot be resumed).
Lines of epochs after `resume_after` (recorded after that checkpoint, by a fit that went on and then
stopped) are moved to epochs.superseded.jsonl, not deleted, and the run's status says so; run.json's
status is "running" again until `finish`. `resume_step`: the optimizer steps done when the checkpoint was
saved, if it was saved mid-epoch (default: the step recorded with epoch `resume_after`; under torchrun, give
it to every process).
"""

from __future__ import annotations

import math
import platform
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sftreport import __version__
from sftreport.config import RecordOptions
from sftreport.errors import StorageError, UserError, one_line
from sftreport.record.activations import ActivationProbe, check_modules, default_modules
from sftreport.record.architecture import classifier_head, describe
from sftreport.record.attention import AttentionProbe, attention_modules
from sftreport.record.evaluation import all_reduce_sum, evaluate, logits_of
from sftreport.record.features import FeatureProbe, capture_head_input
from sftreport.record.gradients import GradientProbe
from sftreport.record.images import feature_map_strip, filter_grid, first_conv, top_channels
from sftreport.record.lora import AdapterProbe, lora_layers, mark_adapters
from sftreport.record.recurrent import RecurrentProbe, recurrent_modules
from sftreport.record.reference import (
    check_identity,
    identity,
    load_reference,
    load_weights_file,
    new_run_id,
    save_reference,
)
from sftreport.record.saved_weights import WeightSaver
from sftreport.record.sharded import full, full_state_dict, is_sharded, reshard, type_name
from sftreport.record.source_task import SourceTask, evaluate_source
from sftreport.record.spectrum import spectrum
from sftreport.record.task import Task
from sftreport.record.tokens import moved_tokens, token_embedding
from sftreport.record.weights import WeightProbe
from sftreport.schema import (
    DatasetInfo,
    Environment,
    EpochSnapshot,
    FeatureMapImage,
    Images,
    MaskImage,
    ProbeInfo,
    RunInfo,
    RunStatus,
    Spectrum,
    StepPoint,
    Timing,
    TrainingInfo,
)
from sftreport.store import SUPERSEDED_FILE, RunWriter, read_run, recorded_steps

IMAGE_SAMPLES = 2  # probe images whose feature maps are drawn
IMAGE_DEPTHS = 3  # probed modules (early, middle, late) whose feature maps are drawn


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def environment(device: torch.device, precision: str = "fp32", world_size: int | None = None) -> Environment:
    """Where the run ran; `world_size` defaults to the running process group's size (1 without one)."""
    from importlib.metadata import PackageNotFoundError, version

    if world_size is None:
        group = torch.distributed.is_available() and torch.distributed.is_initialized()
        world_size = torch.distributed.get_world_size() if group else 1

    try:
        torchvision_version = version("torchvision")  # without importing it (a second)
    except PackageNotFoundError:
        torchvision_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=2, cwd=Path.cwd()
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return Environment(
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        torchvision=torchvision_version,
        sftreport=__version__,
        device=str(device),
        device_name=name,
        precision=precision,
        world_size=world_size,
        git_commit=commit,
        hostname=socket.gethostname(),
    )


@torch.no_grad()
def check_forward(model: nn.Module, x: torch.Tensor, dims: int = 2) -> int:
    """One forward pass of a couple of inputs: the model must run on them (a bad image size is the user's
    to fix, said in one line), and the logits' width is the class count. Train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:
        raise UserError(
            f"{type(model).__name__} cannot run on inputs of shape {list(x.shape[1:])}: {one_line(e, limit=200)}"
        ) from None
    finally:
        model.train(was_training)
    out = getattr(out, "logits", out)  # a Hugging Face model's output object carries them as .logits
    if dims == 4:  # per-pixel logits, or torchvision's segmentation dict {"out": ...}
        out = out.get("out") if isinstance(out, dict) else out
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise UserError(
                f"{type(model).__name__} must return per-pixel logits (batch, classes, H, W) or {{'out': ...}}"
            )
        return out.shape[1]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(
            f"{type(model).__name__} must return logits of shape (batch, classes), or an object with them as .logits"
        )
    return out.shape[1]


def logged_numbers(metrics: dict) -> dict[str, float]:
    """Logged metrics as plain floats by name: one-element tensors are read, anything that is not a number
    (a string, a list, a tensor of many values) is left out rather than refused."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(name)] = float(value)
    return out


def dataset_size(data: Iterable | None) -> int:
    """The number of samples behind a DataLoader (0 when it cannot be told without iterating)."""
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else 0
    except TypeError:  # an iterable-style dataset
        return 0


@dataclass
class RunDescription:
    """What a run is, for run.json and the report's header and appendix. sftreport's runner fills every
    field; in a user's own loop all are optional."""

    name: str = "fine-tuning run"
    model: str | None = None  # the model's name; default: its class name
    weights: str = "as given"  # the pretrained weights, in words
    strategy: str = "as given"
    planned_epochs: int | None = None
    config: dict = field(default_factory=dict)  # the configuration as given, shown in the appendix
    dataset: DatasetInfo | None = None
    environment: Environment | None = None
    training: TrainingInfo | None = None  # lp-ft's switch, per-group learning rates, LoRA's settings


@dataclass
class _Probes:
    """The probes, which only the writing process runs (and only with recording on). With sharded
    parameters every process measures weights and gradients (they combine shards); activations and
    features, measured on whole outputs, stay the writer's (None elsewhere)."""

    weights: WeightProbe
    grads: GradientProbe
    activations: ActivationProbe | None
    features: FeatureProbe | None
    recurrent: RecurrentProbe | None = None  # LSTM/GRU gates over the probe sequences (the model has them)
    attention: AttentionProbe | None = None  # multi-head attention entropy and change (the model has it)
    adapters: AdapterProbe | None = None  # LoRA layers' effective weights (the writer's; not when sharded)


class Recorder:
    def __init__(
        self,
        model: nn.Module,
        *,
        probe: tuple[torch.Tensor, Any],
        val_data: Iterable | None = None,
        run_dir: str | Path | None = None,
        class_names: list[str] | None = None,
        new_params: Iterable[str] = (),
        head: str | None = None,
        options: RecordOptions | None = None,
        run: RunDescription | None = None,
        loss_fn: Callable = F.cross_entropy,
        autocast: Callable = nullcontext,
        writer: bool = True,
        resume_after: int | None = None,
        resume_step: int | None = None,
        source: SourceTask | None = None,
        task: Task | None = None,
    ):
        """`probe`: a fixed batch of inputs and labels; `val_data`: (inputs, targets) batches to evaluate on at
        every epoch end; `new_params`: names of the parameters your new head added; `head`: the classifier
        module (default: the last Linear or Conv2d); `run`: what to call the run and how it was set up;
        `writer`: False on every process but one under torchrun (that one runs the probes and writes);
        `resume_after`, `resume_step`: continue the run in `run_dir` from a checkpoint (see the module's
        docstring) instead of starting one; `source`: the task the model was pretrained for, with its
        pretrained head kept aside, measured at every epoch end (forgetting; see record/source_task.py);
        `task`: None for a classifier, a SegmentationTask or DetectionTask otherwise (the probe's targets are
        then masks or boxes, its evaluation and feature view the task's).

        A model with peft's LoRA layers (`get_peft_model`, `inject_adapter_in_model`) is measured by the
        effective weight of each adapted layer, W_base + (α/r)·B·A (record/lora.py)."""
        self.model = model
        self.options = options or RecordOptions()
        self.run = run or RunDescription()
        self.device = next(model.parameters()).device
        reshard(model)  # FSDP2 units gathered by an earlier forward: sharded again (nothing for other models)
        self.sharded = is_sharded(model)  # FSDP2: every process takes part in the probes' collectives
        self.probe_x = probe[0].to(self.device)
        self.task = task
        self.probe_targets: Any = None  # a task's targets (masks, boxes); the feature probe gets one label each
        if task is None:
            self.probe_y = probe[1].to(self.device).long()
        else:
            self.probe_targets = task.targets_to(probe[1], self.device)
            problem = task.check_targets(self.probe_targets)
            if problem:
                raise UserError(f"probe targets: {problem}")
            self.probe_y = task.probe_labels(self.probe_targets)
        if len(self.probe_y) < 2:
            raise UserError(f"the probe set needs at least 2 samples, got {len(self.probe_y)}")
        self.val_data = val_data
        self.head = head or classifier_head(model)
        logits_width = task.check_forward(model, self.probe_x[:2]) if task else check_forward(model, self.probe_x[:2])
        self.num_classes = len(class_names) if class_names else logits_width
        self.class_names = class_names or [str(i) for i in range(self.num_classes)]
        if int(self.probe_y.min()) < 0 or int(self.probe_y.max()) >= self.num_classes:
            raise UserError(
                f"probe labels must be class indices 0..{self.num_classes - 1}, "
                f"found {int(self.probe_y.min())}..{int(self.probe_y.max())}"
            )
        self.new_params = set(new_params)
        self.source = source
        if source is not None:
            check_modules(model, [self.head])
        if self.sharded:  # check_forward left the root's parameters gathered: the probes need the shards
            reshard(model)
        self.loss_fn, self.autocast = loss_fn, autocast
        self.planned_epochs = self.run.planned_epochs
        self.epoch = 0
        self.global_step = 0
        self._started = time.perf_counter()
        self._reset_epoch()

        act_modules = self.options.activations or default_modules(model, self.head)
        check_modules(model, act_modules)
        if run_dir is None:
            if resume_after is not None:
                raise UserError("resume_after needs the run_dir of the run to continue")
            run_dir = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S-recorder")
        self.run_dir = Path(run_dir)
        self.run_id: str | None = None  # the writing process's: names the run in reference.pt and checkpoints
        self._identity = identity(
            list(model.named_parameters()), self.probe_x, self.probe_y, self.options.hist_bins, act_modules
        )
        # only once the arguments are known good
        self.writer = RunWriter(self.run_dir, resume=resume_after is not None) if writer else None
        reference: dict | None = None
        if resume_after is not None and self.sharded:
            raise UserError("resuming a run whose parameters are sharded (FSDP) is not supported yet: start a new run")
        if resume_after is not None:  # every check before anything in the run directory changes
            self.epoch, self.global_step = resume_after, resume_step or 0
            if self.writer is not None:
                reference = self._check_resume(resume_after, resume_step)
        self._prior_s = 0.0  # time the run took before it was resumed
        self._resume_note = ""
        self.probes: _Probes | None = None
        self.saver: WeightSaver | None = None
        if self.options.enabled and (self.writer is not None or self.sharded):
            writes = self.writer is not None
            self.probes = _Probes(
                weights=WeightProbe(model, self.new_params, self.options.hist_bins),
                grads=GradientProbe(model, self.options.grad_every, steps_done=self.global_step),
                activations=ActivationProbe(
                    act_modules, self.options.hist_bins, self._image_modules(model, act_modules), IMAGE_SAMPLES
                )
                if writes
                else None,
                features=FeatureProbe(self.head, self.probe_y, self.num_classes, self.options.knn_k, self.options.tsne)
                if writes
                else None,
                # the recurrent probe runs its modules again on the writer alone: not under sharding
                recurrent=RecurrentProbe(recurrent_modules(model))
                if writes and not self.sharded and recurrent_modules(model)
                else None,
                attention=AttentionProbe(attention_modules(model)) if writes and attention_modules(model) else None,
            )
            if writes and not self.sharded and lora_layers(model):
                self.probes.adapters = AdapterProbe(model, self.probes.weights) or None
        if self.options.enabled and self.writer is not None:
            self.saver = WeightSaver(self.writer, self.options.save_weights)
        self._map_channels: dict[str, list[int]] = {}
        self._filters_module = first_conv(model)

        self.last: EpochSnapshot | None = None  # the latest snapshot recorded
        self.info: RunInfo | None = None  # the writing process's run.json
        if resume_after is not None:
            if self.writer is not None:
                assert reference is not None
                self._resume(reference, resume_after)
            return
        sample = self.probe_x[:2]
        # a sharded forward is a collective: every process describes the model, the writer keeps it
        architecture = describe(model, sample, self.new_params) if self.writer is not None or self.sharded else None
        if architecture is not None:
            architecture = mark_adapters(architecture, model)
        if self.writer is not None:
            assert architecture is not None
            self.run_id = new_run_id()
            d = self.run
            self.info = RunInfo(
                name=d.name,
                started_at=_now(),
                config=d.config,
                model=d.model or type_name(model),
                weights=d.weights,
                strategy=d.strategy,
                dataset=d.dataset
                or DatasetInfo(
                    name="custom",
                    classes=self.class_names,
                    train_size=0,  # not known here (a framework integration may fill it in)
                    val_size=dataset_size(val_data),
                    image_size=int(sample.shape[-1]),
                ),
                environment=(d.environment or environment(self.device)).model_copy(
                    update={"sharding": "fsdp"} if self.sharded else {}
                ),
                architecture=architecture,
                probe=ProbeInfo(labels=self.probe_y.tolist(), size=len(self.probe_y)),
                planned_epochs=d.planned_epochs,
                source_task=source.info(self.head, dataset_size(source.data)) if source is not None else None,
                training=d.training,
            )
            self.writer.write_run(self.info)
        self._record_epoch(first=True)

    # ------------------------------------------------------------------ resuming

    def _save_reference(self, weights_file: str | None) -> None:
        """reference.pt (see record/reference.py): written once, at epoch 0, before its line."""
        assert self.writer is not None
        state: dict = {"run_id": self.run_id, "identity": self._identity}
        if self.probes is not None:
            assert self.probes.activations is not None and self.probes.features is not None, "the writer's"
            state["probes"] = {
                # W₀ is epoch 0's saved weights (kept unless save_weights is "none"): not stored twice
                "weights": {"file": weights_file} if weights_file else None,
                "activations": self.probes.activations.state_dict(),
                "features": self.probes.features.state_dict(),
                "attention": self.probes.attention.state_dict() if self.probes.attention else {},
                "map_channels": self._map_channels,
            }
        save_reference(self.writer, state)

    def _check_resume(self, after: int, step: int | None) -> dict:
        """Everything a resume needs, checked before the run directory is touched: the run recorded epoch
        `after`, its reference fits this model and probe set. Sets the step to continue from."""
        root = self.run_dir
        steps = recorded_steps(root)
        if after not in steps:
            held = f"epochs 0–{max(steps)}" if steps else "no epoch"
            raise UserError(f"cannot continue the run in {root} after epoch {after}: it recorded {held}")
        if step is not None and step < steps[after]:
            raise UserError(
                f"cannot continue the run in {root} at step {step}: its epoch {after} ended at step {steps[after]}"
            )
        self.global_step = steps[after] if step is None else step
        reference = load_reference(root)
        check_identity(reference["identity"], self._identity, root)
        probes = reference.get("probes")
        if self.options.enabled:
            if probes is None:
                raise UserError(f"cannot continue the run in {root} with probes: it was recorded without them")
            if probes["weights"] is None:
                raise UserError(
                    f"cannot continue the run in {root}: it kept no pretrained weights to measure from "
                    "(it was recorded with save_weights='none')"
                )
            probes["weights"] = load_weights_file(root, probes["weights"]["file"])
        return reference

    def _resume(self, reference: dict, after: int) -> None:
        """Continue the checked run: restore the probes' references, move later lines aside, mark it running."""
        writer = self.writer
        assert writer is not None
        self.run_id = reference["run_id"]
        if self.probes is not None:
            assert self.probes.activations is not None and self.probes.features is not None, "the writer's"
            saved = reference["probes"]
            self.probes.weights.load_state_dict(saved["weights"])
            self.probes.activations.load_state_dict(saved["activations"])
            self.probes.features.load_state_dict(saved["features"])
            if self.probes.attention is not None:  # a run recorded before attention was probed has none
                self.probes.attention.load_state_dict(saved.get("attention", {}))
            self._map_channels = saved["map_channels"]
        moved = writer.supersede_after(after)
        run = read_run(writer.root)
        if self.saver is not None:
            self.saver.resume(run.epochs, moved)
        self.last = run.epochs[-1]
        self._prior_s = sum(e.timing.train_s + e.timing.eval_s + e.timing.record_s for e in run.epochs)
        info = run.info
        notes = [f"resumed from a checkpoint after epoch {after}"]
        if self.global_step > self.last.step:
            notes.append(f"at step {self.global_step}, within epoch {after + 1} (its training metrics cover the rest)")
        if moved:
            span = f"epochs {moved[0]}–{moved[-1]} recorded" if len(moved) > 1 else f"epoch {moved[0]} recorded"
            verb = "were" if len(moved) > 1 else "was"
            notes.append(f"{span} after that checkpoint {verb} moved to {SUPERSEDED_FILE}")
        if info.status != "running":
            notes.append(
                f"previous status: {info.status}" + (f" ({info.status_detail[:200]})" if info.status_detail else "")
            )
        self._resume_note = "; ".join(notes)
        info.status, info.status_detail, info.finished_at, info.duration_s = "running", self._resume_note, None, None
        if self.run.planned_epochs is not None:
            info.planned_epochs = self.run.planned_epochs
        self.planned_epochs = info.planned_epochs
        self.info = info
        writer.write_run(info)

    # ------------------------------------------------------------------ per step

    def step(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        lr: float | None = None,
        skipped: torch.Tensor | None = None,
    ) -> None:
        """Call once per optimizer step, after `optimizer.step()` (the gradients are still there).
        `skipped`: a boolean tensor, true when the optimizer skipped this step (fp16 GradScaler overflow):
        its gradients are then not counted as a training problem. The same as `record_batch`,
        `sample_gradients` and `after_optimizer_step` in a row, which a framework's hooks call apart."""
        self.record_batch(loss, logits, targets, lr)
        self.sample_gradients(skipped)
        self.after_optimizer_step(skipped)

    def record_batch(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        lr: float | None = None,
        samples: int | None = None,
    ) -> None:
        """The training loss (and accuracy, given logits and targets) of one optimizer step's batch; nothing
        leaves the device. `samples`: the batch's size when no targets are given (default 1)."""
        self.global_step += 1
        n = len(targets) if targets is not None else (samples or 1)
        if self.task is not None and logits is not None and targets is not None:  # pixels, not images
            counted = self.task.correct(logits, targets)
            if counted is not None:
                self._correct += counted[0]
                self._acc_count += counted[1]
                self._with_acc = True
            logits = targets = None
        self._step_losses.append(loss.detach())  # summed at the epoch end: no work per step beyond this
        self._step_sizes.append(n)
        self._step_lrs.append(lr)
        self._count += n
        if logits is not None and targets is not None:
            self._correct += (logits.detach().argmax(dim=1) == targets).sum()
            self._with_acc = True

    def sample_gradients(self, skipped: torch.Tensor | None = None) -> None:
        """Once per optimizer step while the gradients are there (every k-th step is sampled)."""
        if self.probes is not None:
            self.probes.grads.maybe_sample(valid=None if skipped is None else ~skipped)

    def after_optimizer_step(self, skipped: torch.Tensor | None = None) -> None:
        """Once per optimizer step, after it: the epoch's first step measures its update-to-weight ratio."""
        if self.probes is not None:
            self.probes.weights.after_step(skipped)
            if self.probes.adapters is not None:
                self.probes.adapters.after_step(skipped)

    def trainable_changed(self) -> None:
        """Call between `epoch_end()` and the next step when you change which parameters train (lp-ft's
        second phase unfreezes the backbone): gradients are then sampled for the new set."""
        if self.probes is not None:
            self.probes.grads.retarget(self.model)

    def _reset_epoch(self) -> None:
        self._step_losses: list[torch.Tensor] = []
        self._step_sizes: list[int] = []
        self._step_lrs: list[float | None] = []
        self._correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self._count = 0
        self._acc_count = torch.zeros((), dtype=torch.int64, device=self.device)  # labelled pixels (segmentation)
        self._with_acc = False
        self._epoch_started = time.perf_counter()

    # ------------------------------------------------------------------ per epoch

    def epoch_end(self, lr: float | None = None, logged: dict[str, float] | None = None) -> EpochSnapshot:
        """Record the epoch just finished: evaluation, train metrics, probes; append it to epochs.jsonl.
        `logged`: metrics your loop or framework computed for this epoch (name: number), drawn in the
        report's training section next to the recorder's own."""
        return self._record_epoch(first=False, lr=lr, logged=logged)

    def _record_epoch(
        self, first: bool, lr: float | None = None, logged: dict[str, float] | None = None
    ) -> EpochSnapshot:
        train_s = time.perf_counter() - self._epoch_started
        epoch = 0 if first else self.epoch + 1
        snap = EpochSnapshot(epoch=epoch, step=self.global_step, logged=logged_numbers(logged or {}))
        if not first:
            self._train_metrics(snap, lr)
        t0 = time.perf_counter()
        if self.val_data is not None and self.task is not None:
            snap.val = self.task.evaluate(self.model, self.val_data, self.device, self.autocast)
        elif self.val_data is not None:
            snap.val = evaluate(self.model, self.val_data, self.num_classes, self.device, self.loss_fn, self.autocast)
        if self.source is not None:
            snap.source = evaluate_source(self.model, self.head, self.source, self.device, self.loss_fn, self.autocast)
            task = self.info.source_task if self.info is not None else None
            if first and self.writer is not None and task is not None and task.size != snap.source.count:
                task.size = snap.source.count  # the images evaluated (a loader does not always tell beforehand)
                self.writer.write_run(self.info)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        probes = self._run_probes(self.probes, snap, first) if self.probes is not None else {}
        saved = time.perf_counter()
        state = None
        if self.sharded and self.options.enabled and self.options.save_weights != "none":
            state = full_state_dict(self.model)  # a collective: every process, every epoch end
        if self.saver is not None:
            snap.weights_file = self.saver.save(self.model, epoch, snap.val.accuracy if snap.val else None, state)
            probes["save_weights"] = time.perf_counter() - saved
        if first and self.writer is not None:
            saved = time.perf_counter()
            self._save_reference(snap.weights_file)
            probes["reference"] = time.perf_counter() - saved
        t2 = time.perf_counter()
        snap.timing = Timing(
            train_s=0.0 if first else train_s,
            eval_s=t1 - t0,
            record_s=t2 - t1,
            probes=probes,
            samples_per_s=None if first or train_s <= 0 or not self._global_count else self._global_count / train_s,
        )
        if self.writer:
            self.writer.append_epoch(snap)
            if self.saver is not None:
                self.saver.prune()
        self.epoch = epoch  # only once the epoch is recorded
        self._reset_epoch()
        self.last = snap
        return snap

    def _train_metrics(self, snap: EpochSnapshot, lr: float | None) -> None:
        steps = len(self._step_losses)
        losses = (
            torch.stack([x.reshape(()) for x in self._step_losses]).double()
            if steps
            else torch.zeros(0, dtype=torch.float64, device=self.device)
        )
        sizes = torch.tensor(self._step_sizes, dtype=torch.float64).to(losses.device)
        world = (
            torch.distributed.get_world_size()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 1
        )
        # one reduction: [loss sum, correct, count, per-step losses...]; per-step losses average over ranks
        packed = torch.cat(
            [
                (losses * sizes).sum().reshape(1),
                self._correct.double().reshape(1),
                torch.tensor([float(self._count)], dtype=torch.float64, device=self.device),
                self._acc_count.double().reshape(1),
                losses,
            ]
        )
        sums = all_reduce_sum(packed).tolist()
        loss_sum, correct, count = sums[0], sums[1], sums[2]
        acc_count = sums[3] if self.task is not None else count
        step_losses = [v / world for v in sums[4:]]
        self._global_count = count
        snap.train_loss = loss_sum / count if count else None
        snap.train_accuracy = correct / acc_count if acc_count and self._with_acc else None
        snap.lr = lr if lr is not None else next((x for x in reversed(self._step_lrs) if x is not None), None)
        snap.steps = self._bucket_steps(step_losses)

    def _bucket_steps(self, losses: list[float]) -> list[StepPoint]:
        """Per-step losses averaged in at most `max_steps_points` equal buckets."""
        n = len(losses)
        if not n:
            return []
        width = math.ceil(n / self.options.max_steps_points)
        first_step = self.global_step - n
        points = []
        for start in range(0, n, width):
            chunk = losses[start : start + width]
            lr = self._step_lrs[min(start + width, n) - 1]
            points.append(
                StepPoint(step=first_step + start + len(chunk), loss=sum(chunk) / len(chunk), lr=lr, steps=len(chunk))
            )
        return points

    @torch.no_grad()
    def _run_probes(self, probes: _Probes, snap: EpochSnapshot, first: bool) -> dict[str, float]:
        """Run every probe into `snap`; returns the seconds each took (each part ends with its one transfer
        to the host, so the times hold on CUDA too)."""
        was_training = self.model.training
        self.model.eval()
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[name] = now - clock
            clock = now

        try:
            snap.weights = probes.weights.measure()
            lap("weights")
            embedding = token_embedding(self.model)
            if embedding is not None and probes.activations is not None:  # the writer's (the rows of its buffers)
                snap.tokens = moved_tokens(probes.weights, *embedding)
                lap("tokens")
            if probes.adapters is not None:
                snap.adapters = probes.adapters.measure()
                lap("adapters")
            snap.gradients = probes.grads.collect()
            lap("gradients")
            if probes.activations is None or probes.features is None:
                # sharded, not the writer: the same forward passes and gathers as the writer, nothing kept
                for _ in range(2 if first else 1):
                    self._follow_probe_pass()
                if self._want_images(snap.epoch) and self._filters_module:
                    full(self._filters_weight())
                return seconds
            if first:  # histogram ranges come from the pretrained model's activations
                self._probe_pass(probes.activations, want_hist=False, want_reps=False)
                probes.activations.fix_bins()
            with (
                probes.recurrent.hooks(self.model) if probes.recurrent else nullcontext(),
                probes.attention.hooks(self.model) if probes.attention else nullcontext(),
            ):
                feats, logits = self._probe_pass(probes.activations, want_hist=True, want_reps=True)
            snap.activations, reps, maps = probes.activations.collect()
            lap("activations")
            if probes.recurrent is not None:
                snap.gate_saturation, snap.hidden_states = probes.recurrent.collect(
                    self.model, want_hidden=self._want_images(snap.epoch)
                )
                lap("recurrent")
            if probes.attention is not None:
                snap.attention = probes.attention.collect(first)
                lap("attention")
            snap.features, snap.cka = probes.features.measure(feats, logits, reps)
            lap("features")
            if self._want_images(snap.epoch):
                snap.images = self._images(maps, snap.epoch)
                lap("images")
        finally:
            self.model.train(was_training)
        return seconds

    def _probe_batch(self) -> int:
        return max(1, min(256, len(self.probe_x)))

    def _follow_probe_pass(self) -> None:
        """The probe pass's forward calls with nothing recorded: a sharded model's other processes run
        them so that the writer's all-gathers have partners."""
        batch = self._probe_batch()
        with self.autocast():
            for start in range(0, len(self.probe_x), batch):
                self.model(self.probe_x[start : start + batch])

    def _filters_weight(self) -> torch.Tensor:
        adapters = self.probes.adapters if self.probes is not None else None
        if adapters is not None and self._filters_module and self._filters_module.endswith(".base_layer"):
            effective = adapters.effective_weight(self._filters_module.removesuffix(".base_layer"))
            if effective is not None:  # a LoRA-adapted first layer: the filters it computes with
                return effective
        weight = self.model.get_submodule(self._filters_module).weight  # type: ignore[arg-type]
        assert isinstance(weight, torch.Tensor), "first_conv names a Conv2d"
        return weight

    def _probe_pass(
        self, activations: ActivationProbe, want_hist: bool, want_reps: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats: list[torch.Tensor] = []
        logits = []
        outs = []
        batch = self._probe_batch()
        with (
            activations.hooks(self.model, want_hist, want_reps) as next_chunk,
            capture_head_input(self.model, self.head, feats, flatten=self.task is None),
            self.autocast(),
        ):
            for start in range(0, len(self.probe_x), batch):
                out = self.model(self.probe_x[start : start + batch])
                if self.task is None:
                    logits.append(logits_of(out).float())
                else:
                    outs.append(out)
                next_chunk()
        if self.task is None:
            return torch.cat(feats), torch.cat(logits)
        return self.task.probe_view(self.model, self.probe_x, feats, outs, self.probe_targets, self.probe_y)

    # ------------------------------------------------------------------ images

    @staticmethod
    def _image_modules(model: nn.Module, act_modules: list[str]) -> list[str]:
        """Early, middle and late probed modules (feature maps are drawn for these)."""
        candidates = [m for m in act_modules if not isinstance(model.get_submodule(m), nn.Linear)]
        if len(candidates) <= IMAGE_DEPTHS:
            return candidates
        step = (len(candidates) - 1) / (IMAGE_DEPTHS - 1)
        return [candidates[round(i * step)] for i in range(IMAGE_DEPTHS)]

    def _want_images(self, epoch: int) -> bool:
        every = self.options.image_every
        return epoch == 0 or bool(every and epoch % every == 0) or epoch == self.planned_epochs

    def _images(self, maps: dict[str, torch.Tensor], epoch: int) -> Images:
        writer = self.writer
        assert writer is not None, "only the writing process runs the probes"
        images = Images()
        tag = f"e{epoch:03d}"
        if self._filters_module:
            weight = full(self._filters_weight())  # sharded: gathered, with the other processes
            images.filters = writer.write_asset(f"filters_{tag}.png", filter_grid(weight))
            images.filters_module = self._filters_module
        for module, m in maps.items():
            if m.dim() != 4:
                continue
            channels = self._map_channels.setdefault(module, top_channels(m))
            for i in range(min(IMAGE_SAMPLES, m.shape[0])):
                png = feature_map_strip(self.probe_x[i], m[i], channels)
                safe = module.replace("#", "_")
                path = writer.write_asset(f"fmap_{safe}_s{i}_{tag}.png", png)
                images.feature_maps.append(FeatureMapImage(module=module, sample=i, path=path, channels=len(channels)))
        if self.task is not None:  # the probe images' predictions next to their targets
            shown = images.masks if self.task.name == "segment" else images.detections
            for i, png in self.task.pictures(self.probe_x, self.probe_targets, IMAGE_SAMPLES):
                path = writer.write_asset(f"{self.task.name}_s{i}_{tag}.png", png)
                shown.append(MaskImage(sample=i, path=path))
        return images

    # ------------------------------------------------------------------ the end

    def finish(
        self, status: RunStatus = "completed", detail: str = "", out: str | Path | Iterable[str | Path] = ()
    ) -> list[Path]:
        """Write the final status into run.json and render the report files named in `out` (see `render`).
        If the disk refuses run.json, the reports are still rendered (they hold the status) before the
        StorageError is raised."""
        writer, info = self.writer, self.info
        if writer is None or info is None:  # not the writing process (both exist on it, neither elsewhere)
            return []
        info.status = status
        info.status_detail = "; ".join(x for x in (detail, self._resume_note) if x)
        info.spectrum = self._spectrum()
        info.finished_at = _now()
        info.duration_s = self._prior_s + time.perf_counter() - self._started
        try:
            writer.write_run(info)
        except StorageError:
            self.render(out)
            raise
        return self.render(out)

    def _spectrum(self) -> Spectrum | None:
        """The spectrum of each weight matrix's change from W₀ at the last recorded epoch (record/spectrum.py),
        measured when the model still holds that epoch's weights: not after a run stopped mid-epoch, nor for
        sharded parameters (each process holds a part of every matrix)."""
        last, probes = self.last, self.probes
        if probes is None or self.sharded or last is None or last.epoch == 0 or self.global_step != last.step:
            return None
        w = probes.weights
        pairs = ((n, ref.view(p.shape), p, n in w.new) for n, ref, p in zip(w.names, w.ref.views, w.params))
        return spectrum(last.epoch, pairs)

    def render(self, out: str | Path | Iterable[str | Path]) -> list[Path]:
        """Render report files (the format follows each extension) from the epochs on disk and the run's
        status as held here, so they tell the truth even when the disk refused the final run.json."""
        outs = [out] if isinstance(out, (str, Path)) else list(out)
        writer, info = self.writer, self.info
        if writer is None or info is None or not outs:  # not the writing process, or nothing asked for
            return []
        from sftreport.report.render import render_run
        from sftreport.store import read_run

        run = read_run(writer.root)
        run.info = info
        return render_run(writer.root, [Path(o) for o in outs], run=run)
