"""Altair charts of sequence models (the frames' gates, gate_saturation, hidden_states and attention):
pure functions of DataFrames, like charts.py, whose conventions (channel objects, titled axes, legends
wherever colour carries meaning) they follow."""

from __future__ import annotations

import altair as alt
import pandas as pd

from sftreport.report.charts import GREY_CELL, LEGEND_BOTTOM, epoch_axis, label_font, row_step, side_by_side

LSTM_ORDER = ["input", "forget", "cell", "output", "cell state", "reset", "update", "new"]


def gate_heatmap(
    df: pd.DataFrame, value: str, title: str, legend: str, width: int, log: bool = False, labels: bool = True
) -> alt.Chart:
    """Recurrent tensors (rows) × gates (columns) at one epoch, coloured by `value`."""
    tensors = list(dict.fromkeys(df["tensor"]))
    gates = [g for g in LSTM_ORDER if g in set(df["gate"])]
    valid = f"isValid(datum['{value}']) && isFinite(datum['{value}'])" + (f" && datum['{value}'] > 0" if log else "")
    return (
        alt.Chart(df[["tensor", "gate", value]], title=title)
        .transform_filter(valid)
        .mark_rect()
        .encode(
            x=alt.X("gate:N", title="gate", sort=gates, axis=alt.Axis(labelAngle=0, ticks=False, domain=False)),
            y=alt.Y(
                "tensor:N",
                title="weight or bias (layer)" if labels else None,
                sort=tensors,
                axis=alt.Axis(
                    labels=labels, labelFontSize=label_font(len(tensors)), ticks=False, domain=False, labelLimit=220
                ),
            ),
            color=alt.Color(
                f"{value}:Q",
                title=legend,
                scale=alt.Scale(type="log", scheme="viridis") if log else alt.Scale(scheme="viridis", zero=True),
                legend=alt.Legend(format=".2g", gradientLength=max(100, min(220, width - 40)), **LEGEND_BOTTOM),
            ),
            tooltip=[
                alt.Tooltip("tensor:N", title="tensor"),
                alt.Tooltip("gate:N"),
                alt.Tooltip(f"{value}:Q", title=legend, format=".3g"),
            ],
        )
        .properties(width=width, height=alt.Step(row_step(len(tensors)) + 4), view=alt.ViewBackground(fill=GREY_CELL))
    )


def gate_change(df: pd.DataFrame, width: int) -> alt.HConcatChart:
    """At the last epoch: each gate's relative change from the pretrained weights, and the update ratio of
    the epoch's first step."""
    last = df[df["epoch"] == df["epoch"].max()]
    epoch = int(last["epoch"].iloc[0])
    return side_by_side(
        [
            gate_heatmap(last, "rel_change", f"relative change, epoch {epoch}", "‖Wₜ−W₀‖ / ‖W₀‖", width),
            gate_heatmap(
                last, "update_ratio", f"update ratio, epoch {epoch}", "‖update‖ / ‖W‖", width, log=True, labels=False
            ),
        ]
    )


def gate_saturation(df: pd.DataFrame, width: int, height: int = 150) -> alt.FacetChart:
    """Share of saturated gate values per epoch, one panel per layer, one line per gate."""
    gates = [g for g in LSTM_ORDER if g in set(df["gate"])]
    layers = list(dict.fromkeys(df["layer"]))
    columns = min(2, len(layers))
    panel = max(160, (width - 70 * columns) // columns)
    return (
        alt.Chart(df)
        .mark_line(point=True, strokeWidth=2)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=epoch_axis(df["epoch"])),
            y=alt.Y("saturated:Q", title="saturated share", axis=alt.Axis(format="%")),
            color=alt.Color("gate:N", title="gate", sort=gates, legend=alt.Legend(**LEGEND_BOTTOM)),
            tooltip=[
                alt.Tooltip("layer:N"),
                alt.Tooltip("gate:N"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("saturated:Q", title="saturated", format=".1%"),
                alt.Tooltip("mean:Q", title="mean value", format=".3f"),
            ],
        )
        .properties(width=panel, height=height)
        .facet(facet=alt.Facet("layer:N", title=None, sort=layers), columns=columns)
    )


