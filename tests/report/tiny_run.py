"""Tiny runs built in memory from the schema's models, every number chosen by hand: what the threshold and
frame tests feed to findings.py and frames.py (no disk, no torch, no synthetic noise)."""

from __future__ import annotations

import math
from pathlib import Path

from sftreport.report.frames import RunFrames
from sftreport.schema import (
    CKA,
    ActivationStat,
    Architecture,
    BlockSummary,
    DatasetInfo,
    Environment,
    EpochSnapshot,
    Evaluation,
    Features,
    GradStat,
    Histogram,
    ModuleInfo,
    ProbeInfo,
    Projection,
    RunInfo,
    TensorStats,
    WeightStat,
)
from sftreport.store import Run


def info(
    status: str = "completed",
    classes: list[str] | None = None,
    planned: int | None = None,
    detail: str = "",
    architecture: Architecture | None = None,
    probe_labels: list[int] | None = None,
) -> RunInfo:
    return RunInfo(
        name="tiny",
        status=status,
        status_detail=detail,
        started_at="2026-01-01T00:00:00+00:00",
        model="m",
        weights="w",
        strategy="full",
        dataset=DatasetInfo(name="d", classes=classes or ["a", "b"], train_size=1, val_size=1, image_size=8),
        environment=Environment(python="3", platform="p", sftreport="0", device="cpu"),
        architecture=architecture,
        probe=ProbeInfo(labels=probe_labels, size=len(probe_labels)) if probe_labels is not None else None,
        planned_epochs=planned,
    )


def ev(correct: int, count: int, loss: float = 1.0) -> Evaluation:
    """Two classes: class 0 always right (`correct` samples), class 1 always wrong: accuracy correct/count."""
    wrong = count - correct
    return Evaluation(
        loss=loss,
        accuracy=correct / count if count else 0.0,
        count=count,
        confusion=[[correct, 0], [wrong, 0]],
        per_class_accuracy=[1.0 if correct else None, 0.0 if wrong else None],
    )


def snap(epoch: int, step: int | None = None, **kw) -> EpochSnapshot:
    return EpochSnapshot(epoch=epoch, step=epoch if step is None else step, **kw)


def frames(epochs: list[EpochSnapshot], dropped: str | None = None, **info_kw) -> RunFrames:
    return RunFrames(Run(root=Path("/nonexistent-run"), info=info(**info_kw), epochs=epochs, dropped=dropped))


def tstats(count: int, mean: float = 0.0, m2: float = 0.0, lo: float = 0.0, hi: float = 0.0, zeros: int = 0):
    return TensorStats(count=count, mean=mean, m2=m2, min=lo, max=hi, zeros=zeros)


def hist(lo: float = 0.0, hi: float = 1.0, counts: list[int] | None = None, below: int = 0, above: int = 0):
    return Histogram(lo=lo, hi=hi, counts=counts or [0], below=below, above=above)


def wstat(
    name: str,
    *,
    shape: list[int] | None = None,
    trainable: bool = True,
    new: bool = False,
    diff_sq: float = 0.0,
    ref_sq: float = 1.0,
    update_sq: float | None = None,
    before: float | None = None,
    m2: float = 0.0,
) -> WeightStat:
    shape = [2] if shape is None else shape
    return WeightStat(
        name=name,
        module=name.rpartition(".")[0],
        shape=shape,
        trainable=trainable,
        new=new,
        stats=tstats(math.prod(shape), m2=m2),
        hist=hist(),
        diff_sq=diff_sq,
        ref_sq=ref_sq,
        update_sq=update_sq,
        before_update_sq=before,
    )


def moved(name: str, rel: float, **kw) -> WeightStat:
    """A parameter whose relative change is exactly `rel` (‖W₀‖² = 1, ‖Wₜ−W₀‖² = rel²)."""
    return wstat(name, diff_sq=rel * rel, ref_sq=1.0, **kw)


def ratio(name: str, r: float, **kw) -> WeightStat:
    """A parameter whose update-to-weight ratio is `r` (‖W‖² = 1, ‖update‖² = r²)."""
    return wstat(name, update_sq=r * r, before=1.0, **kw)


def gstat(name: str, mean: float, samples: int = 1, nonfinite: int = 0, norm_max: float | None = None) -> GradStat:
    finite = samples - nonfinite
    return GradStat(
        name=name,
        module=name.rpartition(".")[0],
        samples=samples,
        norm_sum=mean * finite,
        norm_max=mean if norm_max is None else norm_max,
        nonfinite=nonfinite,
    )


def astat(
    module: str,
    channels: int,
    dead: int,
    nonnegative: bool = True,
    count: int = 100,
    mean: float = 0.5,
    m2: float = 25.0,
    lo: float = 0.0,
    hi: float = 2.0,
    zeros: int = 10,
    type: str = "ReLU",
) -> ActivationStat:
    return ActivationStat(
        module=module,
        type=type,
        shape=[channels],
        stats=tstats(count, mean=mean, m2=m2, lo=lo, hi=hi, zeros=zeros),
        channels=channels,
        dead_channels=dead,
        nonnegative=nonnegative,
        hist=hist(),
    )


def features(knn: float, probe: float, k: int = 5, xy: list[tuple[float, float]] | None = None) -> Features:
    xy = xy or [(0.0, 0.0)]
    return Features(
        module="fc",
        dim=4,
        projections=[Projection(method="pca", x=[p[0] for p in xy], y=[p[1] for p in xy])],
        knn_accuracy=knn,
        knn_k=k,
        probe_accuracy=probe,
    )


def cka(values: dict[str, float]) -> list[CKA]:
    return [CKA(module=m, value=v) for m, v in values.items()]


def architecture(modules: list[tuple[str, str, int, int, int]]) -> Architecture:
    """(name, type, params, trainable, new) rows; the totals and one block per row are derived from them."""
    rows = [
        ModuleInfo(name=n, type=t, depth=0 if not n else n.count(".") + 1, params=p, trainable=tr, new=nw)
        for n, t, p, tr, nw in modules
    ]
    return Architecture(
        model_type="M",
        modules=rows,
        blocks=[
            BlockSummary(name=r.name or "(model)", type=r.type, params=r.params, trainable=r.trainable, new=r.new)
            for r in rows
        ],
        total_params=sum(r.params for r in rows),
        trainable_params=sum(r.trainable for r in rows),
        new_params=sum(r.new for r in rows),
        input_shape=[3, 8, 8],
    )
