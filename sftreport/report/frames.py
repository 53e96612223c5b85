"""A run as tidy pandas frames: the aggregation step between the stored snapshots and the charts.

Everything the report draws or reasons about is computed here once, already aggregated to what a chart
needs (per layer and epoch, never per sample beyond the probe set), at full precision: the rules read
exact numbers, and the charts' data is rounded to the digits a chart can show when it is written
(vega.py). Charts (charts.py) and rules (findings.py) only read these frames.

A "layer" is a module that owns parameters (for weights and gradients) or a probed module call (for
activations), in network order. Per-layer numbers merge the layer's parameter tensors exactly from the
stored sums: ‖Wₜ−W₀‖/‖W₀‖ = sqrt(Σ diff² / Σ ref²), update ratio = sqrt(Σ update² / Σ W²).

A LoRA-adapted layer (peft's: `layer1.0.conv1` holding `base_layer`, `lora_A.default`, `lora_B.default`) is
one layer, named as in the model without adapters: its weight is the effective weight W_base + (α/r)·B·A
(the recorder's AdapterStat), its other tensors (a frozen bias) merge in as usual, and its gradient norm is
that of its factors A and B. So a LoRA run lines up, layer by layer, with a run that trained the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from sftreport.schema import AdapterStat, DetectionEvaluation, EpochSnapshot, Evaluation, Histogram, component_of
from sftreport.store import Run

NAN = math.nan
LORA_PARTS = {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B"}


@dataclass(frozen=True)
class EvalPoint:
    """The validation measures of one epoch."""

    epoch: int
    eval: Evaluation | DetectionEvaluation  # a detector's has no confusion matrix (see sections_segmentation)


def choose_epochs(epochs: list[int], limit: int, keep: Iterable[int] = ()) -> list[int]:
    """At most about `limit` of `epochs` (sorted), evenly spread, always with the first and the last and the
    epochs in `keep` (the best one, say): what a chart can show without growing with the run's length."""
    epochs = sorted(epochs)
    if len(epochs) <= limit:
        return epochs
    n = len(epochs)
    picked = {epochs[round(i * (n - 1) / (limit - 1))] for i in range(limit)}
    return sorted(picked | {e for e in keep if e in set(epochs)})


def num(v: float | None) -> float:
    """A stored number as a float for a frame (NaN for None: not measured)."""
    return NAN if v is None else float(v)


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return math.sqrt(num / den)


def unique_names(names: list[str]) -> list[str]:
    """Class names as chart categories: repeated names get ' (2)', ' (3)', ... so no class merges with another."""
    out, seen = [], set()
    for n in names:
        name, k = n, 1
        while name in seen:
            k += 1
            name = f"{n} ({k})"
        seen.add(name)
        out.append(name)
    return out


