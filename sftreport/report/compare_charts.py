"""Altair charts of several runs side by side: pure functions of compare_frames.py's frames (no I/O).

One colour per run, the same in every chart (the runs' order as given); layers in network order, top to
bottom, each run on its own line within a layer's row. Conventions as in charts.py: channel objects,
axis titles with units, untrusted names only as data values.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd

from sftreport.report import charts, thresholds

RUN_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d", "#ff9da6"]


def run_scale(labels: list[str]) -> alt.Scale:
    if len(labels) <= len(RUN_COLORS):
        return alt.Scale(domain=labels, range=RUN_COLORS[: len(labels)])
    return alt.Scale(domain=labels, scheme="tableau20")


def run_color(labels: list[str], legend: bool = True) -> alt.Color:
    return alt.Color(
        "run:N",
        title="run",
        scale=run_scale(labels),
        legend=alt.Legend(**charts.LEGEND_BOTTOM, labelLimit=300, columns=min(len(labels), 3)) if legend else None,
    )


def metric_curves(df: pd.DataFrame, labels: list[str], width: int, height: int) -> alt.FacetChart:
    """One panel per per-epoch metric (its own y scale), every run's curve in its colour. Accuracies in %."""
    df = df.copy()
    acc = df["metric"].str.contains("accuracy")
    df.loc[acc, "value"] = df.loc[acc, "value"] * 100
    df.loc[acc, "metric"] = df.loc[acc, "metric"] + " (%)"
    metrics = list(dict.fromkeys(df["metric"]))
    columns = min(3 if width >= 700 else 2, len(metrics))
    panel = max(150, (width - 70 * columns) // columns)
    return (
        alt.Chart(df[["run", "metric", "epoch", "value"]])
        .mark_line(point=alt.OverlayMarkDef(size=28), strokeWidth=2)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=charts.epoch_axis(df["epoch"])),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format=",.4~r")),
            color=run_color(labels),
            tooltip=[
                alt.Tooltip("run:N"),
                alt.Tooltip("metric:N"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("value:Q", format=".4g"),
            ],
        )
        .properties(width=panel, height=height)
        .facet(
            facet=alt.Facet("metric:N", title=None, sort=metrics, header=alt.Header(labelFontSize=11, labelLimit=400)),
            columns=columns,
            spacing={"row": 14, "column": 24},
        )
        .resolve_scale(y="independent")
    )


