"""The diff report's rules (report/diff.py) near every threshold, on two-epoch runs whose every number is chosen by
hand (epoch 0 = BASE, epoch 1 = TUNED), and the spectrum's blocks in a run report."""

from __future__ import annotations

import math

import pytest
from tiny_run import cka, ev, frames, moved, snap

from sftreport.report import diff as D
from sftreport.report.sections import build_report
from sftreport.report.spectrum import spectrum_blocks, spectrum_frame
from sftreport.report.thresholds import ACC_CHANGE, DIFF_LOW_RANK_ENERGY, DIFF_LOW_RANK_MIN, OVERWRITTEN
from sftreport.schema import LayerSpectrum, Spectrum


def diff_run(epochs, replaced=(), spectrum=None, **kw):
    f = frames(epochs, **kw)
    f.run.info = f.run.info.model_copy(
        update={"config": {"diff": {"base": "a.pt", "tuned": "b.pt", "replaced": list(replaced)}}, "spectrum": spectrum}
    )
    return f.run, D.RunFrames(f.run)


def one(found):
    assert len(found) == 1, found
    f = found[0]
    return f.rule, f.severity, f.title, f.evidence


def matrix(name: str, energy: float, rank: int, diff_sq: float = 100.0) -> LayerSpectrum:
    """A matrix whose top direction holds `energy` of ‖ΔW‖² = `diff_sq` (one singular value)."""
    return LayerSpectrum(
        name=name,
        module=name.rpartition(".")[0],
        shape=[rank, rank],
        rank=rank,
        diff_sq=diff_sq,
        ref_sq=1.0,
        singular_values=[math.sqrt(energy * diff_sq)],
        effective_rank=1.0,
    )


@pytest.mark.parametrize("energy, fires", [(0.899, False), (0.9, True), (0.901, True)])
def test_low_rank_near_its_energy_share(energy, fires):
    assert DIFF_LOW_RANK_ENERGY == 0.9
    run, f = diff_run([snap(0), snap(1)], spectrum=Spectrum(epoch=1, top=8, layers=[matrix("a.weight", energy, 64)]))
    found = D.low_rank_rule(run, f)
    assert bool(found) == fires
    if fires:
        assert (
            one(found)[2]
            == "Every changed weight matrix changed along few directions: at least 90% of the change in the top 8"
        )
        assert f"a ({energy * 100:.1f}%, effective rank 1.0 of 64)" in one(found)[3]


@pytest.mark.parametrize("rank, fires", [(DIFF_LOW_RANK_MIN, False), (DIFF_LOW_RANK_MIN + 1, True)])
def test_low_rank_needs_room_for_more_directions(rank, fires):
    layers = [matrix("a.weight", 0.95, rank), matrix("b.weight", 0.5, 100), matrix("fc.weight", 1.0, 100)]
    run, f = diff_run([snap(0), snap(1)], replaced=["fc.weight"], spectrum=Spectrum(epoch=1, top=8, layers=layers))
    found = D.low_rank_rule(run, f)
    assert bool(found) == fires
    if fires:
        assert one(found)[2].startswith("1 of 2 changed weight matrices changed along few directions")


@pytest.mark.parametrize(
    "before, after, severity, title",
    [
        (0, 4, "info", "TUNED kept BASE's validation accuracy (0.0% → 0.4%)"),
        (0, 5, "info", "TUNED kept BASE's validation accuracy (0.0% → 0.5%)"),  # exactly ACC_CHANGE: no change
        (0, 6, "good", "TUNED gained 0.6 points of validation accuracy (0.0% → 0.6%)"),
        (5, 0, "info", "TUNED kept BASE's validation accuracy (0.5% → 0.0%)"),
        (6, 0, "warning", "TUNED lost 0.6 points of validation accuracy (0.6% → 0.0%)"),
    ],
)
def test_accuracy_near_its_threshold(before, after, severity, title):
    assert ACC_CHANGE == 0.005
    run, f = diff_run([snap(0, val=ev(before, 1000)), snap(1, val=ev(after, 1000))])
    rule, sev, got, _ = one(D.accuracy_rule(run, f))
    assert (rule, sev, got) == ("diff_accuracy", severity, title)


