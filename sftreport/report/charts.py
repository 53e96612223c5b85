"""Altair charts: pure functions of the frames in frames.py (no run, no I/O).

Encodings are always channel objects (alt.X, alt.Tooltip, ...), never shorthand strings or dicts: Altair
turns a string or dict into a channel through a schema lookup that costs ~5 ms each (measured), the
channel object costs ~0.1 ms, and a report has a few hundred of them.

Every chart has axis titles with units and a legend wherever colour carries meaning. Sizes are passed
in (the HTML page and an A4 page have different widths). Untrusted text (class and layer names) only
ever appears as data values, never in field names or expressions.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeAlias

import altair as alt
import pandas as pd

from sftreport.report import fmt, thresholds

# one colour per meaning, the same in every chart
TRAIN, TRAIN_STEP, VAL = "#1f77b4", "#aec7e8", "#ff7f0e"
PRETRAINED, FINETUNED = "#9e9e9e", "#1f77b4"
OUTSIDE = "#d62728"  # histogram mass below or above the fixed range
GREY_CELL = "#e8e8e8"
STRIP_ROOM = 16  # pixels between a layer chart's row names and its cells that hold a component strip

# the colour schemes of the continuous scales built by log_scale and linear_scale (Vega's scheme names)
ContinuousScheme = Literal["viridis", "plasma"]

# what alt.layer returns: a FacetChart when the layers share facet encodings (none of ours do), else a LayerChart
Layered: TypeAlias = alt.LayerChart | alt.FacetChart

LEGEND_BOTTOM: dict[str, Any] = {"orient": "bottom", "direction": "horizontal"}
EXPLICIT_TICKS = 12  # epoch axes and legends spanning at most this many epochs list every epoch


def epoch_values(epochs) -> dict[str, Any]:
    """Axis or legend keywords that label whole epochs only: Vega's own ticks on a short epoch range fall on
    halves, which the "d" format prints as "0 1 1 2 2"."""
    values = sorted({int(e) for e in epochs})
    if values and values[-1] - values[0] <= EXPLICIT_TICKS:
        return {"values": list(range(values[0], values[-1] + 1)), "format": "d"}
    return {"tickMinStep": 1, "format": "d"}


def epoch_axis(epochs) -> alt.Axis:
    return alt.Axis(**epoch_values(epochs))


def tip(field: str, title: str | None = None, format: str | None = None) -> alt.Tooltip:
    kw: dict[str, Any] = {}
    if title:
        kw["title"] = title
    if format:
        kw["format"] = format
    return alt.Tooltip(field, **kw)


def log_scale(values: pd.Series, scheme: ContinuousScheme) -> alt.Scale:
    """A log colour scale over the positive finite values (a decade's room when they are all one value)."""
    v = values[values.apply(fmt.finite) & (values > 0)]
    if v.empty:
        return alt.Scale(type="log", scheme=scheme)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    return alt.Scale(type="log", scheme=scheme, domain=[lo, hi])


def linear_scale(values: pd.Series, scheme: ContinuousScheme, hi: float | None = None) -> alt.Scale:
    v = values[values.apply(fmt.finite)]
    lo = float(v.min()) if not v.empty else 0.0
    top = hi if hi is not None else (float(v.max()) if not v.empty else 1.0)
    if top <= lo:
        lo = top - 0.1
    return alt.Scale(scheme=scheme, domain=[lo, top])


def decades(lo: float, hi: float) -> list[float]:
    """Powers of ten from below `lo` to above `hi`: the ticks and grid lines of a log axis."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    return [10.0**k for k in range(a, b + 1)]


def _resolve_color(how: Literal["independent", "shared"]) -> alt.Resolve:
    """A resolve given to the concatenation's constructor (resolve_scale() would copy the whole chart)."""
    return alt.Resolve(scale=alt.ScaleResolveMap(color=how))


def _independent_xy() -> alt.Resolve:
    return alt.Resolve(scale=alt.ScaleResolveMap(x="independent", y="independent"))


def row_step(n: int) -> int:
    """Pixels per row of a layer-by-something chart: readable labels, bounded height."""
    if n <= 20:
        return 16
    if n <= 40:
        return 13
    if n <= 70:
        return 10
    return 8


def label_font(n: int) -> int:
    return 11 if n <= 40 else 9 if n <= 70 else 8


def class_scale(classes: list[str]) -> alt.Scale:
    return alt.Scale(domain=classes, scheme="tableau10" if len(classes) <= 10 else "tableau20")


def class_legend(classes: list[str]) -> alt.Legend | None:
    if len(classes) > 30:
        return None
    return alt.Legend(title="class", columns=1 if len(classes) <= 12 else 2, symbolLimit=0, labelLimit=140)


# --------------------------------------------------------------------------- training

SWITCH = "#555555"  # lp-ft's switch from the linear probe to full fine-tuning
SOURCE = "#8c564b"  # the source task's accuracy (forgetting)


def switch_rule(x: float, field: str) -> alt.Chart:
    """lp-ft's switch: a dashed vertical rule at the end of the last linear-probe epoch, on an epoch axis
    whose field is `field` (the rule shares the chart's x scale)."""
    df = pd.DataFrame({field: [x], "what": [f"lp-ft: linear probe until epoch {x:g}, then every layer trains"]})
    return (
        alt.Chart(df)
        .mark_rule(color=SWITCH, strokeWidth=1.5, strokeDash=[6, 4])
        .encode(x=alt.X(f"{field}:Q", title="epoch"), tooltip=[alt.Tooltip("what:N", title="lp-ft")])
    )


def with_switch(chart, switch: float | None, field: str):
    """`chart` with lp-ft's switch drawn on it (the chart itself when there is none)."""
    if switch is None:
        return chart
    return alt.layer(chart, switch_rule(switch, field))


def loss_curves(
    epochs: pd.DataFrame, steps: pd.DataFrame, width: int, height: int = 260, switch: float | None = None
) -> Layered:
    """Training loss per step (thin) and per epoch, validation loss per epoch, on one epoch axis."""
    series = ["training loss, per step", "training loss, epoch mean", "validation loss"]
    colors = [TRAIN_STEP, TRAIN, VAL]
    rows = []
    for r in steps.itertuples():
        rows.append({"series": series[0], "x": r.x, "loss": r.loss, "epoch": r.epoch, "step": r.step})
    for r in epochs.itertuples():
        if not math.isnan(r.train_loss):
            rows.append({"series": series[1], "x": r.epoch, "loss": r.train_loss, "epoch": r.epoch, "step": r.step})
        if not math.isnan(r.val_loss) or r.epoch > 0:
            rows.append({"series": series[2], "x": r.epoch, "loss": r.val_loss, "epoch": r.epoch, "step": r.step})
    df = pd.DataFrame(rows, columns=["series", "x", "loss", "epoch", "step"])
    finite = df["loss"].dropna()
    finite = finite[finite > 0]
    log = len(finite) > 1 and finite.max() / finite.min() > 30
    y = alt.Y(
        "loss:Q",
        title="loss (cross-entropy)" + (", log scale" if log else ""),
        scale=alt.Scale(type="log") if log else alt.Scale(zero=False),
    )
    color = alt.Color(
        "series:N", title=None, scale=alt.Scale(domain=series, range=colors), legend=alt.Legend(**LEGEND_BOTTOM)
    )
    x = alt.X("x:Q", title="epoch", axis=epoch_axis(df["epoch"]))
    tips = [
        alt.Tooltip("series:N"),
        alt.Tooltip("epoch:Q"),
        alt.Tooltip("step:Q", title="optimizer step"),
        alt.Tooltip("loss:Q", format=".4g"),
    ]
    base = alt.Chart().encode(x=x, y=y, color=color, tooltip=tips)
    step_line = base.transform_filter(alt.datum.series == series[0]).mark_line(strokeWidth=1, opacity=0.8)
    epoch_line = base.transform_filter(alt.datum.series != series[0]).mark_line(strokeWidth=2.2, point=True)
    layers = [step_line, epoch_line] + ([switch_rule(switch, "x")] if switch is not None else [])
    return alt.layer(*layers, data=df, width=width, height=height)


def accuracy_curves(epochs: pd.DataFrame, width: int, height: int = 240, switch: float | None = None):
    series = ["training accuracy", "validation accuracy"]
    rows = []
    for r in epochs.itertuples():
        if not math.isnan(r.train_accuracy):
            rows.append({"series": series[0], "epoch": r.epoch, "accuracy": r.train_accuracy})
        if not math.isnan(r.val_accuracy):
            rows.append({"series": series[1], "epoch": r.epoch, "accuracy": r.val_accuracy})
    df = pd.DataFrame(rows, columns=["series", "epoch", "accuracy"])
    chart = (
        alt.Chart(df)
        .mark_line(point=True, strokeWidth=2.2)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=epoch_axis(epochs["epoch"])),
            y=alt.Y("accuracy:Q", title="accuracy (%)", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False)),
            color=alt.Color(
                "series:N",
                title=None,
                scale=alt.Scale(domain=series, range=[TRAIN, VAL]),
                legend=alt.Legend(**LEGEND_BOTTOM),
            ),
            tooltip=[alt.Tooltip("series:N"), alt.Tooltip("epoch:Q"), alt.Tooltip("accuracy:Q", format=".2%")],
        )
        .properties(width=width, height=height)
    )
    return with_switch(chart, switch, "epoch")


