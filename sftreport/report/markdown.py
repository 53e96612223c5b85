"""The Markdown summary: headline numbers and findings, for a CI job summary or a review comment."""

from __future__ import annotations

from sftreport.report.model import Report
from sftreport.report.templating import markdown_env


def render_markdown(report: Report) -> str:
    return markdown_env().get_template("summary.md.j2").render(report=report)
