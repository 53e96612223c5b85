"""Helpers shared by the render-stage tests (a module of its own: `conftest` is not importable by name
when several conftest.py files exist)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE = "</script><img src=x onerror=alert(1)>"
# vnu.jar and axe-core: npm packages that .ci/run installs into .tools/ (another node_modules folder: set
# SFTREPORT_NODE_MODULES)
NODE_MODULES = Path(
    os.environ.get("SFTREPORT_NODE_MODULES") or Path(__file__).resolve().parents[2] / ".tools" / "node_modules"
)
VNU_JAR = NODE_MODULES / "vnu-jar" / "build" / "dist" / "vnu.jar"
AXE_JS = NODE_MODULES / "axe-core" / "axe.min.js"


def require(present: bool, what: str) -> None:
    """A tool a test needs outside Python (chromium, java, an npm package): missing is a failure under
    CI=true, where .ci/run installs it, and a skip elsewhere."""
    if present:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing; under CI=true the test must run (.ci/run installs it)", pytrace=False)
    pytest.skip(f"{what} is missing")


def pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


def pdf_pages(path: Path, out: Path) -> list[Path]:
    """The PDF's pages as PNG files (pdftocairo draws gradient legends right)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftocairo", "-png", "-r", "40", str(path), str(out / "page")], check=True)
    return sorted(out.glob("page-*.png"))


def render_all(run: Path, out: Path, formats=("html", "pdf", "md")) -> dict:
    """Render `run` into out/report.{formats}; the paths and their text (PDF: extracted text)."""
    from sftreport.report.render import render_run

    out.mkdir(parents=True, exist_ok=True)
    paths = {f: out / f"report.{f}" for f in formats}
    render_run(run, list(paths.values()))
    result: dict = dict(paths)
    for f, p in paths.items():
        result[f + "_text"] = pdf_text(p) if f == "pdf" else p.read_text(encoding="utf-8")
    return result


def spec_blob(html: str) -> dict:
    """The page's chart specs, parsed strictly (NaN or Infinity in them fails)."""
    m = re.search(r'<script type="application/json" id="sftreport-specs">(.*?)</script>', html, re.S)
    assert m, "no chart specs in the page"

    def no_constants(name):
        raise AssertionError(f"JSON holds {name}")

    return json.loads(m.group(1), parse_constant=no_constants)
