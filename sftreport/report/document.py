"""Reports that are not one run's: the comparison of runs (compare.py) and the diff of two checkpoints
(diff.py). Both say what they say as a `Document` — a summary made of blocks, findings, sections of the
same blocks a run report has (model.py) — and this module presents a Document as HTML, PDF or Markdown with
the run report's stylesheets, chart embedding and PDF machinery.

Never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sftreport.report.model import Block, ChartBlock, Finding, Medium, Section
from sftreport.report.templating import html_env, markdown_env, template_dir
from sftreport.store import atomic_write_bytes, atomic_write_text


@dataclass
class FindingGroup:
    """Findings of one member of a document (a run of a comparison), under its name."""

    title: str
    findings: list[Finding]


@dataclass
class Document:
    kind: Literal["compare", "diff"]
    medium: Medium
    title: str  # the page's <title> and heading
    kicker: str  # the line above the heading
    subtitle: str
    lead: str  # the summary's one sentence: what to look for
    summary: list[Block]
    findings: list[Finding]  # the document's own findings (comparison rules, diff rules)
    findings_lead: str
    groups: list[FindingGroup] = field(default_factory=list)  # each member's own findings
    groups_title: str = ""
    sections: list[Section] = field(default_factory=list)
    schema_version: int = 0
    sftreport_version: str = ""

    def charts(self) -> list[ChartBlock]:
        blocks = self.summary + [b for s in self.sections for b in s.blocks]
        return [b for b in blocks if isinstance(b, ChartBlock)]


def render_html(doc: Document) -> str:
    from sftreport.report.vega import javascript_bundle, script_json

    specs = {c.id: c.spec for c in doc.charts()}
    page_js = (template_dir() / "js" / "embed.js").read_text(encoding="utf-8").replace("</", "<\\/")
    return (
        html_env()
        .get_template("document.html.j2")
        .render(
            doc=doc,
            medium="html",
            statics={},
            image_src=None,
            specs_json=script_json(specs),
            bundle=javascript_bundle(),
            page_js=page_js,
        )
    )


def render_pdf(doc: Document, drawer=None) -> bytes:
    """The PDF's bytes (charts drawn by `drawer`, which may already hold some; see report/pdf.py)."""
    import weasyprint

    from sftreport.report.convert import Drawer, Helper
    from sftreport.report.pdf import Resources, _fetcher

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    charts = doc.charts()
    drawer = drawer or Drawer(Helper.start(len(charts)))
    for c in charts:
        if c.id not in drawer.specs:
            drawer.add(c.id, c.spec)
    drawer.draw_own()
    res = Resources(drawer)
    statics = {c.id: {"url": res.chart(c.id)} for c in charts}
    html = (
        html_env()
        .get_template("document_pdf.html.j2")
        .render(doc=doc, medium="pdf", statics=statics, image_src=res.image)
    )
    try:
        pdf = weasyprint.HTML(string=html, base_url=str(template_dir()), url_fetcher=_fetcher(res))
        return pdf.write_pdf()
    finally:
        res.drawer.close()


def render_markdown(doc: Document) -> str:
    return markdown_env().get_template("document.md.j2").render(doc=doc)


def write_documents(build: Callable[[Medium, Callable[[ChartBlock], None] | None], Document], jobs) -> list[Path]:
    """Write each (path, kind) of `jobs` from the Document `build(medium, on_chart)` makes, built once per
    medium (HTML and Markdown share one); the PDF's charts go to the drawing helper as they are built."""
    docs: dict[Medium, Document] = {}
    drawer = None
    if any(kind == "pdf" for _, kind in jobs):
        from sftreport.report.convert import Drawer, Helper

        drawer = Drawer(Helper.start())

    def doc(medium: Medium) -> Document:
        if medium not in docs:
            on_chart = (lambda c: drawer.add(c.id, c.spec)) if medium == "pdf" and drawer else None
            docs[medium] = build(medium, on_chart)
        return docs[medium]

    written = []
    try:
        for out, kind in jobs:
            if kind == "html":
                atomic_write_text(out, render_html(doc("html")))
            elif kind == "pdf":
                atomic_write_bytes(out, render_pdf(doc("pdf"), drawer))
            else:
                atomic_write_text(out, render_markdown(doc("html")))
            written.append(out)
    finally:
        if drawer is not None:
            drawer.close()
    return written
