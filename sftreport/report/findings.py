"""Findings: explicit rules over the run's frames, each stating its evidence.

Each rule is a function `rule(frames) -> list[Finding]` (empty when it does not apply). Its thresholds
live in thresholds.py, shared with the charts that draw them, and the evidence states the threshold.
"""

from __future__ import annotations

from statistics import median

from sftreport.report import fmt
from sftreport.report.findings_dense import confused_classes_rule, loose_boxes_rule, weak_class_rule
from sftreport.report.frames import RunFrames
from sftreport.report.model import SEVERITY_ORDER, Finding, Severity
from sftreport.report.thresholds import (
    ACC_CHANGE,
    DEAD_GROWTH,
    EXPLODE_FACTOR,
    FAR_FACTOR,
    FORGETTING_DROP,
    OVERFIT_RISE,
    OVERFIT_TRAIN_FALL,
    OVERWRITTEN,
    PEAK_DROP,
    UPDATE_RATIO_BAND,
    VAL_LOSS_RISE,
    VANISHED,
)

MOVED_SHOWN = 3  # layers named among the most and the least moved


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _join(items: list[str], limit: int = 4) -> str:
    more = len(items) - limit
    shown = items[:limit]
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- status and accuracy


def status_rule(frames: RunFrames) -> list[Finding]:
    info = frames.info
    done = frames.last.epoch if frames.last else 0
    planned = f"of {info.planned_epochs} planned " if info.planned_epochs else ""
    detail = f" ({info.status_detail})" if info.status_detail else ""
    if info.status == "completed":
        return []
    if info.status == "diverged":
        return [
            Finding(
                "status",
                "alert",
                f"The run diverged after {_n(done, 'epoch')}",
                f"Training stopped because it diverged{detail}; {_n(done, 'epoch')} {planned}"
                f"{'was' if done == 1 else 'were'} recorded. "
                "Charts show the non-finite values as gaps.",
                "training",
            )
        ]
    if info.status == "failed":
        return [
            Finding(
                "status",
                "alert",
                "The run failed",
                f"The run ended with an error{detail}; {_n(done, 'epoch')} {planned}"
                f"{'was' if done == 1 else 'were'} recorded.",
                "training",
            )
        ]
    if info.status == "interrupted":
        return [
            Finding(
                "status",
                "warning",
                f"The run was interrupted after epoch {done}",
                f"{_n(done, 'epoch')} {planned}{'was' if done == 1 else 'were'} recorded{detail}; the report "
                "shows what was finished.",
                "training",
            )
        ]
    return [
        Finding(
            "status",
            "info",
            f"The run is still running (epoch {done} recorded)",
            f"This report shows the {_n(done, 'epoch')} {planned}recorded so far.",
            "training",
        )
    ]


def dropped_write_rule(frames: RunFrames) -> list[Finding]:
    """The run directory ended in a write that never finished (a full disk, a crash mid-append)."""
    if not frames.run.dropped:
        return []
    return [
        Finding(
            "dropped_write",
            "warning",
            "The last epoch's record was incomplete and is left out",
            f"{frames.run.dropped}. Every complete epoch is shown.",
            "training",
        )
    ]


def nonfinite_loss_rule(frames: RunFrames) -> list[Finding]:
    bad = [
        e.epoch
        for e in frames.trained
        if (e.train_loss is not None and not fmt.finite(e.train_loss))
        or (e.val is not None and e.val.task != "detect" and not fmt.finite(e.val.loss))  # a detector has none
    ]
    steps = frames.steps
    bad_steps = steps[~steps["loss"].apply(fmt.finite)] if not steps.empty else steps
    if not bad and bad_steps.empty:
        return []
    first = min(bad + [int(x) for x in bad_steps["epoch"]])
    where = f", first at optimizer step {int(bad_steps['step'].min())}" if not bad_steps.empty else ""
    return [
        Finding(
            "nonfinite_loss",
            "alert",
            f"The loss became NaN or infinite in epoch {first}",
            f"Non-finite loss values from epoch {first} on{where}; {len(bad)} epoch(s) have a non-finite "
            "training or validation loss. Lower the learning rate, or check the data and the loss.",
            "training",
        )
    ]


