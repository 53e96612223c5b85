"""Jinja2 environments for the report templates (top-level `templates/`, or `sftreport/templates/` when
installed from a wheel) with autoescaping and the small formatting filters of fmt.py."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import jinja2

import sftreport
from sftreport.report import fmt


def template_dir() -> Path:
    """The installed copy inside the package first, then the repository's top-level folder."""
    pkg = Path(sftreport.__file__).resolve().parent
    for candidate in (pkg / "templates", pkg.parent / "templates"):
        if (candidate / "report.html.j2").is_file():
            return candidate
    raise RuntimeError(
        f"sftreport's report templates are missing (looked in {pkg / 'templates'} and "
        f"{pkg.parent / 'templates'}); reinstall sftreport"
    )


@cache
def html_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt.FILTERS)
    env.globals["css"] = read_css
    return env


def read_css(name: str) -> str:
    """A stylesheet's text for a <style> element (never contains `</`, which would end the element)."""
    text = (template_dir() / "css" / name).read_text(encoding="utf-8")
    return text.replace("</", "<\\/")


# --------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~&@])")


def md_escape(value) -> str:
    """Text safe inside Markdown (GitHub flavoured): every punctuation character that could start markup or
    HTML is backslash-escaped, newlines become spaces."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_finalize(value):
    if value is None:
        return ""
    return md_escape(value)


@cache
def markdown_env() -> jinja2.Environment:
    """Every {{ value }} is Markdown-escaped (through `finalize`), the way autoescape works for HTML."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        finalize=_md_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt.FILTERS)
    return env
