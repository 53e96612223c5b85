"""The PDF report: the same sections laid out by WeasyPrint on A4, charts drawn beforehand by vl-convert
as SVG (vector, searchable text) or, for dense charts, PNG at 3× (WeasyPrint is slow on big SVGs).
Nothing is fetched: only data: and file: URLs are allowed."""
from __future__ import annotations

import logging

from sftreport.report.model import Report
from sftreport.report.templating import html_env, template_dir
from sftreport.report.vega import to_static


def pdf_html(report: Report) -> str:
    """The HTML WeasyPrint lays out (with every chart as a data: image)."""
    statics = {c.id: to_static(c.spec, c.static) for c in report.charts()}
    return html_env().get_template("report_pdf.html.j2").render(report=report, medium="pdf", statics=statics)


def render_pdf(report: Report) -> bytes:
    import weasyprint
    from weasyprint.urls import URLFetcher

    # WeasyPrint logs every CSS property it does not support at WARNING; they are not the user's problem
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    html = pdf_html(report)
    fetcher = URLFetcher(allowed_protocols={"data", "file"})
    doc = weasyprint.HTML(string=html, base_url=str(template_dir()), url_fetcher=fetcher)
    return doc.write_pdf()