def learning_rate(
    steps: pd.DataFrame, epochs: pd.DataFrame, width: int, height: int = 160, switch: float | None = None
):
    """Learning rate per step when the steps carry it, else per epoch."""
    df = steps[["x", "lr", "step", "epoch"]].dropna(subset=["lr"]) if not steps.empty else steps
    if df.empty:
        df = epochs[["epoch", "lr", "step"]].dropna(subset=["lr"]).assign(x=lambda d: d["epoch"])
    chart = (
        alt.Chart(df)
        .mark_line(color="#4c78a8", strokeWidth=2, interpolate="step-after")
        .encode(
            x=alt.X("x:Q", title="epoch", axis=epoch_axis(epochs["epoch"])),
            y=alt.Y("lr:Q", title="learning rate", axis=alt.Axis(format="~g")),
            tooltip=[
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("step:Q", title="optimizer step"),
                alt.Tooltip("lr:Q", title="learning rate", format=".3e"),
            ],
        )
        .properties(width=width, height=height)
    )
    return with_switch(chart, switch, "x")


def forgetting_curves(df: pd.DataFrame, width: int, height: int = 240, switch: float | None = None) -> Layered:
    """Source-task accuracy (the backbone with its pretrained head kept aside) next to the target task's
    validation accuracy per epoch; a dashed line marks how far the source accuracy may fall from epoch 0's
    before the report calls it forgetting."""
    series = ["source task, pretrained head", "target task, validation"]
    rows = []
    for r in df.itertuples():
        rows.append({"series": series[0], "epoch": r.epoch, "accuracy": r.source_accuracy})
        if not math.isnan(r.val_accuracy):
            rows.append({"series": series[1], "epoch": r.epoch, "accuracy": r.val_accuracy})
    data = pd.DataFrame(rows, columns=["series", "epoch", "accuracy"])
    x = alt.X("epoch:Q", title="epoch", axis=epoch_axis(df["epoch"]))
    lines = (
        alt.Chart(data)
        .mark_line(point=True, strokeWidth=2.2)
        .encode(
            x=x,
            y=alt.Y("accuracy:Q", title="accuracy (%)", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False)),
            color=alt.Color(
                "series:N",
                title=None,
                scale=alt.Scale(domain=series, range=[SOURCE, VAL]),
                legend=alt.Legend(**LEGEND_BOTTOM),
            ),
            tooltip=[alt.Tooltip("series:N"), alt.Tooltip("epoch:Q"), alt.Tooltip("accuracy:Q", format=".2%")],
        )
    )
    layers: list[Any] = [lines]
    first = df[df["epoch"] == 0]
    if not first.empty:
        limit = float(first["source_accuracy"].iloc[0]) - thresholds.FORGETTING_DROP
        line = pd.DataFrame(
            {"accuracy": [limit], "what": [f"epoch 0's source accuracy − {thresholds.FORGETTING_DROP * 100:g} points"]}
        )
        layers.append(
            alt.Chart(line)
            .mark_rule(color=SOURCE, strokeDash=[3, 3], opacity=0.7)
            .encode(y=alt.Y("accuracy:Q"), tooltip=[alt.Tooltip("what:N", title="forgetting threshold")])
        )
    if switch is not None:
        layers.append(switch_rule(switch, "epoch"))
    return alt.layer(*layers, width=width, height=height)


