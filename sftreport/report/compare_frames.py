"""Several runs as tidy frames, for the comparison report (compare.py) and its rules (compare_findings.py).

Each run keeps its own RunFrames (frames.py): the per-run numbers are computed exactly as in its own report,
then put side by side here with a `run` column holding the run's label. Nothing is specific to a strategy
or to a set of measures: every per-epoch number any run has (its evaluation, its logged metrics, any further
evaluation a newer recorder adds to the epochs, such as the source task's) becomes a metric to overlay.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from sftreport.report.frames import NAN, RunFrames, num
from sftreport.schema import Evaluation
from sftreport.store import Run

# per-epoch numbers every run's frames have, by the name the report shows
EPOCH_METRICS = {
    "val_accuracy": "validation accuracy",
    "val_loss": "validation loss",
    "train_loss": "training loss",
    "train_accuracy": "training accuracy",
    "knn_accuracy": "k-NN accuracy of the features (probe set)",
}
KNOWN_FIELDS = {"val"}  # Evaluation fields of an epoch already covered by EPOCH_METRICS
# configuration keys that say where a run's files went, not how it was trained
NOT_SETTINGS = {"name", "out", "run_dir", "quiet", "workers", "device", "download", "data_root"}


@dataclass
class Member:
    """One run of a comparison, under its label."""

    label: str
    run: Run
    frames: RunFrames

    @property
    def info(self):
        return self.run.info


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """A nested configuration as dotted keys and short JSON texts."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    return out


def backbone_change(frames: RunFrames) -> float:
    """‖ΔW‖ / ‖W₀‖ of all pretrained (not new) parameters together at the last epoch with weights:
    sqrt(Σ diff² / Σ ref²) over their tensors, frozen ones included (0 when none moved; NaN when unknown)."""
    last = next((e for e in reversed(frames.epochs) if e.weights), None)
    if last is None or last.epoch == 0:
        return NAN
    diff = sum(w.diff_sq for w in last.weights if not w.new)
    ref = sum(w.ref_sq for w in last.weights if not w.new)
    if ref == 0:
        return NAN if diff == 0 else math.inf
    return math.sqrt(diff / ref)


def head_change(frames: RunFrames) -> float:
    """‖ΔW‖ / ‖W_init‖ of the new parameters (the replaced head) together at the last epoch (NaN: none)."""
    last = next((e for e in reversed(frames.epochs) if e.weights), None)
    if last is None or last.epoch == 0 or not any(w.new for w in last.weights):
        return NAN
    diff = sum(w.diff_sq for w in last.weights if w.new)
    ref = sum(w.ref_sq for w in last.weights if w.new)
    return math.sqrt(diff / ref) if ref else (0.0 if diff == 0 else math.inf)