def accuracy_rule(frames: RunFrames) -> list[Finding]:
    first, last = frames.first_eval, frames.last_eval
    if first is None or last is None or last.epoch == first.epoch:
        return []
    v0, v1 = first.eval, last.eval
    gain = v1.accuracy - v0.accuracy
    best = frames.best_epoch()
    best_txt = ""
    if best and best[0] != last.epoch and best[1] > v1.accuracy:  # a tie with the last epoch is no news
        best_txt = (
            f" The best epoch was {best[0]} ({fmt.pct(best[1])}), {fmt.points(best[1] - v1.accuracy)} above the last."
        )
    who = frames.start_name if first.epoch == 0 else f"first recorded epoch ({first.epoch})"
    evidence = (
        f"Validation accuracy of the {who}: {fmt.pct(v0.accuracy)}; after epoch {last.epoch}: "
        f"{fmt.pct(v1.accuracy)} on {fmt.integer(v1.count)} images.{best_txt}"
    )
    if best and first.epoch < best[0] < last.epoch and best[1] - v1.accuracy > PEAK_DROP:
        return [
            Finding(
                "accuracy",
                "warning",
                f"Validation accuracy peaked at {fmt.pct(best[1])} (epoch {best[0]}) and "
                f"ended at {fmt.pct(v1.accuracy)}",
                evidence + " Keep the best epoch's checkpoint.",
                "training",
            )
        ]
    if gain > ACC_CHANGE:
        doing = "Training" if frames.from_scratch else "Fine-tuning"
        return [
            Finding(
                "accuracy",
                "good",
                f"{doing} gained {fmt.points(gain)} of validation accuracy "
                f"({fmt.pct(v0.accuracy)} → {fmt.pct(v1.accuracy)})",
                evidence,
                "training",
            )
        ]
    if gain < -ACC_CHANGE:
        return [
            Finding(
                "accuracy",
                "warning",
                f"Validation accuracy fell by {fmt.points(-gain)[1:]} "
                f"({fmt.pct(v0.accuracy)} → {fmt.pct(v1.accuracy)})",
                evidence,
                "training",
            )
        ]
    return [
        Finding(
            "accuracy", "info", f"Validation accuracy did not change ({fmt.pct(v1.accuracy)})", evidence, "training"
        )
    ]


def val_loss_rule(frames: RunFrames) -> list[Finding]:
    """Validation loss ended well above the pretrained model's (with its new head): fine-tuning made the
    model's confidence worse, whatever happened to accuracy."""
    evals = [(e.epoch, e.val.loss) for e in frames.epochs if e.val is not None and fmt.finite(e.val.loss)]
    if len(evals) < 2 or evals[0][0] != 0:
        return []
    (_, first), (last_epoch, last) = evals[0], evals[-1]
    if first <= 0 or last < first * (1 + VAL_LOSS_RISE):
        return []
    peak_epoch, peak = max(evals, key=lambda x: x[1])
    peak_txt = f", peaking at {fmt.num(peak)} in epoch {peak_epoch}" if peak_epoch != last_epoch else ""
    return [
        Finding(
            "val_loss_rise",
            "warning",
            f"Validation loss ended ×{last / first:.1f} above the {frames.start_name}'s "
            f"({fmt.num(first)} → {fmt.num(last)})",
            f"Validation loss {fmt.num(first)} at epoch 0 and {fmt.num(last)} at epoch {last_epoch}{peak_txt} (threshold "
            f"+{VAL_LOSS_RISE:.0%}). The model became confidently wrong on validation images: the learning rate may be "
            "too high, or training is unstable.",
            "training",
        )
    ]


