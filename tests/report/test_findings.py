"""Every findings rule: a run that triggers it and one that does not (synthetic runs, no torch)."""

from __future__ import annotations

import pytest
from synthetic_run import build_run

from sftreport.report import findings as F
from sftreport.report.frames import RunFrames
from sftreport.store import read_run


@pytest.fixture(scope="module")
def plain(runs):
    """A healthy completed run: accuracy gained, no overfitting, no dead units, finite gradients."""
    return RunFrames(read_run(build_run(runs / "plain", epochs=5)))


def frames(tmp_path, **kw) -> RunFrames:
    return RunFrames(read_run(build_run(tmp_path / "run", **kw)))


def rules(found, rule):
    return [f for f in found if f.rule == rule]


def test_accuracy_gain_fires_with_numbers(plain):
    (f,) = F.accuracy_rule(plain)
    assert f.severity == "good"
    first, last = plain.first_eval.eval.accuracy, plain.last_eval.eval.accuracy
    assert f"{first * 100:.1f}%" in f.title and f"{last * 100:.1f}%" in f.title
    assert "points" in f.title


def test_accuracy_drop_is_a_warning(tmp_path):
    (f,) = F.accuracy_rule(frames(tmp_path, epochs=4, accuracy_drop=True))
    assert f.severity == "warning" and "fell" in f.title


def test_accuracy_that_peaked_and_fell(tmp_path):
    (f,) = F.accuracy_rule(frames(tmp_path, epochs=4, status="diverged", diverge_at=3))
    assert f.severity == "warning" and "peaked at" in f.title and "(epoch 2)" in f.title


def test_accuracy_needs_two_evaluations(tmp_path):
    assert F.accuracy_rule(frames(tmp_path, epochs=0)) == []
    assert F.accuracy_rule(frames(tmp_path / "b", epochs=3, val=False)) == []


def test_validation_loss_rise(tmp_path, plain):
    (f,) = F.val_loss_rule(frames(tmp_path, epochs=3, val_blowup=20.0))
    assert f.severity == "warning" and "above the pretrained model's" in f.title and "×" in f.title
    assert F.val_loss_rule(plain) == []
    assert F.val_loss_rule(frames(tmp_path / "b", epochs=3, val=False)) == []


def test_overfitting_onset(tmp_path):
    (f,) = F.overfitting_rule(frames(tmp_path, epochs=7, overfit_at=3))
    assert f.title.startswith("Overfitting from epoch 4")
    assert "lowest at epoch 3" in f.evidence and "training loss fell" in f.evidence


def test_no_overfitting_when_validation_keeps_falling(plain, tmp_path):
    assert F.overfitting_rule(plain) == []
    # one epoch of training cannot show an onset
    assert F.overfitting_rule(frames(tmp_path, epochs=1)) == []


def test_dead_units_growth(tmp_path):
    (f,) = F.dead_units_rule(frames(tmp_path, epochs=4, dead_growth=True))
    assert f.severity == "warning" and "Dead units grew" in f.title
    assert "channels" in f.evidence and "→" in f.evidence


def test_no_dead_units(plain):
    assert F.dead_units_rule(plain) == []


def test_nonfinite_gradients(tmp_path):
    found = F.gradients_rule(frames(tmp_path, epochs=4, nonfinite_at=3))
    (f,) = rules(found, "nonfinite_gradients")
    assert f.severity == "alert" and "from epoch 3" in f.title


def test_exploding_gradients(tmp_path):
    found = F.gradients_rule(frames(tmp_path, epochs=5, explode_at=4))
    (f,) = rules(found, "exploding_gradients")
    assert "epoch 4" in f.title and "threshold ×10" in f.evidence


def test_healthy_gradients(plain):
    assert F.gradients_rule(plain) == []


def test_update_ratio_far_from_band(tmp_path):
    (f,) = F.update_ratio_rule(frames(tmp_path, epochs=3, update_scale=0.05))
    assert f.severity == "warning" and "outside 0.0001…0.01" in f.title
    assert "too high" in f.evidence
    (low,) = F.update_ratio_rule(frames(tmp_path / "low", epochs=3, update_scale=2e-6))
    assert "too low" in low.evidence