class CompareFrames:
    def __init__(self, members: list[Member]):
        self.members = members
        self.labels = [m.label for m in members]

    # ------------------------------------------------------------------ the runs as a whole

    @cached_property
    def headline(self) -> pd.DataFrame:
        """One row per run: what its report's summary says, as numbers."""
        rows = []
        for m in self.members:
            f, info = m.frames, m.info
            first, last = f.first_eval, f.last_eval
            after = last if first is not None and last is not None and last.epoch != first.epoch else None
            best = f.best_epoch()
            arch = info.architecture
            rows.append(
                {
                    "run": m.label,
                    "directory": m.run.root.name,
                    "status": info.status,
                    "strategy": info.strategy,
                    "model": info.model,
                    "dataset": info.dataset.name,
                    "params": arch.total_params if arch else NAN,
                    "trainable": arch.trainable_params if arch else NAN,
                    "acc_before": first.eval.accuracy if first else NAN,
                    "acc_after": after.eval.accuracy if after else NAN,
                    "loss_after": after.eval.loss if after else NAN,
                    "last_epoch": f.last.epoch if f.last else 0,
                    "best_epoch": best[0] if best else NAN,
                    "best_acc": best[1] if best else NAN,
                    "duration_s": num(info.duration_s),
                    "backbone_change": backbone_change(f),
                    "head_change": head_change(f),
                }
            )
        return pd.DataFrame(rows)

    def settings(self) -> tuple[list[tuple[str, list[str]]], int]:
        """The settings whose values differ between the runs (setting, one value per run; '–' where a run has
        none), and how many settings are the same in all."""
        per_run = []
        for m in self.members:
            info = m.info
            s = {
                "model": info.model,
                "pretrained weights": info.weights,
                "strategy": info.strategy,
                "dataset": f"{info.dataset.name} ({len(info.dataset.classes)} classes)",
                "planned epochs": str(info.planned_epochs) if info.planned_epochs is not None else "–",
            }
            said = {"model", "weights", "strategy", "dataset", "epochs"}  # in words above
            s.update({k: v for k, v in flatten(info.config).items() if k.split(".")[0] not in NOT_SETTINGS | said})
            per_run.append(s)
        keys = list(dict.fromkeys(k for s in per_run for k in s))
        differ, same = [], 0
        for k in keys:
            values = [s.get(k, "–") for s in per_run]
            if len(set(values)) > 1:
                differ.append((k, values))
            else:
                same += 1
        return differ, same

    # ------------------------------------------------------------------ per epoch

    @cached_property
    def per_epoch(self) -> pd.DataFrame:
        """Every per-epoch number of every run: run, metric, epoch, value; metrics in the order first seen."""
        rows = []
        for m in self.members:
            t = m.frames.epoch_table
            for col, name in EPOCH_METRICS.items():
                for e, v in zip(t["epoch"], t[col]):
                    if not math.isnan(v) or (col.startswith("val") and m.frames.has_val):
                        rows.append({"run": m.label, "metric": name, "epoch": int(e), "value": v})
            for snap in m.frames.epochs:
                for name, v in snap.logged.items():
                    rows.append({"run": m.label, "metric": f"logged: {name}", "epoch": snap.epoch, "value": num(v)})
                for field in type(snap).model_fields:
                    value = getattr(snap, field)
                    if field in KNOWN_FIELDS or not isinstance(value, Evaluation):
                        continue
                    what = field.replace("_", " ")
                    rows.append(
                        {"run": m.label, "metric": f"{what} accuracy", "epoch": snap.epoch, "value": value.accuracy}
                    )
                    rows.append({"run": m.label, "metric": f"{what} loss", "epoch": snap.epoch, "value": value.loss})
        df = pd.DataFrame(rows, columns=["run", "metric", "epoch", "value"])
        # a metric no run has a single number of is not drawn (e.g. training accuracy of runs that did not measure it)
        has = df.groupby("metric", sort=False)["value"].apply(lambda v: v.notna().any())
        return df[df["metric"].map(has)].reset_index(drop=True)

    # ------------------------------------------------------------------ per layer

    @staticmethod
    def merged_order(lists: list[list[str]]) -> dict[str, float]:
        """Names in one order across runs: the first run's, with a name only a later run has placed right after
        the name it follows in that run."""
        merged: list[str] = []
        known: set[str] = set()
        for names in lists:
            prev: str | None = None
            for name in names:
                if name not in known:
                    merged.insert(merged.index(prev) + 1 if prev is not None else len(merged), name)
                    known.add(name)
                prev = name
        return {name: float(i) for i, name in enumerate(merged)}

    def _order(self, df: pd.DataFrame) -> pd.DataFrame:
        """`df` (one row per run and layer) with each layer's position in network order across runs, the
        runs in their given order within a layer."""
        per_run = [list(g.sort_values("order", kind="stable")["layer"]) for _, g in df.groupby("run", sort=False)]
        order = self.merged_order([list(dict.fromkeys(x)) for x in per_run])
        run_pos = {label: i for i, label in enumerate(self.labels)}
        df = df.assign(order=df["layer"].map(order), run_pos=df["run"].map(run_pos))
        return df.sort_values(["order", "run_pos"], kind="stable").reset_index(drop=True)

    @cached_property
    def layers_last(self) -> pd.DataFrame:
        """Per run and layer, at the run's last epoch with weights: relative change, trainable, new, matrix."""
        parts = []
        for m in self.members:
            w = m.frames.layer_weights
            if w.empty or int(w["epoch"].max()) == 0:
                continue
            last = w[w["epoch"] == w["epoch"].max()]
            parts.append(
                last[
                    ["layer", "order", "epoch", "type", "params", "trainable", "frozen", "new", "rel_change", "matrix"]
                ].assign(run=m.label)
            )
        cols = [
            "run",
            "layer",
            "order",
            "epoch",
            "type",
            "params",
            "trainable",
            "frozen",
            "new",
            "rel_change",
            "matrix",
        ]
        if not parts:
            return pd.DataFrame(columns=cols + ["order", "run_pos"])
        return self._order(pd.concat(parts, ignore_index=True)[cols])

    def _median_over_trained(self, df_of, value: str) -> pd.DataFrame:
        parts = []
        for m in self.members:
            df = df_of(m.frames)
            if df.empty:
                continue
            df = df[(df["epoch"] > 0) & df[value].notna() & df[value].apply(lambda v: math.isfinite(v) and v > 0)]
            if df.empty:
                continue
            g = df.groupby("layer", sort=False)
            parts.append(
                pd.DataFrame({"order": g["order"].first(), value: g[value].median(), "epochs": g[value].size()})
                .reset_index()
                .assign(run=m.label)
            )
        if not parts:
            return pd.DataFrame(columns=["run", "layer", value, "epochs", "order", "run_pos"])
        return self._order(pd.concat(parts, ignore_index=True)[["run", "layer", "order", value, "epochs"]])

    @cached_property
    def update_ratio(self) -> pd.DataFrame:
        """Per run and trainable layer: the median over the trained epochs of its first step's update ratio."""
        return self._median_over_trained(lambda f: f.layer_weights[f.layer_weights["trainable"]], "update_ratio")

    @cached_property
    def grad_norm(self) -> pd.DataFrame:
        """Per run and layer: the median over the trained epochs of its gradient norm."""
        return self._median_over_trained(lambda f: f.layer_grads, "norm")

    @cached_property
    def cka_last(self) -> pd.DataFrame:
        """Per run and probed layer, at the run's last epoch with CKA: linear CKA to its epoch 0, and whether the
        layer is new in that run (a replaced head: compared with its initialisation)."""
        parts = []
        for m in self.members:
            c = m.frames.cka
            if c.empty or int(c["epoch"].max()) == 0:
                continue
            last = c[c["epoch"] == c["epoch"].max()]
            w = m.frames.layer_weights
            new_mods = set(w[w["new"]]["module"]) if not w.empty and not m.frames.from_scratch else set()
            is_new = [layer.split("#")[0] in new_mods for layer in last["layer"]]
            parts.append(last[["layer", "order", "epoch", "cka"]].assign(run=m.label, new=is_new))
        if not parts:
            return pd.DataFrame(columns=["run", "layer", "epoch", "cka", "new", "order", "run_pos"])
        return self._order(pd.concat(parts, ignore_index=True)[["run", "layer", "order", "epoch", "cka", "new"]])

    @cached_property
    def spectrum(self) -> pd.DataFrame:
        """Per run and weight matrix that changed: the effective rank of its change at the run's last epoch."""
        from sftreport.report.spectrum import spectrum_frame

        parts = []
        for m in self.members:
            spec = m.info.spectrum
            if spec is None:
                continue
            df = spectrum_frame(spec, m.frames.module_order)
            if df.empty:
                continue
            # a matrix's row is its module's layer row (its label without '.weight')
            parts.append(df[["layer", "order", "effective_rank", "rank", "energy_1", "exact"]].assign(run=m.label))
        if not parts:
            return pd.DataFrame(
                columns=["run", "layer", "effective_rank", "rank", "energy_1", "exact", "order", "run_pos"]
            )
        return self._order(pd.concat(parts, ignore_index=True))