def forgetting_rule(frames: RunFrames) -> list[Finding]:
    """The source task (what the model was pretrained for, measured with its pretrained head kept aside):
    its accuracy at the last epoch against epoch 0's. A fall of more than FORGETTING_DROP is forgetting (a
    fall exactly on the threshold is not; accuracies are ratios of image counts, so 1e-9 below one image's
    share separates "on" from "above" without rounding noise)."""
    s = frames.source
    if len(s) < 2 or int(s["epoch"].iloc[0]) != 0:
        return []
    first, last = s.iloc[0], s.iloc[-1]
    task = frames.info.source_task
    name = task.name if task is not None else "the source task"
    a0, a1 = float(first["source_accuracy"]), float(last["source_accuracy"])
    drop = a0 - a1
    low = s.loc[s["source_accuracy"].idxmin()]
    low_txt = (
        f" It was lowest at epoch {int(low['epoch'])} ({fmt.pct(low['source_accuracy'])})."
        if int(low["epoch"]) != 0 and float(low["source_accuracy"]) < a1  # a dip below where it ended
        else ""
    )
    head = (
        f"the pretrained {task.head_classes}-class head, kept aside, on {fmt.integer(task.size)} held-out images"
        if task is not None
        else "the pretrained head, kept aside"
    )
    evidence = (
        f"Accuracy on {name} of the backbone as it is at each epoch with {head}: {fmt.pct(a0)} at epoch 0, "
        f"{fmt.pct(a1)} at epoch {int(last['epoch'])} ({fmt.points(a1 - a0)}).{low_txt} Forgetting is a fall of more "
        f"than {FORGETTING_DROP * 100:g} points."
    )
    if drop - FORGETTING_DROP > 1e-9:
        return [
            Finding(
                "forgetting",
                "warning",
                f"Fine-tuning forgot part of the source task: {name} accuracy fell {fmt.points(-drop)[1:]} "
                f"({fmt.pct(a0)} → {fmt.pct(a1)})",
                evidence + " Lower learning rates for the pretrained layers (--lr-decay), lp-ft or LoRA usually "
                "keep more of it.",
                "training",
            )
        ]
    return [
        Finding(
            "forgetting",
            "good",
            f"The source task was kept: {name} accuracy {fmt.pct(a0)} → {fmt.pct(a1)}",
            evidence,
            "training",
        )
    ]


def overfitting_rule(frames: RunFrames) -> list[Finding]:
    t = frames.epoch_table
    t = t[(t["epoch"] > 0) & t["val_loss"].apply(fmt.finite) & t["train_loss"].apply(fmt.finite)]
    if len(t) < 2:
        return []
    i_min = t["val_loss"].idxmin()
    m = t.loc[i_min]
    lastrow = t.iloc[-1]
    if int(m["epoch"]) == int(lastrow["epoch"]):
        return []
    rise = lastrow["val_loss"] / m["val_loss"] - 1 if m["val_loss"] > 0 else 0.0
    fall = 1 - lastrow["train_loss"] / m["train_loss"] if m["train_loss"] > 0 else 0.0
    if rise < OVERFIT_RISE or fall < OVERFIT_TRAIN_FALL:
        return []
    after = t[t["epoch"] > m["epoch"]]
    onset = int(after["epoch"].iloc[0])
    return [
        Finding(
            "overfitting",
            "warning",
            f"Overfitting from epoch {onset}: validation loss turned up while training loss kept falling",
            f"Validation loss was lowest at epoch {int(m['epoch'])} ({fmt.num(m['val_loss'])}) and rose to "
            f"{fmt.num(lastrow['val_loss'])} by epoch {int(lastrow['epoch'])} (+{rise:.0%}), while training loss fell from "
            f"{fmt.num(m['train_loss'])} to {fmt.num(lastrow['train_loss'])} (−{fall:.0%}). Epoch {int(m['epoch'])} is the "
            "checkpoint to keep; stop earlier or regularise more.",
            "training",
        )
    ]


# --------------------------------------------------------------------------- parameters


def _last_weights(frames: RunFrames):
    w = frames.layer_weights
    if w.empty:
        return None
    last = int(w["epoch"].max())
    if last == 0:
        return None
    return last, w[w["epoch"] == last]