class RunFrames:
    """Lazily computed frames of one run (each computed at most once)."""

    def __init__(self, run: Run):
        self.run = run
        self.info = run.info
        self.epochs: list[EpochSnapshot] = run.epochs
        self.classes: list[str] = unique_names(run.info.dataset.classes)
        arch = run.info.architecture
        self.module_type: dict[str, str] = {m.name: m.type for m in arch.modules} if arch else {}
        self.module_order: dict[str, int] = {m.name: i for i, m in enumerate(arch.modules)} if arch else {}
        # the model's components (backbone body, FPN, heads ...), recorded since schema version 4
        self.component_names: list[str] = [c.name for c in arch.components] if arch else []
        self._component_prefixes: dict[str, str] = arch.component_prefixes() if arch else {}

    # ------------------------------------------------------------------ epochs

    @property
    def last(self) -> EpochSnapshot | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def trained(self) -> list[EpochSnapshot]:
        """Snapshots after the pretrained one (epoch ≥ 1)."""
        return [e for e in self.epochs if e.epoch > 0]

    def class_name(self, i: int) -> str:
        return self.classes[i] if 0 <= i < len(self.classes) else str(i)

    def component(self, layer: str) -> str:
        """The component of a layer label ('(model)', a module name, an activation's 'module#2'); '' when
        the run recorded no components."""
        module = "" if layer == "(model)" else layer.split("#")[0]
        return component_of(self._component_prefixes, module) or ""

    @cached_property
    def epoch_table(self) -> pd.DataFrame:
        rows = []
        for e in self.epochs:
            rows.append(
                {
                    "epoch": e.epoch,
                    "step": e.step,
                    "train_loss": num(e.train_loss),
                    "train_accuracy": num(e.train_accuracy),
                    "val_loss": num(e.val.loss) if e.val else NAN,
                    "val_accuracy": num(e.val.accuracy) if e.val else NAN,
                    "lr": num(e.lr),
                    "knn_accuracy": num(e.features.knn_accuracy) if e.features else NAN,
                    "probe_accuracy": num(e.features.probe_accuracy) if e.features else NAN,
                    "train_s": e.timing.train_s,
                    "eval_s": e.timing.eval_s,
                    "record_s": e.timing.record_s,
                    "samples_per_s": num(e.timing.samples_per_s),
                }
            )
        cols = [
            "epoch",
            "step",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "lr",
            "knn_accuracy",
            "probe_accuracy",
            "train_s",
            "eval_s",
            "record_s",
            "samples_per_s",
        ]
        return pd.DataFrame(rows, columns=cols)

    @cached_property
    def steps(self) -> pd.DataFrame:
        """Per-step training loss (and learning rate), placed on a fractional-epoch axis."""
        rows = []
        prev_step = None
        for e in self.epochs:
            if e.steps:
                start = prev_step if prev_step is not None else e.steps[0].step - e.steps[0].steps
                span = max(1, e.step - start)
                for p in e.steps:
                    rows.append(
                        {
                            "epoch": e.epoch,
                            "x": (e.epoch - 1) + (p.step - start) / span,
                            "step": p.step,
                            "loss": p.loss,
                            "lr": NAN if p.lr is None else p.lr,
                        }
                    )
            prev_step = e.step
        return pd.DataFrame(rows, columns=["epoch", "x", "step", "loss", "lr"])

    @cached_property
    def logged(self) -> pd.DataFrame:
        """The metrics the training framework logged, one row per epoch and metric, metrics in the order
        they first appear."""
        rows = [
            {"epoch": e.epoch, "metric": name, "value": num(v)} for e in self.epochs for name, v in e.logged.items()
        ]
        return pd.DataFrame(rows, columns=["epoch", "metric", "value"])

    def steps_at_most(self, limit: int) -> pd.DataFrame:
        """`steps` with neighbouring points of an epoch averaged so that at most about `limit` remain (a
        chart cannot show more, and the report must not grow with the run); each merged point sits where
        its last step ends."""
        df = self.steps
        if len(df) <= limit:
            return df
        width = math.ceil(len(df) / limit)
        bucket = df["epoch"].astype(str) + "/" + (df.groupby("epoch").cumcount() // width).astype(str)
        merged = df.groupby(bucket, sort=False).agg(
            epoch=("epoch", "first"), x=("x", "last"), step=("step", "last"), loss=("loss", "mean"), lr=("lr", "last")
        )
        return merged.reset_index(drop=True)[["epoch", "x", "step", "loss", "lr"]]

    @cached_property
    def source(self) -> pd.DataFrame:
        """Per epoch with a source-task evaluation: its accuracy and loss, and the target task's validation
        accuracy beside it (the forgetting curve)."""
        rows = [
            {
                "epoch": e.epoch,
                "source_accuracy": e.source.accuracy,
                "source_loss": e.source.loss,
                "val_accuracy": num(e.val.accuracy) if e.val else NAN,
            }
            for e in self.epochs
            if e.source is not None
        ]
        return pd.DataFrame(rows, columns=["epoch", "source_accuracy", "source_loss", "val_accuracy"])

    @property
    def lp_switch(self) -> int | None:
        """lp-ft: the last linear-probe epoch (every layer trained from the next one), else None."""
        t = self.info.training
        return t.lp_epochs if t is not None else None

    @cached_property
    def has_val(self) -> bool:
        return any(e.val is not None for e in self.epochs)

    @cached_property
    def first_eval(self) -> EvalPoint | None:
        """The first evaluated epoch (epoch 0, the pretrained model, in a run recorded from its start)."""
        return next((EvalPoint(e.epoch, e.val) for e in self.epochs if e.val is not None), None)

    @cached_property
    def last_eval(self) -> EvalPoint | None:
        return next((EvalPoint(e.epoch, e.val) for e in reversed(self.epochs) if e.val is not None), None)

    @cached_property
    def from_scratch(self) -> bool:
        """No parameter was loaded from pretrained weights (`--weights none`): epoch 0 is an initialisation,
        not a pretrained model."""
        arch = self.info.architecture
        if arch is not None and arch.total_params:
            return arch.new_params == arch.total_params
        first = next((e.weights for e in self.epochs if e.weights), [])
        return bool(first) and all(w.new for w in first)

    @property
    def start_name(self) -> str:
        """What epoch 0 is, in words: "pretrained model" or "initial model" (trained from scratch)."""
        return "initial model" if self.from_scratch else "pretrained model"

    def best_epoch(self) -> tuple[int, float] | None:
        """(epoch, validation accuracy) of the best epoch (highest accuracy, earliest on ties)."""
        best = None
        for e in self.epochs:
            if e.val is not None and math.isfinite(e.val.accuracy) and (best is None or e.val.accuracy > best[1]):
                best = (e.epoch, e.val.accuracy)
        return best

    def confusion(self, epoch: int) -> pd.DataFrame:
        """The confusion matrix of an evaluated epoch, one row per cell, with each cell's share of its row."""
        val = next(e.val for e in self.epochs if e.epoch == epoch and e.val is not None)
        rows = []
        for t, row in enumerate(val.confusion if isinstance(val, Evaluation) else []):
            total = sum(row)
            for p, n in enumerate(row):
                rows.append(
                    {
                        "true": self.class_name(t),
                        "pred": self.class_name(p),
                        "ti": t,
                        "pi": p,
                        "count": n,
                        "share": num(n / total) if total else NAN,
                    }
                )
        return pd.DataFrame(rows, columns=["true", "pred", "ti", "pi", "count", "share"])

    def per_class(self) -> pd.DataFrame:
        """Per-class validation accuracy at the first and the last evaluated epoch."""
        first, last = self.first_eval, self.last_eval
        if first is None or last is None:
            return pd.DataFrame(columns=["class", "ci", "epoch", "which", "accuracy"])
        rows = []
        start = "initial" if self.from_scratch else "pretrained"
        pairs = [(first, start)] + (
            [(last, "fine-tuned" if not self.from_scratch else "trained")] if last.epoch != first.epoch else []
        )
        for point, which in pairs:
            for i, a in enumerate(point.eval.per_class_accuracy if isinstance(point.eval, Evaluation) else []):
                rows.append(
                    {
                        "class": self.class_name(i),
                        "ci": i,
                        "epoch": point.epoch,
                        "which": f"{which} (epoch {point.epoch})",
                        "accuracy": num(a),
                    }
                )
        return pd.DataFrame(rows, columns=["class", "ci", "epoch", "which", "accuracy"])

    # ------------------------------------------------------------------ weights and gradients

    def _order(self, name: str, fallback: int) -> float:
        return self.module_order.get(name, 1e6 + fallback)

    @cached_property
    def adapted(self) -> set[str]:
        """The LoRA-adapted layers whose effective weights were recorded."""
        return {a.module for e in self.epochs for a in e.adapters}

    def fold(self, module: str) -> str:
        """The adapted layer a LoRA part belongs to (`layer1.0.conv1.lora_A.default` → `layer1.0.conv1`),
        else the module itself."""
        if not self.adapted:
            return module
        parts = module.split(".")
        for k in range(len(parts) - 1, 0, -1):
            if parts[k] in LORA_PARTS and ".".join(parts[:k]) in self.adapted:
                return ".".join(parts[:k])
        return module

    @cached_property
    def layer_weights(self) -> pd.DataFrame:
        """Per layer (module owning parameters) and epoch: relative change, update ratio, sizes."""
        rows = []
        seen: dict[str, int] = {}
        for e in self.epochs:
            agg: dict[str, dict] = {}
            adapters = {x.module: x for x in e.adapters}
            for w in e.weights:
                module = self.fold(w.module) if adapters else w.module
                seen.setdefault(module, len(seen))
                a = agg.setdefault(
                    module,
                    {
                        "diff": 0.0,
                        "ref": 0.0,
                        "upd": 0.0,
                        "before": 0.0,
                        "has_upd": False,
                        "params": 0,
                        "trainable": 0,
                        "new": 0,
                        "matrix": False,
                        "finite": True,
                        "adapter": module in adapters,
                    },
                )
                n = math.prod(w.shape) if w.shape else 1
                a["params"] += n
                a["trainable"] += n if w.trainable else 0
                a["new"] += n if w.new and module not in adapters else 0
                a["matrix"] = a["matrix"] or len(w.shape) >= 2
                a["finite"] = a["finite"] and math.isfinite(w.stats.m2)
                if module in adapters and (
                    w.name == f"{module}.base_layer.weight" or ".lora_" in w.name[len(module) :]
                ):
                    continue  # the effective weight (below) stands for the base weight and the factors
                a["diff"] += w.diff_sq
                a["ref"] += w.ref_sq
                if w.update_sq is not None and w.before_update_sq is not None:
                    a["upd"] += w.update_sq
                    a["before"] += w.before_update_sq
                    a["has_upd"] = True
            for module, x in adapters.items():
                if module in agg:
                    _add_effective(agg[module], x)
            for module, a in agg.items():
                ratio = _ratio(a["upd"], a["before"]) if a["has_upd"] and a["before"] > 0 else NAN
                mtype = self.module_type.get(module, "")
                rows.append(
                    {
                        "layer": module or "(model)",
                        "module": module,
                        "epoch": e.epoch,
                        "order": self._order(module, seen[module]),
                        "type": mtype,
                        "params": a["params"],
                        "trainable": a["trainable"] > 0,
                        "frozen": a["trainable"] == 0,
                        "new": a["new"] > 0,
                        "rel_change": _ratio(a["diff"], a["ref"]),
                        "update_ratio": ratio,
                        "matrix": a["matrix"],
                        "finite": a["finite"],
                        "adapter": a["adapter"],
                        "diff_sq": a["diff"],
                        "ref_sq": a["ref"],
                        "component": self.component(module or "(model)"),
                    }
                )
        df = pd.DataFrame(
            rows,
            columns=[
                "layer",
                "module",
                "epoch",
                "order",
                "type",
                "params",
                "trainable",
                "frozen",
                "new",
                "rel_change",
                "update_ratio",
                "matrix",
                "finite",
                "adapter",
                "diff_sq",
                "ref_sq",
                "component",
            ],
        )
        return df.sort_values(["order", "epoch"], kind="stable").reset_index(drop=True)

    @cached_property
    def layer_grads(self) -> pd.DataFrame:
        """Per layer and epoch: gradient norm (root of the sum of its tensors' squared mean norms), the
        largest sampled tensor norm, and the sampled steps with a non-finite gradient."""
        rows = []
        seen: dict[str, int] = {}
        for e in self.epochs:
            agg: dict[str, dict] = {}
            for g in e.gradients:
                module = self.fold(g.module)
                seen.setdefault(module, len(seen))
                a = agg.setdefault(module, {"sq": 0.0, "max": 0.0, "nonfinite": 0, "samples": 0, "nan": False})
                m = g.mean_norm
                if math.isfinite(m):
                    a["sq"] += m * m
                else:
                    a["nan"] = True
                a["max"] = max(a["max"], g.norm_max)
                a["nonfinite"] = max(a["nonfinite"], g.nonfinite)
                a["samples"] = max(a["samples"], g.samples)
            for module, a in agg.items():
                rows.append(
                    {
                        "layer": module or "(model)",
                        "module": module,
                        "epoch": e.epoch,
                        "order": self._order(module, seen[module]),
                        "norm": NAN if a["nan"] and a["sq"] == 0 else math.sqrt(a["sq"]),
                        "max_norm": a["max"],
                        "nonfinite": a["nonfinite"],
                        "samples": a["samples"],
                        "component": self.component(module or "(model)"),
                    }
                )
        df = pd.DataFrame(
            rows,
            columns=["layer", "module", "epoch", "order", "norm", "max_norm", "nonfinite", "samples", "component"],
        )
        return df.sort_values(["order", "epoch"], kind="stable").reset_index(drop=True)

    @cached_property
    def grad_total(self) -> pd.DataFrame:
        """Per epoch: the whole model's gradient norm (from mean tensor norms), the largest tensor norm seen,
        and the sampled steps with a non-finite gradient anywhere."""
        rows = []
        for e in self.epochs:
            if not e.gradients:
                continue
            sq = sum(g.mean_norm**2 for g in e.gradients if math.isfinite(g.mean_norm))
            rows.append(
                {
                    "epoch": e.epoch,
                    "norm": num(math.sqrt(sq)),
                    "max_norm": num(max(g.norm_max for g in e.gradients)),
                    "nonfinite": max(g.nonfinite for g in e.gradients),
                    "samples": max(g.samples for g in e.gradients),
                }
            )
        return pd.DataFrame(rows, columns=["epoch", "norm", "max_norm", "nonfinite", "samples"])

    # ------------------------------------------------------------------ components

    def layer_components(self, layers: list[str]) -> pd.DataFrame:
        """The component of each layer label, for the colour strip of a per-layer chart."""
        return pd.DataFrame({"layer": layers, "component": [self.component(n) for n in layers]})

    @cached_property
    def component_change(self) -> pd.DataFrame:
        """Per component and epoch with weights: ‖Wₜ−W₀‖/‖W₀‖ over all of the component's parameter tensors,
        sqrt(Σ diff² / Σ ref²) from its layers' sums (a LoRA layer's effective weight included, as per layer),
        and its gradient norm, the root of its layers' summed squared norms (as the whole model's); empty when
        the run recorded no components."""
        cols = ["component", "epoch", "rel_change", "grad_norm", "grad_sampled", "diff_sq", "ref_sq"]
        w = self.layer_weights
        if not self.component_names or w.empty:
            return pd.DataFrame(columns=cols)
        sums: dict[tuple[str, int], list[float]] = {}
        for r in w.itertuples():
            a = sums.setdefault((r.component, r.epoch), [0.0, 0.0])
            a[0] += r.diff_sq  # a NaN stays NaN: a diverged layer makes its component's change unknown
            a[1] += r.ref_sq
        grads: dict[tuple[str, int], float] = {}
        for r in self.layer_grads.itertuples():
            if math.isfinite(r.norm):
                grads[(r.component, r.epoch)] = grads.get((r.component, r.epoch), 0.0) + r.norm * r.norm
            else:
                grads.setdefault((r.component, r.epoch), NAN)
        rank = {n: i for i, n in enumerate(self.component_names)}
        rows = [
            {
                "component": c,
                "epoch": e,
                "rel_change": _ratio(d, ref),
                "grad_norm": math.sqrt(grads[(c, e)]) if (c, e) in grads else NAN,
                "grad_sampled": (c, e) in grads,  # NaN beside True: not finite; beside False: none sampled
                "diff_sq": d,
                "ref_sq": ref,
            }
            for (c, e), (d, ref) in sorted(sums.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0][1]))
        ]
        return pd.DataFrame(rows, columns=cols)

    @cached_property
    def what_trained(self) -> pd.DataFrame:
        """One row per recorded component (then one for the whole model): its parameters, trainable, frozen
        (requires_grad False), new and FrozenBatchNorm counts, how far it moved by the last epoch with weights and
        its gradient norm at the last epoch with gradients (`measured`, `grad_measured`: False where there was
        nothing to measure, the value then NaN)."""
        cols = ["component", "modules", "params", "trainable", "frozen", "frozen_norm", "new", "rel_change"]
        cols += ["grad_norm", "measured", "grad_measured"]
        arch = self.info.architecture
        if arch is None or not arch.components:
            return pd.DataFrame(columns=cols)
        ch = self.component_change
        moved_at, grad_at = self.component_epochs
        moved = {r.component: (r.diff_sq, r.ref_sq) for r in ch[ch["epoch"] == moved_at].itertuples()}
        grad = {r.component: r.grad_norm for r in ch[(ch["epoch"] == grad_at) & ch["grad_sampled"]].itertuples()}
        rows = [
            {
                "component": c.name,
                "modules": c.modules,
                "params": c.params,
                "trainable": c.trainable,
                "frozen": c.frozen,
                "frozen_norm": c.frozen_norm,
                "new": c.new,
                "rel_change": _ratio(*moved[c.name]) if c.name in moved else NAN,
                "grad_norm": grad.get(c.name, NAN),
                "measured": c.name in moved,  # NaN beside False: never measured; beside True: not finite
                "grad_measured": c.name in grad,
            }
            for c in arch.components
        ]
        d, ref = (sum(v[0] for v in moved.values()), sum(v[1] for v in moved.values())) if moved else (NAN, NAN)
        squares = [v * v for v in grad.values() if math.isfinite(v)]
        rows.append(
            {
                "component": "whole model",
                "modules": [],
                "params": arch.total_params,
                "trainable": arch.trainable_params,
                "frozen": arch.total_params - arch.trainable_params,
                "frozen_norm": arch.frozen_norm,
                "new": arch.new_params,
                "rel_change": _ratio(d, ref) if moved else NAN,
                "grad_norm": math.sqrt(sum(squares)) if squares else NAN,
                "measured": bool(moved),
                "grad_measured": bool(grad),
            }
        )
        return pd.DataFrame(rows, columns=cols)

    @cached_property
    def component_epochs(self) -> tuple[int | None, int | None]:
        """The epochs `what_trained` measured the change and the gradient norm at (None: never)."""
        ch = self.component_change
        g = ch[ch["grad_sampled"]]
        return (
            int(ch["epoch"].max()) if not ch.empty else None,
            int(g["epoch"].max()) if not g.empty else None,
        )

    @cached_property
    def adapters(self) -> pd.DataFrame:
        """Per LoRA-adapted layer and epoch: the effective weight's change and the spectrum of that change."""
        rows: list[dict] = []
        for e in self.epochs:
            for a in e.adapters:
                sp = a.spectrum
                rows.append(
                    {
                        "layer": a.module,
                        "epoch": e.epoch,
                        "order": self._order(a.module, len(rows)),
                        "type": a.type,
                        "shape": a.shape,
                        "r": a.rank,
                        "alpha": a.alpha,
                        "rel_change": a.rel_change,
                        "update_ratio": num(a.update_ratio),
                        "rank": sp.rank,
                        "stable_rank": sp.stable_rank,
                        "top1": sp.top_share(1),
                        "sv": list(sp.singular_values),
                    }
                )
        cols = ["layer", "epoch", "order", "type", "shape", "r", "alpha", "rel_change", "update_ratio", "rank"]
        df = pd.DataFrame(rows, columns=cols + ["stable_rank", "top1", "sv"])
        return df.sort_values(["order", "epoch"], kind="stable").reset_index(drop=True)

    def weight_tensors(self) -> list[str]:
        """Parameter names of the first snapshot with weights, in network order."""
        for e in self.epochs:
            if e.weights:
                return [w.name for w in e.weights]
        return []

    def histogram_tensors(self, count: int) -> list[str]:
        """Weight matrices worth a histogram, in network order: with room for six, the first, middle and
        last pretrained layer, the pretrained layer that moved most and the new head's (two); with room for
        three, the first pretrained layer, the one that moved most (else the last) and the head."""
        names = [n for n in self.weight_tensors() if ".lora_" not in n]  # LoRA's factors: not weights of a layer
        if not names:
            return []
        shapes = next(
            {w.name: (self.fold(w.module), len(w.shape)) for w in e.weights} for e in self.epochs if e.weights
        )
        mats = [n for n in names if shapes[n][1] >= 2] or names
        w = self.layer_weights
        new_mods = set(w[w["new"]]["module"])
        pretrained = [n for n in mats if shapes[n][0] not in new_mods] or mats
        head = [n for n in mats if shapes[n][0] in new_mods]
        last = w[w["epoch"] == w["epoch"].max()]
        movers = last[last["trainable"] & ~last["new"] & last["matrix"] & last["rel_change"].apply(_finite)]
        top = movers.loc[movers["rel_change"].idxmax(), "module"] if not movers.empty else None
        most = [n for n in pretrained if shapes[n][0] == top][:1]
        if count >= 6:
            chosen = [pretrained[0], pretrained[len(pretrained) // 2], pretrained[-1]] + most + head[:2]
        else:
            chosen = [pretrained[0]] + (most or [pretrained[-1]]) + head[:1]
        order = {n: i for i, n in enumerate(names)}
        return sorted(dict.fromkeys(chosen), key=order.__getitem__)[:count]

    def weight_hist(self, names: list[str], epochs: list[int] | None = None) -> pd.DataFrame:
        """Histogram bins of chosen parameter tensors at the given epochs (default: all), as fractions of
        the tensor's values; `part` says whether a row is a bin or the share below or above the fixed range."""
        rows = []
        wanted, at = set(names), set(epochs) if epochs is not None else None
        for e in self.epochs:
            if at is not None and e.epoch not in at:
                continue
            for w in e.weights:
                if w.name in wanted:
                    rows += _hist_rows(w.hist, {"tensor": w.name, "epoch": e.epoch})
        return pd.DataFrame(rows, columns=_hist_columns("tensor"))

    # ------------------------------------------------------------------ activations and features

    @cached_property
    def activations(self) -> pd.DataFrame:
        rows = []
        seen: dict[str, int] = {}
        for e in self.epochs:
            for a in e.activations:
                seen.setdefault(a.module, len(seen))
                base = a.module.split("#")[0]
                rows.append(
                    {
                        "layer": a.module,
                        "epoch": e.epoch,
                        "order": self._order(base, seen[a.module]) + seen[a.module] * 1e-4,
                        "type": a.type,
                        "mean": a.stats.mean,
                        "std": a.stats.std,
                        "zero_fraction": a.stats.zero_fraction,
                        "dead_fraction": a.dead_fraction,
                        "dead": a.dead_channels,
                        "channels": a.channels,
                        "nonnegative": a.nonnegative,
                        "min": a.stats.min,
                        "max": a.stats.max,
                    }
                )
        df = pd.DataFrame(
            rows,
            columns=[
                "layer",
                "epoch",
                "order",
                "type",
                "mean",
                "std",
                "zero_fraction",
                "dead_fraction",
                "dead",
                "channels",
                "nonnegative",
                "min",
                "max",
            ],
        )
        return df.sort_values(["order", "epoch"], kind="stable").reset_index(drop=True)

    def activation_hist(self, layers: list[str], epochs: list[int]) -> pd.DataFrame:
        rows = []
        wl, we = set(layers), set(epochs)
        for e in self.epochs:
            if e.epoch not in we:
                continue
            for a in e.activations:
                if a.module in wl:
                    rows += _hist_rows(a.hist, {"layer": a.module, "epoch": e.epoch})
        return pd.DataFrame(rows, columns=_hist_columns("layer"))

    def projection(self, method: str = "pca") -> pd.DataFrame:
        labels = self.info.probe.labels if self.info.probe else []
        rows = []
        for e in self.epochs:
            if e.features is None:
                continue
            for p in e.features.projections:
                if p.method != method:
                    continue
                for i, (x, y) in enumerate(zip(p.x, p.y)):
                    ci = labels[i] if i < len(labels) else -1
                    rows.append(
                        {
                            "epoch": e.epoch,
                            "sample": i,
                            "x": x,
                            "y": y,
                            "ci": ci,
                            "class": self.class_name(ci) if ci >= 0 else "?",
                        }
                    )
        return pd.DataFrame(rows, columns=["epoch", "sample", "x", "y", "ci", "class"])

    @cached_property
    def gates(self) -> pd.DataFrame:
        """Recurrent weights split by gate: relative change and one step's update ratio per epoch."""
        rows = [
            {
                "epoch": e.epoch,
                "tensor": w.name,
                "gate": g.gate,
                "rel_change": num(g.rel_change),
                "update_ratio": num(g.update_ratio),
            }
            for e in self.epochs
            for w in e.weights
            for g in w.gates
        ]
        return pd.DataFrame(rows, columns=["epoch", "tensor", "gate", "rel_change", "update_ratio"])

    @cached_property
    def tokens(self) -> pd.DataFrame:
        """The last epoch's most moved input-embedding rows of a text model, most moved first."""
        last = next((e for e in reversed(self.epochs) if e.tokens), None)
        rows = []
        if last is not None:
            for t in last.tokens:
                rows.append(
                    {
                        "epoch": last.epoch,
                        "token": f"{t.token} (#{t.token_id})",
                        "rel_change": t.rel_change,
                        "norm": t.norm,
                        "ref_norm": t.ref_norm,
                    }
                )
        return pd.DataFrame(rows, columns=["epoch", "token", "rel_change", "norm", "ref_norm"])

    @cached_property
    def gate_saturation(self) -> pd.DataFrame:
        rows = [
            {
                "epoch": e.epoch,
                "layer": f"{s.module} layer {s.layer}" + (" (reverse)" if s.direction == "reverse" else ""),
                "gate": s.gate,
                "saturated": s.saturated,
                "mean": s.mean,
            }
            for e in self.epochs
            for s in e.gate_saturation
        ]
        return pd.DataFrame(rows, columns=["epoch", "layer", "gate", "saturated", "mean"])

    def hidden_states(self, sample: int) -> pd.DataFrame:
        """One probe sequence's hidden state over time (time step × unit) at every epoch that kept it."""
        rows = [
            {"epoch": e.epoch, "module": h.module, "t": t, "unit": u, "value": v}
            for e in self.epochs
            for h in e.hidden_states
            if h.sample == sample
            for t, step in enumerate(h.values)
            for u, v in enumerate(step)
        ]
        return pd.DataFrame(rows, columns=["epoch", "module", "t", "unit", "value"])

    @cached_property
    def attention(self) -> pd.DataFrame:
        """Attention entropy (as a share of uniform attention's) and change per head, layers in network order."""
        rows = [
            {
                "epoch": e.epoch,
                "layer": a.module,
                "head": a.head,
                "entropy": a.entropy,
                "entropy_share": a.entropy / a.max_entropy if a.max_entropy > 0 else NAN,
                "change": num(a.change),
                "order": self._order(a.module, i),
            }
            for e in self.epochs
            for i, a in enumerate(e.attention)
        ]
        df = pd.DataFrame(rows, columns=["epoch", "layer", "head", "entropy", "entropy_share", "change", "order"])
        return df.sort_values(["order", "head", "epoch"], kind="stable").reset_index(drop=True)

    @cached_property
    def cka(self) -> pd.DataFrame:
        rows = []
        seen: dict[str, int] = {}
        act_order = {}
        if not self.activations.empty:
            act_order = dict(zip(self.activations["layer"], self.activations["order"]))
        for e in self.epochs:
            for c in e.cka:
                seen.setdefault(c.module, len(seen))
                rows.append(
                    {
                        "layer": c.module,
                        "epoch": e.epoch,
                        "order": act_order.get(c.module, self._order(c.module.split("#")[0], seen[c.module])),
                        "cka": c.value,
                    }
                )
        df = pd.DataFrame(rows, columns=["layer", "epoch", "order", "cka"])
        return df.sort_values(["order", "epoch"], kind="stable").reset_index(drop=True)

    @cached_property
    def separability(self) -> pd.DataFrame:
        rows = []
        for e in self.epochs:
            if e.features is None:
                continue
            rows.append(
                {
                    "epoch": e.epoch,
                    "measure": f"k-NN accuracy (k={e.features.knn_k})",
                    "accuracy": num(e.features.knn_accuracy),
                }
            )
            rows.append(
                {
                    "epoch": e.epoch,
                    "measure": "classifier accuracy on the probe set",
                    "accuracy": num(e.features.probe_accuracy),
                }
            )
        return pd.DataFrame(rows, columns=["epoch", "measure", "accuracy"])

    def image_epochs(self) -> list[EpochSnapshot]:
        return [e for e in self.epochs if e.images is not None]

    def layers_in_order(self, df: pd.DataFrame) -> list[str]:
        """Distinct layer labels of a per-layer frame, in network order."""
        if df.empty:
            return []
        return list(dict.fromkeys(df.sort_values("order", kind="stable")["layer"]))


def _hist_columns(key: str) -> list[str]:
    return [key, "epoch", "part", "x0", "x1", "x", "share"]


def _hist_rows(h: Histogram, extra: dict) -> list[dict]:
    """One row per bin, plus one for the values below and one for those above the fixed range, each drawn
    as a bin's width outside it: values that moved out of the range are shown, never silently cut off."""
    total = h.total
    if not total or not h.counts:
        return []
    edges = h.edges
    step = (h.hi - h.lo) / len(h.counts)
    rows = [
        {
            **extra,
            "part": "inside",
            "x0": edges[i],
            "x1": edges[i + 1],
            "x": (edges[i] + edges[i + 1]) / 2,
            "share": c / total,
        }
        for i, c in enumerate(h.counts)
    ]
    for part, count, x0 in (("below", h.below, h.lo - step), ("above", h.above, h.hi)):
        if count:
            rows.append({**extra, "part": part, "x0": x0, "x1": x0 + step, "x": x0 + step / 2, "share": count / total})
    return rows


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _add_effective(a: dict, x: AdapterStat) -> None:
    """An adapted layer's effective weight into its aggregated sums (as one tensor of the layer)."""
    a["diff"] += x.diff_sq
    a["ref"] += x.ref_sq
    if x.update_sq is not None and x.before_update_sq is not None:
        a["upd"] += x.update_sq
        a["before"] += x.before_update_sq
        a["has_upd"] = True