def logged_metrics(df: pd.DataFrame, epochs: pd.Series, width: int, height: int = 160) -> alt.FacetChart:
    """One small panel per logged metric (each with its own y scale: a loss and an accuracy do not share
    one), on the epoch axis."""
    metrics = list(dict.fromkeys(df["metric"]))
    columns = min(3, len(metrics))
    panel = max(120, (width - 60 * columns) // columns)
    return (
        alt.Chart(df)
        .mark_line(point=True, strokeWidth=2, color=VAL)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=epoch_axis(epochs)),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format="~g")),
            tooltip=[alt.Tooltip("metric:N"), alt.Tooltip("epoch:Q"), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(width=panel, height=height)
        .facet(facet=alt.Facet("metric:N", title=None, sort=metrics), columns=columns)
        .resolve_scale(y="independent")
    )


def confusion_pair(
    frames: list[tuple[str, pd.DataFrame]], classes: list[str], width: int, max_text: int = 12
) -> alt.HConcatChart:
    """Confusion matrices side by side (rows: true class, share of the row), one colour scale."""
    n = len(classes)
    panel = max(120, min(360, (width - 60 * len(frames)) // max(1, len(frames)) - 70))
    charts = []
    for title, df in frames:
        # the panel's title in its data: two identical matrices (a model whose predictions did not change)
        # would otherwise become one shared dataset, whose text columns Vega then refuses to parse
        df = df[["true", "pred", "count", "share"]].assign(panel=title)
        base = alt.Chart().encode(
            x=alt.X(
                "pred:N",
                title="predicted class",
                scale=alt.Scale(domain=classes),
                axis=alt.Axis(labelAngle=-45 if n > 6 else 0, labelLimit=80),
            ),
            y=alt.Y("true:N", title="true class", scale=alt.Scale(domain=classes), axis=alt.Axis(labelLimit=80)),
        )
        rect = base.mark_rect().encode(
            color=alt.Color(
                "share:Q",
                title="share of the true class",
                scale=alt.Scale(scheme="blues", domain=[0, 1]),
                legend=alt.Legend(format="%", **LEGEND_BOTTOM),
            ),
            tooltip=[
                alt.Tooltip("true:N", title="true"),
                alt.Tooltip("pred:N", title="predicted"),
                alt.Tooltip("count:Q", title="samples"),
                alt.Tooltip("share:Q", title="share of row", format=".1%"),
            ],
        )
        if n <= max_text:
            # counts in dark text on light cells, white on dark ones (a constant colour per layer: the colour
            # channel stays the one shared scale of the cells)
            size = 9 if n > 8 else 10
            dark = (
                base.transform_filter("datum.share <= 0.5")
                .mark_text(fontSize=size, color="#333333")
                .encode(text=alt.Text("count:Q"))
            )
            light = (
                base.transform_filter("datum.share > 0.5")
                .mark_text(fontSize=size, color="white")
                .encode(text=alt.Text("count:Q"))
            )
            layer = alt.layer(rect, dark, light, data=df, title=title, width=panel, height=panel)
        else:
            layer = alt.layer(rect, data=df, title=title, width=panel, height=panel)
        charts.append(layer)
    return alt.hconcat(*charts, spacing=30, resolve=_resolve_color("shared"))


def per_class_accuracy(df: pd.DataFrame, classes: list[str], width: int) -> Layered:
    """Dumbbell: each class's validation accuracy before and after fine-tuning."""
    whiches = list(dict.fromkeys(df["which"]))
    colors = [PRETRAINED, FINETUNED][: len(whiches)]
    n = len(classes)
    y = alt.Y(
        "class:N",
        title="class",
        scale=alt.Scale(domain=classes),
        axis=alt.Axis(labelFontSize=label_font(n), labelLimit=160),
    )
    xscale, xaxis = alt.Scale(domain=[0, 1]), alt.Axis(format="%", tickCount=5)
    x = alt.X("accuracy:Q", title="validation accuracy (%)", axis=xaxis, scale=xscale)
    rule = (
        alt.Chart()
        .mark_rule(color="#bbbbbb", strokeWidth=2)
        .encode(
            y=y,
            x=alt.X("min(accuracy):Q", title="validation accuracy (%)", axis=xaxis, scale=xscale),
            x2=alt.X2("max(accuracy)"),
        )
    )
    pts = (
        alt.Chart()
        .mark_circle(size=70, opacity=1)
        .encode(
            y=y,
            x=x,
            color=alt.Color(
                "which:N", title=None, scale=alt.Scale(domain=whiches, range=colors), legend=alt.Legend(**LEGEND_BOTTOM)
            ),
            tooltip=[
                alt.Tooltip("class:N"),
                alt.Tooltip("which:N", title="model"),
                alt.Tooltip("accuracy:Q", format=".1%"),
            ],
        )
    )
    df = df[["class", "which", "accuracy"]]
    return alt.layer(rule, pts, data=df, width=width, height=alt.Step(row_step(n) + 2))


# --------------------------------------------------------------------------- architecture

PARTS = ["pretrained, frozen", "pretrained, fine-tuned", "new, trained", "new, frozen"]
PART_COLORS = ["#c7c7c7", "#4c78a8", "#f58518", "#ffd8a8"]


def params_by_block(df: pd.DataFrame, width: int, axis_title: str = "block (top-level module)") -> alt.Chart:
    """Stacked horizontal bars: parameters per block (or component), split by pretrained/new and
    trained/frozen."""
    blocks = list(dict.fromkeys(df["block"]))
    present = [p for p in PARTS if p in set(df["part"])]
    colors = [c for p, c in zip(PARTS, PART_COLORS) if p in present]
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            y=alt.Y("block:N", title=axis_title, sort=blocks, axis=alt.Axis(labelLimit=200)),
            x=alt.X("sum(params):Q", title="parameters", axis=alt.Axis(format="~s")),
            color=alt.Color(
                "part:N", title=None, scale=alt.Scale(domain=present, range=colors), legend=alt.Legend(**LEGEND_BOTTOM)
            ),
            order=alt.Order("part_order:Q"),
            tooltip=[
                alt.Tooltip("block:N"),
                alt.Tooltip("type:N"),
                alt.Tooltip("part:N"),
                alt.Tooltip("params:Q", title="parameters", format=","),
            ],
        )
        .properties(width=width, height=alt.Step(row_step(len(blocks)) + 4))
    )