def moved_layers_rule(frames: RunFrames) -> list[Finding]:
    got = _last_weights(frames)
    if got is None:
        return []
    epoch, w = got
    pre = w[w["trainable"] & ~w["new"] & w["rel_change"].apply(fmt.finite)]
    new = w[w["new"] & w["rel_change"].apply(fmt.finite)]
    frozen = w[w["frozen"]]
    head_txt = ""
    if not new.empty:
        head_txt = (
            " New layers moved from their initialisation by "
            + _join([f"{r.layer} {fmt.change(r.rel_change)}" for r in new.itertuples()])
            + "."
        )
    frozen_txt = (
        f" {_n(len(frozen), 'layer')} {'was' if len(frozen) == 1 else 'were'} frozen and did not change."
        if len(frozen)
        else ""
    )
    if pre.empty:
        if new.empty:
            return []
        if frames.from_scratch:  # nothing pretrained at all (weights none): every layer is new
            return [
                Finding(
                    "moved",
                    "info",
                    "Every layer was trained from its initialisation (no pretrained weights)",
                    f"At epoch {epoch}:{head_txt}",
                    "parameters",
                )
            ]
        return [
            Finding(
                "moved",
                "info",
                "Only the new layers changed; the pretrained layers were frozen",
                f"At epoch {epoch}:{head_txt}{frozen_txt}",
                "parameters",
            )
        ]
    ranked = pre.sort_values("rel_change", ascending=False)
    most = [f"{r.layer} ({fmt.change(r.rel_change)})" for r in ranked.head(MOVED_SHOWN).itertuples()]
    least = [f"{r.layer} ({fmt.change(r.rel_change)})" for r in ranked.tail(MOVED_SHOWN).iloc[::-1].itertuples()]
    med = median(pre["rel_change"].tolist())
    lora = " (of a LoRA-adapted layer, its effective weight W_base + (α/r)·B·A)" if w["adapter"].any() else ""
    evidence = (
        f"Relative change ‖Wₜ−W₀‖/‖W₀‖{lora} of the pretrained layers at epoch {epoch}: most moved "
        f"{', '.join(most)}; least moved {', '.join(least) if len(pre) > MOVED_SHOWN else '–'}; "
        f"median {fmt.change(med)} over {len(pre)} layers.{head_txt}{frozen_txt}"
    )
    top = ranked.iloc[0]
    lost = pre[pre["rel_change"] > OVERWRITTEN]
    if not lost.empty:
        names = [
            f"{r.layer} ({fmt.change(r.rel_change)})"
            for r in lost.sort_values("rel_change", ascending=False).itertuples()
        ]
        return [
            Finding(
                "moved",
                "warning",
                f"Pretrained weights largely overwritten in {len(lost)} layer(s), "
                f"most in {top.layer} ({fmt.change(top.rel_change)} of its norm)",
                f"Layers whose weights moved further than their own pretrained norm "
                f"(‖Wₜ−W₀‖/‖W₀‖ > {OVERWRITTEN:g}): {_join(names)}. What they learned in pre-training is "
                f"mostly gone; a smaller learning rate (or freezing them) keeps it. " + evidence,
                "parameters",
            )
        ]
    return [
        Finding(
            "moved",
            "info",
            f"Pretrained layer that moved most: {top.layer} ({fmt.change(top.rel_change)} "
            f"of its norm); least: {ranked.iloc[-1].layer} ({fmt.change(ranked.iloc[-1].rel_change)})",
            evidence,
            "parameters",
        )
    ]


def gradients_rule(frames: RunFrames) -> list[Finding]:
    out: list[Finding] = []
    g = frames.layer_grads
    if g.empty:
        return out
    bad = g[g["nonfinite"] > 0]
    if not bad.empty:
        tot = frames.grad_total
        epochs = sorted(set(int(e) for e in bad["epoch"]))
        steps = int(tot[tot["epoch"].isin(epochs)]["nonfinite"].sum())
        first_epoch = epochs[0]
        layers = list(dict.fromkeys(bad[bad["epoch"] == first_epoch].sort_values("order")["layer"]))
        out.append(
            Finding(
                "nonfinite_gradients",
                "alert",
                f"Non-finite gradients (NaN or ∞) in {steps} sampled step(s), from epoch {first_epoch}",
                f"Epochs {', '.join(map(str, epochs))}; in epoch {first_epoch} in {len(layers)} layer(s): {_join(layers)}. "
                "Lower the learning rate, use gradient clipping, or check for bad inputs or fp16 overflow.",
                "parameters",
            )
        )
    tot = frames.grad_total
    tot = tot[tot["norm"].apply(fmt.finite) & (tot["norm"] > 0)]
    for i in range(1, len(tot)):
        now = tot.iloc[i]
        prev = tot.iloc[:i]
        low = prev.loc[prev["norm"].idxmin()]
        if now["norm"] >= EXPLODE_FACTOR * low["norm"]:
            out.append(
                Finding(
                    "exploding_gradients",
                    "alert",
                    f"Gradients exploded in epoch {int(now['epoch'])}: model gradient norm ×{now['norm'] / low['norm']:.0f}",
                    f"Model gradient norm {fmt.num(now['norm'])} in epoch {int(now['epoch'])}, against {fmt.num(low['norm'])} "
                    f"in epoch {int(low['epoch'])} (threshold ×{EXPLODE_FACTOR:g}); largest single-tensor norm "
                    f"{fmt.num(now['max_norm'])}. Lower the learning rate or clip gradients.",
                    "parameters",
                )
            )
            break
    last = int(g["epoch"].max())
    gl = g[g["epoch"] == last]
    vanished = gl[gl["norm"].apply(fmt.finite) & (gl["norm"] < VANISHED)]
    if not vanished.empty:
        names = list(vanished.sort_values("order")["layer"])
        out.append(
            Finding(
                "vanishing_gradients",
                "warning",
                f"{len(names)} trainable layer(s) received no gradient in epoch {last}",
                f"Gradient norm below {VANISHED:g} in {_join(names)}: these parameters are trainable but do not learn "
                "(unused in the forward pass, or the gradient vanished).",
                "parameters",
            )
        )
    return out


