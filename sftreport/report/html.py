"""The interactive HTML report: one self-contained file (CSS, the Vega bundle, chart specs and images
inside; nothing is fetched). Charts are drawn in the browser by vega-embed from a JSON blob."""

from __future__ import annotations

from sftreport.report.model import Report
from sftreport.report.templating import html_env, template_dir
from sftreport.report.vega import javascript_bundle, script_json


def render_html(report: Report) -> str:
    specs = {c.id: c.spec for c in report.charts()}
    page_js = (template_dir() / "js" / "embed.js").read_text(encoding="utf-8").replace("</", "<\\/")
    return (
        html_env()
        .get_template("report.html.j2")
        .render(
            report=report,
            medium="html",
            statics={},
            image_src=None,
            specs_json=script_json(specs),
            bundle=javascript_bundle(),
            page_js=page_js,
        )
    )
