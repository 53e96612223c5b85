"""The segmentation and detection defaults' reports as a user sees them: every chart drawn offline in
Chromium with no error, and every PDF page drawn and holding text (the runs: conftest.py at the top)."""

from __future__ import annotations

import re

import pytest
from report_support import pdf_pages, pdf_text, require

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_every_chart_of_a_dense_report_draws_offline(task, request, visit):
    out = request.getfixturevalue(f"{task}_cli_run")
    v = visit(out / "r.html")
    assert v.charts >= 12, v.charts
    assert v.drawn == v.charts and v.chart_errors == [], v.chart_errors
    assert v.status == "done" and v.errors == [] and v.requests == [] and v.dialogs == []


@pytest.mark.parametrize(
    "task, metric, columns",
    [("segment", "mIoU", "val. loss pixel acc. mIoU"), ("detect", "mAP", "val. mAP val. mAP@.5")],
)
def test_every_pdf_page_of_a_dense_report_is_drawn_and_readable(task, metric, columns, request, tmp_path):
    import shutil

    out = request.getfixturevalue(f"{task}_cli_run")
    require(shutil.which("pdftocairo") is not None, "pdftocairo (poppler-utils)")
    pages = pdf_pages(out / "r.pdf", tmp_path / "pages")
    assert len(pages) >= 4
    assert all(p.stat().st_size > 2_000 for p in pages)  # a blank page at 40 dpi is a few hundred bytes
    text = pdf_text(out / "r.pdf")
    assert f"Validation {metric}" in text and "Architecture" in text
    assert columns in " ".join(text.split()), "the per-epoch table's validation columns are the task's own"
    # NaN appears only where a caption explains it ("NaN or infinite"), never as a number
    assert re.findall(r"\bNaN\b(?! or|: not a number)", text) == []
