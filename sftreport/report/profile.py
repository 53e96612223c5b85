"""What one medium can show: sizes in CSS pixels and how much of a run fits (the HTML page scrolls and is
interactive; an A4 page is narrower, static and printed). Sections read these; nothing else decides
"HTML or PDF".
"""

from __future__ import annotations

from dataclasses import dataclass

from sftreport.report.model import Medium


@dataclass(frozen=True)
class Profile:
    medium: Medium
    interactive: bool  # tooltips, a slider, scrolling tables
    full: int  # plot width of a chart that spans the page (axis labels come on top)
    heat: int  # plot width of layer × epoch heatmaps (long layer names take the rest)
    panel: int  # width available to a row of small panels
    line_h: int  # height of a line chart
    small_h: int  # height of a small line chart (learning rate, gradient norm)
    weight_hists: int  # weight tensors shown as histograms
    activation_hists: int  # probed layers shown as histograms
    projections: int  # epochs drawn as small multiples when there is no slider
    confusion_numbers: int  # classes up to which confusion cells print their counts
    layer_table_depth: int | None  # deepest module level listed (None: every module)
    scroll_rows: int  # a table longer than this scrolls inside its box (interactive media only)
    heatmap_rows: int = 70  # above this, layer heatmaps keep only convolution and linear layers
    epoch_columns: int = 60  # layer × epoch heatmaps show at most this many epochs
    hist_epochs: int = 8  # later epochs drawn over a pretrained histogram, at most
    slider_epochs: int = 40  # epochs the projection slider holds, at most
    step_points: int = 1500  # per-step points of the loss and learning-rate curves, at most


PROFILES: dict[str, Profile] = {
    "html": Profile(
        "html",
        True,
        full=780,
        heat=560,
        panel=900,
        line_h=260,
        small_h=170,
        weight_hists=6,
        activation_hists=6,
        projections=3,
        confusion_numbers=12,
        layer_table_depth=None,
        scroll_rows=30,
    ),
    # A4 holds less: a 400 px heatmap shows 30 epoch columns at 13 px each; every drawn mark costs PDF time
    "pdf": Profile(
        "pdf",
        False,
        full=560,
        heat=400,
        panel=640,
        line_h=190,
        small_h=130,
        weight_hists=3,
        activation_hists=3,
        projections=3,
        confusion_numbers=6,
        layer_table_depth=2,
        scroll_rows=0,
        epoch_columns=30,
        hist_epochs=4,
        step_points=600,
    ),
}
