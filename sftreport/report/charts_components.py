"""Charts of a model's components (sftreport.record.components: backbone body, FPN, RPN, heads ...): the
colour strip that marks each row's component on a per-layer chart, the key that names those colours, and
the relative change of each component per epoch. One colour per component in every chart of a report: the
scale's domain is always the run's whole list of components."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from sftreport.report import fmt
from sftreport.report.charts import LEGEND_BOTTOM, STRIP_ROOM, decades, epoch_axis

KEY_COLUMN = 140  # pixels per column of the key's entries


def scale(names: list[str]) -> alt.Scale:
    return alt.Scale(domain=names, scheme="tableau10" if len(names) <= 10 else "tableau20")


def strip(df: pd.DataFrame, layers: list[str], names: list[str]) -> alt.Chart:
    """A thin column of colour just left of a layer chart's cells, one cell per row (`df`: layer,
    component): which component each layer belongs to. It has no legend of its own: `with_key` adds one
    under the whole chart, so that it takes no room from the panels beside it."""
    return (
        alt.Chart(df[df["component"] != ""][["layer", "component"]])  # '': a layer in no component
        .mark_rect()
        .encode(
            y=alt.Y("layer:N", scale=alt.Scale(domain=layers)),
            x=alt.value(-STRIP_ROOM + 3),
            x2=alt.value(-3),
            color=alt.Color("component:N", scale=scale(names), legend=None),
            tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("component:N")],
        )
    )


def key(shown: list[str], names: list[str], width: int) -> alt.Chart:
    """A legend alone: the components in `shown` with their colours."""
    columns = max(1, min(len(shown), width // KEY_COLUMN))
    return (
        alt.Chart(pd.DataFrame({"component": shown}))
        .mark_square(opacity=0)
        .encode(
            color=alt.Color(
                "component:N",
                title="component (the strip left of the rows)",
                scale=scale(names),
                legend=alt.Legend(
                    orient="left",
                    direction="horizontal",
                    columns=columns,
                    values=shown,
                    symbolType="square",
                    symbolOpacity=1,
                    titleLimit=0,
                ),
            )
        )
        .properties(width=1, height=1, view=alt.ViewBackground(stroke=None, fill=None))
    )


def with_key(chart, shown: list[str], names: list[str], width: int) -> alt.VConcatChart:
    """`chart` (whose first panel has a `strip`) with the key of its components under it."""
    independent = alt.Resolve(scale=alt.ScaleResolveMap(color="independent"))
    return alt.vconcat(chart, key(shown, names, width), spacing=6, resolve=independent)


def change_lines(df: pd.DataFrame, names: list[str], width: int, height: int) -> alt.Chart:
    """‖Wₜ−W₀‖/‖W₀‖ of each component per epoch (`df`: component, epoch, rel_change, grad_norm), log scale;
    values that a log scale cannot show (0: it never moved; ∞: its weights started at 0; NaN) are left to the
    caption."""
    shown = df[df["rel_change"].apply(fmt.finite) & (df["rel_change"] > 0)]
    vals = shown["rel_change"]
    ticks = decades(float(vals.min()), float(vals.max())) if len(vals) else None
    tick_values: dict[str, Any] = {"values": ticks} if ticks and len(ticks) > 2 else {}  # else Vega's own
    return (
        alt.Chart(shown[["component", "epoch", "rel_change", "grad_norm"]])
        .mark_line(point=True, strokeWidth=2)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=epoch_axis(df["epoch"])),
            y=alt.Y(
                "rel_change:Q",
                title="‖Wₜ−W₀‖ / ‖W₀‖ (log scale)",
                scale=alt.Scale(type="log"),
                axis=alt.Axis(format="~%", **tick_values),
            ),
            color=alt.Color(
                "component:N",
                title="component",
                scale=scale(names),
                legend=alt.Legend(values=list(dict.fromkeys(shown["component"])), **LEGEND_BOTTOM),
            ),
            tooltip=[
                alt.Tooltip("component:N"),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("rel_change:Q", title="‖Wₜ−W₀‖ / ‖W₀‖", format=".3~%"),
                alt.Tooltip("grad_norm:Q", title="gradient norm", format=".3e"),
            ],
        )
        .properties(width=width, height=height)
    )
