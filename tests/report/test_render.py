"""The three formats of one shared report (conftest.rendered), the render contract, and units behind it."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
from report_support import spec_blob

from sftreport.errors import UserError
from sftreport.report import fmt
from sftreport.report.render import render_run
from sftreport.report.templating import md_escape, template_dir
from sftreport.report.vega import json_safe, script_json

SECTION_TITLES = [
    "Summary",
    "Findings",
    "Training",
    "Architecture",
    "Parameters",
    "Activations",
    "Features",
    "Appendix",
]
CHART_IDS = [
    "loss",
    "accuracy",
    "lr",
    "confusion",
    "per-class",
    "params-by-block",
    "rel-change",
    "weight-hist",
    "grad-total",
    "grad-layers",
    "update-ratio",
    "act-stats",
    "act-hist",
    "projection",
    "cka",
    "separability",
]


# --------------------------------------------------------------------------- HTML


def test_html_is_self_contained(rendered):
    html = rendered.html_text
    assert html.count("vegaEmbed") >= 2 and len(html) > 900_000  # the bundle is inlined
    # nothing refers to anything outside the page
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)  # the page's markup without scripts
    assert not re.search(r'<(script|img|link|iframe|source|video|audio)[^>]+(src|href)="(?!data:|#)', markup)
    assert not re.search(r"<script[^>]+src=", html)
    assert "Content-Security-Policy" in html and "connect-src 'none'" in html
    assert html.count("<script>") == 2  # the Vega bundle once, the page's own script once


def _untitled_axes(spec) -> list[str]:
    """x/y axes of a Vega-Lite spec that show a field but have no title. Layers share their axes, so a layered
    chart needs one titled channel per axis among its layers; facets and concatenations are checked inside."""

    def channels(node) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {"x": [], "y": []}
        for layer in node.get("layer", [node]):
            enc = layer.get("encoding") or {}
            for name in out:
                ch = enc.get(name)
                axis = ch.get("axis", {}) if isinstance(ch, dict) else None
                shown = axis is not None and axis.get("labels", True) is not False  # a hidden axis needs no title
                if isinstance(ch, dict) and "field" in ch and shown:
                    out[name].append(ch)
        return out

    bad = []
    if isinstance(spec, dict):
        if "layer" in spec or "encoding" in spec:
            for name, chs in channels(spec).items():
                if chs and not any(c.get("title") or (c.get("axis") or {}).get("title") for c in chs):
                    bad.append(f"{name}: {chs[0].get('field')}")
        for key in ("spec", "hconcat", "vconcat", "concat"):
            if key in spec:
                for child in spec[key] if isinstance(spec[key], list) else [spec[key]]:
                    bad += _untitled_axes(child)
    return bad


def test_html_has_every_chart_with_axis_titles(rendered):
    specs = spec_blob(rendered.html_text)
    assert set(CHART_IDS) <= set(specs)
    for cid in CHART_IDS:
        assert f'data-chart="{cid}"' in rendered.html_text
        assert not _untitled_axes(specs[cid]), (cid, _untitled_axes(specs[cid]))
    # the feature projection has an epoch slider and tooltips
    proj = json.dumps(specs["projection"])
    assert '"bind"' in proj and '"input": "range"' in proj and '"tooltip"' in proj


def test_html_sections_and_toc(rendered):
    html = rendered.html_text
    for sid in ["summary", "findings", "training", "architecture", "parameters", "activations", "features", "appendix"]:
        assert f'id="{sid}"' in html and f'href="#{sid}"' in html
    assert '<style media="print">' in html
    # each section opens with its one sentence on what to look for
    assert html.count('<p class="lead">') == 8


def test_html_findings(rendered):
    html = rendered.html_text
    for rule in ["overfitting", "dead_units", "accuracy", "moved"]:
        assert f'data-rule="{rule}"' in html
    assert "Overfitting from epoch 4" in html


def test_full_layer_table_in_html_summary_in_pdf(rendered):
    from sftreport.report.profile import PROFILES
    from sftreport.report.sections import build_report
    from sftreport.store import read_run

    PDF_TABLE_DEPTH = PROFILES["pdf"].layer_table_depth

    run = read_run(rendered.run)
    modules = run.info.architecture.modules
    deep = [m.name for m in modules if m.depth > PDF_TABLE_DEPTH]
    assert deep and all(f">{name}<" in rendered.html_text for name in deep)

    def layer_rows(medium):
        (table,) = [b for s in build_report(run, medium).sections for b in s.blocks if getattr(b, "id", "") == "layers"]
        return [row[0].text for row in table.rows]

    assert len(layer_rows("html")) == len(modules)
    pdf_rows = layer_rows("pdf")
    assert len(pdf_rows) < len(modules) and "fc" in pdf_rows
    assert all(n.count(".") < PDF_TABLE_DEPTH for n in pdf_rows if n != "fc")
    assert "deeper modules are in the HTML report" in rendered.pdf_text


# --------------------------------------------------------------------------- PDF


def test_pdf_sections_and_findings(rendered):
    text = rendered.pdf_text
    for title in SECTION_TITLES:
        assert title in text, title
    assert "Contents" in text and "page 1 of" in text
    assert "could not be drawn" not in text
    assert "Overfitting from epoch 4" in text and "Dead units grew" in text
    assert "Loss" in text and "Relative change from the pretrained weights" in text


@pytest.mark.skipif(not shutil.which("pdftocairo"), reason="pdftocairo (poppler-utils) not installed")
def test_pdf_pages(rendered):
    from PIL import Image

    assert 6 <= len(rendered.pages) <= 20
    w, h = Image.open(rendered.pages[0]).size
    assert abs(h / w - 297 / 210) < 0.01  # A4 portrait


def test_pdf_draws_charts_as_images(rendered):
    from pypdf import PdfReader

    reader = PdfReader(str(rendered.pdf))
    images = sum(len(p.images) for p in reader.pages)
    assert images >= 3  # dense charts are PNG; the simple ones are vector drawings


# --------------------------------------------------------------------------- Markdown


def test_markdown_summary(rendered):
    md = rendered.md_text
    assert md.startswith("## sftreport: synthetic fine\\-tuning run") or md.startswith(
        "## sftreport: synthetic fine-tuning run"
    )
    assert "| Validation accuracy |" in md and "→" in md and "points" in md
    assert "### Findings" in md and "**warning**" in md and "Overfitting from epoch 4" in md
    assert "<" not in md.replace("\\<", "")


# --------------------------------------------------------------------------- the contract


def test_unknown_extension_is_one_clear_line(main_run, tmp_path):
    with pytest.raises(UserError) as e:
        render_run(main_run, [tmp_path / "a.html", tmp_path / "report.docx"])
    assert "report.docx" in str(e.value) and ".html, .pdf or .md" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "a.html").exists()  # checked before any work


def test_failed_render_keeps_the_earlier_file(main_run, tmp_path, monkeypatch):
    out = tmp_path / "r.md"
    out.write_text("earlier report")
    import sftreport.report.markdown as md

    def boom(report):
        raise RuntimeError("render failed")

    monkeypatch.setattr(md, "render_markdown", boom)
    with pytest.raises(RuntimeError):
        render_run(main_run, [out])
    assert out.read_text() == "earlier report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]  # no temporary file left behind


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError):
        render_run(tmp_path / "missing", [tmp_path / "r.html"])


def test_templates_found():
    """Every section of a report has a template: its own (summary, architecture) or the generic one."""
    d = template_dir()
    assert (d / "report.html.j2").is_file() and (d / "css" / "print.css").is_file()
    assert {p.stem.split(".")[0] for p in (d / "sections").glob("*.html.j2")} == {"summary", "architecture", "section"}


def test_json_safe_and_script_json():
    obj = {"a": [1.0, math.nan, math.inf, -math.inf, {"b": math.nan}], "s": "</script><!-- & >"}
    assert json_safe(obj) == {"a": [1.0, None, None, None, {"b": None}], "s": "</script><!-- & >"}
    text = script_json(obj)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == json_safe(obj)


def test_md_escape():
    assert md_escape("a_b*c") == "a\\_b\\*c"
    assert md_escape("<img src=x>") == "\\<img src=x\\>"
    assert md_escape("x\ny|z") == "x y\\|z"


def test_formatters():
    assert fmt.pct(0.9312) == "93.1%" and fmt.pct(None) == "–" and fmt.pct(math.nan) == "NaN"
    assert fmt.points(0.05) == "+5.0 points"
    assert fmt.num(0.000123) == "1.23e-04" and fmt.num(2.0) == "2" and fmt.num(math.inf) == "∞"
    assert fmt.count(23_528_522) == "23.5 M" and fmt.integer(1234567) == "1,234,567"
    assert fmt.duration(8.24) == "8.2 s" and fmt.duration(192) == "3 min 12 s" and fmt.duration(7300) == "2 h 01 min"
    assert fmt.shape([3, 32, 32]) == "3×32×32"


# --------------------------------------------------------------------------- drawing the PDF's charts


def _big_spec(rows: int = 70) -> dict:
    """A heatmap whose drawing is larger than a pipe buffer (the helper must not deadlock on it)."""
    values = [
        {"layer": f"layer{i}.conv{j}", "epoch": e, "v": (i * 7 + e) % 13}
        for i in range(rows // 3)
        for j in range(3)
        for e in range(10)
    ]
    return {
        "data": {"values": values},
        "mark": "rect",
        "width": 300,
        "encoding": {
            "x": {"field": "epoch", "type": "ordinal"},
            "y": {"field": "layer", "type": "nominal"},
            "color": {"field": "v", "type": "quantitative"},
        },
    }


def _draw_all(specs: list[dict], helper) -> list[tuple[bytes, str]]:
    """Every spec drawn by a Drawer sharing the work with `helper` (closed at the end), in order."""
    from sftreport.report.convert import Drawer

    drawer = Drawer(helper, "auto")
    for i, spec in enumerate(specs):
        drawer.add(str(i), spec)
    results = drawer.finish()
    return [results[str(i)] for i in range(len(specs))]


def test_helper_draws_big_charts_without_deadlock():
    from sftreport.report.convert import Helper

    helper = Helper.start()
    if helper is None:
        pytest.skip("no second core or not POSIX: no helper process")
    specs = [_big_spec() for _ in range(6)]
    out = _draw_all(specs, helper)
    assert len(out) == 6 and all(mime == "image/jpeg" and len(data) > 65_536 for data, mime in out)
    assert helper.proc.poll() is not None  # closed


def test_dead_helper_falls_back(monkeypatch):
    from sftreport.report.convert import Helper

    helper = Helper.start()
    if helper is None:
        pytest.skip("no helper process here")
    helper.proc.kill()
    helper.proc.wait()
    out = _draw_all([_big_spec(9) for _ in range(4)], helper)
    assert len(out) == 4 and all(data for data, _ in out)


def test_a_chart_that_cannot_be_drawn_becomes_a_note():
    ((data, mime),) = _draw_all([{"mark": "nonsense-mark", "data": {"values": []}}], None)
    assert mime == "image/svg+xml" and b"could not be drawn" in data


def test_chart_data_travels_as_csv_and_draws_the_same():
    """A chart's DataFrame becomes inline CSV with each column's type: numbers parse as numbers, text stays
    text (a class named "5" is not the number 5), quotes and commas survive, null, NaN and infinity are an
    empty cell, booleans are lowercase; vl-convert draws the CSV spec exactly as the JSON-rows one (apart
    from its internal gradient ids), also when the data sits in a layer of a facet."""
    import re

    import altair as alt
    import numpy as np
    import pandas as pd
    import vl_convert as vlc

    from sftreport.report.vega import chart_spec, csv_data

    df = pd.DataFrame(
        {
            "cls": ["5", "6", 'a "b", c', "7"],
            "v": [0.5, np.nan, 2.25, 1.2346e-7],
            "n": [1, 2, 3, 2359296],
            "ok": [True, False, True, True],
            "w": [1.0, np.inf, 2.0, 3.0],
        }
    )
    sort = ["5", "6", 'a "b", c', "7"]

    def make():
        bars = (
            alt.Chart()
            .mark_bar()
            .encode(x=alt.X("cls:N", sort=sort), y=alt.Y("v:Q"), color=alt.Color("ok:N"), tooltip=[alt.Tooltip("n:Q")])
        )
        return alt.layer(bars, data=df).facet(facet=alt.Facet("ok:N"), columns=2)

    spec = chart_spec(make())
    data = spec["data"]  # Altair keeps the text in the top-level datasets, named
    assert data["format"] == {
        "type": "csv",
        "parse": {"cls": "string", "v": "number", "n": "number", "ok": "boolean", "w": "number"},
    }
    text = spec["datasets"][data["name"]]
    assert text.splitlines()[0] == "cls,v,n,ok,w"
    assert '"a ""b"", c",2.25,3,true,2' in text and "6,,2,false,\n" in text
    assert "1.2346e-07" in text and "2359296" in text  # whole numbers stay whole
    rounded = csv_data(pd.DataFrame({"x": [1.23456789e-7, 123456.789]})).values
    assert rounded == "x\n1.2346e-07\n1.2346e+05\n"  # 5 significant digits: finer than any chart draws
    with alt.data_transformers.enable("default", max_rows=None):
        plain = {**make().to_dict(validate=False), "config": spec["config"]}
    plain = json.loads(json.dumps(plain).replace("Infinity", "null").replace("NaN", "null"))
    norm = lambda svg: re.sub(r"gradient_\d+", "gradient", svg)  # noqa: E731
    assert norm(vlc.vegalite_to_svg(spec)) == norm(vlc.vegalite_to_svg(plain))


def test_two_views_sharing_one_dataset_draw():
    """Two panels drawn from one dataset (Altair shares a dataset between views whose data are equal, as a
    confusion matrix unchanged between epochs was): the text columns' parse must reach Vega as a type it
    knows. A null parse failed there ("Illegal format pattern: true:null")."""
    import pandas as pd
    import vl_convert as vlc

    from sftreport.report import charts
    from sftreport.report.vega import chart_spec

    df = pd.DataFrame({"true": ["neg", "neg", "pos", "pos"], "pred": ["neg", "pos", "neg", "pos"]})
    df["count"], df["share"] = [20, 0, 12, 0], [1.0, 0.0, 1.0, 0.0]
    spec = chart_spec(charts.confusion_pair([("epoch 0", df), ("epoch 4", df)], ["neg", "pos"], 200))
    first, *others = list(spec["datasets"])
    text = json.dumps(spec)
    for name in others:  # the panels' equal data as one shared dataset
        text = text.replace(name, first)
    shared = json.loads(text)
    assert len(shared["datasets"]) == 1
    assert "<svg" in vlc.vegalite_to_svg(shared)


def test_a_label_with_control_characters_is_drawn_statically_without_crashing_the_process():
    """vl-convert's text layout panicked on a damaged run's layer name (a NUL, an escape sequence, a bidi
    override), and a Rust panic aborts the process that drew the chart: drawn in a child process here."""
    import subprocess
    import sys

    code = (
        "import altair as alt, pandas as pd\n"
        "from sftreport.report.vega import chart_spec, printable, to_static\n"
        "label = 'layer\\x00\\x1b[31m\\u202e1'\n"
        "df = pd.DataFrame({'layer': [label, 'b'], 'v': [1.0, 2.0]})\n"
        "spec = chart_spec(alt.Chart(df).mark_bar().encode(y=alt.Y('layer:N', title=label), x=alt.X('v:Q')))\n"
        "data, mime = to_static(spec, 'svg')\n"
        "assert mime == 'image/svg+xml' and b'layer[31m1' in data, data[:200]\n"
        "assert printable({'a': ['x\\n\\ty\\x00', 3]}) == {'a': ['x\\n\\ty', 3]}\n"
        "print('drawn')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "drawn", r.stderr[-2000:]
