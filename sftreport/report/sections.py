"""Decides what each section of a report contains, for one medium: the headline, the summary and one
method per section, each a list of blocks (model.py). A section whose data is absent says so in one line
(`Note`) instead of drawing an empty chart.

What is drawn and how lives elsewhere: the numbers in frames.py, the charts in charts.py, the per-medium
sizes and limits in profile.py, the thresholds in thresholds.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

import sftreport
from sftreport.errors import UserError
from sftreport.report import (
    charts,
    charts_components,
    charts_sequence,
    fmt,
    sections_detection,
    sections_segmentation,
    thresholds,
)
from sftreport.report.findings import derive_findings
from sftreport.report.frames import RunFrames, choose_epochs
from sftreport.report.model import (
    Block,
    Cell,
    ChartBlock,
    Headline,
    Image,
    ImageGrid,
    KeyValues,
    Medium,
    Note,
    Report,
    Section,
    TableBlock,
)
from sftreport.report.profile import PROFILES, Profile
from sftreport.report.spectrum import run_spectrum_blocks
from sftreport.report.vega import chart_spec
from sftreport.schema import (
    SCHEMA_VERSION,
    Architecture,
    BlockSummary,
    ComponentSummary,
    DetectionEvaluation,
    RunInfo,
    SegmentationEvaluation,
)
from sftreport.store import Run

STRATEGIES = {
    "full": "full: every layer trained",
    "linear-probe": "linear probe: only the new head trained, the pretrained layers frozen",
}


def strategy_text(info: RunInfo) -> str:
    """The strategy in words, with what run.json's `training` adds (lp-ft's switch, LoRA, per-group rates)."""
    t, name = info.training, info.strategy
    text = STRATEGIES.get(name, name)
    if t is not None and t.lp_epochs is not None:
        text = (
            f"lp-ft: linear probe for epochs 1–{t.lp_epochs} (only the new head trained), then every layer "
            f"from epoch {t.lp_epochs + 1}"
        )
    if t is not None and t.lora is not None:
        lo = t.lora
        text = (
            f"LoRA r={lo.rank}, α={lo.alpha:g} on {len(lo.targets)} layer{'s' if len(lo.targets) != 1 else ''} "
            f"({fmt.integer(lo.params)} adapter parameters): the pretrained weights frozen, the new head trained "
            "in full"
        )
    if t is not None and t.lr_decay is not None:
        groups = t.param_groups
        span = f" (head {fmt.num(groups[0].lr)} … {fmt.num(groups[-1].lr)})" if len(groups) > 1 else ""
        text += f"; layer-wise learning-rate decay ×{t.lr_decay:g} per block{span}"
    return text


# what the recorder measures, said once for every caption that shows it
CKA_POOLING = (
    "each layer's output on the probe images, image maps average-pooled to at most 4×4 positions per "
    "channel and token sequences to 16 groups, then compared by linear CKA"
)
UPDATE_RATIO_DEF = "‖update‖ / ‖W‖ of each epoch's first optimizer step, per layer"
STRIP_NOTE = " The colour strip left of the rows marks each layer's component (key below the chart)."


def build_report(
    run: Run, medium: Medium, frames: RunFrames | None = None, on_chart: Callable[[ChartBlock], None] | None = None
) -> Report:
    """The report of `run` for `medium`; `on_chart` is called with each chart as soon as it is built."""
    frames = frames or RunFrames(run)
    b = _Builder(run, frames, PROFILES[medium], on_chart)
    headline = b.headline()
    sections = [b.training(), b.architecture(), b.parameters(), b.activations(), b.features(), b.appendix()]
    report = Report(
        medium=medium,
        title=f"Fine-tuning report: {run.info.name}",
        headline=headline,
        summary=b.summary(headline),
        findings=derive_findings(frames),
        sections=sections,
        schema_version=SCHEMA_VERSION,
        sftreport_version=sftreport.__version__,
    )
    if sections_segmentation.is_segmentation(run):  # mIoU, per-class IoU, masks: see that module
        sections_segmentation.adapt(report, b)
    elif sections_detection.is_detection(run):  # mAP, AP per class, boxes: see that module
        sections_detection.adapt(report, b)
    return report


class _Builder:
    def __init__(
        self, run: Run, frames: RunFrames, profile: Profile, on_chart: Callable[[ChartBlock], None] | None = None
    ):
        self.run, self.frames, self.profile, self.on_chart = run, frames, profile, on_chart
        self.info = run.info
        self.start = frames.start_name  # "pretrained model", or "initial model" for a run from scratch
        self.trained = "trained" if frames.from_scratch else "fine-tuned"

    def chart(self, id: str, title: str, caption: str, chart) -> ChartBlock:
        block = ChartBlock(id=id, title=title, caption=caption, spec=chart_spec(chart))
        if self.on_chart is not None:
            self.on_chart(block)
        return block

    def epoch_label(self, epoch: int) -> str:
        start = "initial" if self.frames.from_scratch else "pretrained"
        return f"{start} (epoch 0)" if epoch == 0 else f"{self.trained} (epoch {epoch})"

    def columns(self, df: pd.DataFrame) -> tuple[list[int], str]:
        """The epochs a layer × epoch heatmap shows (the best one kept), and a caption note when thinned."""
        epochs = sorted(df["epoch"].unique().tolist())
        best = self.frames.best_epoch()
        shown = choose_epochs(epochs, self.profile.epoch_columns, keep=[best[0]] if best else [])
        if len(shown) == len(epochs):
            return epochs, ""
        return shown, f" {len(shown)} of the {len(epochs)} epochs are shown, evenly spread, with the best."

    # ------------------------------------------------------------------ summary

    def headline(self) -> Headline:
        frames, info = self.frames, self.info
        first, last = frames.first_eval, frames.last_eval
        after = last if first is not None and last is not None and last.epoch != first.epoch else None
        best = frames.best_epoch()
        env, ds = info.environment, info.dataset
        return Headline(
            run_name=info.name,
            status=info.status,
            status_detail=info.status_detail,
            model=info.model,
            weights=info.weights,
            strategy=info.strategy,
            dataset=ds.name,
            classes=len(ds.classes),
            epochs_done=frames.last.epoch if frames.last else 0,
            epochs_planned=info.planned_epochs,
            acc_before=first.eval.accuracy if first else None,
            acc_after=after.eval.accuracy if after else None,
            best_epoch=best[0] if best else None,
            best_acc=best[1] if best else None,
            loss_before=first.eval.loss if first else None,
            loss_after=after.eval.loss if after else None,
            duration_s=info.duration_s,
            device=env.device + (f" ({env.device_name})" if env.device_name else ""),
            precision=env.precision,
            started_at=info.started_at,
            finished_at=info.finished_at,
            acc_change=thresholds.ACC_CHANGE,
            from_scratch=frames.from_scratch,
        )

    def summary(self, h: Headline) -> KeyValues:
        info, ds = self.info, self.info.dataset
        acc = "not measured (no validation set)"
        if h.acc_before is not None:
            acc = f"{fmt.pct(h.acc_before)} before (epoch 0)"
            if h.acc_after is not None:
                acc = (
                    f"{fmt.pct(h.acc_before)} before → {fmt.pct(h.acc_after)} after "
                    f"({fmt.points(h.acc_after - h.acc_before)})"
                )
        planned = f" of {h.epochs_planned} planned" if h.epochs_planned else ""
        # a size of 0 is one the recording did not know (an own loop's data): left out rather than shown as 0
        counted = [
            f"{fmt.integer(n)} {what}" for n, what in ((ds.train_size, "training"), (ds.val_size, "validation")) if n
        ]
        unit, shape = (
            ("texts", f"at most {ds.image_size} tokens")
            if ds.modality == "text"
            else ("images", f"{ds.image_size}×{ds.image_size} px")
        )
        sizes = " / ".join(counted) + f" {unit}, " if counted else ""
        weights = info.weights + (" — trained from scratch, nothing pretrained" if self.frames.from_scratch else "")
        items = [
            ("Run", info.name),
            ("Status", info.status + (f": {info.status_detail}" if info.status_detail else "")),
            (
                "Dataset",
                f"{ds.name}: {len(ds.classes)} classes, {sizes}{shape}" + (f" ({ds.source})" if ds.source else ""),
            ),
            ("Model", info.model),
            ("Pretrained weights", weights),
            ("Strategy", strategy_text(info)),
            ("Training", _hyperparameters(info.config) or "–"),
            ("Validation accuracy", acc),
            *self.source_summary(),
            ("Best epoch", f"{h.best_epoch} ({fmt.pct(h.best_acc)})" if h.best_epoch is not None else "–"),
            ("Epochs", f"{h.epochs_done}{planned}"),
            ("Duration", fmt.duration(h.duration_s) if h.duration_s is not None else "–"),
            (
                "Device",
                f"{h.device}, {h.precision}"
                + (f", {info.environment.world_size} processes" if info.environment.world_size > 1 else "")
                + (", parameters sharded (FSDP)" if info.environment.sharding == "fsdp" else ""),
            ),
        ]
        return KeyValues(id="summary-table", title="Run", items=items)

    def source_summary(self) -> list[tuple[str, str]]:
        """The source task's accuracy before and after (forgetting), when it was measured."""
        task, s = self.info.source_task, self.frames.source
        if task is None or s.empty:
            return []
        a0, a1 = float(s["source_accuracy"].iloc[0]), float(s["source_accuracy"].iloc[-1])
        e0, e1 = int(s["epoch"].iloc[0]), int(s["epoch"].iloc[-1])
        acc = f"{fmt.pct(a0)} at epoch {e0}" + (
            f" → {fmt.pct(a1)} at epoch {e1} ({fmt.points(a1 - a0)})" if e1 != e0 else ""
        )
        return [("Source task", f"{task.name}, pretrained head kept aside: {acc}")]

    # ------------------------------------------------------------------ training

    def training(self) -> Section:
        frames, profile = self.frames, self.profile
        sec = Section(
            "training",
            "Training",
            "Look for validation loss that stops falling while training loss keeps falling (overfitting), "
            "and for the classes that fine-tuning helped least.",
        )
        t = frames.epoch_table
        switch = frames.lp_switch
        marked = (
            f" The dashed vertical line marks lp-ft's switch: the new head alone trained until epoch {switch}, "
            "every layer after it."
            if switch is not None
            else ""
        )
        if not frames.trained:
            sec.blocks.append(Note(f"Only the {self.start} (epoch 0) was recorded: no training curves yet."))
        else:
            steps = frames.steps_at_most(profile.step_points)
            thinned = (
                (
                    f" Per-step points are averaged in groups of neighbouring steps ({len(steps):,} of "
                    f"{len(frames.steps):,} points)."
                )
                if len(steps) < len(frames.steps)
                else ""
            )
            sec.blocks.append(
                self.chart(
                    "loss",
                    "Loss",
                    "Training loss per optimizer step (light) and per epoch, and validation loss per "
                    "epoch, on one epoch axis. Gaps are NaN or infinite values." + thinned + marked,
                    charts.loss_curves(t, steps, profile.full, profile.line_h, switch=switch),
                )
            )
            if t["train_accuracy"].notna().any() or t["val_accuracy"].notna().any():
                sec.blocks.append(
                    self.chart(
                        "accuracy",
                        "Accuracy",
                        "Training accuracy (on the batches as trained) and validation accuracy "
                        f"per epoch; epoch 0 is the {self.start} with its new head." + marked,
                        charts.accuracy_curves(t, profile.full, profile.line_h, switch=switch),
                    )
                )
            forgetting = self.forgetting(switch)
            if forgetting is not None:
                sec.blocks.append(forgetting)
            if steps["lr"].notna().any() or t["lr"].notna().any():
                sec.blocks.append(
                    self.chart(
                        "lr",
                        "Learning rate",
                        "The learning rate the optimizer used at each step"
                        + (
                            " (the head's; every other group's is the head's × its decay factor, see the appendix)"
                            if frames.info.training is not None and frames.info.training.lr_decay is not None
                            else ""
                        )
                        + "."
                        + (" lp-ft restarts the schedule at its switch (dashed line)." if switch is not None else ""),
                        charts.learning_rate(steps, t, profile.full, profile.small_h, switch=switch),
                    )
                )
        logged = frames.logged
        if not logged.empty:
            sec.blocks.append(
                self.chart(
                    "logged",
                    "Metrics your training logged",
                    "What the training framework logged for each epoch (a LightningModule's self.log, the "
                    "Hugging Face Trainer's evaluation), the last value before the epoch was recorded; "
                    "each panel has its own scale.",
                    charts.logged_metrics(logged, t["epoch"], profile.full, profile.small_h),
                )
            )
        first, last = frames.first_eval, frames.last_eval
        if first is None or last is None:
            sec.blocks.append(Note("No validation set was evaluated: no confusion matrix or per-class accuracy."))
            return sec
        if first.eval.task == "detect":  # no confusion matrix: per-class AP and boxes (sections_segmentation)
            sec.blocks.append(self.epoch_table())
            return sec
        pairs = [
            (
                f"epoch {first.epoch} ({'initial' if frames.from_scratch else 'pretrained'})"
                if first.epoch == 0
                else f"epoch {first.epoch}",
                frames.confusion(first.epoch),
            )
        ]
        if last.epoch != first.epoch:
            pairs.append((f"epoch {last.epoch} ({self.trained})", frames.confusion(last.epoch)))
        numbers = len(frames.classes) <= profile.confusion_numbers
        sec.blocks.append(
            self.chart(
                "confusion",
                "Confusion matrix, before and after",
                "Rows are the true class, columns the predicted class; colour is the share of the row"
                + (", numbers are image counts" if numbers else "")
                + ". A strong diagonal is good.",
                charts.confusion_pair(pairs, frames.classes, profile.panel, max_text=profile.confusion_numbers),
            )
        )
        sec.blocks.append(
            self.chart(
                "per-class",
                "Per-class accuracy, before vs after",
                "Validation accuracy of each class for the initial model (grey) and after training (blue)."
                if frames.from_scratch
                else "Validation accuracy of each class for the pretrained model (grey) and after fine-tuning (blue).",
                charts.per_class_accuracy(frames.per_class(), frames.classes, profile.full - 120),
            )
        )
        sec.blocks.append(self.epoch_table())
        return sec

    def forgetting(self, switch: int | None) -> ChartBlock | None:
        task, s = self.info.source_task, self.frames.source
        if task is None or s.empty or self.frames.from_scratch:
            return None
        other = (
            f" A prediction of one of the head's other {task.head_classes - len(task.classes) + 1} classes counts as wrong."
            if task.other
            else ""
        )
        return self.chart(
            "forgetting",
            f"Forgetting of the source task ({task.name})",
            f"Accuracy on the task the model was pretrained for: the backbone as it is at each epoch with the "
            f"pretrained {task.head_classes}-class head kept aside, on {fmt.integer(task.size)} held-out images"
            f"{f' ({task.source})' if task.source else ''}, next to the target task's validation accuracy.{other} "
            f"The dashed horizontal line is {thresholds.FORGETTING_DROP * 100:g} points below epoch 0's source "
            "accuracy: falling below it is reported as forgetting."
            + (" The dashed vertical line marks lp-ft's switch." if switch is not None else ""),
            charts.forgetting_curves(s, self.profile.full, self.profile.line_h, switch=switch),
        )

    def epoch_table(self) -> TableBlock:
        rows = []
        source = self.info.source_task is not None and any(e.source is not None for e in self.frames.epochs)
        for e in self.frames.epochs:  # the snapshots themselves: None (not measured) shows as –, NaN as NaN
            v = e.val
            rows.append(
                [
                    Cell(str(e.epoch)),
                    Cell(fmt.integer(e.step)),
                    Cell(fmt.num(e.train_loss, 4)),
                    Cell(fmt.pct(e.train_accuracy)),
                ]
                + self.val_cells(v)
                + ([Cell(fmt.pct(e.source.accuracy) if e.source else "–")] if source else [])
                + [
                    Cell(fmt.num(e.lr, 3)),
                    Cell(fmt.duration(e.timing.train_s) if e.timing.train_s else "–"),
                ]
            )
        columns = ["epoch", "steps", "train loss", "train acc.", *self.val_columns()]
        columns += ["source acc."] if source else []
        columns += ["learning rate", "train time"]
        return TableBlock(
            "epochs",
            "Per epoch",
            "The numbers behind the curves (NaN: not a number)."
            + (" Source acc.: the source task's accuracy with the pretrained head kept aside." if source else ""),
            columns,
            rows,
            numeric=[True] * len(columns),
            scroll=self.profile.interactive and len(rows) > 30,
        )

    def val_columns(self) -> list[str]:
        """The validation columns of the per-epoch table: the task's own measures (a detector has no
        validation loss; a segmenter's accuracy counts pixels and its main measure is mIoU)."""
        tasks = {e.val.task for e in self.frames.epochs if e.val is not None}
        if tasks == {"detect"}:
            return ["val. mAP", "val. mAP@.5"]
        if tasks == {"segment"}:
            return ["val. loss", "pixel acc.", "mIoU"]
        return ["val. loss", "val. acc."]

    def val_cells(self, v) -> list[Cell]:
        width = len(self.val_columns())
        if v is None:
            return [Cell("–")] * width
        if isinstance(v, DetectionEvaluation):
            return [Cell(fmt.pct(v.map)), Cell(fmt.pct(v.map_50))]
        cells = [Cell(fmt.num(v.loss, 4)), Cell(fmt.pct(v.accuracy))]
        return cells + (
            [Cell(fmt.num(v.miou, 3) if isinstance(v, SegmentationEvaluation) else "–")] if width == 3 else []
        )

    # ------------------------------------------------------------------ architecture

    def architecture(self) -> Section:
        sec = Section(
            "architecture",
            "Architecture",
            "Look at which parts of the model were trained and which were frozen."
            if self.frames.from_scratch
            else "Look at which parts of the model are pretrained and frozen, which were trained, and what "
            "fine-tuning added (the new head).",
        )
        arch = self.info.architecture
        if arch is None:
            sec.blocks.append(Note("The architecture was not recorded (probes were off)."))
            return sec
        frozen = arch.total_params - arch.trainable_params
        sec.blocks.append(
            KeyValues(
                "arch-totals",
                "Parameters",
                [
                    ("Model", f"{arch.model_type} ({self.info.model}), input {fmt.shape(arch.input_shape)}"),
                    ("Parameters", f"{fmt.integer(arch.total_params)} ({fmt.count(arch.total_params)})"),
                    (
                        "Trainable",
                        f"{fmt.integer(arch.trainable_params)} "
                        f"({fmt.pct(arch.trainable_params / arch.total_params if arch.total_params else None)})",
                    ),
                    ("Frozen", fmt.integer(frozen) + self.frozen_norm_note(arch)),
                    ("New (not pretrained)", f"{fmt.integer(arch.new_params)}"),
                    ("Strategy", strategy_text(self.info)),
                    *self.adapter_totals(arch),
                ],
            )
        )
        sec.blocks.append(self.replaced(arch))  # beside the totals (templates/sections/architecture.html.j2)
        trained = self.what_trained()
        if trained is not None:
            sec.blocks.append(trained)
        # parameters by component where the run recorded them, else by top-level block
        groups: list[ComponentSummary] | list[BlockSummary] = arch.components or arch.blocks
        rows = []
        for blk in groups:
            parts = {
                "pretrained, frozen": blk.params - blk.new - max(0, blk.trainable - blk.new),
                "pretrained, fine-tuned": max(0, blk.trainable - blk.new),
                "new, trained": min(blk.new, blk.trainable),
                "new, frozen": blk.new - min(blk.new, blk.trainable),
            }
            for k, (part, v) in enumerate(parts.items()):
                if v > 0:
                    what = getattr(blk, "type", ", ".join(getattr(blk, "modules", [])))
                    rows.append({"block": blk.name, "type": what, "part": part, "part_order": k, "params": v})
        if rows:
            of = "component" if arch.components else "top-level block"
            sec.blocks.append(
                self.chart(
                    "params-by-block",
                    f"Parameters by {of.split()[-1]}",
                    f"Parameters of each {of}: orange trained from their initialisation, light orange new and frozen."
                    if self.frames.from_scratch
                    else f"Parameters of each {of}: grey is pretrained and frozen, blue pretrained and fine-tuned, "
                    "orange new (the replaced head).",
                    charts.params_by_block(
                        pd.DataFrame(rows),
                        self.profile.full - 100,
                        "component" if arch.components else "block (top-level module)",
                    ),
                )
            )
        sec.blocks.append(self.layer_table(arch))
        return sec

    def frozen_norm_note(self, arch: Architecture) -> str:
        n = arch.frozen_norm
        if not n:
            return ""
        return (
            f", and {fmt.integer(n)} FrozenBatchNorm values (the affine weight and bias of its FrozenBatchNorm "
            "layers: buffers, never trained, in no parameter count)"
        )

    def what_trained(self) -> TableBlock | None:
        """Per component: how many parameters it has, how many trained, and how far it moved."""
        df = self.frames.what_trained
        if df.empty:
            return None
        moved_at, grad_at = self.frames.component_epochs
        has_norm = bool(df["frozen_norm"].any())
        rows = []
        for r in df.itertuples():
            total = r.component == "whole model"
            cells = [
                Cell(r.component, cls="total" if total else ""),
                Cell(", ".join(p or "(the model's own)" for p in r.modules) if not total else "", cls="mono"),
                Cell(fmt.integer(r.params)),
                _share_cell(r.trainable, r.params, "trainable", "frozen"),
                Cell(fmt.integer(r.frozen) if r.params else "–"),
            ]
            if has_norm:
                cells.append(Cell(fmt.integer(r.frozen_norm) if r.frozen_norm else "–"))
            cells += [
                Cell(fmt.integer(r.new) if r.params else "–"),
                Cell(fmt.change(r.rel_change) if r.measured else "–"),
                Cell(fmt.sci(r.grad_norm) if r.grad_measured else "–"),
            ]
            rows.append(cells)
        columns = ["component", "modules", "parameters", "trainable", "frozen"]
        columns += ["frozen (FrozenBatchNorm)"] if has_norm else []
        columns += [
            f"new ({'all' if self.frames.from_scratch else 'not pretrained'})",
            "moved" + (f" by epoch {moved_at}" if moved_at is not None else ""),
            "gradient norm" + (f", epoch {grad_at}" if grad_at is not None else ""),
        ]
        norm = (
            "Frozen (FrozenBatchNorm): the affine weight and bias of the component's FrozenBatchNorm layers, two "
            "values per channel, held as buffers: never trained, and in no parameter count (their running mean "
            "and variance, statistics in any BatchNorm, are not counted)."
            if has_norm
            else "The model has no FrozenBatchNorm layers: every normalisation layer's scale and shift are "
            "parameters, counted above."
        )
        return TableBlock(
            "what-trained",
            "What actually trained",
            "Each component of the model (named from its structure): its parameters, how many require a gradient "
            "(trainable) and how many do not (frozen), and "
            + (
                "how many are new (all: trained from scratch). "
                if self.frames.from_scratch
                else "how many are new rather than pretrained. "
            )
            + f"{norm} Moved: ‖Wₜ−W₀‖/‖W₀‖ over all of the component's parameters against epoch 0; 0 % for a "
            "component that did not change, – where nothing was measured. Gradient norm: the root of the summed "
            "squared gradient norms of its layers over the epoch's sampled steps (– for a frozen component).",
            columns,
            rows,
            numeric=[False, False, True, False, True] + ([True] if has_norm else []) + [True, True, True],
        )

    def adapter_totals(self, arch: Architecture) -> list[tuple[str, str]]:
        adapted = [m for m in arch.modules if m.adapter and m.adapter.startswith("LoRA r=")]
        if not adapted:
            return []
        factors = sum(m.params for m in arch.modules if m.adapter in ("LoRA A", "LoRA B"))
        return [
            (
                "Adapters",
                f"LoRA on {len(adapted)} layer{'s' if len(adapted) != 1 else ''}: {fmt.integer(factors)} parameters "
                "in their factors A and B (new, trained); each adapted layer computes with W_base + (α/r)·B·A",
            )
        ]

    def replaced(self, arch: Architecture) -> Block:
        new = [m for m in arch.modules if m.new > 0 and not m.adapter]  # LoRA's factors are in the layer table
        if not new:
            return Note("No new layers: every parameter was loaded from the pretrained weights.")
        if self.frames.from_scratch:
            return Note(
                f"Trained from scratch: no pretrained weights were loaded, so all {fmt.integer(arch.total_params)} "
                "parameters started from their initialisation, and epoch 0 is the untrained model."
            )
        rows = [
            [
                Cell(m.name or "(model)", cls="mono"),
                Cell(m.type),
                Cell(fmt.shape(m.output_shape)),
                Cell(fmt.integer(m.new)),
                Cell("trainable" if m.trainable else "frozen"),
            ]
            for m in new
        ]
        classes = len(self.info.dataset.classes)
        heads = [c.name for c in arch.components if c.new > 0]  # a detector's RPN and box head, a segmenter's two
        what = f"the new heads ({', '.join(heads)})" if len(heads) > 1 else "the new head"
        return TableBlock(
            "replaced",
            "What fine-tuning replaced",
            f"Layers initialised fresh instead of loaded from the pretrained weights: {what} "
            f"for the {classes} classes of {self.info.dataset.name}.",
            ["layer", "type", "output shape", "parameters", "status"],
            rows,
            numeric=[False, False, False, True, False],
        )

    def layer_table(self, arch: Architecture) -> TableBlock:
        mods = arch.modules
        # parameters of each module's whole subtree (stored counts are the module's own)
        totals = {m.name: [0, 0, 0] for m in mods}
        for m in mods:
            parts = m.name.split(".") if m.name else []
            for k in range(len(parts) + 1):
                key = ".".join(parts[:k])
                if key in totals:
                    t = totals[key]
                    t[0] += m.params
                    t[1] += m.trainable
                    t[2] += m.new
        depth = self.profile.layer_table_depth
        keep = mods if depth is None else [m for m in mods if m.depth <= depth or (m.new > 0 and not m.adapter)]
        rows = []
        for m in keep:
            params, trainable, new = totals[m.name]
            rows.append(
                [
                    Cell(m.name or "(model)", cls=f"mono d{min(m.depth, 6)}"),
                    Cell(m.type + (f" · {m.adapter}" if m.adapter else "")),
                    Cell(fmt.shape(m.output_shape)),
                    Cell(fmt.integer(params) if params else "–"),
                    _share_cell(trainable, params, "trainable", "frozen"),
                    _share_cell(new, params, "new", "pretrained", invert=True),
                ]
            )
        caption = (
            "Every module in network order, indented by depth; parameters include the module's children."
            if depth is None
            else f"Modules down to depth {depth} in network order ({len(mods) - len(keep)} deeper modules are in "
            "the HTML report); parameters include the module's children."
        )
        return TableBlock(
            "layers",
            f"Layers ({len(mods)} modules)",
            caption,
            ["layer", "type", "output shape", "parameters", "trained", "origin"],
            rows,
            numeric=[False, False, False, True, False, False],
            scroll=self.profile.interactive and len(rows) > self.profile.scroll_rows,
        )

    # ------------------------------------------------------------------ parameters

    def heat_layers(self, df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        """Rows for a layer heatmap: every layer, or only convolution and linear layers when there are too
        many to read; a caption note says which."""
        layers = self.frames.layers_in_order(df)
        if len(layers) <= self.profile.heatmap_rows or "matrix" not in df:
            return df, ""
        kept = df[df["matrix"]]
        dropped = len(layers) - len(self.frames.layers_in_order(kept))
        return (
            kept,
            f" Only convolution and linear layers are shown ({dropped} normalisation and other small layers left out).",
        )

    def strip(self, layers: list[str]) -> tuple[Any, list[str]] | None:
        """The colour strip that marks the component of each of a per-layer chart's rows, and the components
        those rows span; None when the run recorded no components or the rows all lie in one."""
        names = self.frames.component_names
        if not names:
            return None
        df = self.frames.layer_components(layers)
        present = set(df["component"])
        shown = [n for n in names if n in present]
        if len(shown) < 2:
            return None
        return charts_components.strip(df, layers, names), shown

    def one_component(self, layers: list[str]) -> str:
        """A caption's note when every probed layer lies in one component of several (a detector's probes
        are its backbone's stages unless --activations names others)."""
        names = self.frames.component_names
        found = {self.frames.component(n) for n in layers} - {""}
        if len(names) < 2 or len(found) != 1:
            return ""
        return f" Every probed layer lies in the {found.pop()} (--activations probes others)."

    def keyed(self, chart: Any, strip: tuple[Any, list[str]] | None, width: int) -> Any:
        """`chart` with the key of its component strip under it (the chart itself without a strip)."""
        if strip is None:
            return chart
        return charts_components.with_key(chart, strip[1], self.frames.component_names, width)

    def component_change(self) -> Block | None:
        """Relative change of each component per epoch (None when the run recorded no components)."""
        ch = self.frames.component_change
        if ch.empty:
            return None
        ch = ch[ch["epoch"] > 0]
        if ch.empty:
            return None
        last = ch[ch["epoch"] == ch["epoch"].max()]
        at = int(last["epoch"].iloc[0])
        undrawn = [  # what a log scale cannot show, said in words
            (f"unchanged at epoch {at} (frozen)", [r.component for r in last.itertuples() if r.rel_change == 0]),
            ("moved from weights that were all 0 at epoch 0 (no relative change: ∞)", []),
            ("not finite (NaN)", []),
        ]
        for r in ch.itertuples():
            if math.isinf(r.rel_change) and r.component not in undrawn[1][1]:
                undrawn[1][1].append(r.component)
            elif math.isnan(r.rel_change) and r.component not in undrawn[2][1]:
                undrawn[2][1].append(r.component)
        if not (ch["rel_change"].apply(fmt.finite) & (ch["rel_change"] > 0)).any():
            return Note("No component's weights changed by a measurable relative amount from epoch 0.")
        still_note = "".join(f" Not drawn, {why}: {', '.join(names)}." for why, names in undrawn if names)
        return self.chart(
            "component-change",
            f"Relative change from the {self.start.split()[0]} weights, by component",
            "‖Wₜ−W₀‖ / ‖W₀‖ over all of each component's parameters (the root of the summed squared changes "
            "of its layers over the root of their summed squared weights at epoch 0), per epoch, log scale: which "
            "parts of the model fine-tuning moved, and how far." + still_note,
            charts_components.change_lines(
                ch, self.frames.component_names, self.profile.full - 100, self.profile.small_h + 40
            ),
        )

    def parameters(self) -> Section:
        frames, profile = self.frames, self.profile
        sec = Section(
            "parameters",
            "Parameters",
            f"Look for which layers moved away from their {'initial' if frames.from_scratch else 'pretrained'} "
            "weights (deeper layers usually move more), for gradient spikes or NaNs, and for update-to-weight "
            "ratios far outside the green band.",
        )
        w = frames.layer_weights
        if w.empty:
            sec.blocks.append(Note("No weight statistics were recorded (probes were off)."))
            return sec
        trained = w[w["epoch"] > 0]
        g = frames.layer_grads
        if not g.empty:
            g = g.merge(w[["layer", "epoch", "matrix", "type"]], on=["layer", "epoch"], how="left")
            g["matrix"] = g["matrix"].fillna(True).astype(bool)
        u = w[w["update_ratio"].notna() & (w["update_ratio"] > 0)]
        epochs, thinned = self.columns(trained) if not trained.empty else ([], "")
        trained, g, u = (df[df["epoch"].isin(epochs)] if not df.empty else df for df in (trained, g, u))
        ref = (
            "their initialisation"
            if frames.from_scratch
            else "the pretrained weights; new layers are compared with their initialisation"
        )
        rel_cap = (
            f"‖Wₜ−W₀‖ / ‖W₀‖ per layer (rows, network order) and epoch, log colour scale: how far each "
            f"layer's weights are from {ref}. Grey cells did not change (frozen)."
            + (
                " A LoRA-adapted layer is measured by its effective weight W_base + (α/r)·B·A, the weight it "
                "computes with."
                if not frames.adapters.empty
                else ""
            )
        )
        grad_cap = (
            "Gradient L2 norm per layer and epoch: the root of the summed squares of the mean norms of the "
            "layer's tensors over the epoch's sampled steps (every --grad-every steps and each epoch's first; "
            "log colour scale). Frozen layers have no gradient; grey: none sampled in that epoch."
        )
        upd_cap = (
            f"{UPDATE_RATIO_DEF}, log scale. The green band is {thresholds.band_text()} around the usual "
            f"target of {thresholds.UPDATE_RATIO_TARGET:g} (dashed): far below, a layer barely learns; far "
            "above, training is unstable. Frozen layers are not shown."
        )
        rel_args: dict[str, Any] = dict(
            legend_title="‖Wₜ−W₀‖ / ‖W₀‖ (log scale)",
            scale=charts.log_scale(trained["rel_change"], "viridis"),
            legend_format=".0e",
            tooltip_format=".3~%",
            extra_tooltips=[charts.tip("type:N"), charts.tip("params:Q", "parameters", ",")],
        )
        grad_args: dict[str, Any] = dict(
            legend_title="gradient norm (log scale)",
            legend_format=".0e",
            tooltip_format=".3e",
            scale=charts.log_scale(g["norm"], "plasma") if not g.empty else None,
            extra_tooltips=[
                charts.tip("max_norm:Q", "largest sampled tensor norm", ".3e"),
                charts.tip("nonfinite:Q", "steps with NaN/inf gradients"),
            ],
        )
        start = "initial" if frames.from_scratch else "pretrained"
        # the PDF shows the three per-layer views side by side when it has all three: one row per layer
        combined = not profile.interactive and not trained.empty and not g.empty and not u.empty
        blocks: list[Block] = []
        if trained.empty:
            blocks.append(Note(f"Only the {self.start}'s weights (epoch 0) were recorded: nothing has changed yet."))
        elif combined:
            hw, note = self.heat_layers(trained)
            layers = frames.layers_in_order(hw)
            third = (profile.panel - 200) // 3
            strip = self.strip(layers)
            blocks.append(
                self.chart(
                    "per-layer",
                    f"Relative change from the {start} weights, gradient norm and update ratio per layer",
                    f"Left: {rel_cap} Middle: {grad_cap} Right: {upd_cap}{note}{thinned}{STRIP_NOTE if strip else ''}",
                    self.keyed(
                        charts.side_by_side(
                            [
                                charts.heatmap(
                                    hw,
                                    "rel_change",
                                    layers,
                                    width=third,
                                    title="change from epoch 0",
                                    epochs=epochs,
                                    strip=strip[0] if strip else None,
                                    **rel_args,
                                ),
                                charts.heatmap(
                                    g[g["layer"].isin(layers)],
                                    "norm",
                                    layers,
                                    width=third,
                                    title="gradient norm",
                                    y_labels=False,
                                    epochs=epochs,
                                    **grad_args,
                                ),
                                charts.update_ratio(
                                    u[u["layer"].isin(layers)],
                                    layers,
                                    third,
                                    y_labels=False,
                                    title=f"update / weight (green: {thresholds.band_text()})",
                                ),
                            ]
                        ),
                        strip,
                        profile.panel,
                    ),
                )
            )
        else:
            hw, note = self.heat_layers(trained)
            layers = frames.layers_in_order(hw)
            strip = self.strip(layers)
            blocks.append(
                self.chart(
                    "rel-change",
                    f"Relative change from the {start} weights",
                    rel_cap + note + thinned + (STRIP_NOTE if strip else ""),
                    self.keyed(
                        charts.heatmap(
                            hw,
                            "rel_change",
                            layers,
                            width=profile.heat,
                            epochs=epochs,
                            strip=strip[0] if strip else None,
                            **rel_args,
                        ),
                        strip,
                        profile.heat,
                    ),
                )
            )
        by_component = self.component_change() if not trained.empty else None
        if by_component is not None:
            blocks.append(by_component)
        blocks.append(self.weight_histograms())
        if g.empty:
            blocks.append(Note("No gradients were sampled (no training step recorded, or probes were off)."))
        else:
            blocks.append(self.grad_total())
        if not combined and not g.empty:
            hg, note = self.heat_layers(g)
            layers = frames.layers_in_order(hg)
            strip = self.strip(layers)
            blocks.append(
                self.chart(
                    "grad-layers",
                    "Gradient norm per layer",
                    grad_cap + note + thinned + (STRIP_NOTE if strip else ""),
                    self.keyed(
                        charts.heatmap(
                            hg,
                            "norm",
                            layers,
                            width=profile.heat,
                            epochs=epochs,
                            strip=strip[0] if strip else None,
                            **grad_args,
                        ),
                        strip,
                        profile.heat,
                    ),
                )
            )
        if u.empty:
            blocks.append(Note("No update-to-weight ratios were recorded (no optimizer step measured)."))
        elif not combined:
            hu, note = self.heat_layers(u)
            blocks.append(
                self.chart(
                    "update-ratio",
                    "Update-to-weight ratio",
                    upd_cap + note + thinned,
                    charts.update_ratio(hu, frames.layers_in_order(hu), profile.heat),
                )
            )
        adapters = self.adapters_table()
        if adapters is not None:
            blocks.insert(1, adapters)
        sec.blocks += blocks
        gates = frames.gates
        if not gates.empty and gates["epoch"].max() > 0:
            sec.blocks.append(
                self.chart(
                    "gates",
                    "Recurrent gates: what moved",
                    "An LSTM's or GRU's weights hold one block of rows per gate (LSTM: input, forget, cell, output; "
                    "GRU: reset, update, new). Left: each gate's relative change ‖Wₜ−W₀‖/‖W₀‖ from the "
                    f"{self.start} at the last epoch; right: the update-to-weight ratio of that epoch's first step "
                    "(log colour scale).",
                    charts_sequence.gate_change(gates, (profile.panel - 320) // 2),
                )
            )
        tokens = frames.tokens
        if not tokens.empty:
            sec.blocks.append(
                self.chart(
                    "tokens",
                    "Most moved token embeddings",
                    f"The {len(tokens)} tokens whose input-embedding rows moved most from the {self.start}'s by "
                    f"epoch {int(tokens['epoch'].iloc[0])}, as the relative change of the row (tokens the data never "
                    "holds do not move, except through weight decay).",
                    charts_sequence.moved_tokens(tokens, profile.full - 220),
                )
            )
        sec.blocks += run_spectrum_blocks(frames, self.chart, profile.full)
        return sec

    def adapters_table(self) -> TableBlock | None:
        """LoRA-adapted layers at the last epoch: how far the effective weight moved, and the shape of that
        change (its spectrum)."""
        a = self.frames.adapters
        if a.empty:
            return None
        last = int(a["epoch"].max())
        rows = []
        for r in a[a["epoch"] == last].itertuples():
            top = r.sv[:2]
            rows.append(
                [
                    Cell(r.layer, cls="mono"),
                    Cell(fmt.shape(r.shape), title=r.type),
                    Cell(str(r.r)),
                    Cell(fmt.change(r.rel_change)),
                    Cell(fmt.sci(r.update_ratio) if fmt.finite(r.update_ratio) else "–"),
                    Cell(str(r.rank)),
                    Cell(f"{r.stable_rank:.2f}" if fmt.finite(r.stable_rank) else "–"),
                    Cell(fmt.pct(r.top1) if fmt.finite(r.top1) else "–"),
                    Cell(", ".join(f"{v:.2g}" for v in top) if top else "–", cls="mono"),
                ]
            )
        return TableBlock(
            "adapters",
            f"LoRA adapters: the change of each adapted layer's effective weight (epoch {last})",
            "ΔW = W_eff,t − W_eff,0 with W_eff = W_base + (α/r)·B·A: its relative size ‖ΔW‖/‖W₀‖, one optimizer step's "
            f"{UPDATE_RATIO_DEF.split(' of ')[0]} of the effective weight, and the spectrum of ΔW: its rank (at most r "
            "from peft's start, B = 0, while the base weight is frozen), its stable rank ‖ΔW‖²_F/σ₁² (1: one direction), the share of ‖ΔW‖² in "
            "its largest direction and its two largest singular values.",
            [
                "layer",
                "weight",
                "r",
                "‖ΔW‖/‖W₀‖",
                "update ratio",
                "rank of ΔW",
                "stable rank",
                "top direction",
                "σ₁, σ₂",
            ],
            rows,
            numeric=[False, False, True, True, True, True, True, True, False],
            scroll=self.profile.interactive and len(rows) > self.profile.scroll_rows,
        )

    def grad_total(self) -> ChartBlock:
        return self.chart(
            "grad-total",
            "Gradient norm of the whole model",
            "The model's gradient L2 norm, averaged over the epoch's sampled steps, and the largest single-tensor "
            "norm seen (log scale). A red line marks an epoch with NaN or infinite gradients.",
            charts.grad_total(self.frames.grad_total, self.profile.full, self.profile.small_h + 20),
        )

    def weight_histograms(self) -> Block:
        frames, profile = self.frames, self.profile
        chosen = frames.histogram_tensors(profile.weight_hists)
        if not chosen:
            return Note("No weight histograms were recorded.")
        all_epochs = sorted({e.epoch for e in frames.epochs if e.weights})
        best = frames.best_epoch()
        epochs = choose_epochs(all_epochs, profile.hist_epochs + 1, keep=[best[0]] if best else [])
        df = frames.weight_hist(chosen, epochs)
        which = (
            "first, middle and last pretrained layer, the one that moved most, and the new head"
            if profile.weight_hists >= 6
            else "first pretrained layer, the one that moved most, and the new head"
        )
        if frames.from_scratch:
            which = "first, middle and last layer" if profile.weight_hists >= 6 else "first and last layer"
        thinned = (
            f" {len(epochs) - 1} of the {len(all_epochs) - 1} later epochs are drawn."
            if len(epochs) < len(all_epochs)
            else ""
        )
        return self.chart(
            "weight-hist",
            f"Weight histograms, {self.start.split()[0]} vs now",
            f"Distribution of the values of chosen weight tensors ({which}); grey area: epoch 0, lines: later "
            "epochs. Bins are fixed per tensor from its epoch-0 range widened by 10 %; red bars at the edges hold "
            f"the values that moved outside it (their share is in the tooltip).{thinned}"
            + (
                " A LoRA-adapted layer's tensor here is its frozen base weight, unchanged by design: the change of "
                "its effective weight is in the LoRA table above."
                if not frames.adapters.empty
                else ""
            ),
            charts.histograms(
                df,
                "tensor",
                chosen,
                width=profile.panel,
                columns=3,
                first_epoch=epochs[0],
                color_epochs=len(epochs) > 2,
                x_title="weight value",
                start_label=self.start.split()[0],
            ),
        )

    # ------------------------------------------------------------------ activations

    def activations(self) -> Section:
        frames, profile = self.frames, self.profile
        sec = Section(
            "activations",
            "Activations",
            f"Look for layers whose outputs drift far from the {self.start}'s on the same probe images, "
            "and for growing fractions of dead (always zero) channels.",
        )
        a = frames.activations
        if a.empty:
            sec.blocks.append(Note("No activation statistics were recorded (probes were off)."))
        else:
            layers = frames.layers_in_order(a)
            epochs, thinned = self.columns(a)
            strip = self.strip(layers)
            sec.blocks.append(
                self.chart(
                    "act-stats",
                    "Activation statistics per layer and epoch",
                    "Mean, standard deviation, share of exactly-zero outputs, and share of dead channels (zero for every "
                    "probe image and position) of each probed layer's output on the fixed probe images."
                    + thinned
                    + (STRIP_NOTE if strip else self.one_component(layers)),
                    self.keyed(
                        charts.activation_heatmaps(
                            a[a["epoch"].isin(epochs)], layers, profile.panel, strip=strip[0] if strip else None
                        ),
                        strip,
                        profile.panel,
                    ),
                )
            )
            all_epochs = sorted(a["epoch"].unique().tolist())
            pick = _spread(layers, profile.activation_hists)
            hist_epochs = [all_epochs[0], all_epochs[-1]] if len(all_epochs) > 1 else all_epochs
            df = frames.activation_hist(pick, hist_epochs)
            if not df.empty:
                sec.blocks.append(
                    self.chart(
                        "act-hist",
                        f"Activation histograms, {self.start.split()[0]} vs last epoch",
                        f"Distribution of output values of chosen layers on the probe images: grey area epoch "
                        f"{hist_epochs[0]}, blue line epoch {hist_epochs[-1]} (square-root scale, so the tails show). "
                        "Bins are fixed per layer from its epoch-0 range widened by 10 %; red bars at the edges hold the "
                        "values that moved outside it.",
                        charts.histograms(
                            df,
                            "layer",
                            pick,
                            width=profile.panel,
                            columns=3,
                            first_epoch=hist_epochs[0],
                            color_epochs=False,
                            x_title="activation value",
                            sqrt_y=True,
                            start_label=self.start.split()[0],
                        ),
                    )
                )
        sec.blocks += self.sequence_blocks()
        sec.blocks.append(self.feature_maps())
        return sec

    def sequence_blocks(self) -> list[Block]:
        """Recurrent gate saturation, hidden states over time and attention heads, where the model has them."""
        frames, profile = self.frames, self.profile
        blocks: list[Block] = []
        sat = frames.gate_saturation
        if not sat.empty:
            blocks.append(
                self.chart(
                    "gate-saturation",
                    "Recurrent gate saturation",
                    "Share of each gate's values in the flat tails of its nonlinearity over every probe sequence and "
                    "time step: a sigmoid gate below 3 % or above 97 %, a tanh (the cell candidate, the cell state) "
                    "beyond ±0.97. Saturated gates pass almost no gradient. Recomputed step by step from the layer's "
                    "own input and weights, and checked against its output.",
                    charts_sequence.gate_saturation(sat, profile.full),
                )
            )
        hidden = frames.hidden_states(0)
        kept = sorted(hidden["epoch"].unique().tolist())
        if kept:
            pair = [kept[0], kept[-1]] if len(kept) > 1 else kept
            labels = [f"epoch {e}" + (f" ({self.start.split()[0]})" if e == 0 else "") for e in pair]
            blocks.append(
                self.chart(
                    "hidden-states",
                    "Hidden state over time, before and after",
                    f"The top recurrent layer's hidden units (rows) at every time step (columns) for the first probe "
                    f"sequence (class {frames.class_name(self.probe_label(0))}): epoch {pair[0]} against epoch {pair[-1]}.",
                    charts_sequence.hidden_state_pair(hidden, pair, labels, (profile.panel - 120) // 2),
                )
            )
        att = frames.attention
        if not att.empty:
            first, last = int(att["epoch"].min()), int(att["epoch"].max())
            blocks.append(
                self.chart(
                    "attention",
                    "Attention heads: entropy and change",
                    "For every attention layer (rows) and head (columns) on the probe set: the entropy of its attention "
                    "over the keys as a share of uniform attention's (100 %: attends everywhere alike; low: attends to "
                    f"few tokens), at epoch {first} and epoch {last}, and the total-variation distance between its "
                    f"attention at epoch {last} and at epoch {first} on the same queries (first 4 probe samples).",
                    charts_sequence.attention_heads(att, first, last, (profile.panel - 320) // 3),
                )
            )
        return blocks

    def probe_label(self, sample: int) -> int:
        probe = self.frames.run.info.probe
        labels = probe.labels if probe is not None else []
        return labels[sample] if sample < len(labels) else -1

    def feature_maps(self) -> Block:
        shots = [
            (e.epoch, e.images.feature_maps) for e in self.frames.image_epochs() if e.images and e.images.feature_maps
        ]
        if not shots:
            if not self.frames.hidden_states(0).empty or not self.frames.attention.empty:
                return Note("No layer outputs image-shaped (channels × height × width): no feature maps to draw.")
            return Note("No feature-map images were recorded.")
        cols = [shots[0]] if len(shots) == 1 else [shots[0], shots[-1]]
        keys = list(dict.fromkeys((m.module, m.sample) for _, maps in cols for m in maps))
        rows = []
        for module, sample in keys:
            imgs = []
            for epoch, maps in cols:
                fm = next((m for m in maps if m.module == module and m.sample == sample), None)
                imgs.append(
                    self.image(fm.path, f"feature maps of {module}, probe image {sample + 1}, epoch {epoch}")
                    if fm
                    else None
                )
            channels = next(m.channels for _, maps in cols for m in maps if m.module == module)
            rows.append((f"{module} · probe image {sample + 1} · {channels} channels", imgs))
        return ImageGrid(
            "feature-maps",
            "Feature maps of probe images",
            "Each strip: the probe image, then the most active channels of the layer's output (each "
            "channel scaled on its own: patterns, not magnitudes).",
            [self.epoch_label(epoch) for epoch, _ in cols],
            rows,
        )

    def image(self, rel: str, alt: str) -> Image | None:
        """A recorded PNG, or None when it is missing or not a PNG (a crash can lose an image)."""
        try:
            data = self.run.asset(rel).read_bytes()
        except (OSError, UserError):
            return None
        if data[:8] != b"\x89PNG\r\n\x1a\n":
            return None
        return Image(data=data, mime="image/png", alt=alt)

    # ------------------------------------------------------------------ features

    def features(self) -> Section:
        frames, profile = self.frames, self.profile
        sec = Section(
            "features",
            "Features",
            "Look for classes separating in the penultimate features, for the layers whose representation "
            "changed most (low CKA), and for whether class separability improved.",
        )
        proj = frames.projection("pca")
        if proj.empty:
            sec.blocks.append(Note("No feature projections were recorded (probes were off)."))
        else:
            sec.blocks.append(self.projection(proj))
            tsne = frames.projection("tsne")
            if not tsne.empty:
                t_epochs = sorted(tsne["epoch"].unique().tolist())
                pick = [t_epochs[0], t_epochs[-1]] if len(t_epochs) > 1 else t_epochs
                sec.blocks.append(
                    self.chart(
                        "tsne",
                        "Feature projection (t-SNE), first and last epoch",
                        "t-SNE of the same features; each epoch has its own axes (t-SNE distances are not comparable "
                        "across epochs), so read it for clusters, not positions.",
                        charts.projection_multiples(
                            tsne, frames.classes, pick, profile.panel, "t-SNE", shared_axes=False
                        ),
                    )
                )
        c = frames.cka
        c = c[c["epoch"] > 0] if not c.empty else c
        if c.empty:
            sec.blocks.append(Note("No CKA similarities were recorded after epoch 0."))
        else:
            epochs, thinned = self.columns(c)
            c = c[c["epoch"].isin(epochs)]
            layers = frames.layers_in_order(c)
            strip = self.strip(layers)
            sec.blocks.append(
                self.chart(
                    "cka",
                    f"Similarity to the {self.start}'s representation (linear CKA)",
                    f"Linear CKA between each probed layer's representation now and in the {self.start} ({CKA_POOLING}): "
                    "1 is unchanged, lower values mean training changed what the layer represents."
                    + (
                        ""
                        if frames.from_scratch
                        else " A new head has no pretrained representation to keep: its row shows how "
                        "far it moved from its initialisation."
                    )
                    + thinned
                    + (STRIP_NOTE if strip else self.one_component(layers)),
                    self.keyed(
                        charts.heatmap(
                            c,
                            "cka",
                            layers,
                            width=profile.heat,
                            legend_title="linear CKA to epoch 0",
                            scale=charts.linear_scale(c["cka"], "viridis", hi=1.0),
                            legend_format=".2f",
                            tooltip_format=".3f",
                            epochs=epochs,
                            strip=strip[0] if strip else None,
                        ),
                        strip,
                        profile.heat,
                    ),
                )
            )
        sep = frames.separability
        if not sep.empty and sep["epoch"].nunique() > 1:
            sec.blocks.append(
                self.chart(
                    "separability",
                    "Class separability of the features",
                    "Leave-one-out k-NN accuracy (cosine similarity) on the probe set's penultimate features (do the "
                    "classes form clusters?), and the model's own accuracy on the same images.",
                    charts.separability(sep, profile.full, profile.line_h - 20),
                )
            )
        sec.blocks.append(self.filters())
        return sec

    def projection(self, proj: pd.DataFrame) -> ChartBlock:
        frames, profile = self.frames, self.profile
        epochs = sorted(proj["epoch"].unique().tolist())
        dim = next((e.features.dim for e in frames.epochs if e.features), None)
        module = next((e.features.module for e in frames.epochs if e.features), "the head")
        cap = (
            f"Penultimate features (the {dim}-dimensional input of {module}) of the {proj['sample'].nunique()} "
            f"probe images, projected on the two principal axes of the {self.start}'s features (same axes at "
            "every epoch), coloured by true class."
        )
        if profile.interactive and len(epochs) > 1:
            best = frames.best_epoch()
            shown = choose_epochs(epochs, profile.slider_epochs, keep=[best[0]] if best else [])
            pick = (
                "Move the slider to change the epoch"
                if len(shown) == len(epochs)
                else f"Pick one of {len(shown)} of the {len(epochs)} epochs (evenly spread, with the best)"
            )
            return self.chart(
                "projection",
                "Feature projection (PCA) by epoch",
                cap + f' {pick}; hover a point for its class. "Fit the axes" zooms to one epoch\'s points (ticked '
                "from the start when some epochs' features are far larger than others').",
                charts.projection_slider(proj[proj["epoch"].isin(shown)], frames.classes, shown, profile.full, "PCA"),
            )
        chosen = _spread(epochs, profile.projections)
        shared = charts.axes_comparable(proj, chosen)
        return self.chart(
            "projection",
            "Feature projection (PCA) at chosen epochs",
            cap
            + (
                ""
                if shared
                else " Each epoch has its own axis ranges here: the features' scale changed too much "
                "between epochs for one set of axes."
            ),
            charts.projection_multiples(proj, frames.classes, chosen, profile.panel, "PCA", shared_axes=shared),
        )

    def filters(self) -> Block:
        shots = [
            (e.epoch, e.images.filters, e.images.filters_module)
            for e in self.frames.image_epochs()
            if e.images and e.images.filters
        ]
        if not shots:
            return Note("No first-layer filter images were recorded.")
        cols = [shots[0]] if len(shots) == 1 else [shots[0], shots[-1]]
        module = shots[0][2] or "first layer"
        # one row per epoch (a filter grid is a wide strip: stacked, each gets the full width)
        rows = [
            (self.epoch_label(epoch), [self.image(path, f"filters of {module} at epoch {epoch}")])
            for epoch, path, _ in cols
        ]
        return ImageGrid(
            "filters",
            "First-layer filters, before and after",
            f"The filters of {module} as images (up to 64; one colour scale per grid, grey is 0)."
            + ("" if self.frames.from_scratch else " Pretrained filters usually change little."),
            [module],
            rows,
        )

    # ------------------------------------------------------------------ appendix

    def appendix(self) -> Section:
        info = self.info
        env = info.environment
        sec = Section("appendix", "Appendix", "The exact configuration and environment of the run, to reproduce it.")
        cfg = _flatten(info.config)
        if cfg:
            sec.blocks.append(
                TableBlock(
                    "config",
                    "Configuration",
                    "As given to the run.",
                    ["setting", "value"],
                    [[Cell(k, cls="mono"), Cell(v, cls="mono")] for k, v in cfg],
                )
            )
        else:
            sec.blocks.append(Note("No configuration was recorded."))
        items = [
            ("Python", env.python),
            ("Platform", env.platform),
            ("torch", env.torch or "–"),
            ("torchvision", env.torchvision or "–"),
            ("sftreport (recording)", env.sftreport),
            ("sftreport (report)", sftreport.__version__),
            ("Device", env.device + (f" ({env.device_name})" if env.device_name else "")),
            ("Precision", env.precision),
            ("Processes", str(env.world_size) + (", parameters sharded (FSDP)" if env.sharding == "fsdp" else "")),
            ("Git commit", env.git_commit or "–"),
            ("Host", env.hostname or "–"),
            ("Started", info.started_at),
            ("Finished", info.finished_at or "–"),
            ("Schema version", f"run {info.schema_version}, this renderer {SCHEMA_VERSION}"),
            ("Run directory", self.run.root.name),
        ]
        weights_dir = self.run.root / "weights"
        saved = sorted(path.name for path in weights_dir.glob("*.pt")) if weights_dir.is_dir() else []
        if saved:
            items.append(("Saved weights", ", ".join(f"weights/{n}" for n in saved)))
        sec.blocks.append(KeyValues("environment", "Environment", items))
        training = info.training
        if training is not None and training.param_groups:
            sec.blocks.append(
                TableBlock(
                    "param-groups",
                    "Learning rate per parameter group",
                    f"Layer-wise learning-rate decay ×{fmt.num(training.lr_decay)} per block below the head: the "
                    "peak learning rate of each optimizer group (the schedule scales them all alike)."
                    + (f" {training.schedule[0].upper()}{training.schedule[1:]}." if training.schedule else ""),
                    ["group", "blocks below the head", "learning rate", "parameters"],
                    [
                        [Cell(g.name, cls="mono"), Cell(str(g.depth)), Cell(fmt.num(g.lr)), Cell(fmt.integer(g.params))]
                        for g in training.param_groups
                    ],
                    numeric=[False, True, True, True],
                )
            )
        elif training is not None and training.schedule:
            sec.blocks.append(Note(f"Learning-rate schedule: {training.schedule}."))
        rows = []
        for e in self.frames.epochs:
            t = e.timing
            rows.append(
                [
                    Cell(str(e.epoch)),
                    Cell(fmt.duration(t.train_s) if t.train_s else "–"),
                    Cell(fmt.duration(t.eval_s)),
                    Cell(fmt.duration(t.record_s)),
                    Cell(fmt.num(t.samples_per_s) if t.samples_per_s else "–"),
                ]
            )
        sec.blocks.append(
            TableBlock(
                "timing",
                "Time per epoch",
                "Training, evaluation, and the recorder's probes (its overhead).",
                ["epoch", "training", "evaluation", "probes", "samples/s"],
                rows,
                numeric=[True] * 5,
                scroll=self.profile.interactive and len(rows) > 30,
            )
        )
        return sec


# --------------------------------------------------------------------------- helpers


def _hyperparameters(config: dict) -> str:
    """The training hyperparameters of sftreport's own runner, in one line ('' for a run that has none)."""
    if not all(k in config for k in ("optimizer", "lr")):
        return ""
    parts = [f"{config['optimizer']}", f"lr {config['lr']:g}"]
    if config["optimizer"] == "sgd" and config.get("momentum") is not None:
        parts.append(f"momentum {config['momentum']:g}")
    if config.get("weight_decay"):
        parts.append(f"weight decay {config['weight_decay']:g}")
    if config.get("scheduler"):
        parts.append(
            f"{config['scheduler']} learning rate"
            if config["scheduler"] == "constant"
            else f"{config['scheduler']} schedule"
        )
    if config.get("batch_size"):
        parts.append(f"batch {config['batch_size']}")
    if config.get("epochs"):
        parts.append(f"{config['epochs']} epochs")
    return ", ".join(parts)


def _share_cell(part: int, total: int, yes: str, no: str, invert: bool = False) -> Cell:
    if total == 0:
        return Cell("–", cls="muted")
    if part == total:
        return Cell(yes, cls="new" if invert else "yes")
    if part == 0:
        return Cell(no, cls="" if invert else "no")
    return Cell(f"{fmt.pct(part / total, 0)} {yes}", cls="partial")


def _spread(items: list, k: int) -> list:
    if len(items) <= k:
        return items
    return list(dict.fromkeys(items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)))


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out += _flatten(v, key)
        else:
            text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
            out.append((key, text if len(text) <= 300 else text[:297] + "…"))
    return out
