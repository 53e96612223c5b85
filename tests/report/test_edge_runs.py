"""Runs that are not the happy path: hostile names, diverged, interrupted, only epoch 0, probes off."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_support import HOSTILE, render_all, spec_blob
from synthetic_run import build_run

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- escaping


def test_hostile_text_is_escaped_in_html(hostile_report):
    html = hostile_report["html_text"]
    assert HOSTILE not in html  # never verbatim, anywhere (markup, specs, scripts)
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html  # shown as text
    assert "<script>alert(2)</script>" not in html and "</style><script>" not in html
    # exactly the page's own <script> elements, and the chart data survives the round trip
    assert len(re.findall(r"<script\b", re.sub(r"<script>.*?</script>", "<script>", html, flags=re.S))) == 3
    specs = spec_blob(html)
    assert HOSTILE in json.dumps(specs, ensure_ascii=False)  # the class name is data, intact


def test_hostile_text_in_pdf_and_markdown(hostile_report):
    assert HOSTILE in hostile_report["pdf_text"].replace("\n", "")
    md = hostile_report["md_text"]
    unescaped = md.replace("\\<", "").replace("\\>", "")
    assert "<" not in unescaped and ">" not in unescaped
    assert "\\<img src=x onerror=alert(1)\\>" in md


# --------------------------------------------------------------------------- status


def test_diverged_status_is_prominent(diverged_report):
    html, md, pdf = diverged_report["html_text"], diverged_report["md_text"], diverged_report["pdf_text"]
    assert 'class="status-banner status-diverged" role="alert"' in html
    assert "Run diverged" in html and "3 of 8 planned" not in html  # 4 epochs recorded
    assert "4 epochs of 8 planned recorded" in html
    assert "Run diverged" in pdf and "NaN" in pdf and "could not be drawn" not in pdf
    assert "**Run DIVERGED**" in md
    assert 'data-rule="nonfinite_loss"' in html and 'data-rule="nonfinite_gradients"' in html
    # NaN and infinities became null in the chart data (strict JSON parse)
    spec_blob(html)


def test_interrupted_status(runs, tmp_path):
    run = build_run(runs / "interrupted", epochs=2, planned_epochs=6, status="interrupted")
    out = render_all(run, tmp_path, ("html", "md"))
    assert 'class="status-banner status-interrupted"' in out["html_text"]
    assert "Run interrupted" in out["html_text"] and "2 epochs of 6 planned recorded" in out["html_text"]
    assert "**Run INTERRUPTED**" in out["md_text"] and "2 of 6" in out["md_text"]


def test_completed_run_has_no_banner(rendered):
    assert "status-banner" not in rendered.html_text.split("<main>")[1].split("</header>")[0]


# --------------------------------------------------------------------------- missing data


def test_only_epoch_zero(runs, tmp_path):
    run = build_run(runs / "zero", epochs=0, planned_epochs=5, status="running")
    out = render_all(run, tmp_path)
    html = out["html_text"]
    assert "Only the pretrained model (epoch 0) was recorded" in html
    assert "nothing has changed yet" in html
    assert 'data-chart="loss"' not in html and 'data-chart="rel-change"' not in html
    assert 'data-chart="confusion"' in html  # epoch 0 alone still has a confusion matrix
    assert "Only the pretrained model" in out["pdf_text"] and "Run in progress" in out["md_text"]
    assert "could not be drawn" not in out["pdf_text"]


def test_probes_off(runs, tmp_path):
    run = build_run(runs / "noprobes", epochs=3, probes=False)
    out = render_all(run, tmp_path, ("html", "md"))
    html = out["html_text"]
    for line in [
        "The architecture was not recorded",
        "No weight statistics were recorded",
        "No activation statistics were recorded",
        "No feature projections were recorded",
        "No feature-map images were recorded",
        "No first-layer filter images were recorded",
    ]:
        assert line in html, line
    assert 'data-chart="loss"' in html and 'data-chart="confusion"' in html


def test_no_validation_set(runs, tmp_path):
    run = build_run(runs / "noval", epochs=2, val=False, probes=False)
    html = render_all(run, tmp_path, ("html",))["html_text"]
    assert "No validation set was evaluated" in html and "not measured" in html


# --------------------------------------------------------------------------- no torch


def test_render_never_imports_torch(main_run, tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sftreport.report.render import render_run\n"
        f"render_run(Path({str(main_run)!r}), [Path({str(tmp_path / 'r.html')!r}), Path({str(tmp_path / 'r.md')!r})])\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision') or "
        "m.startswith(('sftreport.train', 'sftreport.record'))]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- older run directories


def test_a_schema_v1_run_directory_still_renders(tmp_path: Path):
    """tests/data/run_v1 was recorded by the first version (TensorStats as sum and sum_sq)."""
    from sftreport.store import read_run

    v1 = ROOT / "tests" / "data" / "run_v1"
    run = read_run(v1)
    assert run.info.schema_version == 1 and all(e.schema_version == 1 for e in run.epochs)
    raw = json.loads((v1 / "epochs.jsonl").read_text().splitlines()[0])["weights"][0]["stats"]
    w = run.epochs[0].weights[0].stats
    assert w.mean == raw["sum"] / raw["count"]
    assert w.sum_sq == pytest.approx(raw["sum_sq"], rel=1e-9)
    out = render_all(v1, tmp_path, formats=("html", "md"))
    assert "digits\\_resnet on digits" in out["md_text"] and out["html"].stat().st_size > 100_000


# --------------------------------------------------------------------------- what a newcomer saw


def _axis_and_legend_labels(svg: str) -> list[tuple[str, list[str]]]:
    """(title, labels) of every axis and legend in a Vega SVG drawing."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg)
    out = []
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        cls = g.get("class", "")
        if "role-axis" not in cls.split() and "role-legend" not in cls.split():
            continue
        texts = {}
        for sub in g.iter("{http://www.w3.org/2000/svg}g"):
            role = next((c for c in sub.get("class", "").split() if c.startswith("role-")), None)
            if role in ("role-axis-title", "role-legend-title", "role-axis-label", "role-legend-label"):
                texts.setdefault(role.split("-")[-1], []).extend(
                    t.text or "" for t in sub.iter("{http://www.w3.org/2000/svg}text")
                )
        out.append((" ".join(texts.get("title", [])), texts.get("label", [])))
    return out


