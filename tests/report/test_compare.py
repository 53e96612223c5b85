"""`sftreport compare`: the frames across runs and the comparison rules near every threshold (tiny runs whose every
number is chosen by hand), the known answer of two identical runs, the refusals of bad input (one line, exit
2), and one end-to-end comparison written as HTML, PDF and Markdown and opened in Chromium."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from report_support import pdf_text, spec_blob
from synthetic_run import build_run
from tiny_run import cka, ev, frames, moved, snap, wstat

from sftreport.cli import main
from sftreport.report import compare_findings as CF
from sftreport.report.compare import build_compare, compare_runs, labels_for, load_members
from sftreport.report.compare_frames import CompareFrames, Member, backbone_change, head_change
from sftreport.report.frames import RunFrames
from sftreport.report.thresholds import COMPARE_ACC_SAME, COMPARE_CHANGE_FACTOR, COMPARE_CKA_GAP
from sftreport.schema import SCHEMA_VERSION, EpochSnapshot, Evaluation

# --------------------------------------------------------------------------- tiny runs


def member(label: str, epochs: list[EpochSnapshot], model: str = "m", config: dict | None = None, **info_kw) -> Member:
    run = frames(epochs, **info_kw).run
    run.info = run.info.model_copy(update={"model": model, "config": config or {}})
    return Member(label, run, RunFrames(run))


def final(label: str, correct: int, count: int = 1000, rel: float = 0.01, head: float = 0.5, **info_kw) -> Member:
    """A run whose validation accuracy goes from 10 % to correct/count and whose one pretrained tensor moved by
    `rel` (‖W₀‖² = 1), its new head by `head`."""
    weights = [moved("body.w", rel), moved("head.w", head, new=True)]
    zero = [moved("body.w", 0.0), moved("head.w", 0.0, new=True)]
    return member(
        label,
        [snap(0, val=ev(count // 10, count), weights=zero), snap(1, val=ev(correct, count), weights=weights)],
        **info_kw,
    )


def compare(*members: Member) -> CompareFrames:
    return CompareFrames(list(members))


def one(found):
    assert len(found) == 1, found
    f = found[0]
    return f.rule, f.severity, f.title, f.evidence, f.section


# --------------------------------------------------------------------------- frames


def test_backbone_and_head_change_merge_their_tensors_exactly():
    weights = [
        wstat("a.w", diff_sq=0.04, ref_sq=1.0),
        wstat("b.w", diff_sq=0.0, ref_sq=3.0, trainable=False),  # frozen: counts in the norm, not in the change
        wstat("fc.w", new=True, diff_sq=9.0, ref_sq=4.0),
        wstat("fc.b", new=True, diff_sq=7.0, ref_sq=0.0),
    ]
    f = frames([snap(0, weights=weights), snap(1, weights=weights)])
    assert backbone_change(f) == pytest.approx(math.sqrt(0.04 / 4.0), rel=1e-12)
    assert head_change(f) == pytest.approx(math.sqrt(16.0 / 4.0), rel=1e-12)
    only0 = frames([snap(0, weights=weights)])
    assert math.isnan(backbone_change(only0)) and math.isnan(head_change(only0))
    no_head = frames([snap(0), snap(1, weights=weights[:2])])
    assert math.isnan(head_change(no_head)) and backbone_change(no_head) == pytest.approx(0.1)


def test_settings_lists_only_what_differs():
    a = final("a", 900, config={"lr": 0.01, "epochs": 3, "record": {"probe_size": 64}, "out": ["a.html"]})
    b = final("b", 900, config={"lr": 0.001, "epochs": 3, "record": {"probe_size": 64}, "out": ["b.html"]})
    differ, same = compare(a, b).settings()
    # model, weights, strategy, dataset, planned epochs, record.probe_size (epochs is said as planned epochs;
    # where the report went is not a setting)
    assert differ == [("lr", ["0.01", "0.001"])] and same == 6
    c = final("c", 900, config={"lr": 0.01, "seed": 1})
    differ, _ = compare(a, c).settings()
    assert ("seed", ["–", "1"]) in differ and ("record.probe_size", ["64", "–"]) in differ


def test_per_epoch_metrics_include_logged_ones_and_any_further_evaluation():
    class WithSource(EpochSnapshot):  # a newer recorder's epoch with one more evaluation (the source task's)
        source: Evaluation | None = None

    epochs = [
        WithSource(epoch=0, step=0, val=ev(1, 2), source=ev(2, 2, loss=0.5)),
        WithSource(epoch=1, step=1, val=ev(2, 2), train_loss=0.5, logged={"val_f1": 0.75}, source=ev(1, 2, loss=0.7)),
    ]
    a = member("a", epochs)
    b = member("b", [snap(0, val=ev(1, 2)), snap(1, val=ev(1, 2))])
    df = compare(a, b).per_epoch
    got = {(r.run, r.metric, r.epoch): r.value for r in df.itertuples() if not math.isnan(r.value)}
    assert got[("a", "source accuracy", 0)] == 1.0 and got[("a", "source accuracy", 1)] == 0.5
    assert got[("a", "source loss", 1)] == 0.7 and got[("a", "logged: val_f1", 1)] == 0.75
    assert got[("b", "validation accuracy", 1)] == 0.5 and got[("a", "training loss", 1)] == 0.5
    metrics = list(dict.fromkeys(df["metric"]))
    assert "training accuracy" not in metrics and "k-NN accuracy of the features (probe set)" not in metrics
    assert metrics[:3] == ["validation accuracy", "validation loss", "training loss"]


def test_layers_follow_network_order_across_runs_with_different_layers():
    a = member("a", [snap(0), snap(1, weights=[moved("conv1.w", 0.1), moved("l1.w", 0.2), moved("fc.w", 0.3)])])
    b = member("b", [snap(0), snap(1, weights=[moved("conv1.w", 0.1), moved("extra.w", 0.4), moved("fc.w", 0.5)])])
    df = compare(a, b).layers_last
    assert list(dict.fromkeys(df["layer"])) == ["conv1", "extra", "l1", "fc"]
    assert list(df[df["layer"] == "fc"]["run"]) == ["a", "b"]
    assert df.set_index(["run", "layer"]).loc[("b", "extra"), "rel_change"] == pytest.approx(0.4)


def test_labels_are_names_then_strategies_then_directories(tmp_path):
    class R:
        def __init__(self, name, strategy, root):
            self.info = type("I", (), {"name": name, "strategy": strategy})()
            self.root = Path(root)

    assert labels_for([R("x", "full", "a"), R("y", "full", "b")], None) == ["x", "y"]
    assert labels_for([R("x", "full", "a"), R("x", "linear-probe", "b")], None) == ["full", "linear-probe"]
    assert labels_for([R("x", "full", "a"), R("x", "full", "b")], None) == ["a", "b"]
    assert labels_for([R("x", "full", "d/a"), R("x", "full", "e/a")], None) == ["a #1", "a #2"]
    assert labels_for([R("x", "full", "a"), R("x", "full", "b")], ["one", "two"]) == ["one", "two"]


# --------------------------------------------------------------------------- rules near their thresholds


@pytest.mark.parametrize(
    "top, other, fires",
    [(969, 960, False), (970, 960, False), (971, 960, True)],  # 0.9 points, exactly 1 point, 1.1 points
    ids=["below", "on", "above"],
)
def test_accuracy_difference_near_its_threshold(top, other, fires):
    assert COMPARE_ACC_SAME == 0.01
    found = CF.accuracy_rule(compare(final("A", top), final("B", other)))
    assert bool(found) == fires
    if fires:
        assert one(found) == (
            "compare_accuracy",
            "info",
            "A ended with the highest validation accuracy (97.1%), 1.1 points above B",
            "Validation accuracy at each run's last epoch: A: 97.1% at epoch 1; B: 96.0% at epoch 1. More than "
            "1 point below A: B (96.0%, -1.1 points).",
            "training",
        )


def test_accuracy_difference_names_every_run_below_and_a_better_best_epoch():
    c = member("C", [snap(0, val=ev(100, 1000)), snap(1, val=ev(990, 1000)), snap(2, val=ev(900, 1000))])
    found = CF.accuracy_rule(compare(final("A", 960), final("B", 955), c))
    _, _, title, evidence, _ = one(found)
    assert title == "A ended with the highest validation accuracy (96.0%), 6.0 points above C"  # B is within 1 point
    assert evidence.endswith(
        "C: 90.0% at epoch 2, best 99.0% at epoch 1. More than 1 point below A: C (90.0%, -6.0 points)."
    )
    found = CF.accuracy_rule(compare(final("A", 960), final("B", 940), c))
    assert (
        one(found)[2]
        == "A ended with the highest validation accuracy (96.0%), 2.0 points above B and more above 1 other run(s)"
    )
    assert one(found)[3].endswith("More than 1 point below A: B (94.0%, -2.0 points), C (90.0%, -6.0 points).")


def test_identical_runs_give_no_difference_finding():
    a, b = final("A", 950, rel=0.03), final("B", 950, rel=0.03)
    a.run.epochs[-1].cka = b.run.epochs[-1].cka = cka({"layer4": 0.5})
    assert CF.compare_findings(compare(a, b)) == []


@pytest.mark.parametrize(
    "other_rel, fires, how",
    [
        (0.0199, False, None),  # 1.99× less
        (0.02, True, "2.0× less"),  # exactly the factor
        (0.0201, True, "2.0× less"),
        (0.05, True, "5.0× less"),
    ],
)
def test_less_change_near_its_factor(other_rel, fires, how):
    assert COMPARE_CHANGE_FACTOR == 2.0
    a, b = final("A", 900, rel=other_rel), final("B", 905, rel=0.01)
    found = CF.less_change_rule(compare(a, b))
    assert bool(found) == fires
    if fires:
        rule, severity, title, evidence, section = one(found)
        assert (rule, severity, section) == ("compare_less_change", "good", "parameters")
        assert (
            title
            == f"B reached the same validation accuracy as A (90.5% vs 90.0%) while changing the pretrained layers {how}"
        )
        assert evidence.startswith(
            f"Relative change of all pretrained layers together, ‖Wₜ−W₀‖/‖W₀‖ at the last epoch: B 1%, A {other_rel * 100:.3g}%."
        )


@pytest.mark.parametrize("gap, fires", [(9, True), (10, True), (11, False)])  # in thousandths: 0.9, 1.0, 1.1 points
def test_less_change_needs_the_same_accuracy(gap, fires):
    found = CF.less_change_rule(compare(final("A", 900, rel=0.1), final("B", 900 + gap, rel=0.01)))
    assert bool(found) == fires


def test_less_change_without_touching_the_backbone_and_against_the_most_changed():
    a, b, c = final("full", 900, rel=0.1), final("probe", 900, rel=0.0), final("half", 900, rel=0.04)
    found = CF.less_change_rule(compare(a, b, c))
    titles = [f.title for f in found]
    assert titles == [
        "probe reached the same validation accuracy as full (90.0% vs 90.0%) without changing the pretrained layers at all",
        "half reached the same validation accuracy as full (90.0% vs 90.0%) while changing the pretrained layers 2.5× less",
    ]
    assert CF.less_change_rule(compare(final("x", 900, rel=0.0), final("y", 900, rel=0.0))) == []


def _drift(value_a: float, value_b: float) -> CompareFrames:
    def run(label, v):
        weights = [moved("layer4.w", 0.1), moved("fc.w", 0.5, new=True)]
        return member(label, [snap(0), snap(1, weights=weights, cka=cka({"layer4": v, "fc": 0.9}))])

    return compare(run("A", value_a), run("B", value_b))


@pytest.mark.parametrize("high, fires", [(0.59, False), (0.6, True), (0.61, True)])
def test_feature_drift_near_its_gap(high, fires):
    assert COMPARE_CKA_GAP == 0.2
    found = CF.feature_drift_rule(_drift(0.4, high))
    assert bool(found) == fires
    if fires:
        assert one(found)[:3] == (
            "compare_feature_drift",
            "info",
            f"A's features in layer4 drifted from the pretrained ones (CKA 0.40) while B's stayed closer ({high:.2f})",
        )
        assert f"A 0.400, B {high:.3f}" in one(found)[3]


def test_feature_drift_ignores_the_new_head_and_layers_of_one_run():
    cf = _drift(0.95, 0.95)
    cf.members[0].run.epochs[-1].cka += cka({"layer9": 0.1})  # only A probed it
    cf.members[1].run.epochs[-1].cka[1] = cka({"fc": 0.1})[0]  # the head: new in both runs, gap 0.8
    assert CF.feature_drift_rule(CompareFrames(cf.members)) == []


def test_mixed_and_probe_rules():
    a = final("A", 900, model="m")
    b = final("B", 900, model="n", classes=["x", "y", "z"])
    rule, severity, title, evidence, _ = one(CF.mixed_rule(compare(a, b)))
    assert (rule, severity, title) == ("compare_mixed", "warning", "The runs are of different models and datasets")
    assert "models m, n; datasets d (2 classes), d (3 classes)" in evidence and "not compared" in evidence
    assert CF.accuracy_rule(compare(a, final("C", 500, classes=["x", "y", "z"]))) == []  # other classes: not compared
    assert CF.mixed_rule(compare(a, final("C", 900))) == []
    renamed = final("D", 900, classes=["x", "y"])  # the same name and class count, other classes
    assert one(CF.mixed_rule(compare(a, renamed)))[2] == "The runs are of different datasets"
    p = final("P", 900, probe_labels=[0, 1])
    q = final("Q", 900, probe_labels=[0, 1, 1])
    assert one(CF.probe_rule(compare(p, q)))[:2] == ("compare_probe", "info")
    assert CF.probe_rule(compare(p, final("R", 900, probe_labels=[0, 1]))) == []


# --------------------------------------------------------------------------- run directories


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("compare-runs")
    full = build_run(d / "full", epochs=3, name="digits")
    probe = build_run(d / "probe", epochs=3, strategy="linear-probe", name="digits", seed=1)
    same = d / "full-copy"
    shutil.copytree(full, same)
    other = build_run(d / "other", epochs=2, arch="resnet50", probe_size=16, steps_per_epoch=5)
    newer = d / "newer"
    shutil.copytree(full, newer)
    data = json.loads((newer / "run.json").read_text())
    data["schema_version"] = 99
    (newer / "run.json").write_text(json.dumps(data))
    broken = d / "broken"
    shutil.copytree(full, broken)
    with open(broken / "epochs.jsonl", "a") as f:
        f.write('{"epoch": 9, "step": "many"}\n')
    return {"full": full, "probe": probe, "same": same, "other": other, "newer": newer, "broken": broken, "root": d}


def test_two_identical_runs_give_identical_columns_and_no_difference(run_dirs):
    members = load_members([run_dirs["full"], run_dirs["same"]])
    assert [m.label for m in members] == ["full", "full-copy"]
    doc = build_compare(CompareFrames(members), "html")
    headline = doc.summary[0]
    for row in headline.rows:
        if row[0].text != "run directory":
            assert row[1].text == row[2].text, row[0].text
    assert doc.findings == []
    assert doc.sections[0].blocks[0].text.startswith("The runs' configurations are identical")
    for sec in doc.sections:
        for chart in sec.charts():
            data = chart.spec.get("data", {}) or {}
            assert "values" in data or "datasets" in chart.spec or "data" in json.dumps(chart.spec)


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftreport: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["full"], "at least two run directories"),
        (["full", "full"], "given twice"),
        (["full", "{root}/./full"], "given twice"),
        (["full", "newer"], f"schema_version 99 is newer than this sftreport ({SCHEMA_VERSION})"),
        (["full", "broken"], "epochs.jsonl:5: step"),
        (["full", "{root}/missing"], "not a run directory"),
        (["full", "other"], "different models ("),
        (["full", "probe", "--label", "a"], "2 runs but 1 --label"),
        (["full", "probe", "--label", "a", "--label", "a"], "--label 'a' is given twice"),
        (["full", "probe", "--out", "x.docx"], "unknown report format"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, run_dirs, args, needle):
    root = run_dirs["root"]
    argv = ["compare"] + [a.format(root=root) if "{" in a else str(root / a) if a in run_dirs else a for a in args]
    assert needle in _one_line_error(capsys, argv)


def test_different_datasets_are_refused_unless_allowed(capsys, run_dirs, tmp_path):
    other = build_run(tmp_path / "letters", epochs=2, classes=["a", "b", "c"])
    line = _one_line_error(capsys, ["compare", str(run_dirs["full"]), str(other), "--out", str(tmp_path / "x.html")])
    assert "different datasets" in line and "--allow-mixed" in line
    out = compare_runs([run_dirs["full"], run_dirs["other"]], [tmp_path / "mixed.md"], allow_mixed=True)
    text = out[0].read_text()
    assert "The runs are of different models and datasets" in text


@pytest.mark.browser
def test_compare_end_to_end(run_dirs, tmp_path, visit):
    from support import cli

    out = tmp_path / "cmp"
    r = cli(
        "compare", str(run_dirs["full"]), str(run_dirs["probe"]), "--label", "<b>full</b>", "--label", "probe",
        "--out", str(out / "c.html"), "--out", str(out / "c.pdf"), "--out", str(out / "c.md"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout.count("report: ") == 3
    html = (out / "c.html").read_text()
    specs = spec_blob(html)
    assert set(specs) == {"curves", "change-total", "rel-change", "update-ratio", "grad-norm", "cka"}
    assert "&lt;b&gt;full&lt;/b&gt;" in html and "<b>full</b>" not in html
    md = (out / "c.md").read_text()
    assert "## Comparison of 2 fine-tuning runs" in md and "\\<b\\>full\\</b\\>" in md
    assert "### Each run's own findings" in md
    text = pdf_text(out / "c.pdf")
    assert "Comparison of 2 fine-tuning runs" in text and "Relative change per layer at the last epoch" in text
    v = visit(out / "c.html")
    assert v.charts == 6 and v.drawn == v.charts, v.chart_errors
    assert v.errors == [] and v.requests == []


@pytest.mark.browser
def test_compare_and_diff_pages_are_valid_html_and_accessible(run_dirs, tmp_path, browser):
    """vnu.jar finds no error and axe-core no serious or critical violation in a comparison and a diff page (the
    diff rendered from a two-epoch run directory, as `sftreport diff` measures one)."""
    import subprocess

    from report_support import AXE_JS, VNU_JAR, require
    from test_validity import axe_violations

    from sftreport.report.diff import render_diff
    from sftreport.store import RunWriter, read_run

    pages = compare_runs([run_dirs["full"], run_dirs["probe"]], [tmp_path / "compare.html"])
    two = build_run(tmp_path / "two", epochs=1)
    run = read_run(two)
    run.info.config = {"diff": {"base": "a.pt", "tuned": "b.pt", "replaced": []}}
    RunWriter(two, resume=True).write_run(run.info)
    pages += render_diff(two, [tmp_path / "diff.html"])
    java = shutil.which("java")
    require(java is not None, "java (Debian: default-jre-headless)")
    require(VNU_JAR.is_file(), f"{VNU_JAR} (npm package vnu-jar)")
    proc = subprocess.run(
        [java, "-jar", str(VNU_JAR), "--errors-only", *map(str, pages)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    require(AXE_JS.is_file(), f"{AXE_JS} (npm package axe-core)")
    for page in pages:
        bad = [v for v in axe_violations(browser, page) if v["impact"] in ("serious", "critical")]
        assert bad == [], (page.name, bad)


def test_runs_with_little_or_broken_data_still_compare(tmp_path):
    """Only epoch 0, probes off, a diverged run with NaN everywhere, no validation: a report with notes, no error."""
    dirs = [
        build_run(tmp_path / "only0", epochs=0),
        build_run(tmp_path / "noprobes", epochs=2, probes=False),
        build_run(tmp_path / "diverged", epochs=3, status="diverged", diverge_at=2, nonfinite_at=2),
        build_run(tmp_path / "noval", epochs=2, val=False),
    ]
    out = compare_runs(dirs, [tmp_path / "edge.html", tmp_path / "edge.md"])
    html = out[0].read_text()
    assert spec_blob(html)  # charts of whatever the runs have, all JSON-clean (no NaN)
    md = out[1].read_text()
    assert "| status | completed | completed | diverged | completed |" in md
    assert "The run diverged after 3 epochs" in md