# --------------------------------------------------------------------------- layer × epoch


def heatmap(
    df: pd.DataFrame | None,
    value: str,
    layers: list[str],
    *,
    width: int,
    legend_title: str,
    scale: alt.Scale,
    legend_format: str = ".2g",
    tooltip_format: str = ".3g",
    extra_tooltips: list | None = None,
    title: str | None = None,
    y_labels: bool = True,
    epochs: list[int] | None = None,
    strip: alt.Chart | None = None,
) -> alt.Chart | Layered:
    """Layers (network order, top to bottom) × epochs, coloured by `value`. Cells whose value cannot be
    coloured (missing, or not positive on a log scale) are left out and show the light grey background.
    With `df=None` the chart has no data of its own (a panel of a concatenation that carries the data).
    `strip`: a colour strip drawn between the layer names and the cells (charts_components.strip)."""
    n = len(layers)
    if epochs is None:
        epochs = sorted(df["epoch"].unique().tolist()) if df is not None else []
    padding: dict[str, Any] = {"labelPadding": STRIP_ROOM} if strip is not None else {}
    y = alt.Y(
        "layer:N",
        title="layer (network order)" if y_labels else None,
        scale=alt.Scale(domain=layers),
        axis=alt.Axis(
            labelFontSize=label_font(n),
            labels=y_labels,
            ticks=False,
            domain=False,
            **padding,
        ),
    )
    x = alt.X(
        "epoch:O",
        title="epoch",
        scale=alt.Scale(domain=epochs),
        axis=alt.Axis(labelAngle=0, labelOverlap="parity", ticks=False, domain=False),
    )
    tips = (
        [alt.Tooltip("layer:N"), alt.Tooltip("epoch:O")]
        + list(extra_tooltips or [])
        + [alt.Tooltip(f"{value}:Q", title=legend_title, format=tooltip_format)]
    )
    valid = f"isValid(datum['{value}']) && isFinite(datum['{value}'])"
    if getattr(scale, "type", None) == "log":
        valid += f" && datum['{value}'] > 0"
    if df is not None:
        keep = ["layer", "epoch", value] + [t.shorthand.split(":")[0] for t in (extra_tooltips or [])]
        df = df[list(dict.fromkeys(keep))]
    cells = (
        (alt.Chart(df) if df is not None else alt.Chart())
        .transform_filter(valid)
        .mark_rect()
        .encode(
            x=x,
            y=y,
            tooltip=tips,
            color=alt.Color(
                f"{value}:Q",
                title=legend_title,
                scale=scale,
                legend=alt.Legend(
                    format=legend_format,
                    gradientLength=max(100, min(240, width - 40)),
                    labelOverlap=True,
                    tickCount=4,
                    **LEGEND_BOTTOM,
                ),
            ),
        )
    )
    frame: dict[str, Any] = dict(
        width=width, height=alt.Step(row_step(n)), view=alt.ViewBackground(fill=GREY_CELL, stroke=None)
    )
    if title is not None:
        frame["title"] = title
    if strip is None:
        return cells.properties(**frame)
    return alt.layer(strip, cells, resolve=_resolve_color("independent")).properties(**frame)


