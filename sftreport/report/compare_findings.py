"""Comparison findings: explicit rules over several runs' frames (compare_frames.py), each stating its evidence.

Each rule is `rule(cf: CompareFrames) -> list[Finding]` (empty when it does not apply); its thresholds live in
thresholds.py. A number exactly on a threshold (in decimal: 97 % and 96 % are one point apart although their
floating-point difference is a hair more) counts as not past it: comparisons allow 1e-9 of rounding.
Accuracies are compared only between runs on the same dataset (with --allow-mixed they may differ).
"""

from __future__ import annotations

from sftreport.report import fmt
from sftreport.report.compare_frames import CompareFrames
from sftreport.report.findings import _join
from sftreport.report.model import SEVERITY_ORDER, Finding
from sftreport.report.thresholds import COMPARE_ACC_SAME, COMPARE_CHANGE_FACTOR, COMPARE_CKA_GAP

ROUNDING = 1e-9


def _points(fraction: float) -> str:
    return f"{fraction * 100:g} point" + ("" if fraction == 0.01 else "s")


def _comparable(cf: CompareFrames) -> bool:
    """Whether the runs' accuracies measure the same thing: one dataset with the same classes."""
    sets = {(m.info.dataset.name, tuple(m.info.dataset.classes)) for m in cf.members}
    return len(sets) == 1


def _finals(cf: CompareFrames) -> list[tuple[str, float]]:
    h = cf.headline
    return [(r.run, r.acc_after) for r in h.itertuples() if fmt.finite(r.acc_after)]


def accuracy_rule(cf: CompareFrames) -> list[Finding]:
    """The run that ended with the highest validation accuracy, and the runs more than COMPARE_ACC_SAME below
    it. Runs within that of each other ended with the same accuracy: no finding."""
    finals = _finals(cf)
    if len(finals) < 2 or not _comparable(cf):
        return []
    top_run, top = max(finals, key=lambda x: x[1])  # the first of equal ones
    below = [(run, acc) for run, acc in finals if top - acc > COMPARE_ACC_SAME + ROUNDING]
    if not below:
        return []
    below.sort(key=lambda x: x[1], reverse=True)
    gaps = [f"{run} ({fmt.pct(acc)}, {fmt.points(acc - top)})" for run, acc in below]
    h = cf.headline.set_index("run")
    all_txt = "; ".join(
        f"{run}: {fmt.pct(acc)} at epoch {int(h.loc[run, 'last_epoch'])}"
        + (
            f", best {fmt.pct(h.loc[run, 'best_acc'])} at epoch {int(h.loc[run, 'best_epoch'])}"
            if fmt.finite(h.loc[run, "best_acc"]) and h.loc[run, "best_acc"] > acc
            else ""
        )
        for run, acc in finals
    )
    return [
        Finding(
            "compare_accuracy",
            "info",
            f"{top_run} ended with the highest validation accuracy ({fmt.pct(top)}), "
            f"{fmt.points(top - below[0][1])[1:]} above {below[0][0]}"
            + (f" and more above {len(below) - 1} other run(s)" if len(below) > 1 else ""),
            f"Validation accuracy at each run's last epoch: {all_txt}. More than {_points(COMPARE_ACC_SAME)} "
            f"below {top_run}: {_join(gaps)}.",
            "training",
        )
    ]


def less_change_rule(cf: CompareFrames) -> list[Finding]:
    """A run that ended with the same validation accuracy (within COMPARE_ACC_SAME) as another while changing the
    pretrained layers (the backbone, ‖ΔW‖/‖W₀‖ of all of them together) at least COMPARE_CHANGE_FACTOR× less:
    named against the run of the same accuracy that changed them most."""
    if not _comparable(cf):
        return []
    h = cf.headline
    rows = [r for r in h.itertuples() if fmt.finite(r.acc_after) and fmt.finite(r.backbone_change)]
    out = []
    for b in rows:
        same = [a for a in rows if a.run != b.run and abs(a.acc_after - b.acc_after) <= COMPARE_ACC_SAME + ROUNDING]
        if not same:
            continue
        a = max(same, key=lambda r: r.backbone_change)
        if a.backbone_change <= 0:
            continue
        if b.backbone_change == 0:
            how = "without changing the pretrained layers at all"
        elif a.backbone_change >= COMPARE_CHANGE_FACTOR * b.backbone_change - ROUNDING:
            how = f"while changing the pretrained layers {a.backbone_change / b.backbone_change:.1f}× less"
        else:
            continue
        out.append(
            Finding(
                "compare_less_change",
                "good",
                f"{b.run} reached the same validation accuracy as {a.run} ({fmt.pct(b.acc_after)} vs "
                f"{fmt.pct(a.acc_after)}) {how}",
                f"Relative change of all pretrained layers together, ‖Wₜ−W₀‖/‖W₀‖ at the last epoch: {b.run} "
                f"{fmt.change(b.backbone_change)}, {a.run} {fmt.change(a.backbone_change)}. Accuracies within "
                f"{_points(COMPARE_ACC_SAME)} count as the same, and a change counts as less from "
                f"{COMPARE_CHANGE_FACTOR:g}× on. Changing less of the pretrained model tends to keep more of what it "
                "learned before (its features, its source task).",
                "parameters",
            )
        )
    return out