def test_accuracy_of_tuned_alone_when_the_head_was_replaced():
    run, f = diff_run([snap(0), snap(1, val=ev(900, 1000))], replaced=["fc.weight"])
    assert one(D.accuracy_rule(run, f))[2] == "TUNED's validation accuracy: 90.0%"


@pytest.mark.parametrize("rel, severity", [(OVERWRITTEN, "info"), (OVERWRITTEN * 1.001, "warning")])
def test_moved_near_overwritten(rel, severity):
    weights = [moved("a.w", 0.01), moved("b.w", rel), moved("c.w", 0.0), moved("fc.w", 9.0)]
    run, f = diff_run([snap(0, weights=weights), snap(1, weights=weights)], replaced=["fc.w"])
    rule, sev, title, evidence = one(D.moved_rule(run, f))
    assert (rule, sev) == ("diff_moved", severity)
    assert "fc" not in evidence and "2 of 3 layers changed, 1 are equal in both" in evidence
    if severity == "info":
        assert title == "The layer that moved most: b (100% of its norm); least: a (1%)"
    else:
        assert title == "1 layer(s) moved further than their own norm, most b (100%)"


def test_identical_and_nonfinite_and_representation():
    same = [moved("a.w", 0.0), moved("fc.w", 0.5)]
    run, f = diff_run([snap(0, weights=same), snap(1, weights=same)], replaced=["fc.w"])
    assert one(D.identical_rule(run, f))[:3] == ("diff_identical", "info", "The two checkpoints hold the same weights")
    run, f = diff_run([snap(0, weights=same), snap(1, weights=[moved("a.w", math.nan), moved("fc.w", 0.5)])])
    assert one(D.nonfinite_rule(run, f))[:3] == (
        "diff_nonfinite",
        "alert",
        "TUNED holds NaN or infinite weights in 1 layer(s)",
    )
    assert D.identical_rule(run, f) == []
    run, f = diff_run([snap(0), snap(1, cka=cka({"l1": 0.9, "l2": 0.3, "fc": 0.1}))], replaced=["fc.weight"])
    assert one(D.representation_rule(run, f))[2] == "TUNED's representation differs most from BASE's in l2 (CKA 0.30)"


def test_spectrum_blocks_leave_out_frozen_and_skipped_matrices():
    frozen = LayerSpectrum(name="a.weight", module="a", shape=[4, 4], rank=4, diff_sq=0.0, ref_sq=1.0)
    broken = LayerSpectrum(name="n.weight", module="n", shape=[4, 4], rank=4, diff_sq=math.nan, ref_sq=1.0)
    spec = Spectrum(epoch=3, top=8, layers=[frozen, broken, matrix("b.weight", 0.5, 16), matrix("fc.weight", 1.0, 16)])
    df = spectrum_frame(spec, skip={"fc.weight"})
    assert list(df["layer"]) == ["b"] and df["energy_1"].iloc[0] == pytest.approx(0.5)
    made = []
    blocks = spectrum_blocks(
        spec, lambda *a: made.append(a) or a[0], 700, skip={"fc.weight"}, when="at epoch 3", table=True
    )
    assert [made[0][0], made[0][1]] == ["spectrum", "Spectrum of the change at epoch 3"]
    assert "Left out: 1 unchanged (frozen) matrix and 1 whose change is not finite." in made[0][2]
    assert blocks[1].kind == "table" and blocks[1].rows[0][0].text == "b"
    assert spectrum_blocks(None, lambda *a: a, 700, missing="none here")[0].text == "none here"


def test_a_run_report_draws_the_recorded_spectrum(tmp_path):
    from synthetic_run import build_run

    from sftreport.store import read_run

    run = read_run(build_run(tmp_path / "run", epochs=2))
    run.info.spectrum = Spectrum(epoch=2, top=8, layers=[matrix("layer1.0.conv1.weight", 0.7, 16)])
    params = next(s for s in build_report(run, "html").sections if s.id == "parameters")
    chart = next(b for b in params.blocks if b.kind == "chart" and b.id == "spectrum")
    assert chart.title == "Spectrum of the change from the pretrained model to epoch 2"
