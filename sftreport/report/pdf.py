"""The PDF report: the same sections laid out by WeasyPrint on A4, charts drawn beforehand by vl-convert
as SVG (vector, searchable text) or, for dense charts, PNG (WeasyPrint is slow on SVGs with many elements).

Images reach WeasyPrint through its URL fetcher from memory (`sftreport:` URLs) rather than as data: URIs
inside the HTML, which would make its HTML parser scan megabytes of base64. Nothing is fetched from
anywhere else: besides those, only data: and file: URLs are allowed.
"""

from __future__ import annotations

import logging

from sftreport.report.convert import Drawer, Helper
from sftreport.report.model import Image, Report
from sftreport.report.templating import html_env, template_dir

SCHEME = "sftreport"


class Resources:
    """Files the PDF's HTML refers to as `sftreport:<name>`, kept in memory. Charts are looked up in the
    drawer when WeasyPrint asks for them, so its parsing and styling overlap the helper's last charts."""

    def __init__(self, drawer: Drawer) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.drawer = drawer

    def add(self, data: bytes, mime: str) -> str:
        url = f"{SCHEME}:{len(self.files)}"
        self.files[url] = (data, mime)
        return url

    def image(self, img: Image) -> str:
        return self.add(img.data, img.mime)

    def chart(self, key: str) -> str:
        return f"{SCHEME}:chart/{key}"

    def get(self, url: str) -> tuple[bytes, str] | None:
        if url in self.files:
            return self.files[url]
        prefix = f"{SCHEME}:chart/"
        if url.startswith(prefix):
            return self.drawer.result(url[len(prefix) :])
        return None


def pdf_html(report: Report, drawer: Drawer | None = None) -> tuple[str, Resources]:
    """The HTML WeasyPrint lays out, and the images it refers to. `drawer` may already hold (some of) the
    report's charts, handed to it while the report was built; this process draws its own share now, the
    helper's last charts are waited for when WeasyPrint fetches them."""
    charts = report.charts()
    drawer = drawer or Drawer(Helper.start(len(charts)))
    for c in charts:
        if c.id not in drawer.specs:
            drawer.add(c.id, c.spec)
    drawer.draw_own()
    res = Resources(drawer)
    statics = {c.id: {"url": res.chart(c.id)} for c in charts}
    html = (
        html_env()
        .get_template("report_pdf.html.j2")
        .render(report=report, medium="pdf", statics=statics, image_src=res.image)
    )
    return html, res


def _fetcher(res: Resources):
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class Fetcher(URLFetcher):
        def fetch(self, url, headers=None):
            found = res.get(url)
            if found is not None:
                data, mime = found
                return URLFetcherResponse(url, data, {"Content-Type": mime})
            return super().fetch(url, headers)

    return Fetcher(allowed_protocols={"data", "file"})


def render_pdf(report: Report, drawer: Drawer | None = None) -> bytes:
    """The PDF's bytes. `drawer`: see pdf_html."""
    import weasyprint

    # WeasyPrint logs every CSS property it does not support at WARNING; they are not the user's problem
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    html, res = pdf_html(report, drawer)
    try:
        doc = weasyprint.HTML(string=html, base_url=str(template_dir()), url_fetcher=_fetcher(res))
        return doc.write_pdf()
    finally:
        res.drawer.close()
