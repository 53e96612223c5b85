"""What a report says, apart from how it looks: plain dataclasses the templates walk.

`sections.build_report(run, medium)` fills a `Report`; html.py, pdf.py and markdown.py present it.
A report is built per medium because some blocks differ by medium (an epoch slider in HTML, small
multiples in the PDF; the full layer table in HTML, a summarised one in the PDF), but findings, tables
and numbers are the same.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Literal

Medium = Literal["html", "pdf"]
Severity = Literal["alert", "warning", "info", "good"]
SEVERITY_ORDER: dict[str, int] = {"alert": 0, "warning": 1, "good": 2, "info": 3}


@dataclass
class Finding:
    """One conclusion drawn from the numbers by an explicit rule (findings.py), with its evidence."""

    rule: str  # the rule's id, e.g. "overfitting"
    severity: Severity
    title: str  # one line, e.g. "Validation loss turned up at epoch 4"
    evidence: str  # the numbers behind it
    section: str | None = None  # id of the section that shows it


@dataclass
class ChartBlock:
    """A Vega-Lite chart: `spec` is the full Vega-Lite JSON (data inlined, NaN already turned to null)."""

    id: str
    title: str
    caption: str  # how to read it, one or two sentences
    spec: dict
    kind: Literal["chart"] = "chart"


@dataclass
class Cell:
    text: str
    title: str | None = None  # tooltip
    cls: str = ""  # CSS class, e.g. "num", "bad", "indent-2"


@dataclass
class TableBlock:
    id: str
    title: str
    caption: str
    columns: list[str]
    rows: list[list[Cell]]
    numeric: list[bool] = field(default_factory=list)  # right-aligned columns
    scroll: bool = False  # long: show in a scrolling box (HTML)
    kind: Literal["table"] = "table"


@dataclass
class Image:
    data: bytes  # the file's bytes (PNG); the HTML inlines them as a data: URI
    mime: str
    alt: str

    @property
    def src(self) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.data).decode("ascii")

    @property
    def width(self) -> int | None:
        """Pixel width from the PNG header (None for anything else)."""
        if self.data[:8] == b"\x89PNG\r\n\x1a\n" and len(self.data) >= 24:
            return int.from_bytes(self.data[16:20], "big")
        return None

    @property
    def display_width(self) -> int | None:
        """CSS width to show it at: small images (filter grids) twice their size, pixels kept sharp."""
        w = self.width
        return None if w is None else (w * 2 if w < 450 else w)


@dataclass
class ImageGrid:
    """Rows of images under shared column headings, e.g. pretrained | fine-tuned."""

    id: str
    title: str
    caption: str
    headings: list[str]
    rows: list[tuple[str, list[Image | None]]]  # (row label, one image per heading)
    pixelated: bool = True
    kind: Literal["images"] = "images"


@dataclass
class Note:
    """One line in place of a block whose data is absent."""

    text: str
    kind: Literal["note"] = "note"


@dataclass
class KeyValues:
    id: str
    title: str
    items: list[tuple[str, str]]
    kind: Literal["keyvalues"] = "keyvalues"


Block = ChartBlock | TableBlock | ImageGrid | Note | KeyValues


@dataclass
class Section:
    id: str  # anchor; also picks the partial templates/sections/<id>.html.j2
    title: str
    lead: str  # one sentence: what to look for
    blocks: list[Block] = field(default_factory=list)

    def charts(self) -> list[ChartBlock]:
        return [b for b in self.blocks if isinstance(b, ChartBlock)]


@dataclass
class Headline:
    """The numbers the summary opens with (also the Markdown summary)."""

    run_name: str
    status: str
    status_detail: str
    model: str
    weights: str
    strategy: str
    dataset: str
    classes: int
    epochs_done: int
    epochs_planned: int | None
    acc_before: float | None
    acc_after: float | None
    best_epoch: int | None
    best_acc: float | None
    loss_before: float | None
    loss_after: float | None
    duration_s: float | None
    device: str
    precision: str
    started_at: str
    finished_at: str | None
    acc_change: float  # accuracy changes smaller than this count as unchanged (thresholds.ACC_CHANGE)
    from_scratch: bool = False  # nothing was pretrained: epoch 0 is an initialisation
    metric: str = "val. accuracy"  # the headline metric's label (mIoU for segmentation), and in full:
    metric_long: str = "Validation accuracy"


@dataclass
class Report:
    medium: Medium
    title: str
    headline: Headline
    summary: KeyValues
    findings: list[Finding]
    sections: list[Section]  # after the summary: training, architecture, ... appendix
    schema_version: int
    sftreport_version: str

    def charts(self) -> list[ChartBlock]:
        return [c for s in self.sections for c in s.charts()]
