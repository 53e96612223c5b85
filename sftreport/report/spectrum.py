"""The spectrum of each weight matrix's change (schema.Spectrum) as a frame, a chart and a table: shared by
the run report (the change at the last epoch, in the parameters section) and the diff report.

Never imports torch: the numbers were computed by sftreport.record.spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import altair as alt
import pandas as pd

from sftreport.report import charts, fmt
from sftreport.report.model import Block, Cell, ChartBlock, Note, TableBlock
from sftreport.schema import LayerSpectrum, Spectrum

COLUMNS = [
    "layer",
    "name",
    "order",
    "new",
    "shape",
    "rank",
    "rel_change",
    "effective_rank",
    "rank_share",
    "energy_1",
    "energy_k",
    "top_values",
    "exact",
]

RANK_DEFINITION = (
    "ΔW = Wₜ − W₀ of each weight matrix, reshaped to (output channels, inputs × kernel): its effective rank is "
    "Roy & Vetterli's exp(entropy) of the normalised singular values (1 for a change in one direction, up to "
    "min(out, in·k·k))"
)
DEFINITION = RANK_DEFINITION + ", and the energy share is the part of ‖ΔW‖² in the top directions."


def label(name: str) -> str:
    """A matrix's row label: the parameter name without its usual '.weight'."""
    return name.removesuffix(".weight") or name


