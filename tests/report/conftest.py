"""Shared fixtures of the render-stage tests: synthetic run directories (no torch), one rendered report
shared by many tests, and a headless Chromium that opens reports offline as a user would."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from report_support import CHROMIUM, CHROMIUM_ARGS, HOSTILE, pdf_pages, pdf_text, render_all, require
from synthetic_run import build_run


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def main_run(runs) -> Path:
    """A completed run that triggers several findings: overfitting, dead units, accuracy gained."""
    return build_run(runs / "main", epochs=6, overfit_at=3, dead_growth=True)


@dataclass
class Rendered:
    run: Path
    html: Path
    pdf: Path
    md: Path
    html_text: str = ""
    md_text: str = ""
    pdf_text: str = ""
    pages: list[Path] = field(default_factory=list)


@pytest.fixture(scope="session")
def rendered(main_run, tmp_path_factory) -> Rendered:
    from sftreport.report.render import render_run

    out = tmp_path_factory.mktemp("report")
    r = Rendered(run=main_run, html=out / "report.html", pdf=out / "report.pdf", md=out / "summary.md")
    written = render_run(main_run, [r.html, r.pdf, r.md])
    assert written == [r.html, r.pdf, r.md]
    r.html_text = r.html.read_text(encoding="utf-8")
    r.md_text = r.md.read_text(encoding="utf-8")
    r.pdf_text = pdf_text(r.pdf)
    if shutil.which("pdftocairo"):
        r.pages = pdf_pages(r.pdf, out / "pages")
    return r


@pytest.fixture(scope="session")
def hostile_report(runs, tmp_path_factory) -> dict:
    """Untrusted text everywhere it can come from: run name, class names, status detail, config, source."""
    classes = [HOSTILE, "cat & <dog>", "a|b_c*d", "\"quoted\" 'single'", "]]>{{ x }}", "5", "6", "7", "8", "9"]
    run = build_run(
        runs / "hostile",
        name=HOSTILE,
        epochs=2,
        classes=classes,
        config={"name": HOSTILE, "note": "</style><script>alert(2)</script>", "nested": {HOSTILE: 1}},
    )
    return render_all(run, tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="session")
def diverged_report(runs, tmp_path_factory) -> dict:
    run = build_run(runs / "diverged", epochs=4, planned_epochs=8, status="diverged", diverge_at=3, nonfinite_at=3)
    return render_all(run, tmp_path_factory.mktemp("diverged"))


# --------------------------------------------------------------------------- the browser


@dataclass
class PageVisit:
    charts: int  # chart containers on the page
    drawn: int  # containers holding a drawn SVG or canvas
    errors: list[str]  # console errors and page errors
    requests: list[str]  # requests that tried to leave the page (aborted)
    dialogs: list[str]  # alert()/confirm() dialogs (an injected script would open one)
    chart_errors: list[str]  # failures recorded by the page itself
    status: str  # <html data-charts>
    texts: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def browser():
    require(Path(CHROMIUM).exists(), CHROMIUM)
    from playwright.sync_api import sync_playwright  # a test dependency: missing is a failure, not a skip

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def visit(browser):
    """Open a report file offline; wait for the page's own flag (every vegaEmbed settled), not a sleep."""

    def go(path: Path, evaluate: str | None = None) -> PageVisit:
        requests, errors, dialogs = [], [], []
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})

        def route(r):
            if r.request.url.split(":", 1)[0] in ("file", "data", "blob"):
                r.continue_()
            else:
                requests.append(r.request.url)
                r.abort()

        ctx.route("**/*", route)
        page = ctx.new_page()
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        try:
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_function("window.__chartsDone === true", timeout=30_000)
            charts = page.evaluate("document.querySelectorAll('[data-chart]').length")
            drawn = page.evaluate(
                "[...document.querySelectorAll('[data-chart]')].filter("
                "e => e.querySelector('svg.marks, canvas.marks')).length"
            )
            chart_errors = page.evaluate("window.__chartErrors")
            status = page.evaluate("document.documentElement.dataset.charts")
            texts = page.evaluate(evaluate) if evaluate else {}
        finally:
            ctx.close()
        return PageVisit(charts, drawn, errors, requests, dialogs, chart_errors, status, texts)

    return go