def layer_dots(
    df: pd.DataFrame,
    value: str,
    layers: list[str],
    labels: list[str],
    width: int,
    *,
    x_title: str,
    log: bool,
    tooltip_title: str,
    tooltip_format: str,
    domain: list[float] | None = None,
    band: tuple[float, float] | None = None,
    zero_note: bool = False,
    axis_format: str = ".0e",
) -> charts.Layered:
    """Layers (rows, network order) × `value`, one dot per run on its own line within the row. On a log axis a
    value of exactly 0 (a frozen layer's change) is drawn as an open circle at the axis' left end."""
    n, runs = len(layers), len(labels)
    df = df[["run", "layer", value]].copy()
    finite = df[value].apply(lambda v: v is not None and math.isfinite(v))
    df = df[finite]
    if log:
        pos = df[value][df[value] > 0]
        lo = float(pos.min()) if len(pos) else 1e-6
        hi = float(pos.max()) if len(pos) else 1.0
        if band:
            lo, hi = min(lo, band[0] / 10), max(hi, band[1] * 10)
        lo, hi = lo / 2, hi * 2
        domain = domain or [lo, hi]
        # a zero sits a little inside the axis' left end, so that its open circle is drawn whole
        df["x"] = df[value].where(df[value] > 0, domain[0] * (domain[1] / domain[0]) ** 0.015)
    else:
        df["x"] = df[value]
    df["unchanged"] = df[value] == 0
    # the height's step is that of one run's line within a layer's row (the y offset's band)
    step = max(3, math.ceil(max(charts.row_step(n), 4 * runs) / runs))
    y = alt.Y(
        "layer:N",
        title="layer (network order)",
        scale=alt.Scale(domain=layers),
        axis=alt.Axis(labelFontSize=charts.label_font(n), grid=False, ticks=False),
    )
    offset = alt.YOffset("run:N", scale=alt.Scale(domain=labels))
    if domain is not None:
        scale = alt.Scale(type="log" if log else "linear", domain=domain, nice=False)
    else:
        scale = alt.Scale(zero=False)
    axis = (
        alt.Axis(
            format=axis_format, values=[v for v in charts.decades(domain[0], domain[1]) if domain[0] <= v <= domain[1]]
        )
        if log and domain
        else alt.Axis()
    )
    tips: list[Any] = [
        alt.Tooltip("run:N"),
        alt.Tooltip("layer:N"),
        alt.Tooltip(f"{value}:Q", title=tooltip_title, format=tooltip_format),
    ]
    x = alt.X("x:Q", title=x_title, scale=scale, axis=axis)
    layers_: list[Any] = []
    if band:
        layers_.append(
            alt.Chart(pd.DataFrame([{"lo": band[0], "hi": band[1]}]))
            .mark_rect(color="#2ca02c", opacity=0.12)
            .encode(x=alt.X("lo:Q", scale=scale), x2=alt.X2("hi"))
        )
    moved = (
        alt.Chart()
        .transform_filter("!datum.unchanged")
        .mark_circle(size=34, opacity=0.95)
        .encode(y=y, yOffset=offset, x=x, color=run_color(labels, legend=runs > 1), tooltip=tips)
    )
    layers_.append(moved)
    if log and zero_note and bool(df["unchanged"].any()):
        layers_.append(
            alt.Chart()
            .transform_filter("datum.unchanged")
            .mark_point(size=30, filled=False, strokeWidth=1.4)
            .encode(y=y, yOffset=offset, x=x, color=run_color(labels, legend=False), tooltip=tips)
        )
    return alt.layer(*layers_, data=df, width=width, height=alt.Step(step))


def run_bars(df: pd.DataFrame, labels: list[str], width: int) -> alt.FacetChart:
    """Per run, bars of the relative change of its pretrained layers together and of its new head together."""
    parts = ["pretrained layers", "new head"]
    long = pd.concat(
        [
            pd.DataFrame({"run": df["run"], "part": parts[0], "change": df["backbone_change"]}),
            pd.DataFrame({"run": df["run"], "part": parts[1], "change": df["head_change"]}),
        ],
        ignore_index=True,
    )
    long = long[long["change"].apply(lambda v: v is not None and math.isfinite(v))]
    long["label"] = long["change"].map(lambda v: f"{v * 100:.3g}%")
    y = alt.Y("run:N", title=None, scale=alt.Scale(domain=labels), axis=alt.Axis(labelLimit=260))
    color = alt.Color("run:N", scale=run_scale(labels), legend=None)
    bars = (
        alt.Chart()
        .mark_bar(height=14)
        .encode(
            y=y,
            x=alt.X("change:Q", title="‖Wₜ−W₀‖ / ‖W₀‖ (all of them together)", axis=alt.Axis(format="~%")),
            color=color,
            tooltip=[
                alt.Tooltip("run:N"),
                alt.Tooltip("part:N"),
                alt.Tooltip("change:Q", title="change", format=".3~%"),
            ],
        )
    )
    text = (
        alt.Chart()
        .mark_text(align="left", dx=4, fontSize=10, color="#333")
        .encode(y=y, x=alt.X("change:Q"), text=alt.Text("label:N"))
    )
    panel = max(160, (width - 300) // 2)
    return (
        alt.layer(bars, text, data=long, width=panel, height=alt.Step(22))
        .facet(column=alt.Column("part:N", title=None, sort=parts, header=alt.Header(labelFontSize=11)), spacing=40)
        .resolve_scale(x="independent")
    )


def band() -> tuple[float, float]:
    return thresholds.UPDATE_RATIO_BAND