def update_ratio(
    df: pd.DataFrame, layers: list[str], width: int, y_labels: bool = True, title: str | None = None
) -> Layered:
    """Update-to-weight ratio of one optimizer step per epoch, per layer, on a log axis, with the healthy band."""
    n = len(layers)
    lo, hi = thresholds.UPDATE_RATIO_BAND
    vals = df["update_ratio"].dropna()
    vals = vals[vals > 0]
    dmin = min(lo / 10, float(vals.min()) / 2) if len(vals) else lo / 10
    dmax = max(hi * 10, float(vals.max()) * 2) if len(vals) else hi * 10
    xscale = alt.Scale(type="log", domain=[dmin, dmax])
    y = alt.Y(
        "layer:N",
        title="layer (network order)" if y_labels else None,
        scale=alt.Scale(domain=layers),
        axis=alt.Axis(labelFontSize=label_font(n), grid=False, labels=y_labels, ticks=y_labels),
    )
    band = (
        alt.Chart(pd.DataFrame([{"lo": lo, "hi": hi}]))
        .mark_rect(color="#2ca02c", opacity=0.12)
        .encode(x=alt.X("lo:Q", scale=xscale), x2=alt.X2("hi"))
    )
    target = (
        alt.Chart(pd.DataFrame([{"target": thresholds.UPDATE_RATIO_TARGET}]))
        .mark_rule(color="#2ca02c", strokeDash=[4, 3])
        .encode(x=alt.X("target:Q", scale=xscale))
    )
    df = df[["layer", "epoch", "type", "update_ratio"]]
    pts = (
        alt.Chart()
        .mark_circle(size=36, opacity=0.85)
        .encode(
            y=y,
            x=alt.X(
                "update_ratio:Q",
                title="‖update‖ / ‖W‖ of one step (log scale)"
                if not y_labels
                else f"‖update‖ / ‖W‖ of one step (log scale; green band {thresholds.band_text()})",
                scale=xscale,
                axis=alt.Axis(format=".0e", values=decades(dmin, dmax)),
            ),
            color=alt.Color(
                "epoch:Q",
                title="epoch",
                scale=alt.Scale(scheme="viridis"),
                legend=alt.Legend(**epoch_values(df["epoch"]), **LEGEND_BOTTOM),
            ),
            tooltip=[
                alt.Tooltip("layer:N"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("type:N"),
                alt.Tooltip("update_ratio:Q", title="update / weight", format=".3e"),
            ],
        )
    )
    return alt.layer(band, target, pts, data=df, title=title, width=width, height=alt.Step(row_step(n)))


def side_by_side(panels: list) -> alt.HConcatChart:
    """Panels that share their rows (layers), each with its own colour scale and legend."""
    return alt.hconcat(*panels, spacing=10, resolve=_resolve_color("independent"))


def grad_total(df: pd.DataFrame, width: int, height: int = 200) -> Layered:
    """Whole-model gradient norm per epoch (mean over sampled steps) and the largest tensor norm seen;
    red marks epochs with non-finite gradients."""
    series = ["model gradient norm (mean of sampled steps)", "largest single-tensor norm"]
    rows = []
    for r in df.itertuples():
        rows.append({"series": series[0], "epoch": r.epoch, "norm": r.norm, "nonfinite": r.nonfinite})
        rows.append({"series": series[1], "epoch": r.epoch, "norm": r.max_norm, "nonfinite": r.nonfinite})
    long = pd.DataFrame(rows, columns=["series", "epoch", "norm", "nonfinite"])
    long = long[long["norm"] > 0]
    finite = long["norm"][long["norm"].apply(math.isfinite)]
    ticks = decades(float(finite.min()), float(finite.max())) if len(finite) else None
    if ticks is not None and len(ticks) <= 2:  # less than a decade: a few plain ticks read better
        ticks = None
    tick_values: dict[str, Any] = {"values": ticks} if ticks else {}
    line = (
        alt.Chart()
        .mark_line(point=True, strokeWidth=2)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=epoch_axis(df["epoch"])),
            y=alt.Y(
                "norm:Q",
                title="gradient L2 norm (log scale)",
                scale=alt.Scale(type="log"),
                axis=alt.Axis(format="~g", **tick_values),
            ),
            color=alt.Color(
                "series:N",
                title=None,
                scale=alt.Scale(domain=series, range=["#4c78a8", "#9ecae9"]),
                legend=alt.Legend(**LEGEND_BOTTOM),
            ),
            tooltip=[
                alt.Tooltip("series:N"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("norm:Q", format=".3e"),
                alt.Tooltip("nonfinite:Q", title="steps with NaN/inf gradients"),
            ],
        )
    )
    bad = df[df["nonfinite"] > 0]
    if bad.empty:
        return alt.layer(line, data=long, width=width, height=height)
    rules = (
        alt.Chart(bad[["epoch", "nonfinite"]])
        .mark_rule(color="#d62728", strokeWidth=2, strokeDash=[4, 2])
        .encode(
            x=alt.X("epoch:Q"),
            tooltip=[alt.Tooltip("epoch:Q"), alt.Tooltip("nonfinite:Q", title="sampled steps with NaN/inf gradients")],
        )
    )
    return alt.layer(rules, line, data=long, width=width, height=height)