def spectrum_frame(spec: Spectrum, order: dict[str, int] | None = None, skip: Collection[str] = ()) -> pd.DataFrame:
    """One row per weight matrix that changed (finite, non-zero ΔW), in network order (`order`: module name
    → position; default the stored order). `skip`: parameter names left out (a replaced head)."""
    order = order or {}
    rows = []
    for i, layer in enumerate(spec.layers):
        if layer.name in skip or not layer.singular_values:
            continue
        er = layer.effective_rank
        rows.append(
            {
                "layer": label(layer.name),
                "name": layer.name,
                "order": order.get(layer.module, 1e6) + i * 1e-4,
                "new": layer.new,
                "shape": fmt.shape(layer.shape),
                "rank": layer.rank,
                "rel_change": layer.rel_change,
                "effective_rank": math.nan if er is None else er,
                "rank_share": math.nan if er is None or not layer.rank else er / layer.rank,
                "energy_1": layer.energy_top(1),
                "energy_k": layer.energy_top(spec.top),
                "top_values": ", ".join(fmt.num(v) for v in layer.singular_values[:4]),
                "exact": layer.exact,
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values("order", kind="stable").reset_index(drop=True)


def unchanged(spec: Spectrum, skip: Collection[str] = ()) -> list[LayerSpectrum]:
    """Weight matrices that did not change (frozen) or whose change is not finite (a diverged run)."""
    return [m for m in spec.layers if m.name not in skip and not m.singular_values]


def spectrum_chart(df: pd.DataFrame, top: int, width: int) -> alt.HConcatChart:
    """Per matrix (rows, network order): the effective rank on a log axis against the most it could be (a grey
    line from 1 to min(out, in·k·k)), and the share of the change's energy in the top direction and the top
    `top` directions."""
    layers = list(dict.fromkeys(df["layer"]))
    n = len(layers)
    panel = max(150, (width - 230) // 2)
    y = alt.Y(
        "layer:N",
        title="weight matrix (network order)",
        scale=alt.Scale(domain=layers),
        axis=alt.Axis(labelFontSize=charts.label_font(n), grid=False),
    )
    y_bare = alt.Y("layer:N", title=None, scale=alt.Scale(domain=layers), axis=alt.Axis(labels=False, ticks=False))
    hi = max(2.0, float(df["rank"].max()) if n else 2.0)
    xr = alt.Scale(type="log", domain=[1, hi * 1.2], nice=False)
    tips: list[Any] = [
        alt.Tooltip("layer:N", title="matrix"),
        alt.Tooltip("shape:N"),
        alt.Tooltip("effective_rank:Q", title="effective rank", format=".3~f"),
        alt.Tooltip("rank:Q", title="most possible (min(out, in·k·k))"),
        alt.Tooltip("energy_1:Q", title="energy in the top direction", format=".1%"),
        alt.Tooltip("energy_k:Q", title=f"energy in the top {top}", format=".1%"),
        alt.Tooltip("top_values:N", title="largest singular values"),
        alt.Tooltip("rel_change:Q", title="‖ΔW‖ / ‖W₀‖", format=".3~%"),
        alt.Tooltip("method:N", title="spectrum"),
    ]
    data = df.assign(one=1.0, method=df["exact"].map({True: "exact", False: "randomized (estimate)"}))[
        [
            "layer",
            "shape",
            "rank",
            "one",
            "effective_rank",
            "energy_1",
            "energy_k",
            "top_values",
            "rel_change",
            "method",
        ]
    ]
    possible = (
        alt.Chart()
        .mark_rule(color="#cccccc", strokeWidth=3)
        .encode(y=y, x=alt.X("one:Q", scale=xr), x2=alt.X2("rank:Q"))
    )
    ranks = (
        alt.Chart()
        .mark_circle(size=44, opacity=1, color=charts.FINETUNED)
        .encode(
            y=y,
            x=alt.X(
                "effective_rank:Q",
                title="effective rank (log scale; grey: 1 … the most possible)",
                scale=xr,
                axis=alt.Axis(format="~s", values=[v for v in charts.decades(1, hi) if v <= hi * 1.2]),
            ),
            tooltip=tips,
        )
    )
    left = alt.layer(possible, ranks, data=data, width=panel, height=alt.Step(charts.row_step(n)))
    long = data.melt(
        id_vars=["layer", "shape", "rank", "effective_rank", "top_values", "rel_change", "method"],
        value_vars=["energy_1", "energy_k"],
        var_name="which",
        value_name="share",
    )
    names = {"energy_1": "top direction", "energy_k": f"top {top} directions"}
    long["which"] = long["which"].map(names)
    order = list(names.values())
    share = (
        alt.Chart(long)
        .mark_point(filled=True, size=44, opacity=1)
        .encode(
            y=y_bare,
            x=alt.X(
                "share:Q",
                title="share of ‖ΔW‖² (energy)",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%", tickCount=5),
            ),
            color=alt.Color(
                "which:N",
                title=None,
                scale=alt.Scale(domain=order, range=["#e45756", "#54a24b"]),
                legend=alt.Legend(**charts.LEGEND_BOTTOM),
            ),
            shape=alt.Shape("which:N", scale=alt.Scale(domain=order, range=["circle", "diamond"]), legend=None),
            tooltip=[
                alt.Tooltip("layer:N", title="matrix"),
                alt.Tooltip("which:N"),
                alt.Tooltip("share:Q", format=".1%"),
            ],
        )
        .properties(width=panel, height=alt.Step(charts.row_step(n)))
    )
    return alt.hconcat(left, share, spacing=14)


def spectrum_table(df: pd.DataFrame, top: int) -> TableBlock:
    rows = [
        [
            Cell(r.layer, cls="mono"),
            Cell(r.shape),
            Cell(("≈" if not r.exact else "") + fmt.num(r.effective_rank, 3), title=None if r.exact else "estimate"),
            Cell(fmt.integer(r.rank)),
            Cell(fmt.pct(r.energy_1)),
            Cell(fmt.pct(r.energy_k)),
            Cell(r.top_values),
            Cell(fmt.change(r.rel_change)),
        ]
        for r in df.itertuples()
    ]
    return TableBlock(
        "spectrum-table",
        "Spectrum of the change per weight matrix",
        "≈: a large matrix whose top values came from a randomized SVD, its effective rank estimated (see the README).",
        [
            "matrix",
            "shape",
            "effective rank",
            "most possible",
            "energy, top direction",
            f"energy, top {top}",
            "largest singular values",
            "‖ΔW‖/‖W₀‖",
        ],
        rows,
        numeric=[False, False, True, True, True, True, False, True],
    )


def spectrum_blocks(
    spec: Spectrum | None,
    chart: Callable[[str, str, str, Any], ChartBlock],
    width: int,
    *,
    order: dict[str, int] | None = None,
    skip: Collection[str] = (),
    when: str = "",
    missing: str = "",
    table: bool = False,
) -> list[Block]:
    """The chart (and, with `table`, the table) of a spectrum, or a Note saying why there is none. `chart` is
    the report builder's chart maker; `when` says which weights were compared, e.g. 'at epoch 10'."""
    if spec is None:
        return [Note(missing)] if missing else []
    df = spectrum_frame(spec, order, skip)
    still = unchanged(spec, skip)
    frozen = [m for m in still if m.diff_sq == 0]
    broken = [m for m in still if m.diff_sq != 0]
    left_out = []
    if frozen:
        left_out.append(f"{len(frozen)} unchanged (frozen) matri{'x' if len(frozen) == 1 else 'ces'}")
    if broken:
        left_out.append(f"{len(broken)} whose change is not finite")
    left_txt = f" Left out: {' and '.join(left_out)}." if left_out else ""
    if df.empty:
        return [Note(f"No weight matrix changed {when}: there is no spectrum to show.{left_txt}".replace("  ", " "))]
    estimated = int((~df["exact"]).sum())
    est_txt = (
        f" {estimated} large matri{'x' if estimated == 1 else 'ces'} got {'its' if estimated == 1 else 'their'} "
        "top singular values from a randomized SVD, the effective rank estimated."
        if estimated
        else ""
    )
    blocks: list[Block] = [
        chart(
            "spectrum",
            f"Spectrum of the change {when}".strip(),
            f"{DEFINITION} A low effective rank and most energy in the top directions mean a change along few "
            f"directions (as LoRA assumes); an effective rank near the grey line's end, a change spread over many."
            f"{left_txt}{est_txt}",
            spectrum_chart(df, spec.top, width),
        )
    ]
    if table:
        blocks.append(spectrum_table(df, spec.top))
    return blocks


def run_spectrum_blocks(frames, chart: Callable[[str, str, str, Any], ChartBlock], width: int) -> list[Block]:
    """The run report's spectrum blocks (parameters section): the change at the last epoch, when the run
    measured it (`Recorder.finish`); nothing for a run with no trained epoch."""
    if not frames.trained or not any(e.weights for e in frames.epochs):
        return []
    spec = frames.info.spectrum
    return spectrum_blocks(
        spec,
        chart,
        width,
        order=frames.module_order,
        when=f"from the {frames.start_name} to epoch {spec.epoch}" if spec else "",
        missing="The spectrum of each weight matrix's change is measured when a run finishes with the model at an "
        "epoch's end: this run has none (recorded before sftreport measured it, stopped mid-epoch, or with sharded "
        "parameters).",
    )
