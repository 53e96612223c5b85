"""The HTML report opened offline in headless Chromium, as a user would see it."""

from __future__ import annotations

import pytest
from report_support import HOSTILE

pytestmark = pytest.mark.browser


def test_every_chart_draws_offline(rendered, visit):
    v = visit(rendered.html)
    assert v.charts >= 16
    assert v.drawn == v.charts, v.chart_errors
    assert v.status == "done" and v.chart_errors == []
    assert v.errors == [], v.errors
    assert v.requests == [], v.requests
    assert v.dialogs == []


def test_slider_changes_the_epoch(rendered, visit):
    """Moving the projection's epoch slider redraws the chart without errors."""
    js = """() => {
      const input = document.querySelector('#chart-projection input[type=range]');
      if (!input) return {found: false};
      const before = document.querySelectorAll('#chart-projection svg.marks path[aria-roledescription=circle], #chart-projection svg.marks .mark-symbol path').length;
      input.value = input.min; input.dispatchEvent(new Event('input', {bubbles: true}));
      return {found: true, min: input.min, max: input.max, before};
    }"""
    v = visit(rendered.html, js)
    assert v.texts["found"] and int(v.texts["max"]) > int(v.texts["min"])
    assert v.errors == []


def test_hostile_names_stay_text(hostile_report, visit):
    """A run and class named like an injection draws, runs no script, and shows the name as text."""
    js = "() => ({title: document.querySelector('h1').textContent, imgs: document.querySelectorAll('img[src=x]').length})"
    v = visit(hostile_report["html"], js)
    assert v.dialogs == [] and v.errors == [] and v.requests == []
    assert v.drawn == v.charts and v.charts > 5
    assert v.texts["title"] == HOSTILE and v.texts["imgs"] == 0


def test_diverged_run_opens_with_status_and_no_errors(diverged_report, visit):
    v = visit(diverged_report["html"], "() => ({banner: document.querySelector('.status-banner').textContent})")
    assert "diverged" in v.texts["banner"]
    assert v.drawn == v.charts and v.errors == [] and v.requests == []