def update_ratio_rule(frames: RunFrames) -> list[Finding]:
    w = frames.layer_weights
    if w.empty:
        return []
    w = w[w["update_ratio"].apply(fmt.finite) & (w["update_ratio"] > 0) & w["trainable"]]
    if w.empty:
        return []
    # judge the epoch whose learning rate was highest (a decaying schedule shrinks every ratio towards its end)
    lrs = frames.epoch_table.set_index("epoch")["lr"]
    epochs = sorted(set(int(e) for e in w["epoch"]))
    rated = [(lrs.get(e), e) for e in epochs if fmt.finite(lrs.get(e))]
    epoch = max(rated)[1] if rated else epochs[-1]
    lr_txt = f" (learning rate {fmt.num(lrs.get(epoch))}, the highest of the run)" if rated and len(epochs) > 1 else ""
    w = w[w["epoch"] == epoch]
    lo, hi = UPDATE_RATIO_BAND
    below = w[w["update_ratio"] < lo].sort_values("update_ratio")
    above = w[w["update_ratio"] > hi].sort_values("update_ratio", ascending=False)
    if below.empty and above.empty:
        return []
    med = median(w["update_ratio"].tolist())
    parts = []
    if not above.empty:
        parts.append(
            f"{len(above)} above {hi:g} (largest: "
            + _join([f"{r.layer} {fmt.sci(r.update_ratio)}" for r in above.itertuples()], 3)
            + ")"
        )
    if not below.empty:
        parts.append(
            f"{len(below)} below {lo:g} (smallest: "
            + _join([f"{r.layer} {fmt.sci(r.update_ratio)}" for r in below.itertuples()], 3)
            + ")"
        )
    off = len(below) + len(above)
    far = w[(w["update_ratio"] > hi * FAR_FACTOR) | (w["update_ratio"] < lo / FAR_FACTOR)]
    severity: Severity = "warning" if not (lo <= med <= hi) or not far.empty else "info"
    advice = ""
    if not (lo <= med <= hi):
        advice = (
            " The median is outside the band: the learning rate is probably too "
            f"{'high' if med > hi else 'low'} for this model."
        )
    elif not far.empty:
        advice = (
            f" {len(far)} layer(s) are more than {FAR_FACTOR:g}× outside the band ("
            + _join([f"{r.layer} {fmt.sci(r.update_ratio)}" for r in far.itertuples()], 3)
            + "): consider a smaller learning rate for them (layer-wise rates) or gradient clipping."
        )
    return [
        Finding(
            "update_ratio",
            severity,
            f"Update-to-weight ratio outside {lo:g}…{hi:g} in {off} of {len(w)} trainable layers (epoch {epoch})",
            f"One optimizer step's ‖update‖/‖W‖ per layer at epoch {epoch}{lr_txt}; the usual target is about 1e-3, "
            f"the band used here is "
            f"{lo:g}…{hi:g}. Median {fmt.sci(med)}; " + "; ".join(parts) + "." + advice,
            "parameters",
        )
    ]


# --------------------------------------------------------------------------- activations and features


