"""Builds the `Report` (what the report says) from a run: sections, blocks, findings, headline numbers.

One function per section. A section whose data is absent (probes off, only epoch 0, no validation set)
says so in one line (`Note`) instead of drawing an empty chart.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import pandas as pd

import sftreport
from sftreport.errors import UserError
from sftreport.report import charts, fmt
from sftreport.report.findings import derive_findings
from sftreport.report.frames import RunFrames
from sftreport.report.model import (Cell, ChartBlock, Headline, Image, ImageGrid, KeyValues, Medium, Note,
                                    Report, Section, TableBlock)
from sftreport.report.vega import chart_spec
from sftreport.schema import SCHEMA_VERSION, Architecture
from sftreport.store import Run

MAX_HEATMAP_ROWS = 70  # above this, layer heatmaps keep only convolution/linear layers
MAX_HIST_TENSORS = 6
MAX_ACT_HIST = 6
MAX_PDF_PROJECTIONS = 3
PDF_TABLE_DEPTH = 2

STRATEGIES = {
    "full": "full fine-tuning: every layer trained",
    "linear-probe": "linear probe: only the new head trained, the pretrained layers frozen",
}


@dataclass(frozen=True)
class Sizes:
    full: int  # plot width of a chart that spans the page (axis labels come on top)
    heat: int  # plot width of layer × epoch heatmaps (long layer names take the rest)
    panel: int  # width available to a row of small panels
    line_h: int  # height of a line chart
    small_h: int  # height of a small line chart (learning rate, gradient norm)


SIZES = {"html": Sizes(full=780, heat=560, panel=900, line_h=260, small_h=170),
         "pdf": Sizes(full=560, heat=400, panel=640, line_h=190, small_h=130)}


def build_report(run: Run, medium: Medium, frames: RunFrames | None = None,
                 on_chart: Callable[[ChartBlock], None] | None = None) -> Report:
    """The report of `run` for `medium`; `on_chart` is called with each chart as soon as it is built."""
    f = frames or RunFrames(run)
    b = _Builder(run, f, medium, on_chart)
    findings = derive_findings(f)
    headline = b.headline()
    sections = [b.training(), b.architecture(), b.parameters(), b.activations(), b.features(), b.appendix()]
    return Report(medium=medium, title=f"Fine-tuning report: {run.info.name}", headline=headline,
                  summary=b.summary(headline), findings=findings, sections=sections,
                  schema_version=SCHEMA_VERSION, sftreport_version=sftreport.__version__)


class _Builder:
    def __init__(self, run: Run, frames: RunFrames, medium: Medium,
                 on_chart: Callable[[ChartBlock], None] | None = None):
        self.run, self.f, self.medium, self.on_chart = run, frames, medium, on_chart
        self.info = run.info
        self.size = SIZES[medium]
        self.html = medium == "html"

    def chart(self, id: str, title: str, caption: str, chart) -> ChartBlock:
        block = ChartBlock(id=id, title=title, caption=caption, spec=chart_spec(chart))
        if self.on_chart is not None:
            self.on_chart(block)
        return block

    # ------------------------------------------------------------------ summary

    def headline(self) -> Headline:
        f, info = self.f, self.info
        first, last = f.val_at("first"), f.val_at("last")
        best = f.best_epoch()
        env = info.environment
        ds = info.dataset
        return Headline(
            run_name=info.name, status=info.status, status_detail=info.status_detail, model=info.model,
            weights=info.weights, strategy=info.strategy, dataset=ds.name, classes=len(ds.classes),
            epochs_done=f.last.epoch if f.last else 0, epochs_planned=info.planned_epochs,
            acc_before=first[1].accuracy if first else None,
            acc_after=last[1].accuracy if last and first and last[0].epoch != first[0].epoch else None,
            best_epoch=best[0] if best else None, best_acc=best[1] if best else None,
            loss_before=first[1].loss if first else None,
            loss_after=last[1].loss if last and first and last[0].epoch != first[0].epoch else None,
            duration_s=info.duration_s, device=env.device + (f" ({env.device_name})" if env.device_name else ""),
            precision=env.precision, started_at=info.started_at, finished_at=info.finished_at)

    def summary(self, h: Headline) -> KeyValues:
        info, ds = self.info, self.info.dataset
        acc = "not measured (no validation set)"
        if h.acc_before is not None:
            acc = f"{fmt.pct(h.acc_before)} before (epoch 0)"
            if h.acc_after is not None:
                acc = (f"{fmt.pct(h.acc_before)} before → {fmt.pct(h.acc_after)} after "
                       f"({fmt.points(h.acc_after - h.acc_before)})")
        planned = f" of {h.epochs_planned} planned" if h.epochs_planned else ""
        sizes = f"{fmt.integer(ds.train_size)} training / {fmt.integer(ds.val_size)} validation images"
        items = [
            ("Run", info.name),
            ("Status", info.status + (f": {info.status_detail}" if info.status_detail else "")),
            ("Dataset", f"{ds.name}: {len(ds.classes)} classes, {sizes}, {ds.image_size}×{ds.image_size} px"
                        + (f" ({ds.source})" if ds.source else "")),
            ("Model", info.model),
            ("Pretrained weights", info.weights),
            ("Strategy", STRATEGIES.get(info.strategy, info.strategy)),
            ("Validation accuracy", acc),
            ("Best epoch", f"{h.best_epoch} ({fmt.pct(h.best_acc)})" if h.best_epoch is not None else "–"),
            ("Epochs", f"{h.epochs_done}{planned}"),
            ("Duration", fmt.duration(h.duration_s) if h.duration_s is not None else "–"),
            ("Device", f"{h.device}, {h.precision}" + (f", {info.environment.world_size} processes"
                                                      if info.environment.world_size > 1 else "")),
        ]
        return KeyValues(id="summary-table", title="Run", items=items)

    # ------------------------------------------------------------------ training

    def training(self) -> Section:
        f, s = self.f, self.size
        sec = Section("training", "Training",
                      "Look for validation loss that stops falling while training loss keeps falling (overfitting), "
                      "and for the classes that fine-tuning helped least.")
        t = f.epoch_table
        if not f.trained:
            sec.blocks.append(Note("Only the pretrained model (epoch 0) was recorded: no training curves yet."))
        else:
            sec.blocks.append(self.chart(
                "loss", "Loss", "Training loss per optimizer step (light) and per epoch, and validation loss per "
                "epoch, on one epoch axis. Gaps are NaN or infinite values.",
                charts.loss_curves(t, f.steps, s.full, s.line_h)))
            if t["train_accuracy"].notna().any() or t["val_accuracy"].notna().any():
                sec.blocks.append(self.chart(
                    "accuracy", "Accuracy", "Training accuracy (on the batches as trained) and validation accuracy "
                    "per epoch; epoch 0 is the pretrained model with its new head.", charts.accuracy_curves(t, s.full, s.line_h)))
            if f.steps["lr"].notna().any() or t["lr"].notna().any():
                sec.blocks.append(self.chart("lr", "Learning rate", "The learning rate the optimizer used at each step.",
                                             charts.learning_rate(f.steps, t, s.full, s.small_h)))
        if not f.has_val:
            sec.blocks.append(Note("No validation set was evaluated: no confusion matrix or per-class accuracy."))
            return sec
        first, last = f.val_at("first"), f.val_at("last")
        pairs = [(f"epoch {first[0].epoch} (pretrained)" if first[0].epoch == 0 else f"epoch {first[0].epoch}",
                  f.confusion(first[0]))]
        if last[0].epoch != first[0].epoch:
            pairs.append((f"epoch {last[0].epoch} (fine-tuned)", f.confusion(last[0])))
        n = len(f.classes)
        sec.blocks.append(self.chart(
            "confusion", "Confusion matrix, before and after",
            "Rows are the true class, columns the predicted class; colour is the share of the row"
            + (", numbers are image counts" if n <= (12 if self.html else 6) else "") + ". A strong diagonal is good.",
            charts.confusion_pair(pairs, f.classes, s.panel, max_text=12 if self.html else 6)))
        pc = f.per_class()
        sec.blocks.append(self.chart(
            "per-class", "Per-class accuracy, before vs after",
            "Validation accuracy of each class for the pretrained model (grey) and after fine-tuning (blue).",
            charts.per_class_accuracy(pc, f.classes, s.full - 120)))
        sec.blocks.append(self.epoch_table())
        return sec

    def epoch_table(self) -> TableBlock:
        rows = []
        for e in self.f.epochs:  # the snapshots themselves: None (not measured) shows as –, NaN as NaN
            v = e.val
            rows.append([Cell(str(e.epoch)), Cell(fmt.integer(e.step)), Cell(fmt.num(e.train_loss, 4)),
                         Cell(fmt.pct(e.train_accuracy)), Cell(fmt.num(v.loss, 4) if v else "–"),
                         Cell(fmt.pct(v.accuracy) if v else "–"), Cell(fmt.num(e.lr, 3)),
                         Cell(fmt.duration(e.timing.train_s) if e.timing.train_s else "–")])
        return TableBlock("epochs", "Per epoch", "The numbers behind the curves (NaN: not a number).",
                          ["epoch", "steps", "train loss", "train acc.", "val. loss", "val. acc.", "learning rate",
                           "train time"], rows, numeric=[True] * 8)

    # ------------------------------------------------------------------ architecture

    def architecture(self) -> Section:
        sec = Section("architecture", "Architecture",
                      "Look at which parts of the model are pretrained and frozen, which were trained, and what "
                      "fine-tuning added (the new head).")
        arch = self.info.architecture
        if arch is None:
            sec.blocks.append(Note("The architecture was not recorded (probes were off)."))
            return sec
        frozen = arch.total_params - arch.trainable_params
        sec.blocks.append(KeyValues("arch-totals", "Parameters", [
            ("Model", f"{arch.model_type} ({self.info.model}), input {fmt.shape(arch.input_shape)}"),
            ("Parameters", f"{fmt.integer(arch.total_params)} ({fmt.count(arch.total_params)})"),
            ("Trainable", f"{fmt.integer(arch.trainable_params)} ({fmt.pct(arch.trainable_params / arch.total_params if arch.total_params else None)})"),
            ("Frozen", fmt.integer(frozen)),
            ("New (not pretrained)", f"{fmt.integer(arch.new_params)}"),
            ("Strategy", STRATEGIES.get(self.info.strategy, self.info.strategy)),
        ]))
        sec.blocks.append(self.replaced(arch))
        rows = []
        for i, blk in enumerate(arch.blocks):
            parts = {
                "pretrained, frozen": blk.params - blk.new - max(0, blk.trainable - blk.new),
                "pretrained, fine-tuned": max(0, blk.trainable - blk.new),
                "new, trained": min(blk.new, blk.trainable),
                "new, frozen": blk.new - min(blk.new, blk.trainable),
            }
            for k, (part, v) in enumerate(parts.items()):
                if v > 0:
                    rows.append({"block": blk.name, "type": blk.type, "part": part, "part_order": k, "params": v})
        if rows:
            sec.blocks.append(self.chart(
                "params-by-block", "Parameters by block",
                "Parameters of each top-level block: grey is pretrained and frozen, blue pretrained and fine-tuned, "
                "orange new (the replaced head).",
                charts.params_by_block(pd.DataFrame(rows), self.size.full - 100)))
        sec.blocks.append(self.layer_table(arch))
        return sec

    def replaced(self, arch: Architecture) -> TableBlock | Note:
        new = [m for m in arch.modules if m.new > 0]
        if not new:
            return Note("No new layers: every parameter was loaded from the pretrained weights.")
        rows = [[Cell(m.name or "(model)", cls="mono"), Cell(m.type), Cell(fmt.shape(m.output_shape)),
                 Cell(fmt.integer(m.new)), Cell("trainable" if m.trainable else "frozen")] for m in new]
        classes = len(self.info.dataset.classes)
        return TableBlock("replaced", "What fine-tuning replaced",
                          f"Layers initialised fresh instead of loaded from the pretrained weights: the new head "
                          f"for the {classes} classes of {self.info.dataset.name}.",
                          ["layer", "type", "output shape", "new parameters", "status"], rows,
                          numeric=[False, False, False, True, False])

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
        keep = mods
        if not self.html:
            keep = [m for m in mods if m.depth <= PDF_TABLE_DEPTH or m.new > 0]
        rows = []
        for m in keep:
            p, tr, nw = totals[m.name]
            rows.append([
                Cell(m.name or "(model)", cls=f"mono d{min(m.depth, 6)}"),
                Cell(m.type), Cell(fmt.shape(m.output_shape)), Cell(fmt.integer(p) if p else "–"),
                _share_cell(tr, p, "trainable", "frozen"), _share_cell(nw, p, "new", "pretrained", invert=True)])
        hidden = len(mods) - len(keep)
        caption = ("Every module in network order, indented by depth; parameters include the module's children."
                   if self.html else
                   f"Modules down to depth {PDF_TABLE_DEPTH} in network order ({hidden} deeper modules are in the "
                   "HTML report); parameters include the module's children.")
        return TableBlock("layers", f"Layers ({len(mods)} modules)", caption,
                          ["layer", "type", "output shape", "parameters", "trained", "origin"], rows,
                          numeric=[False, False, False, True, False, False], scroll=self.html and len(rows) > 30)

    # ------------------------------------------------------------------ parameters

    def heat_layers(self, df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        layers = self.f.layers_in_order(df)
        if len(layers) <= MAX_HEATMAP_ROWS or "matrix" not in df:
            return df, ""
        kept = df[df["matrix"]]
        dropped = len(layers) - len(self.f.layers_in_order(kept))
        return kept, f" Only convolution and linear layers are shown ({dropped} normalisation and other small layers left out)."

    def parameters(self) -> Section:
        f, s = self.f, self.size
        sec = Section("parameters", "Parameters",
                      "Look for which layers moved away from their pretrained weights (deeper layers usually move "
                      "more), for gradient spikes or NaNs, and for update-to-weight ratios far outside the green band.")
        w = f.layer_weights
        if w.empty:
            sec.blocks.append(Note("No weight statistics were recorded (probes were off)."))
            return sec
        trained = w[w["epoch"] > 0]
        g = f.layer_grads
        u = w[w["update_ratio"].notna() & (w["update_ratio"] > 0)]
        rel_cap = ("‖Wₜ−W₀‖ / ‖W₀‖ per layer (rows, network order) and epoch, log colour scale; new layers are "
                   "compared with their initialisation. Grey cells did not change (frozen).")
        grad_cap = ("Root of the summed squared mean gradient norms of each layer's tensors, per epoch (log colour "
                    "scale). Frozen layers have no gradient; grey: none sampled in that epoch.")
        upd_cap = ("‖update‖ / ‖W‖ of one optimizer step per layer and epoch (log scale). The green band is "
                   f"{charts.HEALTHY_BAND[0]:g} … {charts.HEALTHY_BAND[1]:g} around the usual target of "
                   f"{charts.HEALTHY_TARGET:g} (dashed): far below, a layer barely learns; far above, training is "
                   "unstable. Frozen layers are not shown.")
        rel_args = dict(legend_title="‖Wₜ−W₀‖ / ‖W₀‖ (log scale)", scale=alt_scale_log(trained["rel_change"], "viridis"),
                        legend_format=".0e", tooltip_format=".3~%",
                        extra_tooltips=[_tip("type:N"), _tip("params:Q", "parameters", ",")])
        grad_args = dict(legend_title="gradient norm (log scale)", legend_format=".0e", tooltip_format=".3e",
                         scale=alt_scale_log(g["norm"], "plasma") if not g.empty else None,
                         extra_tooltips=[_tip("max_norm:Q", "largest sampled tensor norm", ".3e"),
                                         _tip("nonfinite:Q", "steps with NaN/inf gradients")])
        if not g.empty:
            g = g.merge(w[["layer", "epoch", "matrix", "type"]], on=["layer", "epoch"], how="left")
            g["matrix"] = g["matrix"].fillna(True).astype(bool)
        if trained.empty:
            sec.blocks.append(Note("Only the pretrained weights (epoch 0) were recorded: nothing has changed yet."))
        elif not self.html and not g.empty and not u.empty:
            # the PDF shows the three per-layer views side by side: one row per layer, labels drawn once
            hw, note = self.heat_layers(trained)
            layers = f.layers_in_order(hw)
            hg, hu = g[g["layer"].isin(layers)], u[u["layer"].isin(layers)]
            third = (s.panel - 200) // 3
            sec.blocks.append(self.chart(
                "per-layer", "Relative change from the pretrained weights, gradient norm and update ratio per layer",
                f"Left: {rel_cap} Middle: {grad_cap} Right: {upd_cap}{note}",
                charts.side_by_side([
                    charts.heatmap(hw, "rel_change", layers, width=third, title="change from pretrained", **rel_args),
                    charts.heatmap(hg, "norm", layers, width=third, title="gradient norm", y_labels=False,
                                   epochs=sorted(hw["epoch"].unique().tolist()), **grad_args),
                    charts.update_ratio(hu, layers, third, y_labels=False, title="update / weight (green: 1e-4…1e-2)"),
                ])))
            sec.blocks.append(self.weight_histograms())
            sec.blocks.append(self.grad_total())
            return sec
        else:
            hw, note = self.heat_layers(trained)
            sec.blocks.append(self.chart(
                "rel-change", "Relative change from the pretrained weights", rel_cap + note,
                charts.heatmap(hw, "rel_change", f.layers_in_order(hw), width=s.heat, **rel_args)))
        sec.blocks.append(self.weight_histograms())
        if g.empty:
            sec.blocks.append(Note("No gradients were sampled (no training step recorded, or probes were off)."))
        else:
            sec.blocks.append(self.grad_total())
            hg, note = self.heat_layers(g)
            sec.blocks.append(self.chart(
                "grad-layers", "Gradient norm per layer",
                grad_cap + note,
                charts.heatmap(hg, "norm", f.layers_in_order(hg), width=s.heat,
                               epochs=sorted(trained["epoch"].unique().tolist()), **grad_args)))
        if u.empty:
            sec.blocks.append(Note("No update-to-weight ratios were recorded (no optimizer step measured)."))
        else:
            hu, note = self.heat_layers(u)
            sec.blocks.append(self.chart("update-ratio", "Update-to-weight ratio", upd_cap + note,
                                         charts.update_ratio(hu, f.layers_in_order(hu), s.heat)))
        return sec

    def grad_total(self) -> ChartBlock:
        return self.chart(
            "grad-total", "Gradient norm of the whole model",
            "Mean over the epoch's sampled steps, and the largest single-tensor norm seen (log scale). "
            "A red line marks an epoch with NaN or infinite gradients.",
            charts.grad_total(self.f.grad_total, self.size.full, self.size.small_h + 20))

    def weight_histograms(self):
        f = self.f
        w = f.layer_weights
        names = f.weight_tensors()
        if not names:
            return Note("No weight histograms were recorded.")
        last = int(w["epoch"].max())
        moved = w[(w["epoch"] == last)]
        mod_rank = {}
        if not moved.empty:
            pre = moved[moved["trainable"] & ~moved["new"] & moved["matrix"]]
            if not pre.empty:
                mod_rank["most"] = pre.loc[pre["rel_change"].fillna(-1).idxmax(), "module"]
        # candidate tensors: the weight matrices of layers, in network order
        mats = [n for n, (m, nd) in self._tensor_info().items() if nd >= 2] or names
        mod_of = {n: m for n, (m, _) in self._tensor_info().items()}
        new_mods = set(w[w["new"]]["module"])
        pre_mats = [n for n in mats if mod_of.get(n) not in new_mods] or mats
        most = [n for n in pre_mats if mod_of.get(n) == mod_rank.get("most")][:1]
        head = [n for n in mats if mod_of.get(n) in new_mods][:2]
        if self.html:  # first, middle, last pretrained layer, the one that moved most, the new head
            chosen = [pre_mats[0], pre_mats[len(pre_mats) // 2], pre_mats[-1]] + most + head
        else:  # the PDF keeps one row of three: first pretrained layer, the one that moved most, the head
            chosen = [pre_mats[0]] + (most or [pre_mats[-1]]) + head[:1]
        order = {n: i for i, n in enumerate(names)}
        chosen = sorted(dict.fromkeys(chosen), key=order.__getitem__)[:MAX_HIST_TENSORS]
        df = f.weight_hist(chosen)
        epochs = sorted(df["epoch"].unique().tolist())
        first = epochs[0]
        cols = 3
        return self.chart(
            "weight-hist", "Weight histograms, pretrained vs now",
            "Distribution of the values of chosen weight tensors ("
            + ("first, middle, last pretrained layer, the one that moved most, and the new head" if self.html else
               "first pretrained layer, the one that moved most, and the new head")
            + "); grey area: pretrained, lines: each later epoch. Fixed bins per tensor, chosen on the pretrained "
            "weights.",
            charts.histograms(df, "tensor", chosen, width=self.size.panel, columns=cols, first_epoch=first,
                              color_epochs=len(epochs) > 2, x_title="weight value"))

    def _tensor_info(self) -> dict[str, tuple[str, int]]:
        for e in self.f.epochs:
            if e.weights:
                return {w.name: (w.module, len(w.shape)) for w in e.weights}
        return {}

    # ------------------------------------------------------------------ activations

    def activations(self) -> Section:
        f, s = self.f, self.size
        sec = Section("activations", "Activations",
                      "Look for layers whose outputs drift far from the pretrained model's on the same probe images, "
                      "and for growing fractions of dead (always zero) channels.")
        a = f.activations
        if a.empty:
            sec.blocks.append(Note("No activation statistics were recorded (probes were off)."))
        else:
            layers = f.layers_in_order(a)
            sec.blocks.append(self.chart(
                "act-stats", "Activation statistics per layer and epoch",
                "Mean, standard deviation, share of exactly-zero outputs, and share of dead channels (zero for every "
                "probe image and position) of each probed layer's output on the fixed probe batch.",
                charts.activation_heatmaps(a, layers, s.panel)))
            epochs = sorted(a["epoch"].unique().tolist())
            pick = _spread(layers, MAX_ACT_HIST if self.html else 3)
            pick = list(dict.fromkeys(pick))
            hist_epochs = [epochs[0], epochs[-1]] if len(epochs) > 1 else epochs
            df = f.activation_hist(pick, hist_epochs)
            if not df.empty:
                sec.blocks.append(self.chart(
                    "act-hist", "Activation histograms, pretrained vs last epoch",
                    f"Distribution of output values of chosen layers on the probe images: grey area epoch "
                    f"{hist_epochs[0]}, blue line epoch {hist_epochs[-1]} (square-root scale, so the tails show).",
                    charts.histograms(df, "layer", pick, width=s.panel, columns=3,
                                      first_epoch=hist_epochs[0], color_epochs=False,
                                      x_title="activation value", sqrt_y=True)))
        sec.blocks.append(self.feature_maps())
        return sec

    def feature_maps(self):
        eps = [e for e in self.f.image_epochs() if e.images.feature_maps]
        if not eps:
            return Note("No feature-map images were recorded.")
        first, last = eps[0], eps[-1]
        cols = [first] if first is last else [first, last]
        heads = [self._epoch_label(e.epoch) for e in cols]
        keys = list(dict.fromkeys((m.module, m.sample) for e in cols for m in e.images.feature_maps))
        rows = []
        for module, sample in keys:
            imgs = []
            for e in cols:
                fm = next((m for m in e.images.feature_maps if m.module == module and m.sample == sample), None)
                imgs.append(self.image(fm.path, f"feature maps of {module}, probe image {sample + 1}, epoch {e.epoch}")
                            if fm else None)
            channels = next(m.channels for e in cols for m in e.images.feature_maps if m.module == module)
            rows.append((f"{module} · probe image {sample + 1} · {channels} channels", imgs))
        return ImageGrid("feature-maps", "Feature maps of probe images",
                         "Each strip: the probe image, then the most active channels of the layer's output (each "
                         "channel scaled on its own: patterns, not magnitudes).", heads, rows)

    def _epoch_label(self, epoch: int) -> str:
        if epoch == 0:
            return "pretrained (epoch 0)"
        return f"fine-tuned (epoch {epoch})"

    def image(self, rel: str, alt: str) -> Image | None:
        try:
            data = self.run.asset(rel).read_bytes()
        except (OSError, UserError):
            return None
        if data[:8] != b"\x89PNG\r\n\x1a\n":
            return None
        return Image(data=data, mime="image/png", alt=alt)

    # ------------------------------------------------------------------ features

    def features(self) -> Section:
        f, s = self.f, self.size
        sec = Section("features", "Features",
                      "Look for classes separating in the penultimate features, for the layers whose representation "
                      "changed most (low CKA), and for whether class separability improved.")
        proj = f.projection("pca")
        if proj.empty:
            sec.blocks.append(Note("No feature projections were recorded (probes were off)."))
        else:
            epochs = sorted(proj["epoch"].unique().tolist())
            dim = next((e.features.dim for e in f.epochs if e.features), None)
            module = next((e.features.module for e in f.epochs if e.features), "the head")
            cap = (f"Penultimate features (the {dim}-dimensional input of {module}) of the {proj['sample'].nunique()} "
                   "probe images, projected on the two principal axes of the pretrained model's features (same axes "
                   "at every epoch), coloured by true class.")
            if self.html and len(epochs) > 1:
                sec.blocks.append(self.chart(
                    "projection", "Feature projection (PCA) by epoch",
                    cap + " Move the slider to change the epoch; hover a point for its class. \"Fit the axes\" zooms "
                    "to one epoch's points (ticked from the start when some epochs' features are far larger than "
                    "others').",
                    charts.projection_slider(proj, f.classes, epochs, s.full, "PCA")))
            else:
                pick = _spread(epochs, MAX_PDF_PROJECTIONS)
                shared = charts.axes_comparable(proj, pick)
                sec.blocks.append(self.chart(
                    "projection", "Feature projection (PCA) at chosen epochs",
                    cap + ("" if shared else " Each epoch has its own axis ranges here: the features' scale changed "
                                             "too much between epochs for one set of axes."),
                    charts.projection_multiples(proj, f.classes, pick, s.panel, "PCA", shared_axes=shared)))
            tsne = f.projection("tsne")
            if not tsne.empty:
                t_epochs = sorted(tsne["epoch"].unique().tolist())
                pick = [t_epochs[0], t_epochs[-1]] if len(t_epochs) > 1 else t_epochs
                sec.blocks.append(self.chart(
                    "tsne", "Feature projection (t-SNE), first and last epoch",
                    "t-SNE of the same features; each epoch has its own axes (t-SNE distances are not comparable "
                    "across epochs), so read it for clusters, not positions.",
                    charts.projection_multiples(tsne, f.classes, pick, s.panel, "t-SNE", shared_axes=False)))
        c = f.cka
        c = c[c["epoch"] > 0] if not c.empty else c
        if c.empty:
            sec.blocks.append(Note("No CKA similarities were recorded after epoch 0."))
        else:
            layers = f.layers_in_order(c)
            sec.blocks.append(self.chart(
                "cka", "Similarity to the pretrained representation (linear CKA)",
                "Linear CKA between each probed layer's features on the probe images now and in the pretrained "
                "model: 1 is unchanged, lower values mean fine-tuning changed what the layer represents.",
                charts.heatmap(c, "cka", layers, width=s.heat, legend_title="linear CKA to pretrained",
                               scale=alt_scale_linear(c["cka"], "viridis", hi=1.0), legend_format=".2f",
                               tooltip_format=".3f")))
        sep = f.separability
        if not sep.empty and sep["epoch"].nunique() > 1:
            sec.blocks.append(self.chart(
                "separability", "Class separability of the features",
                "Leave-one-out k-NN accuracy on the probe set's penultimate features (do the classes form clusters?), "
                "and the model's own accuracy on the same images.", charts.separability(sep, s.full, s.line_h - 20)))
        sec.blocks.append(self.filters())
        return sec

    def filters(self):
        eps = [e for e in self.f.image_epochs() if e.images.filters]
        if not eps:
            return Note("No first-layer filter images were recorded.")
        cols = [eps[0]] if len(eps) == 1 else [eps[0], eps[-1]]
        module = eps[0].images.filters_module or "first layer"
        # one row per epoch (a filter grid is a wide strip: stacked, each gets the full width)
        rows = [(self._epoch_label(e.epoch), [self.image(e.images.filters, f"filters of {module} at epoch {e.epoch}")])
                for e in cols]
        return ImageGrid("filters", "First-layer filters, before and after",
                         f"The filters of {module} as images (up to 64; one colour scale per grid, grey is 0). "
                         "Pretrained filters usually change little.", [module], rows)

    # ------------------------------------------------------------------ appendix

    def appendix(self) -> Section:
        info = self.info
        env = info.environment
        sec = Section("appendix", "Appendix", "The exact configuration and environment of the run, to reproduce it.")
        cfg = _flatten(info.config)
        if cfg:
            sec.blocks.append(TableBlock("config", "Configuration", "As given to the run.", ["setting", "value"],
                                         [[Cell(k, cls="mono"), Cell(v, cls="mono")] for k, v in cfg]))
        else:
            sec.blocks.append(Note("No configuration was recorded."))
        items = [("Python", env.python), ("Platform", env.platform), ("torch", env.torch or "–"),
                 ("torchvision", env.torchvision or "–"), ("sftreport (recording)", env.sftreport),
                 ("sftreport (report)", sftreport.__version__),
                 ("Device", env.device + (f" ({env.device_name})" if env.device_name else "")),
                 ("Precision", env.precision), ("Processes", str(env.world_size)),
                 ("Git commit", env.git_commit or "–"), ("Host", env.hostname or "–"),
                 ("Started", info.started_at), ("Finished", info.finished_at or "–"),
                 ("Schema version", f"run {info.schema_version}, this renderer {SCHEMA_VERSION}"),
                 ("Run directory", self.run.root.name)]
        sec.blocks.append(KeyValues("environment", "Environment", items))
        rows = []
        for e in self.f.epochs:
            t = e.timing
            rows.append([Cell(str(e.epoch)), Cell(fmt.duration(t.train_s) if t.train_s else "–"),
                         Cell(fmt.duration(t.eval_s)), Cell(fmt.duration(t.record_s)),
                         Cell(fmt.num(t.samples_per_s) if t.samples_per_s else "–")])
        sec.blocks.append(TableBlock("timing", "Time per epoch",
                                     "Training, evaluation, and the recorder's probes (its overhead).",
                                     ["epoch", "training", "evaluation", "probes", "samples/s"], rows,
                                     numeric=[True] * 5))
        return sec


# --------------------------------------------------------------------------- helpers


def _tip(field: str, title: str | None = None, format: str | None = None):
    import altair as alt

    kw = {}
    if title:
        kw["title"] = title
    if format:
        kw["format"] = format
    return alt.Tooltip(field, **kw)


def alt_scale_log(values: pd.Series, scheme: str):
    import altair as alt

    v = values[values.apply(fmt.finite) & (values > 0)]
    if v.empty:
        return alt.Scale(type="log", scheme=scheme)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    return alt.Scale(type="log", scheme=scheme, domain=[lo, hi])


def alt_scale_linear(values: pd.Series, scheme: str, hi: float | None = None):
    import altair as alt

    v = values[values.apply(fmt.finite)]
    lo = float(v.min()) if not v.empty else 0.0
    top = hi if hi is not None else (float(v.max()) if not v.empty else 1.0)
    if top <= lo:
        lo = top - 0.1
    return alt.Scale(scheme=scheme, domain=[lo, top])


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

