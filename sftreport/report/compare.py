"""`sftreport compare RUN_A RUN_B [...]`: several runs in one report, side by side.

    compare_runs([Path("runs/full"), Path("runs/probe")], [Path("compare.html")], labels=None, allow_mixed=False)

What differs in their configurations, the headline numbers and the curves of every per-epoch metric the runs
have (overlaid), per layer the relative change, update-to-weight ratio, gradient norm, spectrum of the change
and CKA to the pretrained model (each run on its own line within a layer's row), each run's own findings and
the comparison's findings (compare_findings.py). Never imports torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

import sftreport
from sftreport.errors import UserError
from sftreport.report import compare_charts as cc
from sftreport.report import fmt, thresholds
from sftreport.report.compare_findings import compare_findings
from sftreport.report.compare_frames import CompareFrames, Member
from sftreport.report.document import Document, FindingGroup, write_documents
from sftreport.report.findings import derive_findings
from sftreport.report.frames import RunFrames
from sftreport.report.model import Block, Cell, ChartBlock, KeyValues, Medium, Note, Section, TableBlock
from sftreport.report.profile import PROFILES, Profile
from sftreport.report.render import altair_unchecked, check_outputs, gc_paused
from sftreport.report.sections import CKA_POOLING, STRATEGIES, UPDATE_RATIO_DEF
from sftreport.report.spectrum import RANK_DEFINITION
from sftreport.report.vega import chart_spec
from sftreport.schema import SCHEMA_VERSION
from sftreport.store import read_run


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def labels_for(runs, given: list[str] | None) -> list[str]:
    """The runs' labels: those given (one per run, all different), else the runs' names when they differ, else
    their strategies, else their directories' names."""
    if given:
        if len(given) != len(runs):
            raise UserError(f"{len(runs)} runs but {len(given)} --label; give one label per run, in the same order")
        if len(set(given)) != len(given):
            dup = next(x for x in given if given.count(x) > 1)
            raise UserError(f"--label {dup!r} is given twice; each run needs its own label")
        return list(given)
    for names in (
        [r.info.name for r in runs],
        [r.info.strategy for r in runs],  # runs of one name are told apart by what usually differs
        [r.root.name for r in runs],
        [f"{r.root.name} #{i + 1}" for i, r in enumerate(runs)],
    ):
        if len(set(names)) == len(names):
            return names
    raise AssertionError("numbered names are unique")


def load_members(dirs: list[Path], labels: list[str] | None = None, allow_mixed: bool = False) -> list[Member]:
    """Read and check the runs: at least two, none given twice, one model and one dataset unless `allow_mixed`.
    Every refusal is a UserError of one line."""
    dirs = [Path(d) for d in dirs]
    if len(dirs) < 2:
        raise UserError("compare needs at least two run directories")
    for i, a in enumerate(dirs):
        for b in dirs[:i]:
            if a.exists() and b.exists() and _same_dir(a, b):
                raise UserError(f"{a} is given twice (as {b} too): compare a run with another run, not with itself")
    runs = [read_run(d) for d in dirs]
    names = labels_for(runs, labels)
    if not allow_mixed:
        first = runs[0]
        for r in runs[1:]:
            if r.info.model != first.info.model:
                raise UserError(
                    f"the runs are of different models ({first.root}: {first.info.model}, {r.root}: {r.info.model}); "
                    "--allow-mixed compares them anyway"
                )
            da, db = first.info.dataset, r.info.dataset
            if da.name != db.name or da.classes != db.classes:
                what = (
                    f"{da.name} vs {db.name}"
                    if da.name != db.name
                    else f"classes {', '.join(da.classes[:4])}… vs {', '.join(db.classes[:4])}…"
                )
                raise UserError(
                    f"the runs are on different datasets ({first.root}: {what}, {r.root}); --allow-mixed compares "
                    "them anyway"
                )
    return [Member(label, run, RunFrames(run)) for label, run in zip(names, runs)]


def compare_runs(
    dirs: list[Path], outs: list[Path], labels: list[str] | None = None, allow_mixed: bool = False
) -> list[Path]:
    """Write the comparison of the runs in `dirs` to each of `outs` (the format follows the extension)."""
    outs = [Path(o) for o in outs]
    kinds = check_outputs(outs)
    members = load_members(dirs, labels, allow_mixed)
    with gc_paused(), altair_unchecked():
        cf = CompareFrames(members)
        return write_documents(lambda medium, on_chart: build_compare(cf, medium, on_chart), list(zip(outs, kinds)))