def hidden_state_pair(df: pd.DataFrame, epochs: list[int], labels: list[str], width: int) -> alt.HConcatChart:
    """A probe sequence's hidden state, units (rows) × time steps (columns), at two epochs side by side, on
    one diverging colour scale (tanh-bounded values: −1 to 1)."""
    units = int(df["unit"].max()) + 1
    panels = []
    for i, (epoch, label) in enumerate(zip(epochs, labels)):
        part = df[df["epoch"] == epoch][["t", "unit", "value"]]
        panels.append(
            alt.Chart(part, title=label)
            .mark_rect()
            .encode(
                x=alt.X("t:O", title="time step", axis=alt.Axis(labelAngle=0)),
                y=alt.Y("unit:O", title="hidden unit" if i == 0 else None, axis=alt.Axis(labels=False, ticks=False)),
                color=alt.Color(
                    "value:Q",
                    title="hidden state",
                    scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True),
                    legend=alt.Legend(format=".1f", **LEGEND_BOTTOM) if i == 0 else None,
                ),
                tooltip=[
                    alt.Tooltip("t:O", title="time step"),
                    alt.Tooltip("unit:O"),
                    alt.Tooltip("value:Q", format=".3f"),
                ],
            )
            .properties(width=width, height=max(120, min(320, 3 * units)))
        )
    return side_by_side(panels)


def attention_heads(df: pd.DataFrame, first: int, last: int, width: int) -> alt.HConcatChart:
    """Layers (rows, network order) × heads: attention entropy as a share of uniform attention's at the first
    and the last epoch, and how far each head's attention moved by the last."""
    layers = list(dict.fromkeys(df["layer"]))
    heads = sorted(df["head"].unique().tolist())

    def panel(part: pd.DataFrame, value: str, title: str, legend: str, labels: bool, domain: list[float]) -> alt.Chart:
        return (
            alt.Chart(part[["layer", "head", value, "entropy"]], title=title)
            .mark_rect()
            .encode(
                x=alt.X("head:O", title="head", scale=alt.Scale(domain=heads), axis=alt.Axis(labelAngle=0)),
                y=alt.Y(
                    "layer:N",
                    title=None,
                    sort=layers,
                    axis=alt.Axis(labels=labels, ticks=False, labelFontSize=label_font(len(layers)), labelLimit=220),
                ),
                color=alt.Color(
                    f"{value}:Q",
                    title=legend,
                    scale=alt.Scale(scheme="viridis", domain=domain),
                    legend=alt.Legend(format=".0%", **LEGEND_BOTTOM),
                ),
                tooltip=[
                    alt.Tooltip("layer:N"),
                    alt.Tooltip("head:O"),
                    alt.Tooltip(f"{value}:Q", title=legend, format=".1%"),
                    alt.Tooltip("entropy:Q", title="entropy (nats)", format=".3f"),
                ],
            )
            .properties(width=width, height=alt.Step(row_step(len(layers)) + 4))
        )

    a, b = df[df["epoch"] == first], df[df["epoch"] == last]
    return side_by_side(
        [
            panel(a, "entropy_share", f"entropy, epoch {first}", "entropy / uniform", True, [0, 1]),
            panel(b, "entropy_share", f"entropy, epoch {last}", "entropy / uniform", False, [0, 1]),
            panel(
                b,
                "change",
                f"change by epoch {last}",
                "change (TV distance)",
                False,
                [0, max(0.05, float(b["change"].max()))],
            ),
        ]
    )


def moved_tokens(df: pd.DataFrame, width: int) -> alt.Chart:
    """The most moved tokens' embedding rows: relative change, one bar each, most moved on top."""
    order = df.sort_values("rel_change", ascending=False)["token"].tolist()
    return (
        alt.Chart(df)
        .mark_bar(color="#1f77b4")
        .encode(
            y=alt.Y("token:N", title="token (#id)", sort=order, axis=alt.Axis(labelLimit=200)),
            x=alt.X("rel_change:Q", title="‖eₜ − e₀‖ / ‖e₀‖ of the token's embedding", axis=alt.Axis(format="~g")),
            tooltip=[
                alt.Tooltip("token:N"),
                alt.Tooltip("rel_change:Q", title="relative change", format=".3g"),
                alt.Tooltip("ref_norm:Q", title="norm, pretrained", format=".3g"),
                alt.Tooltip("norm:Q", title="norm, now", format=".3g"),
            ],
        )
        .properties(width=width, height=alt.Step(row_step(len(order)) + 4))
    )