def feature_drift_rule(cf: CompareFrames) -> list[Finding]:
    """The pretrained layer whose representation (linear CKA to its pretrained model) one run kept and another
    changed most: the largest gap between two runs, when it is at least COMPARE_CKA_GAP."""
    c = cf.cka_last
    if c.empty:
        return []
    c = c[~c["new"] & c["cka"].apply(fmt.finite)]
    best: tuple[float, str, str, str] | None = None  # gap, layer, drifted run, kept run
    for layer, g in c.groupby("layer", sort=False):
        if g["run"].nunique() < 2:
            continue
        low = g.loc[g["cka"].idxmin()]
        high = g.loc[g["cka"].idxmax()]
        gap = float(high["cka"] - low["cka"])
        if best is None or gap > best[0] + ROUNDING:
            best = (gap, str(layer), str(low["run"]), str(high["run"]))
    if best is None or best[0] < COMPARE_CKA_GAP - ROUNDING:
        return []
    gap, layer, drifted, kept = best
    g = c[c["layer"] == layer].set_index("run")["cka"]
    return [
        Finding(
            "compare_feature_drift",
            "info",
            f"{drifted}'s features in {layer} drifted from the pretrained ones (CKA {g[drifted]:.2f}) while "
            f"{kept}'s stayed closer ({g[kept]:.2f})",
            f"Linear CKA between {layer}'s representation at each run's last epoch and in its pretrained model "
            f"(1: unchanged): " + ", ".join(f"{run} {v:.3f}" for run, v in g.items()) + f". The largest gap between "
            f"two runs over the pretrained layers, {gap:.2f}, is at least {COMPARE_CKA_GAP:g}.",
            "features",
        )
    ]


def mixed_rule(cf: CompareFrames) -> list[Finding]:
    """Runs of different models or datasets (compared with --allow-mixed): said once, first."""
    models = list(dict.fromkeys(m.info.model for m in cf.members))
    data = list(dict.fromkeys(f"{m.info.dataset.name} ({len(m.info.dataset.classes)} classes)" for m in cf.members))
    parts = []
    if len(models) > 1:
        parts.append(f"models {', '.join(models)}")
    if len(data) > 1 or not _comparable(cf):
        parts.append(f"datasets {', '.join(data)}")
    if not parts:
        return []
    return [
        Finding(
            "compare_mixed",
            "warning",
            "The runs are of different " + " and ".join(p.split(" ")[0] for p in parts),
            f"Compared as asked (--allow-mixed): {'; '.join(parts)}. "
            + (
                "Accuracies measure different tasks and are not compared by the rules; "
                if len(data) > 1 or not _comparable(cf)
                else ""
            )
            + "layers are matched by name only.",
            None,
        )
    ]


def probe_rule(cf: CompareFrames) -> list[Finding]:
    """Runs whose probe sets differ: their CKA and activation numbers were measured on different images."""
    probes = {tuple(m.info.probe.labels) if m.info.probe else None for m in cf.members}
    probes.discard(None)
    if len(probes) < 2:
        return []
    return [
        Finding(
            "compare_probe",
            "info",
            "The runs measured their features on different probe sets",
            "Their probe sets differ (size or classes), so CKA, activation and k-NN numbers were taken on different "
            "images; compare them with care.",
            "features",
        )
    ]


RULES = [mixed_rule, accuracy_rule, less_change_rule, feature_drift_rule, probe_rule]


def compare_findings(cf: CompareFrames) -> list[Finding]:
    out: list[Finding] = []
    for rule in RULES:
        out += rule(cf)
    return sorted(out, key=lambda x: SEVERITY_ORDER[x.severity])
