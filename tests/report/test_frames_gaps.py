"""Frames behaviours that hand-planted bugs (tests/benchmarks/planted_bugs.py) slipped past: a later epoch's
step positions count from where the previous epoch ended, and CKA rows take the activations' order, calls
and modules outside the architecture included. Expected values are worked out by hand (tiny_run.py)."""

from __future__ import annotations

import pytest
from tiny_run import architecture, astat, cka, frames, snap

from sftreport.schema import StepPoint


def test_a_later_epoch_counts_its_step_positions_from_the_previous_epochs_last_step():
    # epoch 1 ends at step 10; epoch 2's first point covers steps 15-16 only (steps 11-14 left no loss),
    # so its positions are (step − 10) / (20 − 10) past epoch 1, not measured from step 14
    fr = frames(
        [
            snap(0, 0),
            snap(1, 10, steps=[StepPoint(step=5, loss=2.0, steps=5), StepPoint(step=10, loss=1.5, steps=5)]),
            snap(2, 20, steps=[StepPoint(step=16, loss=1.0, steps=2), StepPoint(step=20, loss=0.5, steps=4)]),
        ]
    )
    got = fr.steps
    assert list(got["step"]) == [5, 10, 16, 20]
    assert list(got["x"]) == pytest.approx([0.5, 1.0, 1.6, 2.0], rel=1e-12)


def test_a_later_epoch_whose_first_bucket_is_short_starts_where_the_previous_one_ended():
    # epoch 1 ended at step 4; epoch 2's only point is one step long (step 6) though the epoch ran to step 8
    fr = frames(
        [snap(1, 4, steps=[StepPoint(step=4, loss=1.0, steps=4)]), snap(2, 8, steps=[StepPoint(step=6, loss=0.5)])]
    )
    assert list(fr.steps["x"]) == pytest.approx([1.0, 1.5], rel=1e-12)  # (6 − 4) / (8 − 4) past epoch 1


def test_cka_rows_take_the_activation_order_of_repeated_calls_and_of_modules_outside_the_architecture():
    # the architecture orders "" (0), "b" (1), "a" (2); "x" is not in it
    arch = architecture([("", "M", 0, 0, 0), ("b", "L", 1, 1, 0), ("a", "L", 1, 1, 0)])
    acts = [astat("b", 2, 0), astat("a#1", 2, 0), astat("a#2", 2, 0), astat("x", 2, 0)]
    # activation orders, by hand: module order + (k-th activation seen) · 1e-4, and 1e6 + k for "x"
    order = {"b": 1.0, "a#1": 2.0001, "a#2": 2.0002, "x": 1e6 + 3.0003}
    # the snapshot lists its CKA values in the opposite order
    fr = frames([snap(0, activations=acts, cka=cka({"x": 0.1, "a#2": 0.2, "a#1": 0.3, "b": 0.4}))], architecture=arch)
    got = fr.cka
    assert list(got["layer"]) == ["b", "a#1", "a#2", "x"]
    assert list(got["order"]) == pytest.approx([order[n] for n in got["layer"]], rel=1e-12, abs=0)
    assert list(got["cka"]) == [0.4, 0.3, 0.2, 0.1]
    assert fr.layers_in_order(got) == fr.layers_in_order(fr.activations)


def test_cka_rows_without_an_architecture_follow_the_activations_not_the_cka_listing():
    acts = [astat("conv", 2, 0), astat("fc", 2, 0)]
    fr = frames([snap(0, activations=acts, cka=cka({"fc": 0.5, "conv": 0.9}))])
    got = fr.cka
    assert list(got["layer"]) == ["conv", "fc"]
    assert list(got["order"]) == pytest.approx([1e6, 1e6 + 1.0001], rel=1e-15)
    assert list(got["cka"]) == [0.9, 0.5]
