"""The diff report: what changed between two checkpoints (sftreport/diff.py measured them into a run directory of
two epochs, 0 = BASE and 1 = TUNED). Never imports torch.

Sections: weights (relative change per layer, weight histograms BASE vs TUNED, the spectrum of each weight
matrix's change), and with data: accuracy, representations (CKA of TUNED's layers to BASE's, activation
histograms), first-layer filters; the findings follow explicit rules (thresholds in thresholds.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

import sftreport
from sftreport.report import charts, fmt
from sftreport.report import compare_charts as cc
from sftreport.report.document import Document, write_documents
from sftreport.report.findings import MOVED_SHOWN, _join
from sftreport.report.frames import RunFrames
from sftreport.report.model import Block, ChartBlock, Finding, KeyValues, Medium, Note, Section
from sftreport.report.profile import PROFILES, Profile
from sftreport.report.render import altair_unchecked, check_outputs, gc_paused
from sftreport.report.sections import CKA_POOLING, _Builder
from sftreport.report.spectrum import spectrum_blocks, spectrum_frame
from sftreport.report.thresholds import ACC_CHANGE, DIFF_LOW_RANK_ENERGY, DIFF_LOW_RANK_MIN, OVERWRITTEN
from sftreport.schema import SCHEMA_VERSION, Evaluation
from sftreport.store import Run, read_run

LABEL = "TUNED vs BASE"  # the one "run" of the per-layer dot charts


def render_diff(run_dir: Path, outs: list[Path]) -> list[Path]:
    outs = [Path(o) for o in outs]
    kinds = check_outputs(outs)
    run = read_run(run_dir)
    with gc_paused(), altair_unchecked():
        frames = RunFrames(run)
        return write_documents(
            lambda medium, on_chart: build_diff(run, medium, frames, on_chart), list(zip(outs, kinds))
        )


def described(run: Run) -> dict:
    return dict(run.info.config.get("diff") or {})


def build_diff(
    run: Run, medium: Medium, frames: RunFrames | None = None, on_chart: Callable[[ChartBlock], None] | None = None
) -> Document:
    frames = frames or RunFrames(run)
    b = _DiffBuilder(run, frames, PROFILES[medium], on_chart)
    d = described(run)
    base, tuned = Path(d.get("base", "BASE")).name, Path(d.get("tuned", "TUNED")).name
    sections = [b.weights()]
    if frames.has_val or not frames.cka.empty:
        sections.append(b.data())
    sections.append(b.appendix())
    return Document(
        kind="diff",
        medium=medium,
        title=f"What changed from {base} to {tuned}",
        kicker="sftreport · the difference between two checkpoints",
        subtitle=f"{run.info.model} · BASE {d.get('base', '?')} → TUNED {d.get('tuned', '?')}"
        + (f" · measured on {run.info.dataset.name}" if frames.has_val else ""),
        lead="What fine-tuning changed in the weights (how far each layer moved, and along how many directions) and, "
        "with data, in what the model computes.",
        summary=[b.diff_summary()],
        findings=diff_findings(run, frames),
        findings_lead="Conclusions drawn from the two checkpoints by explicit rules; each states its evidence.",
        sections=sections,
        schema_version=SCHEMA_VERSION,
        sftreport_version=sftreport.__version__,
    )


# --------------------------------------------------------------------------- findings


def _last(frames: RunFrames) -> pd.DataFrame:
    w = frames.layer_weights
    return w[w["epoch"] == 1] if not w.empty else w


def diff_findings(run: Run, frames: RunFrames) -> list[Finding]:
    out: list[Finding] = []
    for rule in (nonfinite_rule, identical_rule, moved_rule, low_rank_rule, accuracy_rule, representation_rule):
        out += rule(run, frames)
    return out


def nonfinite_rule(run: Run, frames: RunFrames) -> list[Finding]:
    w = _last(frames)
    bad = w[~w["rel_change"].apply(fmt.finite) | ~w["finite"]] if not w.empty else w
    if bad.empty:
        return []
    return [
        Finding(
            "diff_nonfinite",
            "alert",
            f"TUNED holds NaN or infinite weights in {len(bad)} layer(s)",
            f"Layers: {_join(list(bad['layer']))}. A checkpoint of a diverged fine-tune: its other numbers mean little.",
            "weights",
        )
    ]


def identical_rule(run: Run, frames: RunFrames) -> list[Finding]:
    replaced = set(described(run).get("replaced", []))
    last = next((e for e in frames.epochs if e.epoch == 1), None)
    if last is None or not last.weights:
        return []
    compared = [x for x in last.weights if x.name not in replaced]
    if not compared or any(x.diff_sq != 0 for x in compared):
        return []
    return [
        Finding(
            "diff_identical",
            "info",
            "The two checkpoints hold the same weights",
            f"Every one of the {len(compared)} compared parameter tensors is equal in BASE and TUNED: ‖ΔW‖ = 0.",
            "weights",
        )
    ]


def moved_rule(run: Run, frames: RunFrames) -> list[Finding]:
    """The layers that moved most and least from BASE; a warning when some moved more than their own norm."""
    w = _last(frames)
    replaced_mods = {n.rpartition(".")[0] for n in described(run).get("replaced", [])}
    if w.empty:
        return []
    w = w[~w["module"].isin(replaced_mods) & w["rel_change"].apply(fmt.finite)]
    moved = w[w["rel_change"] > 0]
    if moved.empty:
        return []
    ranked = moved.sort_values("rel_change", ascending=False)
    most = [f"{r.layer} ({fmt.change(r.rel_change)})" for r in ranked.head(MOVED_SHOWN).itertuples()]
    least = [f"{r.layer} ({fmt.change(r.rel_change)})" for r in ranked.tail(MOVED_SHOWN).iloc[::-1].itertuples()]
    still = len(w) - len(moved)
    evidence = (
        f"‖W_TUNED − W_BASE‖ / ‖W_BASE‖ per layer: most moved {', '.join(most)}; least moved {', '.join(least)}; "
        f"{len(moved)} of {len(w)} layers changed" + (f", {still} are equal in both" if still else "") + "."
    )
    top = ranked.iloc[0]
    lost = ranked[ranked["rel_change"] > OVERWRITTEN]
    if not lost.empty:
        return [
            Finding(
                "diff_moved",
                "warning",
                f"{len(lost)} layer(s) moved further than their own norm, most {top.layer} ({fmt.change(top.rel_change)})",
                f"Layers with ‖ΔW‖/‖W_BASE‖ > {OVERWRITTEN:g}: "
                + _join([f"{r.layer} ({fmt.change(r.rel_change)})" for r in lost.itertuples()])
                + ": what BASE had there is mostly gone. "
                + evidence,
                "weights",
            )
        ]
    return [
        Finding(
            "diff_moved",
            "info",
            f"The layer that moved most: {top.layer} ({fmt.change(top.rel_change)} of its norm); least: "
            f"{ranked.iloc[-1].layer} ({fmt.change(ranked.iloc[-1].rel_change)})",
            evidence,
            "weights",
        )
    ]


def low_rank_rule(run: Run, frames: RunFrames) -> list[Finding]:
    """Matrices with room for more than DIFF_LOW_RANK_MIN directions whose change holds at least
    DIFF_LOW_RANK_ENERGY of its energy in its top directions (a low-rank change, as LoRA makes)."""
    spec = run.info.spectrum
    if spec is None:
        return []
    df = spectrum_frame(spec, skip=set(described(run).get("replaced", [])))
    df = df[df["rank"] > DIFF_LOW_RANK_MIN]
    if df.empty:
        return []
    low = df[df["energy_k"] >= DIFF_LOW_RANK_ENERGY]
    if low.empty:
        return []
    items = [
        f"{r.layer} ({fmt.pct(r.energy_k)}, effective rank {r.effective_rank:.1f} of {r.rank})"
        for r in low.itertuples()
    ]
    every = len(low) == len(df)
    return [
        Finding(
            "diff_low_rank",
            "info",
            f"{'Every changed' if every else f'{len(low)} of {len(df)} changed'} weight matri"
            f"{'x' if len(df) == 1 and every else 'ces'} changed along few directions: at least "
            f"{fmt.pct(DIFF_LOW_RANK_ENERGY, 0)} of the change in the top {spec.top}",
            f"Share of ‖ΔW‖² in the top {spec.top} singular directions, for matrices with room for more than "
            f"{DIFF_LOW_RANK_MIN} directions: {_join(items)}. A low-rank change is what LoRA makes, and what a "
            "LoRA of that rank could have made.",
            "weights",
        )
    ]


def accuracy_rule(run: Run, frames: RunFrames) -> list[Finding]:
    evals = {e.epoch: e.val for e in frames.epochs if e.val is not None}
    after = evals.get(1)
    if after is None:
        return []
    before = evals.get(0)
    on = f"on {fmt.integer(after.count)} validation images of {run.info.dataset.name}"
    if before is None:
        return [
            Finding(
                "diff_accuracy",
                "info",
                f"TUNED's validation accuracy: {fmt.pct(after.accuracy)}",
                f"{fmt.pct(after.accuracy)} {on}. BASE has another head (replaced), so it has no accuracy on these classes.",
                "data",
            )
        ]
    gain = after.accuracy - before.accuracy
    change = f"({fmt.pct(before.accuracy)} → {fmt.pct(after.accuracy)})"
    if gain > ACC_CHANGE:
        severity, title = "good", f"TUNED gained {fmt.points(gain)[1:]} of validation accuracy {change}"
    elif gain < -ACC_CHANGE:
        severity, title = "warning", f"TUNED lost {fmt.points(-gain)[1:]} of validation accuracy {change}"
    else:
        severity, title = "info", f"TUNED kept BASE's validation accuracy {change}"
    return [
        Finding(
            "diff_accuracy",
            severity,  # type: ignore[arg-type]
            title,
            f"BASE {fmt.pct(before.accuracy)}, TUNED {fmt.pct(after.accuracy)} {on}; changes within "
            f"{ACC_CHANGE * 100:g} points count as none.",
            "data",
        )
    ]


def representation_rule(run: Run, frames: RunFrames) -> list[Finding]:
    c = frames.cka
    if c.empty:
        return []
    replaced_mods = {n.rpartition(".")[0] for n in described(run).get("replaced", [])}
    c = c[(c["epoch"] == 1) & c["cka"].apply(fmt.finite) & ~c["layer"].map(lambda x: x.split("#")[0] in replaced_mods)]
    if c.empty:
        return []
    low, high = c.loc[c["cka"].idxmin()], c.loc[c["cka"].idxmax()]
    return [
        Finding(
            "diff_representation",
            "info",
            f"TUNED's representation differs most from BASE's in {low['layer']} (CKA {low['cka']:.2f})",
            f"Linear CKA between each probed layer's representation in TUNED and in BASE on the probe images: lowest "
            f"{low['layer']} ({low['cka']:.3f}), highest {high['layer']} ({high['cka']:.3f}); 1 means unchanged.",
            "data",
        )
    ]


# --------------------------------------------------------------------------- sections


class _DiffBuilder(_Builder):
    """The run report's builder (its charts, images and helpers) with the diff's own sections."""

    def __init__(self, run: Run, frames: RunFrames, profile: Profile, on_chart):
        super().__init__(run, frames, profile, on_chart)
        self.d = described(run)
        self.replaced_names = list(self.d.get("replaced", []))

    def diff_summary(self) -> KeyValues:
        frames, info, d = self.frames, self.info, self.d
        last = next((e for e in frames.epochs if e.epoch == 1), None)
        weights = last.weights if last else []
        compared = [w for w in weights if w.name not in self.replaced_names]
        changed = [w for w in compared if w.diff_sq != 0]
        diff = sum(w.diff_sq for w in compared)
        ref = sum(w.ref_sq for w in compared)
        params = sum(w.stats.count for w in compared)
        items = [
            ("BASE", str(d.get("base", "–"))),
            ("TUNED", str(d.get("tuned", "–"))),
            ("Model", info.model),
            (
                "Compared",
                f"{len(compared)} parameter tensors ({fmt.integer(params)} values); {len(changed)} of them changed",
            ),
            ("All of them together", f"‖ΔW‖/‖W_BASE‖ = {fmt.change(math.sqrt(diff / ref) if ref else math.nan)}"),
        ]
        if self.replaced_names:
            items.append(
                (
                    "Replaced head",
                    f"{', '.join(self.replaced_names)}: {d.get('base_classes')} outputs in BASE, {d.get('tuned_classes')} in "
                    "TUNED — not compared (there is nothing of that shape in BASE)",
                )
            )
        evals = {e.epoch: e.val for e in frames.epochs if isinstance(e.val, Evaluation)}  # classifiers
        if 1 in evals:
            before = f"BASE {fmt.pct(evals[0].accuracy)} → " if 0 in evals else ""
            items.append(
                (
                    "Validation accuracy",
                    f"{before}TUNED {fmt.pct(evals[1].accuracy)} on {fmt.integer(evals[1].count)} images of "
                    f"{info.dataset.name}",
                )
            )
        else:
            items.append(("Data", "none given (--dataset adds accuracy, activations and CKA)"))
        return KeyValues("diff-summary", "The two checkpoints", items)

    def weights(self) -> Section:
        frames, profile = self.frames, self.profile
        sec = Section(
            "weights",
            "Weights",
            "Look for the layers that moved most from BASE, and for whether each layer's change spreads over many "
            "directions or few.",
        )
        w = frames.layer_weights
        w = w[(w["epoch"] == 1) & ~w["module"].isin({n.rpartition(".")[0] for n in self.replaced_names})]
        if w.empty:
            sec.blocks.append(Note("No parameter tensor could be compared."))
            return sec
        df = w.assign(run=LABEL)
        layers, note = self._rows(df)
        df = df[df["layer"].isin(layers)]
        sec.blocks.append(
            self.chart(
                "rel-change",
                "Relative change per layer",
                "‖W_TUNED − W_BASE‖ / ‖W_BASE‖ of each layer's parameters together, in network order (log scale). "
                f"Open circles at the left end: the layer is the same in both checkpoints.{note}",
                cc.layer_dots(
                    df,
                    "rel_change",
                    layers,
                    [LABEL],
                    profile.heat,
                    x_title="‖W_TUNED − W_BASE‖ / ‖W_BASE‖ (log scale)",
                    log=True,
                    tooltip_title="relative change",
                    tooltip_format=".3~%",
                    zero_note=True,
                ),
            )
        )
        sec.blocks.append(self.histograms())
        sec.blocks += spectrum_blocks(
            self.info.spectrum,
            self.chart,
            profile.full,
            order=frames.module_order,
            skip=set(self.replaced_names),
            when="from BASE to TUNED",
            missing="The spectrum of the change was not measured.",
            table=True,
        )
        return sec

    def _rows(self, df: pd.DataFrame) -> tuple[list[str], str]:
        layers = self.frames.layers_in_order(df)
        if len(layers) <= self.profile.heatmap_rows:
            return layers, ""
        kept = self.frames.layers_in_order(df[df["matrix"]])
        return kept, f" Only convolution and linear layers are shown ({len(layers) - len(kept)} others left out)."

    def histograms(self) -> Block:
        frames, profile = self.frames, self.profile
        chosen = [n for n in frames.histogram_tensors(profile.weight_hists) if n not in self.replaced_names]
        if not chosen:
            return Note("No weight histograms were recorded.")
        return self.chart(
            "weight-hist",
            "Weight histograms, BASE vs TUNED",
            "Distribution of the values of chosen weight tensors (the first, middle and last layer and the one that "
            "moved most): grey area BASE, blue line TUNED. Bins are fixed per tensor from BASE's range widened by "
            "10 %; red bars at the edges hold TUNED's values outside it.",
            charts.histograms(
                frames.weight_hist(chosen, [0, 1]),
                "tensor",
                chosen,
                width=profile.panel,
                columns=3,
                first_epoch=0,
                color_epochs=False,
                x_title="weight value",
                start_label="BASE",
            ),
        )

    def data(self) -> Section:
        frames, profile = self.frames, self.profile
        sec = Section(
            "data",
            f"On {self.info.dataset.name}",
            "Look for the classes fine-tuning helped or hurt, and for the layers whose representation of the same "
            "images changed most.",
        )
        evals = {e.epoch: e.val for e in frames.epochs if isinstance(e.val, Evaluation)}  # classifiers
        if 1 in evals:
            rows = []
            for epoch, which in ((0, "BASE"), (1, "TUNED")):
                if epoch in evals:
                    for i, a in enumerate(evals[epoch].per_class_accuracy):
                        rows.append(
                            {
                                "class": frames.class_name(i),
                                "ci": i,
                                "epoch": epoch,
                                "which": which,
                                "accuracy": math.nan if a is None else a,
                            }
                        )
            sec.blocks.append(
                self.chart(
                    "per-class",
                    "Per-class validation accuracy" + (", BASE vs TUNED" if 0 in evals else " of TUNED"),
                    "Validation accuracy of each class"
                    + (" for BASE (grey) and TUNED (blue)." if 0 in evals else " (BASE's head was replaced)."),
                    charts.per_class_accuracy(pd.DataFrame(rows), frames.classes, profile.full - 120),
                )
            )
        c = frames.cka
        c = c[(c["epoch"] == 1) & c["cka"].apply(fmt.finite)] if not c.empty else c
        if not c.empty:
            layers = frames.layers_in_order(c)
            lo = max(0.0, math.floor((float(c["cka"].min()) - 0.05) * 10) / 10)
            sec.blocks.append(
                self.chart(
                    "cka",
                    "Similarity of TUNED's representation to BASE's (linear CKA)",
                    f"Linear CKA per probed layer between TUNED and BASE ({CKA_POOLING}): 1 is unchanged."
                    + (f" The axis starts at {lo:g}." if lo > 0 else ""),
                    cc.layer_dots(
                        c.assign(run=LABEL),
                        "cka",
                        layers,
                        [LABEL],
                        profile.heat,
                        x_title="linear CKA, TUNED to BASE",
                        log=False,
                        tooltip_title="linear CKA",
                        tooltip_format=".3f",
                        domain=[lo, 1.0],
                    ),
                )
            )
        a = frames.activations
        if not a.empty:
            pick = [x for x in frames.layers_in_order(a)]
            step = max(1, len(pick) // max(1, profile.activation_hists))
            pick = pick[::step][: profile.activation_hists]
            df = frames.activation_hist(pick, [0, 1])
            if not df.empty:
                sec.blocks.append(
                    self.chart(
                        "act-hist",
                        "Activation histograms, BASE vs TUNED",
                        "Distribution of output values of chosen layers on the probe images: grey area BASE, blue "
                        "line TUNED (square-root scale). Bins are fixed per layer from BASE's range widened by 10 %.",
                        charts.histograms(
                            df,
                            "layer",
                            pick,
                            width=profile.panel,
                            columns=3,
                            first_epoch=0,
                            color_epochs=False,
                            x_title="activation value",
                            sqrt_y=True,
                            start_label="BASE",
                        ),
                    )
                )
        sec.blocks.append(self.filters())
        return sec

    def epoch_label(self, epoch: int) -> str:  # the filter images' headings
        return "BASE" if epoch == 0 else "TUNED"

    def appendix(self) -> Section:
        env = self.info.environment
        sec = Section("appendix", "Appendix", "How the two checkpoints were compared.")
        sec.blocks.append(
            KeyValues(
                "environment",
                "Environment",
                [
                    ("Device", env.device + (f" ({env.device_name})" if env.device_name else "")),
                    ("torch", env.torch or "–"),
                    ("sftreport", sftreport.__version__),
                    ("Schema version", str(SCHEMA_VERSION)),
                ],
            )
        )
        spec = self.info.spectrum
        if spec is not None:
            measured = [m for m in spec.layers if m.singular_values]
            sec.blocks.append(
                KeyValues(
                    "spectrum-method",
                    "How the spectrum was computed",
                    [
                        ("Singular values kept", f"{spec.top} per matrix"),
                        ("Full spectrum", f"{sum(m.exact for m in measured)} matrices (torch.linalg.svdvals)"),
                        (
                            "Randomized",
                            f"{sum(not m.exact for m in measured)} larger matrices (torch.svd_lowrank: top values; "
                            "effective rank estimated)",
                        ),
                    ],
                )
            )
        return sec