def test_update_ratio_far_for_one_layer(tmp_path):
    """The median is fine, but one layer is 100× above the band: still a warning, naming the layer."""
    (f,) = F.update_ratio_rule(frames(tmp_path, epochs=3, hot_layer="layer2.0.conv1"))
    assert f.severity == "warning" and "layer2.0.conv1" in f.evidence and "more than 10×" in f.evidence


def test_update_ratio_in_band(plain):
    assert F.update_ratio_rule(plain) == []


def test_moved_layers(plain):
    (f,) = F.moved_layers_rule(plain)
    assert f.severity == "info"
    assert "moved most" in f.title and "least" in f.title
    # the synthetic run moves deeper layers more: the most moved layer is deep, the least is early
    assert "layer4" in f.title and "conv1" in f.evidence.split("least moved")[1]
    assert "fc" in f.evidence  # the new head, compared with its initialisation


def test_pretrained_weights_overwritten(tmp_path):
    (f,) = F.moved_layers_rule(frames(tmp_path, epochs=3, hot_layer="layer1.0.conv1"))
    assert f.severity == "warning" and "largely overwritten" in f.title and "layer1.0.conv1" in f.title


def test_moved_layers_linear_probe(tmp_path):
    (f,) = F.moved_layers_rule(frames(tmp_path, epochs=2, strategy="linear-probe"))
    assert "frozen" in f.title


def test_moved_layers_needs_training(tmp_path):
    assert F.moved_layers_rule(frames(tmp_path, epochs=0)) == []
    assert F.moved_layers_rule(frames(tmp_path / "b", epochs=2, probes=False)) == []


def test_status_rules(tmp_path, plain):
    assert F.status_rule(plain) == []
    (f,) = F.status_rule(frames(tmp_path, epochs=2, planned_epochs=6, status="interrupted"))
    assert f.severity == "warning" and "interrupted after epoch 2" in f.title and "of 6 planned" in f.evidence
    d = frames(tmp_path / "d", epochs=3, status="diverged", diverge_at=2)
    (s,) = F.status_rule(d)
    assert s.severity == "alert" and "diverged" in s.title
    (n,) = F.nonfinite_loss_rule(d)
    assert n.severity == "alert" and "epoch 2" in n.title


def test_no_nonfinite_loss(plain):
    assert F.nonfinite_loss_rule(plain) == []


def test_representation(plain, tmp_path):
    (f,) = F.representation_rule(plain)
    assert "CKA" in f.title and "k-NN" in f.evidence
    assert F.representation_rule(frames(tmp_path, epochs=0)) == []


def test_findings_are_sorted_and_only_pretrained_noted(tmp_path, plain):
    found = F.derive_findings(frames(tmp_path, epochs=5, nonfinite_at=2, overfit_at=2))
    order = [F.SEVERITY_ORDER[f.severity] for f in found]
    assert order == sorted(order) and found[0].severity == "alert"
    only = F.derive_findings(frames(tmp_path / "zero", epochs=0))
    assert [f.rule for f in only] == ["only_pretrained"]


def test_representation_change_names_pretrained_layers_and_the_new_head_apart(plain):
    """The new head has no pretrained representation to keep: it is never "the layer that changed most"."""
    c = plain.cka
    last = c[c["epoch"] == c["epoch"].max()]
    assert last.loc[last["cka"].idxmin(), "layer"] == "fc"  # the head moved most: the old rule named it
    (f,) = F.representation_rule(plain)
    assert "fc" not in f.title
    kept = last[last["layer"] != "fc"]
    lowest = kept.loc[kept["cka"].idxmin()]
    assert f"in {lowest['layer']} (CKA {lowest['cka']:.2f}" in f.title
    assert (
        f"New layers, compared with their initialisation: fc ({last[last['layer'] == 'fc']['cka'].iloc[0]:.3f})"
        in f.evidence
    )