def dead_units_rule(frames: RunFrames) -> list[Finding]:
    a = frames.activations
    if a.empty:
        return []
    first, last = int(a["epoch"].min()), int(a["epoch"].max())
    if first == last:
        return []
    a0 = a[(a["epoch"] == first) & a["nonnegative"]].set_index("layer")
    a1 = a[(a["epoch"] == last) & a["nonnegative"]].set_index("layer")
    grown = []
    for layer, r in a1.iterrows():
        if layer not in a0.index or not fmt.finite(r["dead_fraction"]):
            continue
        before = a0.loc[layer]
        growth = r["dead_fraction"] - before["dead_fraction"]
        if growth >= DEAD_GROWTH and r["dead"] > before["dead"]:
            grown.append((growth, layer, before, r))
    if not grown:
        return []
    grown.sort(key=lambda x: -x[0])
    items = [
        f"{layer}: {int(r['dead'])} of {int(r['channels'])} channels ({fmt.pct(b['dead_fraction'])} → "
        f"{fmt.pct(r['dead_fraction'])})"
        for _, layer, b, r in grown
    ]
    return [
        Finding(
            "dead_units",
            "warning",
            f"Dead units grew in {len(grown)} layer(s); most in {grown[0][1]} ({fmt.points(grown[0][0])})",
            f"Channels whose output is 0 for every probe image, epoch {first} → {last} (threshold: "
            f"+{DEAD_GROWTH * 100:g} points): {_join(items, 3)}. A high learning rate often kills ReLU units.",
            "activations",
        )
    ]


def representation_rule(frames: RunFrames) -> list[Finding]:
    """Which probed layer's representation changed most from epoch 0 (lowest linear CKA). New layers (the
    replaced head) had no pretrained representation to keep: they are named apart, never as "changed most"."""
    c = frames.cka
    if c.empty:
        return []
    last = int(c["epoch"].max())
    if last == 0:
        return []
    cl = c[(c["epoch"] == last) & c["cka"].apply(fmt.finite)]
    if cl.empty:
        return []
    w = frames.layer_weights
    new_mods = set(w[w["new"]]["module"]) if not w.empty and not frames.from_scratch else set()
    is_new = cl["layer"].map(lambda layer: layer.split("#")[0] in new_mods)
    kept, new = cl[~is_new], cl[is_new]
    sep = frames.separability
    sep_txt = ""
    knn = sep[sep["measure"].str.startswith("k-NN")] if not sep.empty else sep
    if len(knn) >= 2:
        sep_txt = (
            f" Class separability of the penultimate features (k-NN accuracy on the probe set): "
            f"{fmt.pct(knn['accuracy'].iloc[0])} → {fmt.pct(knn['accuracy'].iloc[-1])}."
        )
    new_txt = ""
    if not new.empty:
        new_txt = (
            " New layers, compared with their initialisation: "
            + _join([f"{r.layer} ({r.cka:.3f})" for r in new.itertuples()])
            + "."
        )
    if kept.empty:
        return [
            Finding(
                "representation",
                "info",
                "Only new layers were probed for representation change",
                f"Linear CKA to epoch 0 at epoch {last}.{new_txt}{sep_txt}",
                "features",
            )
        ]
    low = kept.loc[kept["cka"].idxmin()]
    high = kept.loc[kept["cka"].idxmax()]
    which = "layer" if frames.from_scratch else "pretrained layer"
    return [
        Finding(
            "representation",
            "info",
            f"Representations changed most in {low['layer']} (CKA {low['cka']:.2f} to the {frames.start_name})",
            f"Linear CKA between each probed {which}'s representation now (epoch {last}) and in the {frames.start_name}: "
            f"lowest {low['layer']} ({low['cka']:.3f}), highest {high['layer']} ({high['cka']:.3f}); 1 means unchanged."
            f"{new_txt}{sep_txt}",
            "features",
        )
    ]


RULES = [
    status_rule,
    dropped_write_rule,
    nonfinite_loss_rule,
    accuracy_rule,
    forgetting_rule,
    val_loss_rule,
    overfitting_rule,
    gradients_rule,
    update_ratio_rule,
    dead_units_rule,
    moved_layers_rule,
    representation_rule,
    weak_class_rule,
    confused_classes_rule,
    loose_boxes_rule,
]


def derive_findings(frames: RunFrames) -> list[Finding]:
    out: list[Finding] = []
    for rule in RULES:
        out += rule(frames)
    if not frames.trained and not any(x.rule == "status" for x in out):
        out.append(
            Finding(
                "only_pretrained",
                "info",
                f"Only the {frames.start_name} (epoch 0) was recorded",
                "No training epoch has finished yet; the report shows the starting point.",
                "training",
            )
        )
    return sorted(out, key=lambda x: SEVERITY_ORDER[x.severity])
