"""Entry point of the render stage: a run directory → report files, the format following the extension.

    render_run(Path("runs/default"), [Path("report.html"), Path("report.pdf"), Path("summary.md")])

Never imports torch. Each output is written atomically (a failed render never destroys an earlier file).
The Report is built once per medium: HTML and Markdown share the interactive one, the PDF has its own
(static small multiples, a summarised layer table).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from pathlib import Path

from sftreport.config import REPORT_FORMATS
from sftreport.errors import UserError
from sftreport.report.model import Medium, Report
from sftreport.store import Run, atomic_write_bytes, atomic_write_text, check_output_path, read_run


def _format(out: Path) -> str:
    fmt = REPORT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"{out}: unknown report format {out.suffix or '(no extension)'!r}; use .html, .pdf or .md")
    return fmt


def check_outputs(outs: list[Path]) -> list[str]:
    """The format of each output, after checking every extension and destination (before any work)."""
    kinds = [_format(Path(o)) for o in outs]
    for o in outs:
        check_output_path(Path(o))
    return kinds


def render_run(run_dir: Path, outs: list[Path], run: Run | None = None) -> list[Path]:
    """Render the run at `run_dir` (or `run`, already read from it) into each of `outs`; returns the paths
    written."""
    outs = [Path(o) for o in outs]
    kinds = check_outputs(outs)
    with gc_paused(), altair_unchecked():
        return render(run or read_run(Path(run_dir)), list(zip(outs, kinds)))


@contextmanager
def gc_paused():
    """Reading a run and building its report make a few hundred thousand small objects and no garbage
    cycles worth collecting; the cyclic collector's passes over them cost a third of a 100-epoch render
    (measured). Objects are still freed as usual by reference counting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def altair_unchecked():
    """Altair validates every schema object it constructs against the Vega-Lite JSON Schema (its "debug
    mode"): a fifth of a report's build time for checks of charts that are built the same way every time
    and are tested; render with it off."""
    from altair.utils.schemapi import debug_mode

    with debug_mode(False):
        yield


def render(run: Run, jobs: list[tuple[Path, str]]) -> list[Path]:
    from sftreport.report.frames import RunFrames
    from sftreport.report.sections import build_report

    frames = RunFrames(run)
    reports: dict[Medium, Report] = {}
    drawer = None
    if any(kind == "pdf" for _, kind in jobs):
        # start the chart-drawing helper now (its start-up overlaps building the report) and hand it each
        # chart of the PDF's report as soon as it is built
        from sftreport.report.convert import Drawer, Helper

        drawer = Drawer(Helper.start())

    def report(medium: Medium) -> Report:
        if medium not in reports:
            on_chart = (lambda c: drawer.add(c.id, c.spec)) if medium == "pdf" and drawer else None
            reports[medium] = build_report(run, medium, frames, on_chart=on_chart)
        return reports[medium]

    written = []
    try:
        for out, kind in jobs:
            if kind == "html":
                from sftreport.report.html import render_html

                atomic_write_text(out, render_html(report("html")))
            elif kind == "pdf":
                from sftreport.report.pdf import render_pdf

                atomic_write_bytes(out, render_pdf(report("pdf"), drawer))
            else:
                from sftreport.report.markdown import render_markdown

                atomic_write_text(out, render_markdown(report("html")))
            written.append(out)
    finally:
        if drawer is not None:
            drawer.close()
    return written
