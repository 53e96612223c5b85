"""The HTML reports are valid HTML and accessible: the W3C Nu HTML Checker (vnu.jar) finds no error, and an
axe-core audit in Chromium finds no serious or critical violation, in the main, hostile and diverged reports.

vnu.jar and axe-core come from npm (.ci/run installs them into .tools/, see report_support.NODE_MODULES);
vnu.jar runs on Java. Under CI=true a missing tool fails these tests; elsewhere they are skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from report_support import AXE_JS, VNU_JAR, require

pytestmark = pytest.mark.browser

REPORTS = ("main", "hostile", "diverged")


@pytest.fixture(scope="module")
def reports(rendered, hostile_report, diverged_report) -> dict[str, Path]:
    return {"main": rendered.html, "hostile": hostile_report["html"], "diverged": diverged_report["html"]}


@pytest.fixture(scope="module")
def vnu_errors(reports) -> dict[str, list[str]]:
    """vnu's errors per report, from one run of the checker over the three files (the JVM starts once)."""
    java = shutil.which("java")
    require(java is not None, "java (Debian: default-jre-headless)")
    require(VNU_JAR.is_file(), f"{VNU_JAR} (npm package vnu-jar)")
    proc = subprocess.run(
        [java, "-jar", str(VNU_JAR), "--errors-only", "--format", "json", *(str(p) for p in reports.values())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        messages = json.loads(proc.stderr)["messages"]  # vnu writes its JSON report to stderr
    except (ValueError, KeyError):
        pytest.fail(f"vnu did not report (exit {proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-1000:]}")
    by_path = {p.resolve(): name for name, p in reports.items()}
    errors: dict[str, list[str]] = {name: [] for name in reports}
    for m in messages:
        line = f"{m.get('type')} line {m.get('lastLine', '?')}: {m.get('message')} | {(m.get('extract') or '')[:200]!r}"
        name = by_path.get(Path(unquote(urlparse(m.get("url", "")).path)).resolve())
        for n in [name] if name else reports:  # a message about no one file (vnu itself failed) fails every report
            errors[n].append(line)
    return errors


@pytest.mark.parametrize("name", REPORTS)
def test_vnu_finds_no_errors(name, vnu_errors):
    errors = vnu_errors[name]
    assert errors == [], f"{len(errors)} vnu errors in the {name} report:\n" + "\n".join(errors)


def axe_violations(browser, path: Path) -> list[dict]:
    """axe-core's violations on the report opened offline, once every chart is drawn and the collapsed tables
    are open (so that their cells are audited too)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.route(
        "**/*", lambda r: r.continue_() if r.request.url.split(":", 1)[0] in ("file", "data", "blob") else r.abort()
    )
    try:
        page = ctx.new_page()
        page.goto(path.resolve().as_uri(), wait_until="load")
        page.wait_for_function("window.__chartsDone === true", timeout=30_000)
        page.evaluate("document.querySelectorAll('.table-block details').forEach(d => { d.open = true; })")
        page.add_script_tag(path=str(AXE_JS))
        return page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations.map(v => ({id: v.id, impact: v.impact,"
            " help: v.help, nodes: v.nodes.map(n => [n.target.join(' '), n.failureSummary])}))"
        )
    finally:
        ctx.close()


@pytest.mark.parametrize("name", REPORTS)
def test_axe_finds_no_serious_violations(name, reports, browser):
    require(AXE_JS.is_file(), f"{AXE_JS} (npm package axe-core)")
    bad = [v for v in axe_violations(browser, reports[name]) if v["impact"] in ("serious", "critical")]
    lines = []
    for v in bad:
        lines.append(f"{v['impact']} {v['id']} ({v['help']}): {len(v['nodes'])} elements, e.g.")
        lines += [f"    {target}: {' '.join(summary.split())}" for target, summary in v["nodes"][:3]]
    assert bad == [], f"axe-core in the {name} report:\n" + "\n".join(lines)