def build_compare(cf: CompareFrames, medium: Medium, on_chart: Callable[[ChartBlock], None] | None = None) -> Document:
    b = _Builder(cf, PROFILES[medium], on_chart)
    members = cf.members
    models = list(dict.fromkeys(m.info.model for m in members))
    data = list(dict.fromkeys(m.info.dataset.name for m in members))
    return Document(
        kind="compare",
        medium=medium,
        title=f"Comparison of {len(members)} fine-tuning runs",
        kicker="sftreport · which fine-tuning choice changed what",
        subtitle=f"{' / '.join(models)} → {' / '.join(data)} · " + " · ".join(cf.labels),
        lead="The runs side by side: how they were set up differently, what each reached, and how much of the "
        "pretrained model each changed to get there.",
        summary=b.summary(),
        findings=compare_findings(cf),
        findings_lead="Conclusions drawn by explicit rules from the runs' numbers taken together; each states its "
        "evidence and threshold.",
        groups=[FindingGroup(m.label, derive_findings(m.frames)) for m in members],
        groups_title="Each run's own findings",
        sections=[b.configuration(), b.training(), b.parameters(), b.features(), b.appendix()],
        schema_version=SCHEMA_VERSION,
        sftreport_version=sftreport.__version__,
    )


class _Builder:
    def __init__(self, cf: CompareFrames, profile: Profile, on_chart: Callable[[ChartBlock], None] | None):
        self.cf, self.profile, self.on_chart = cf, profile, on_chart
        self.labels = cf.labels

    def chart(self, id: str, title: str, caption: str, chart) -> ChartBlock:
        block = ChartBlock(id=id, title=title, caption=caption, spec=chart_spec(chart))
        if self.on_chart is not None:
            self.on_chart(block)
        return block

    def table(self, id: str, title: str, caption: str, rows: list[tuple[str, list[str]]], numeric: bool) -> TableBlock:
        return TableBlock(
            id,
            title,
            caption,
            [""] + self.labels,
            [[Cell(k, cls="mono" if not numeric else "")] + [Cell(v) for v in values] for k, values in rows],
            numeric=[False] + [numeric] * len(self.labels),
        )

    # ------------------------------------------------------------------ summary

    def summary(self) -> list[Block]:
        h = self.cf.headline
        col = {r.run: r for r in h.itertuples()}

        def each(f) -> list[str]:
            return [f(col[label]) for label in self.labels]

        def gain(r) -> str:
            return (
                fmt.points(r.acc_after - r.acc_before) if fmt.finite(r.acc_after) and fmt.finite(r.acc_before) else "–"
            )

        def trainable(r) -> str:
            if not fmt.finite(r.trainable):
                return "–"
            return f"{fmt.count(r.trainable)} ({fmt.pct(r.trainable / r.params if r.params else None)})"

        rows = [
            ("status", each(lambda r: r.status)),
            ("strategy", each(lambda r: r.strategy)),
            ("trainable parameters", each(trainable)),
            ("val. accuracy before (epoch 0)", each(lambda r: fmt.pct(r.acc_before))),
            ("val. accuracy after (last epoch)", each(lambda r: fmt.pct(r.acc_after))),
            ("change", each(gain)),
            (
                "best epoch",
                each(lambda r: f"{int(r.best_epoch)} ({fmt.pct(r.best_acc)})" if fmt.finite(r.best_epoch) else "–"),
            ),
            ("val. loss after", each(lambda r: fmt.num(r.loss_after, 4))),
            ("pretrained layers changed ‖ΔW‖/‖W₀‖", each(lambda r: fmt.change(r.backbone_change))),
            ("new head changed ‖ΔW‖/‖W_init‖", each(lambda r: fmt.change(r.head_change))),
            ("epochs", each(lambda r: str(int(r.last_epoch)))),
            ("duration", each(lambda r: fmt.duration(r.duration_s) if fmt.finite(r.duration_s) else "–")),
            ("run directory", each(lambda r: r.directory)),
        ]
        return [
            self.table(
                "headline",
                "The runs side by side",
                "Validation accuracy of the pretrained model with its new head (epoch 0) and at each run's last "
                "epoch; the change of the pretrained layers and of the new head is that of all their parameters "
                "together at the last epoch.",
                rows,
                numeric=True,
            )
        ]

    # ------------------------------------------------------------------ sections

    def configuration(self) -> Section:
        sec = Section(
            "configuration",
            "Configuration",
            "Look at what was set up differently: that is what the differences below can be put down to.",
        )
        differ, same = self.cf.settings()
        if not differ:
            sec.blocks.append(Note(f"The runs' configurations are identical ({same} settings)."))
        else:
            rows = [(k, [STRATEGIES.get(v, v) if k == "strategy" else v for v in values]) for k, values in differ]
            sec.blocks.append(
                self.table(
                    "settings",
                    "What differs",
                    f"Only the settings whose values differ; {same} other setting(s) are the same in every run "
                    "(each run's report lists them all). –: the run has no such setting.",
                    rows,
                    numeric=False,
                )
            )
        return sec

    def training(self) -> Section:
        cf, profile = self.cf, self.profile
        sec = Section(
            "training",
            "Training",
            "Look for the run that gets highest and stays there, and for curves that part ways: one run "
            "overfitting, or keeping less of what the pretrained model knew.",
        )
        df = cf.per_epoch
        if df.empty:
            sec.blocks.append(Note("None of the runs recorded a per-epoch number."))
            return sec
        metrics = list(dict.fromkeys(df["metric"]))
        sec.blocks.append(
            self.chart(
                "curves",
                "Every per-epoch measure, runs overlaid",
                f"{len(metrics)} measure(s) the runs recorded, one panel each with its own scale (accuracies in %); "
                "epoch 0 is the pretrained model with its new head. A run without a measure has no line in its "
                "panel. Gaps are values that were not finite.",
                cc.metric_curves(df, self.labels, profile.full, profile.small_h),
            )
        )
        return sec

    def _rows(self, df: pd.DataFrame, key: str = "layer") -> tuple[pd.DataFrame, list[str], str]:
        """The layers of a per-layer frame in order; only convolution and linear layers when there are too many."""
        layers = list(dict.fromkeys(df.sort_values("order", kind="stable")[key]))
        if len(layers) <= self.profile.heatmap_rows or "matrix" not in df:
            return df, layers, ""
        kept = df[df["matrix"].astype(bool)]
        keep = list(dict.fromkeys(kept.sort_values("order", kind="stable")[key]))
        return (
            kept,
            keep,
            f" Only convolution and linear layers are shown ({len(layers) - len(keep)} normalisation and other "
            "small layers left out).",
        )

    def parameters(self) -> Section:
        cf, profile = self.cf, self.profile
        sec = Section(
            "parameters",
            "Parameters",
            "Look for where each run changed the pretrained model: which layers moved, how far, and how hard "
            "each layer was pushed at each step.",
        )
        sec.blocks.append(
            self.chart(
                "change-total",
                "How much of the model each run changed",
                "‖Wₜ−W₀‖/‖W₀‖ of all pretrained parameters together, and of all new (head) parameters together "
                "(compared with their initialisation), at each run's last epoch.",
                cc.run_bars(cf.headline, self.labels, profile.full),
            )
        )
        w = cf.layers_last
        if w.empty:
            sec.blocks.append(Note("None of the runs recorded weight statistics after epoch 0."))
            return sec
        w = w[w["rel_change"].apply(fmt.finite)]
        kept, layers, note = self._rows(w)
        matrix_of = dict(zip(w["layer"], w["matrix"]))
        sec.blocks.append(
            self.chart(
                "rel-change",
                "Relative change per layer at the last epoch",
                "‖Wₜ−W₀‖/‖W₀‖ of each layer at each run's last epoch (log scale; new layers against their "
                "initialisation); within a layer's row each run has its own line. Open circles at the left end: "
                f"the layer did not change in that run (frozen).{note}",
                cc.layer_dots(
                    kept,
                    "rel_change",
                    layers,
                    self.labels,
                    profile.heat,
                    x_title="‖Wₜ−W₀‖ / ‖W₀‖ at the last epoch (log scale)",
                    log=True,
                    tooltip_title="relative change",
                    tooltip_format=".3~%",
                    zero_note=True,
                ),
            )
        )
        for df, value, id, title, caption, x_title, band, fmt_ in (
            (
                cf.update_ratio,
                "update_ratio",
                "update-ratio",
                "Update-to-weight ratio per layer",
                f"{UPDATE_RATIO_DEF}: the median over each run's trained epochs (log scale). The green band is "
                f"{thresholds.band_text()}; frozen layers have none.",
                "‖update‖ / ‖W‖ of one step, median over epochs (log scale)",
                thresholds.UPDATE_RATIO_BAND,
                ".3e",
            ),
            (
                cf.grad_norm,
                "norm",
                "grad-norm",
                "Gradient norm per layer",
                "The layer's gradient L2 norm over the sampled steps, the median over each run's trained epochs "
                "(log scale); frozen layers have none.",
                "gradient L2 norm, median over epochs (log scale)",
                None,
                ".3e",
            ),
        ):
            if df.empty:
                sec.blocks.append(Note(f"No run recorded a {title.lower().split(' per')[0]}."))
                continue
            df = df.assign(matrix=df["layer"].map(matrix_of).fillna(True))
            kept, layers, note = self._rows(df)
            sec.blocks.append(
                self.chart(
                    id,
                    title,
                    caption + note,
                    cc.layer_dots(
                        kept,
                        value,
                        layers,
                        self.labels,
                        profile.heat,
                        x_title=x_title,
                        log=True,
                        tooltip_title=title.split(" per")[0].lower(),
                        tooltip_format=fmt_,
                        band=band,
                    ),
                )
            )
        s = cf.spectrum
        if not s.empty:
            missing = [m.label for m in cf.members if m.info.spectrum is None]
            layers = list(dict.fromkeys(s["layer"]))
            hi = max(2.0, float(s["rank"].max()))
            sec.blocks.append(
                self.chart(
                    "spectrum",
                    "Effective rank of the change per weight matrix",
                    f"{RANK_DEFINITION}. Low: the run changed that matrix along few directions. Matrices a run left "
                    "unchanged have no dot." + (f" Not measured in: {', '.join(missing)}." if missing else ""),
                    cc.layer_dots(
                        s,
                        "effective_rank",
                        layers,
                        self.labels,
                        profile.heat,
                        x_title="effective rank of ΔW at the last epoch (log scale)",
                        log=True,
                        tooltip_title="effective rank",
                        tooltip_format=".3~f",
                        domain=[1.0, hi * 1.2],
                        axis_format="~s",
                    ),
                )
            )
        return sec

    def features(self) -> Section:
        cf, profile = self.cf, self.profile
        sec = Section(
            "features",
            "Features",
            "Look for the layers where one run's representation left the pretrained one (low CKA) while "
            "another's stayed close.",
        )
        c = cf.cka_last
        c = c[c["cka"].apply(fmt.finite)] if not c.empty else c
        if c.empty:
            sec.blocks.append(Note("None of the runs recorded CKA after epoch 0."))
            return sec
        layers = list(dict.fromkeys(c["layer"]))
        lo = max(0.0, math.floor((float(c["cka"].min()) - 0.05) * 10) / 10)  # zoomed to the values, from a tenth
        sec.blocks.append(
            self.chart(
                "cka",
                "Similarity to the pretrained representation per layer (linear CKA)",
                f"Linear CKA between each probed layer's representation at each run's last epoch and in its "
                f"pretrained model ({CKA_POOLING}): 1 is unchanged. A new head has no pretrained representation: "
                "its dots show how far it moved from its initialisation."
                + (f" The axis starts at {lo:g}." if lo > 0 else ""),
                cc.layer_dots(
                    c,
                    "cka",
                    layers,
                    self.labels,
                    profile.heat,
                    x_title="linear CKA to the pretrained model at the last epoch",
                    log=False,
                    tooltip_title="linear CKA",
                    tooltip_format=".3f",
                    domain=[lo, 1.0],
                ),
            )
        )
        return sec

    def appendix(self) -> Section:
        sec = Section("appendix", "Appendix", "Where each run came from, to find and reproduce it.")
        rows = []
        for what, get in (
            ("run name", lambda m: m.info.name),
            ("directory", lambda m: str(m.run.root)),
            ("started", lambda m: m.info.started_at),
            ("device", lambda m: m.info.environment.device + f", {m.info.environment.precision}"),
            ("sftreport (recording)", lambda m: m.info.environment.sftreport),
            ("torch", lambda m: m.info.environment.torch or "–"),
            ("git commit", lambda m: m.info.environment.git_commit or "–"),
            ("schema version", lambda m: str(m.info.schema_version)),
        ):
            rows.append((what, [get(m) for m in self.cf.members]))
        sec.blocks.append(self.table("runs", "The runs", "As recorded in each run.json.", rows, numeric=False))
        sec.blocks.append(
            KeyValues(
                "renderer",
                "This comparison",
                [("sftreport", sftreport.__version__), ("schema version", str(SCHEMA_VERSION))],
            )
        )
        return sec
