"""Charts of a segmentation run: per-class IoU before vs after (a dumbbell, like per-class accuracy)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from sftreport.report.charts import FINETUNED, LEGEND_BOTTOM, PRETRAINED, Layered, _resolve_color, label_font, row_step


def per_class_iou(df: pd.DataFrame, classes: list[str], width: int, title: str = "IoU") -> Layered:
    """Dumbbell: each class's IoU (columns class, which, iou) for the pretrained and the fine-tuned model."""
    whiches = list(dict.fromkeys(df["which"]))
    colors = [PRETRAINED, FINETUNED][: len(whiches)]
    n = len(classes)
    y = alt.Y(
        "class:N",
        title="class",
        scale=alt.Scale(domain=classes),
        axis=alt.Axis(labelFontSize=label_font(n), labelLimit=160),
    )
    xscale, xaxis = alt.Scale(domain=[0, 1]), alt.Axis(format=".1f", tickCount=5)
    rule = (
        alt.Chart()
        .mark_rule(color="#bbbbbb", strokeWidth=2)
        .encode(y=y, x=alt.X("min(iou):Q", title=title, axis=xaxis, scale=xscale), x2=alt.X2("max(iou)"))
    )
    pts = (
        alt.Chart()
        .mark_circle(size=70, opacity=1)
        .encode(
            y=y,
            x=alt.X("iou:Q", title=title, axis=xaxis, scale=xscale),
            color=alt.Color(
                "which:N", title=None, scale=alt.Scale(domain=whiches, range=colors), legend=alt.Legend(**LEGEND_BOTTOM)
            ),
            tooltip=[alt.Tooltip("class:N"), alt.Tooltip("which:N", title="model"), alt.Tooltip("iou:Q", format=".3f")],
        )
    )
    return alt.layer(rule, pts, data=df[["class", "which", "iou"]], width=width, height=alt.Step(row_step(n) + 2))


def pixel_confusion_pair(frames: list[tuple[str, pd.DataFrame]], classes: list[str], width: int) -> alt.HConcatChart:
    """Pixel confusion matrices side by side (rows: true class), coloured and labelled by the share of the
    row: pixel counts run to six digits and would not fit a cell."""
    panel = max(120, min(300, (width - 60 * len(frames)) // max(1, len(frames)) - 70))
    charts = []
    for title, df in frames:
        df = df[["true", "pred", "count", "share"]]
        base = alt.Chart().encode(
            x=alt.X("pred:N", title="predicted class", scale=alt.Scale(domain=classes), axis=alt.Axis(labelAngle=-45)),
            y=alt.Y("true:N", title="true class", scale=alt.Scale(domain=classes), axis=alt.Axis(labelLimit=80)),
        )
        rect = base.mark_rect().encode(
            color=alt.Color(
                "share:Q",
                title="share of the true class's pixels",
                scale=alt.Scale(scheme="blues", domain=[0, 1]),
                legend=alt.Legend(format="%", **LEGEND_BOTTOM),
            ),
            tooltip=[
                alt.Tooltip("true:N", title="true"),
                alt.Tooltip("pred:N", title="predicted"),
                alt.Tooltip("count:Q", title="pixels", format=","),
                alt.Tooltip("share:Q", title="share of row", format=".1%"),
            ],
        )
        text = [
            base.transform_filter(f"datum.share {op} 0.5 && datum.share >= 0.005")
            .mark_text(fontSize=9, color=colour)
            .encode(text=alt.Text("share:Q", format=".0%"))
            for op, colour in (("<=", "#333333"), (">", "white"))
        ]
        charts.append(alt.layer(rect, *text, data=df, title=title, width=panel, height=panel))
    return alt.hconcat(*charts, spacing=30, resolve=_resolve_color("shared"))


def metric_curves(df: pd.DataFrame, width: int, height: int, title: str) -> alt.Chart:
    """Lines of a task's validation metrics per epoch (columns epoch, metric, value), on [0, 1]."""
    return (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("value:Q", title=title, scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("metric:N", title=None, legend=alt.Legend(**LEGEND_BOTTOM)),
            tooltip=[alt.Tooltip("epoch:Q"), alt.Tooltip("metric:N"), alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=width, height=height)
    )