def activation_heatmaps(
    df: pd.DataFrame, layers: list[str], width: int, strip: alt.Chart | None = None
) -> alt.HConcatChart:
    """Four panels over layers × epochs: mean, std, zero fraction, dead-channel fraction (`strip`: the
    first panel's component strip, as in `heatmap`)."""
    epochs = sorted(df["epoch"].unique().tolist())
    panel = max(70, min(190, (width - 200) // 4, 40 * len(epochs)))
    df = df[["layer", "epoch", "type", "channels", "dead", "mean", "std", "zero_fraction", "dead_fraction"]]
    tips = [alt.Tooltip("type:N"), alt.Tooltip("channels:Q"), alt.Tooltip("dead:Q", title="dead channels")]
    pos = df["std"].dropna()
    pos = pos[pos > 0]
    std_scale = (
        alt.Scale(type="log", scheme="viridis")
        if len(pos) and pos.max() / pos.min() > 20
        else alt.Scale(scheme="viridis")
    )
    dead_max = float(df["dead_fraction"].max()) if df["dead_fraction"].notna().any() else 0.0
    common: dict[str, Any] = dict(width=panel, extra_tooltips=tips, epochs=epochs)
    panels = [
        heatmap(
            None,
            "mean",
            layers,
            legend_title="mean",
            title="mean",
            scale=alt.Scale(scheme="blueorange", domainMid=0),
            strip=strip,
            **common,
        ),
        heatmap(
            None,
            "std",
            layers,
            legend_title="standard deviation",
            title="standard deviation",
            scale=std_scale,
            y_labels=False,
            **common,
        ),
        heatmap(
            None,
            "zero_fraction",
            layers,
            legend_title="zeros (%)",
            title="zero outputs",
            scale=alt.Scale(scheme="oranges", domain=[0, 1]),
            legend_format="%",
            tooltip_format=".1%",
            y_labels=False,
            **common,
        ),
        heatmap(
            None,
            "dead_fraction",
            layers,
            legend_title="dead channels (%)",
            title="dead channels",
            scale=alt.Scale(scheme="reds", domain=[0, max(0.1, dead_max)]),
            legend_format="%",
            tooltip_format=".1%",
            y_labels=False,
            **common,
        ),
    ]
    return alt.hconcat(*panels, data=df, spacing=12, resolve=_resolve_color("independent"))


# --------------------------------------------------------------------------- histograms


def histograms(
    df: pd.DataFrame,
    facet: str,
    facets: list[str],
    *,
    width: int,
    columns: int,
    first_epoch: int,
    color_epochs: bool,
    x_title: str,
    sqrt_y: bool = False,
    start_label: str = "pretrained",
) -> alt.FacetChart:
    """Small multiples of histograms: epoch 0 as a grey area, later epochs as lines (a sequential colour
    per epoch, or one colour when only the last epoch is shown), and red bars a bin wide just outside the
    fixed range for the share of values that fell below or above it (`part` in frames.weight_hist)."""
    # each panel also carries its y axis (labels and title, ~75 px) and the facet spacing outside its width
    panel_w = max(140, (width - 105 * columns) // columns)
    y = alt.Y(
        "share:Q",
        title="share of values" + (" (square-root scale)" if sqrt_y else ""),
        scale=alt.Scale(type="sqrt") if sqrt_y else alt.Scale(),
        axis=alt.Axis(format="~%"),
    )
    x = alt.X("x:Q", title=x_title, axis=alt.Axis(format=".3~r", tickCount=5, labelOverlap=True))
    tips = [
        alt.Tooltip(f"{facet}:N"),
        alt.Tooltip("epoch:Q"),
        alt.Tooltip("x0:Q", title="from", format=".3g"),
        alt.Tooltip("x1:Q", title="to", format=".3g"),
        alt.Tooltip("share:Q", format=".2%"),
    ]
    inside = alt.Chart().transform_filter(alt.datum.part == "inside")
    area = (
        inside.transform_filter(alt.datum.epoch == first_epoch)
        .mark_area(interpolate="step", color=PRETRAINED, opacity=0.45)
        .encode(x=x, y=y, tooltip=tips)
    )
    later = inside.transform_filter(alt.datum.epoch != first_epoch)
    if color_epochs:
        color = alt.Color(
            "epoch:Q",
            title=f"epoch (grey area: {start_label})",
            scale=alt.Scale(scheme="viridis"),
            legend=alt.Legend(**epoch_values(df["epoch"]), **LEGEND_BOTTOM),
        )
    else:
        color = alt.Color("label:N", title=None, scale=alt.Scale(range=[FINETUNED]), legend=alt.Legend(**LEGEND_BOTTOM))
        trained = "trained" if start_label == "initial" else "fine-tuned"
        later = later.transform_calculate(label=f"'{trained} (grey area: {start_label})'")
    lines = later.mark_line(interpolate="step", strokeWidth=1.4).encode(
        x=x, y=y, color=color, detail=alt.Detail("epoch:Q"), tooltip=tips
    )
    outside = (
        alt.Chart()
        .transform_filter(alt.datum.part != "inside")
        .transform_calculate(
            where="datum.part == 'below' ? 'below the fixed range' : 'above the fixed range'", zero="0"
        )
        .mark_rect(color=OUTSIDE, opacity=0.45)
        .encode(
            x=alt.X("x0:Q"),
            x2=alt.X2("x1"),
            y=y,
            y2=alt.Y2("zero:Q"),
            tooltip=[
                alt.Tooltip(f"{facet}:N"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("where:N", title="values"),
                alt.Tooltip("share:Q", format=".2%"),
            ],
        )
    )
    layers = [area]
    if (df["epoch"] != first_epoch).any():  # else only epoch 0 is recorded yet
        layers.append(lines)
    if (df["part"] != "inside").any():
        layers.append(outside)
    return alt.layer(*layers, data=df, width=panel_w, height=130).facet(
        facet=alt.Facet(f"{facet}:N", title=None, sort=facets, header=alt.Header(labelFontSize=11, labelLimit=300)),
        columns=columns,
        spacing={"row": 16, "column": 28},
        resolve=_independent_xy(),
    )


# --------------------------------------------------------------------------- features


def _xy_domains(df: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Padded x and y ranges of the finite points ([-1, 1] when there are none: a diverged epoch)."""

    def dom(col):
        v = df[col][df[col].apply(lambda x: x is not None and math.isfinite(x))]
        if v.empty:
            return [-1.0, 1.0]
        lo, hi = float(v.min()), float(v.max())
        pad = (hi - lo) * 0.05 or 1.0
        return [round(lo - pad, 3), round(hi + pad, 3)]

    return dom("x"), dom("y")


def axes_comparable(df: pd.DataFrame, epochs: list[int], factor: float = 5.0) -> bool:
    """Whether one set of axes for all `epochs` keeps every epoch readable (no epoch's points spread over
    less than 1/`factor` of the shared range, as happens when a few epochs blow the features up)."""
    sub = df[df["epoch"].isin(epochs)].dropna(subset=["x", "y"])
    sub = sub[sub["x"].apply(math.isfinite) & sub["y"].apply(math.isfinite)]
    if sub.empty:
        return True
    span = max(float(sub["x"].max() - sub["x"].min()), float(sub["y"].max() - sub["y"].min()))
    for _, g in sub.groupby("epoch"):
        own = max(float(g["x"].max() - g["x"].min()), float(g["y"].max() - g["y"].min()))
        if own * factor < span:
            return False
    return True


def projection_slider(df: pd.DataFrame, classes: list[str], epochs: list[int], width: int, title: str) -> alt.Chart:
    """The 2-D feature projection of the probe set at one epoch, chosen with a slider. The axes are the same
    for every epoch unless "fit axes" is ticked (ticked from the start when a few epochs would squash the
    others into a corner)."""
    df = df[["epoch", "sample", "x", "y", "class"]]
    xd, yd = _xy_domains(df)
    first, last = epochs[0], epochs[-1]
    choose: alt.BindRange | alt.BindRadioSelect
    if epochs == list(range(first, last + 1)):
        choose = alt.binding_range(min=first, max=last, step=1, name="epoch ")
    else:  # a long run keeps some of its epochs: a list of those, not a slider over gaps
        choose = alt.binding_select(options=epochs, name="epoch ")
    epoch = alt.param(name="epoch", value=last, bind=choose)
    fit = alt.param(
        name="fit_axes",
        value=not axes_comparable(df, epochs),
        bind=alt.binding_checkbox(name="fit the axes to this epoch "),
    )
    # per-epoch extents as literal number arrays inside the expressions (numbers only, made here)
    ext = {e: _xy_domains(g) for e, g in df.groupby("epoch")}

    def bound(axis: int, end: int, default: float) -> dict:
        values = [ext[e][axis][end] if e in ext else default for e in range(first, last + 1)]
        arr = "[" + ",".join(repr(float(v)) if math.isfinite(v) else repr(float(default)) for v in values) + "]"
        return {"expr": f"fit_axes ? {arr}[epoch - {first}] : {float(default)!r}"}

    side = min(width - 170, 520)
    return (
        alt.Chart(df)
        .mark_circle(size=30, opacity=0.8)
        .encode(
            x=alt.X(
                "x:Q",
                title=f"{title} axis 1",
                scale=alt.Scale(domainMin=bound(0, 0, xd[0]), domainMax=bound(0, 1, xd[1]), nice=False),
            ),
            y=alt.Y(
                "y:Q",
                title=f"{title} axis 2",
                scale=alt.Scale(domainMin=bound(1, 0, yd[0]), domainMax=bound(1, 1, yd[1]), nice=False),
            ),
            color=alt.Color("class:N", scale=class_scale(classes), legend=class_legend(classes)),
            tooltip=[
                alt.Tooltip("class:N"),
                alt.Tooltip("sample:Q", title="probe sample"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("x:Q", format=".3g"),
                alt.Tooltip("y:Q", format=".3g"),
            ],
        )
        .add_params(epoch, fit)
        .transform_filter(alt.datum.epoch == epoch)
        .properties(width=side, height=side)
    )


def projection_multiples(
    df: pd.DataFrame, classes: list[str], epochs: list[int], width: int, title: str, shared_axes: bool = True
) -> alt.FacetChart:
    """Small multiples of the projection at chosen epochs."""
    sub = df[df["epoch"].isin(epochs)]
    xd, yd = _xy_domains(sub)
    cols = len(epochs)
    legend_w = 110 if len(classes) <= 30 else 0
    side = max(110, min(260, (width - legend_w - 25 * cols) // cols))
    xs = alt.Scale(domain=xd, nice=False) if shared_axes else alt.Scale(zero=False)
    ys = alt.Scale(domain=yd, nice=False) if shared_axes else alt.Scale(zero=False)
    extra = {} if shared_axes else {"resolve": _independent_xy()}
    return (
        alt.Chart(sub, width=side, height=side)
        .mark_circle(size=14, opacity=0.8)
        .encode(
            x=alt.X("x:Q", title=f"{title} axis 1", scale=xs, axis=alt.Axis(tickCount=4)),
            y=alt.Y("y:Q", title=f"{title} axis 2", scale=ys, axis=alt.Axis(tickCount=4)),
            color=alt.Color("class:N", scale=class_scale(classes), legend=class_legend(classes)),
        )
        .facet(
            column=alt.Column(
                "epoch:O",
                title=None,
                sort=epochs,
                header=alt.Header(labelExpr="'epoch ' + datum.value", labelFontSize=11),
            ),
            spacing=12,
            **extra,
        )
    )


def separability(df: pd.DataFrame, width: int, height: int = 220) -> alt.Chart:
    measures = list(dict.fromkeys(df["measure"]))
    return (
        alt.Chart(df)
        .mark_line(point=True, strokeWidth=2)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=epoch_axis(df["epoch"])),
            y=alt.Y(
                "accuracy:Q",
                title="accuracy on the probe set (%)",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(zero=False),
            ),
            color=alt.Color(
                "measure:N",
                title=None,
                scale=alt.Scale(domain=measures, range=["#54a24b", "#4c78a8"]),
                legend=alt.Legend(**LEGEND_BOTTOM),
            ),
            tooltip=[alt.Tooltip("measure:N"), alt.Tooltip("epoch:Q"), alt.Tooltip("accuracy:Q", format=".2%")],
        )
        .properties(width=width, height=height)
    )
