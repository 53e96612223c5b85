"""Golden files, as torchinfo pins its printed summaries: what the report of the synthetic run says (every
heading, caption, finding, table cell and summary line, not how charts are drawn) and its Markdown
summary are pinned under tests/golden/. A change of wording, of a number's format or of a finding shows
up as a diff in review.

    pytest tests/report/test_golden.py --update-golden   # after a deliberate change: rewrite, then review the diff
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def outline(report) -> dict:
    """What the report says: every block with its text; a chart by its id, title, caption and chart kind."""

    def block(b) -> dict:
        kind = b.kind
        if kind == "chart":
            top = next((k for k in ("layer", "hconcat", "vconcat", "facet", "mark") if k in b.spec), "?")
            return {"chart": b.id, "title": b.title, "caption": b.caption, "drawn as": top}
        if kind == "table":
            return {
                "table": b.id,
                "title": b.title,
                "caption": b.caption,
                "columns": b.columns,
                "rows": [[c.text for c in row] for row in b.rows],
                "scroll": b.scroll,
            }
        if kind == "images":
            return {
                "images": b.id,
                "title": b.title,
                "caption": b.caption,
                "headings": b.headings,
                "rows": [[label, [i.alt if i else None for i in imgs]] for label, imgs in b.rows],
            }
        if kind == "keyvalues":
            return {"keyvalues": b.id, "title": b.title, "items": [list(kv) for kv in b.items]}
        return {"note": b.text}

    return {
        "medium": report.medium,
        "title": report.title,
        "headline": dataclasses.asdict(report.headline),
        "summary": [list(kv) for kv in report.summary.items],
        "findings": [dataclasses.asdict(f) for f in report.findings],
        "sections": [
            {"id": s.id, "title": s.title, "lead": s.lead, "blocks": [block(b) for b in s.blocks]}
            for s in report.sections
        ],
    }


def _check(name: str, text: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: run pytest {__file__} --update-golden"
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), text.splitlines(True), f"golden/{name}", "rendered now", n=1
            )
        )
        pytest.fail(
            f"{name} differs from the golden file (pytest --update-golden rewrites it; review the diff):\n"
            f"{diff[:6000]}",
            pytrace=False,
        )


@pytest.mark.parametrize("medium", ["html", "pdf"])
def test_what_the_report_says_is_pinned(main_run, medium, request):
    from sftreport.report.sections import build_report
    from sftreport.store import read_run

    report = build_report(read_run(main_run), medium)
    text = json.dumps(outline(report), indent=1, ensure_ascii=False, sort_keys=False) + "\n"
    _check(f"report_{medium}.json", text, request.config.getoption("--update-golden"))


def test_the_markdown_summary_is_pinned(rendered, request):
    _check("summary.md", rendered.md_text, request.config.getoption("--update-golden"))