def test_epoch_axes_and_legends_of_a_short_run_show_whole_epochs_once(tmp_path):
    """A 2-epoch run: Vega's own ticks would fall on half epochs and print "0 1 1 2 2"."""
    import vl_convert as vlc

    from sftreport.report.sections import build_report
    from sftreport.store import read_run

    report = build_report(read_run(build_run(tmp_path / "run", epochs=2)), "html")
    checked = 0
    for chart in report.charts():
        for title, labels in _axis_and_legend_labels(vlc.vegalite_to_svg(chart.spec)):
            if title.startswith("epoch"):
                checked += 1
                assert labels == sorted(set(labels), key=labels.index), (chart.id, title, labels)  # no repeats
                assert all(label.isdigit() for label in labels), (chart.id, title, labels)
    assert checked >= 5  # loss, accuracy, learning rate, gradient norm, separability, and epoch legends


def test_values_that_leave_the_histogram_range_are_drawn_with_their_share(tmp_path):
    """Bins are fixed from epoch 0; what later moves outside them is a red bar a bin wide at the edge."""
    from sftreport.report.frames import RunFrames
    from sftreport.report.sections import build_report
    from sftreport.schema import Histogram
    from sftreport.store import EPOCHS_FILE, read_run

    run_dir = build_run(tmp_path / "run", epochs=2)
    lines = (run_dir / EPOCHS_FILE).read_text().splitlines()
    last = json.loads(lines[-1])
    w = last["weights"][0]
    counts = w["hist"]["counts"]
    peak = counts.index(max(counts))
    w["hist"]["below"], w["hist"]["above"] = counts[peak] // 2, counts[peak] // 4  # as if they had moved out
    moved = w["hist"]["below"] + w["hist"]["above"]
    counts[peak] -= moved
    lines[-1] = json.dumps(last)
    (run_dir / EPOCHS_FILE).write_text("\n".join(lines) + "\n")
    frames = RunFrames(read_run(run_dir))
    name = w["name"]
    df = frames.weight_hist([name], [2])
    h = Histogram.model_validate(w["hist"])
    below, above = df[df["part"] == "below"].iloc[0], df[df["part"] == "above"].iloc[0]
    step = (h.hi - h.lo) / len(h.counts)
    assert below["share"] == pytest.approx(h.below / h.total) and above["share"] == pytest.approx(h.above / h.total)
    assert (below["x0"], below["x1"]) == (pytest.approx(h.lo - step), pytest.approx(h.lo))
    assert (above["x0"], above["x1"]) == (pytest.approx(h.hi), pytest.approx(h.hi + step))
    assert df[df["part"] == "inside"]["share"].sum() == pytest.approx(1 - moved / h.total)
    chart = next(c for c in build_report(read_run(run_dir), "html").charts() if c.id == "weight-hist")
    assert "#d62728" in json.dumps(chart.spec) and "above the fixed range" in json.dumps(chart.spec)
