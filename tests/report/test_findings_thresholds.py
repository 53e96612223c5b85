"""Every findings rule near its threshold (just below, on it, just above) and on each of its branches, on
tiny runs whose every number is chosen by hand (tiny_run.py). The expected titles and evidence are written
out in full: they are what the report prints."""

from __future__ import annotations

import math

import pytest
from tiny_run import (
    architecture,
    astat,
    cka,
    ev,
    features,
    frames,
    gstat,
    moved,
    ratio,
    snap,
    wstat,
)

from sftreport.report import findings as F
from sftreport.schema import StepPoint

NAN, INF = math.nan, math.inf


def one(found):
    assert len(found) == 1, found
    f = found[0]
    return f.rule, f.severity, f.title, f.evidence, f.section


# --------------------------------------------------------------------------- helpers


def test_plural_and_join_helpers():
    assert F._n(1, "epoch") == "1 epoch" and F._n(0, "epoch") == "0 epochs" and F._n(2, "layer") == "2 layers"
    assert F._join(["a", "b", "c", "d"]) == "a, b, c, d"
    assert F._join(["a", "b", "c", "d", "e", "f"]) == "a, b, c, d and 2 more"
    assert F._join(["a", "b", "c", "d"], 3) == "a, b, c and 1 more"
    assert F._join([]) == ""


# --------------------------------------------------------------------------- status


def test_status_completed_says_nothing():
    assert F.status_rule(frames([snap(0), snap(1)])) == []


def test_status_diverged_after_one_epoch_with_plan_and_detail():
    fr = frames([snap(0), snap(1)], status="diverged", planned=5, detail="loss NaN at step 3")
    assert one(F.status_rule(fr)) == (
        "status",
        "alert",
        "The run diverged after 1 epoch",
        "Training stopped because it diverged (loss NaN at step 3); 1 epoch of 5 planned was recorded. "
        "Charts show the non-finite values as gaps.",
        "training",
    )


def test_status_diverged_after_three_epochs_without_plan_or_detail():
    fr = frames([snap(0), snap(1), snap(2), snap(3)], status="diverged")
    assert one(F.status_rule(fr))[2:4] == (
        "The run diverged after 3 epochs",
        "Training stopped because it diverged; 3 epochs were recorded. Charts show the non-finite values as gaps.",
    )


def test_status_failed():
    fr = frames([snap(0), snap(1), snap(2)], status="failed", planned=4, detail="RuntimeError: boom")
    assert one(F.status_rule(fr)) == (
        "status",
        "alert",
        "The run failed",
        "The run ended with an error (RuntimeError: boom); 2 epochs of 4 planned were recorded.",
        "training",
    )
    only_one = frames([snap(0), snap(1)], status="failed")
    assert one(F.status_rule(only_one))[3] == "The run ended with an error; 1 epoch was recorded."


def test_status_interrupted():
    fr = frames([snap(0), snap(1), snap(2)], status="interrupted", planned=6, detail="SIGINT")
    assert one(F.status_rule(fr)) == (
        "status",
        "warning",
        "The run was interrupted after epoch 2",
        "2 epochs of 6 planned were recorded (SIGINT); the report shows what was finished.",
        "training",
    )
    fr1 = frames([snap(0), snap(1)], status="interrupted")
    assert one(F.status_rule(fr1))[2:4] == (
        "The run was interrupted after epoch 1",
        "1 epoch was recorded; the report shows what was finished.",
    )


def test_status_running_and_nothing_recorded_yet():
    fr = frames([snap(0), snap(1)], status="running", planned=3)
    assert one(F.status_rule(fr)) == (
        "status",
        "info",
        "The run is still running (epoch 1 recorded)",
        "This report shows the 1 epoch of 3 planned recorded so far.",
        "training",
    )
    empty = frames([], status="running")
    assert one(F.status_rule(empty))[2:4] == (
        "The run is still running (epoch 0 recorded)",
        "This report shows the 0 epochs recorded so far.",
    )


def test_dropped_write():
    assert F.dropped_write_rule(frames([snap(0)])) == []
    fr = frames([snap(0)], dropped="epochs.jsonl ends in an unfinished line")
    assert one(F.dropped_write_rule(fr)) == (
        "dropped_write",
        "warning",
        "The last epoch's record was incomplete and is left out",
        "epochs.jsonl ends in an unfinished line. Every complete epoch is shown.",
        "training",
    )


# --------------------------------------------------------------------------- non-finite loss


def test_nonfinite_loss_only_in_steps_names_the_first_step():
    steps1 = [StepPoint(step=1, loss=1.0), StepPoint(step=2, loss=INF), StepPoint(step=3, loss=NAN)]
    steps2 = [StepPoint(step=4, loss=NAN)]
    fr = frames([snap(0), snap(1, 3, train_loss=1.0, steps=steps1), snap(2, 4, train_loss=1.0, steps=steps2)])
    assert one(F.nonfinite_loss_rule(fr)) == (
        "nonfinite_loss",
        "alert",
        "The loss became NaN or infinite in epoch 1",
        "Non-finite loss values from epoch 1 on, first at optimizer step 2; 0 epoch(s) have a non-finite "
        "training or validation loss. Lower the learning rate, or check the data and the loss.",
        "training",
    )


def test_nonfinite_epoch_losses_train_or_validation():
    fr = frames(
        [
            snap(0, val=ev(5, 10, NAN)),  # epoch 0 is not a trained epoch: never counted
            snap(1, train_loss=1.0, val=ev(5, 10, 1.0)),
            snap(2, train_loss=INF, val=ev(5, 10, 1.0)),
            snap(3, train_loss=1.0, val=ev(5, 10, NAN)),
            snap(4, train_loss=1.0, val=ev(5, 10, 1.0)),
        ]
    )
    f = one(F.nonfinite_loss_rule(fr))
    assert f[2] == "The loss became NaN or infinite in epoch 2"
    assert f[3].startswith("Non-finite loss values from epoch 2 on; 2 epoch(s) have a non-finite")


def test_nonfinite_loss_first_epoch_is_the_earlier_of_epochs_and_steps():
    fr = frames(
        [
            snap(0),
            snap(1, 2, train_loss=1.0, steps=[StepPoint(step=2, loss=1.0)]),
            snap(2, 4, train_loss=NAN, steps=[StepPoint(step=4, loss=1.0)]),
            snap(3, 6, train_loss=1.0, steps=[StepPoint(step=6, loss=NAN)]),
        ]
    )
    f = one(F.nonfinite_loss_rule(fr))
    assert f[2].endswith("in epoch 2")
    assert "from epoch 2 on, first at optimizer step 6; 1 epoch(s)" in f[3]


def test_finite_losses_and_epoch_zero_nan_say_nothing():
    assert F.nonfinite_loss_rule(frames([snap(0, val=ev(1, 2, NAN)), snap(1, train_loss=0.5, val=ev(1, 2))])) == []
    assert F.nonfinite_loss_rule(frames([snap(0)])) == []


# --------------------------------------------------------------------------- accuracy


def acc_run(*accs: tuple[int, int], start: int = 0, **kw):
    return frames([snap(start + i, val=ev(c, n)) for i, (c, n) in enumerate(accs)], **kw)


def test_accuracy_gain_just_above_the_threshold_is_good():
    fr = acc_run((500, 1000), (506, 1000))  # +0.6 points > 0.5
    assert one(F.accuracy_rule(fr)) == (
        "accuracy",
        "good",
        "Fine-tuning gained +0.6 points of validation accuracy (50.0% → 50.6%)",
        "Validation accuracy of the pretrained model: 50.0%; after epoch 1: 50.6% on 1,000 images.",
        "training",
    )


def test_accuracy_change_just_below_the_threshold_did_not_change():
    for later in (504, 496):  # ±0.4 points
        f = one(F.accuracy_rule(acc_run((500, 1000), (later, 1000))))
        assert f[1] == "info" and f[2] == f"Validation accuracy did not change ({later / 10:.1f}%)"


def test_accuracy_change_exactly_on_the_threshold_did_not_change():
    """0.005 − 0 is exactly ACC_CHANGE in floating point: not more than the threshold."""
    up = one(F.accuracy_rule(acc_run((0, 1000), (5, 1000))))
    assert up[:3] == ("accuracy", "info", "Validation accuracy did not change (0.5%)")
    assert up[3] == "Validation accuracy of the pretrained model: 0.0%; after epoch 1: 0.5% on 1,000 images."
    down = one(F.accuracy_rule(acc_run((5, 1000), (0, 1000))))
    assert down[:3] == ("accuracy", "info", "Validation accuracy did not change (0.0%)")
    assert down[3].endswith(" The best epoch was 0 (0.5%), +0.5 points above the last.")


def test_accuracy_drop_just_above_the_threshold_is_a_warning():
    f = one(F.accuracy_rule(acc_run((500, 1000), (494, 1000))))
    assert f == (
        "accuracy",
        "warning",
        "Validation accuracy fell by 0.6 points (50.0% → 49.4%)",
        "Validation accuracy of the pretrained model: 50.0%; after epoch 1: 49.4% on 1,000 images. "
        "The best epoch was 0 (50.0%), +0.6 points above the last.",
        "training",
    )


def test_accuracy_peak_drop_above_peak_threshold():
    f = one(F.accuracy_rule(acc_run((500, 1000), (600, 1000), (549, 1000))))  # 5.1 points below the best
    assert f == (
        "accuracy",
        "warning",
        "Validation accuracy peaked at 60.0% (epoch 1) and ended at 54.9%",
        "Validation accuracy of the pretrained model: 50.0%; after epoch 2: 54.9% on 1,000 images. "
        "The best epoch was 1 (60.0%), +5.1 points above the last. Keep the best epoch's checkpoint.",
        "training",
    )


def test_accuracy_peak_drop_below_and_on_the_peak_threshold_is_not_a_peak():
    below = one(F.accuracy_rule(acc_run((500, 1000), (600, 1000), (551, 1000))))  # 4.9 points below the best
    assert below[1] == "good"
    assert below[2] == "Fine-tuning gained +5.1 points of validation accuracy (50.0% → 55.1%)"
    assert below[3].endswith("55.1% on 1,000 images. The best epoch was 1 (60.0%), +4.9 points above the last.")
    on = one(F.accuracy_rule(acc_run((0, 1000), (50, 1000), (0, 1000))))  # exactly PEAK_DROP = 0.05
    assert on[1:3] == ("info", "Validation accuracy did not change (0.0%)")
    assert on[3].endswith(" The best epoch was 1 (5.0%), +5.0 points above the last.")


def test_accuracy_best_at_the_first_epoch_is_a_fall_not_a_peak():
    f = one(F.accuracy_rule(acc_run((900, 1000), (500, 1000), (400, 1000))))
    assert f[1] == "warning" and f[2] == "Validation accuracy fell by 50.0 points (90.0% → 40.0%)"
    assert f[3].endswith("The best epoch was 0 (90.0%), +50.0 points above the last.")


def test_accuracy_tie_with_the_last_epoch_is_no_news_and_earliest_best_wins():
    fr = acc_run((500, 1000), (600, 1000), (600, 1000))
    assert fr.best_epoch() == (1, 0.6)
    f = one(F.accuracy_rule(fr))
    assert f[2] == "Fine-tuning gained +10.0 points of validation accuracy (50.0% → 60.0%)"
    assert f[3] == "Validation accuracy of the pretrained model: 50.0%; after epoch 2: 60.0% on 1,000 images."


def test_accuracy_of_a_run_from_scratch_and_of_a_run_not_starting_at_epoch_zero():
    scratch = architecture([("", "M", 0, 0, 0), ("fc", "Linear", 6, 6, 6)])
    f = one(F.accuracy_rule(acc_run((100, 1000), (600, 1000), architecture=scratch)))
    assert f[2] == "Training gained +50.0 points of validation accuracy (10.0% → 60.0%)"
    assert f[3].startswith("Validation accuracy of the initial model: 10.0%;")
    later = one(F.accuracy_rule(acc_run((500, 1000), (600, 1000), start=2)))
    assert later[3] == (
        "Validation accuracy of the first recorded epoch (2): 50.0%; after epoch 3: 60.0% on 1,000 images."
    )


def test_accuracy_needs_two_evaluated_epochs():
    assert F.accuracy_rule(acc_run((500, 1000))) == []
    assert F.accuracy_rule(frames([snap(0, val=ev(5, 10)), snap(1), snap(2)])) == []
    assert F.accuracy_rule(frames([snap(0), snap(1)])) == []
    # unevaluated epochs between two evaluated ones: the last evaluated one is compared
    f = one(F.accuracy_rule(frames([snap(0, val=ev(1, 10)), snap(1, val=ev(9, 10)), snap(2)])))
    assert "after epoch 1: 90.0% on 10 images" in f[3]


# --------------------------------------------------------------------------- validation loss


def loss_run(*losses: float, start: int = 0, **kw):
    return frames([snap(start + i, val=ev(1, 2, loss)) for i, loss in enumerate(losses)], **kw)


def test_validation_loss_exactly_half_above_fires():
    assert one(F.val_loss_rule(loss_run(1.0, 1.2, 1.5))) == (
        "val_loss_rise",
        "warning",
        "Validation loss ended ×1.5 above the pretrained model's (1 → 1.5)",
        "Validation loss 1 at epoch 0 and 1.5 at epoch 2 (threshold +50%). The model became confidently wrong on "
        "validation images: the learning rate may be too high, or training is unstable.",
        "training",
    )


def test_validation_loss_just_below_the_rise_threshold_is_silent():
    assert F.val_loss_rule(loss_run(1.0, 1.2, 1.4999)) == []


def test_validation_loss_peak_is_named_when_it_is_not_the_last():
    f = one(F.val_loss_rule(loss_run(1.0, 3.0, 2.0)))
    assert f[2] == "Validation loss ended ×2.0 above the pretrained model's (1 → 2)"
    assert f[3].startswith("Validation loss 1 at epoch 0 and 2 at epoch 2, peaking at 3 in epoch 1 (threshold +50%).")
    tied = one(F.val_loss_rule(loss_run(1.0, 3.0, 3.0)))  # the first of equal peaks
    assert ", peaking at 3 in epoch 1 (threshold" in tied[3]


def test_validation_loss_rule_needs_epoch_zero_a_positive_start_and_finite_losses():
    assert F.val_loss_rule(loss_run(1.0, 5.0, start=1)) == []
    assert F.val_loss_rule(loss_run(0.0, 5.0)) == []
    assert F.val_loss_rule(loss_run(1.0)) == []
    assert F.val_loss_rule(loss_run(NAN, 1.0, 5.0)) == []  # epoch 0 unusable: nothing to compare with
    f = one(F.val_loss_rule(loss_run(1.0, 2.0, NAN)))  # a NaN last epoch: the last finite one is judged
    assert "2 at epoch 1 (threshold" in f[3]
    scratch = architecture([("fc", "Linear", 6, 6, 6)])
    assert "above the initial model's" in one(F.val_loss_rule(loss_run(1.0, 2.0, architecture=scratch)))[2]


# --------------------------------------------------------------------------- overfitting


def fit_run(*pairs: tuple[float, float], zero: tuple[float | None, float] = (None, 5.0)):
    """(train loss, val loss) per trained epoch 1, 2, ...; epoch 0 has only a validation loss."""
    epochs = [snap(0, train_loss=zero[0], val=ev(1, 2, zero[1]))]
    epochs += [snap(i, train_loss=t, val=ev(1, 2, v)) for i, (t, v) in enumerate(pairs, 1)]
    return frames(epochs)


def test_overfitting_onset_and_numbers():
    fr = fit_run((1.0, 1.0), (0.8, 0.9), (0.7, 1.0), (0.6, 1.08))
    assert one(F.overfitting_rule(fr)) == (
        "overfitting",
        "warning",
        "Overfitting from epoch 3: validation loss turned up while training loss kept falling",
        "Validation loss was lowest at epoch 2 (0.9) and rose to 1.08 by epoch 4 (+20%), while training loss fell "
        "from 0.8 to 0.6 (−25%). Epoch 2 is the checkpoint to keep; stop earlier or regularise more.",
        "training",
    )


def test_overfitting_rise_just_below_and_just_above_its_threshold():
    assert F.overfitting_rule(fit_run((1.0, 1.0), (0.5, 1.049))) == []  # +4.9 %
    f = one(F.overfitting_rule(fit_run((1.0, 1.0), (0.5, 1.051))))  # +5.1 %
    assert "(+5%)" in f[3] and "(−50%)" in f[3]


def test_overfitting_training_fall_just_below_and_just_above_its_threshold():
    assert F.overfitting_rule(fit_run((1.0, 1.0), (0.991, 2.0))) == []  # training loss fell 0.9 %
    f = one(F.overfitting_rule(fit_run((1.0, 1.0), (0.989, 2.0))))  # 1.1 %
    assert f[2].startswith("Overfitting from epoch 2:") and "(+100%)" in f[3] and "(−1%)" in f[3]


def test_overfitting_ignores_epoch_zero_and_non_finite_epochs():
    # epoch 0's validation loss is the lowest but is no training epoch; epoch 2 is NaN and skipped
    fr = fit_run((1.0, 1.0), (NAN, NAN), (0.5, 1.2), zero=(None, 0.1))
    f = one(F.overfitting_rule(fr))
    assert f[2].startswith("Overfitting from epoch 3:")
    assert "lowest at epoch 1 (1) and rose to 1.2 by epoch 3 (+20%)" in f[3]
    ties = one(F.overfitting_rule(fit_run((1.0, 1.0), (0.9, 1.0), (0.5, 1.2))))  # equal minima: the first
    assert ties[2].startswith("Overfitting from epoch 2:") and "lowest at epoch 1" in ties[3]


def test_no_overfitting_without_a_turn_or_a_positive_minimum():
    assert F.overfitting_rule(fit_run((1.0, 1.0))) == []  # one epoch
    assert F.overfitting_rule(fit_run((1.0, 1.0), (0.5, 0.5))) == []  # minimum at the last epoch
    assert F.overfitting_rule(fit_run((1.0, 0.0), (0.5, 0.5))) == []  # zero minimum: no relative rise
    assert F.overfitting_rule(fit_run((0.0, 0.5), (0.0, 1.0))) == []  # zero training loss: no relative fall
    assert F.overfitting_rule(fit_run((1.0, 1.0), (1.5, 2.0))) == []  # training loss rose too


# --------------------------------------------------------------------------- gradients


def grad_run(per_epoch: list[list], arch=None):
    return frames([snap(0)] + [snap(i, gradients=g) for i, g in enumerate(per_epoch, 1)], architecture=arch)


def test_nonfinite_gradients_count_sampled_steps_and_name_layers_in_network_order():
    arch = architecture([("", "M", 0, 0, 0), ("b", "Conv", 2, 2, 0), ("a", "Conv", 2, 2, 0)])
    fr = grad_run(
        [
            [gstat("a.w", 1.0, 4), gstat("b.w", 1.0, 4)],
            [gstat("a.w", 1.0, 4, nonfinite=1), gstat("b.w", 1.0, 4, nonfinite=2)],
            [gstat("a.w", 1.0, 4), gstat("b.w", 1.0, 4, nonfinite=3)],
        ],
        arch,
    )
    assert one(F.gradients_rule(fr)) == (
        "nonfinite_gradients",
        "alert",
        "Non-finite gradients (NaN or ∞) in 5 sampled step(s), from epoch 2",
        "Epochs 2, 3; in epoch 2 in 2 layer(s): b, a. Lower the learning rate, use gradient clipping, or check for "
        "bad inputs or fp16 overflow.",
        "parameters",
    )


def test_nonfinite_gradients_list_at_most_four_layers():
    names = [f"l{i}.w" for i in range(6)]
    fr = grad_run([[gstat(n, 1.0, 2, nonfinite=1) for n in names]])
    f = next(x for x in F.gradients_rule(fr) if x.rule == "nonfinite_gradients")
    assert "in epoch 1 in 6 layer(s): l0, l1, l2, l3 and 2 more." in f.evidence
    assert f.title == "Non-finite gradients (NaN or ∞) in 1 sampled step(s), from epoch 1"


def test_exploding_gradients_exactly_ten_times_the_smallest_earlier_norm():
    fr = grad_run(
        [
            [gstat("a.w", 2.0)],
            [gstat("a.w", 1.0)],
            [gstat("a.w", 9.99)],  # below 10× the smallest earlier norm
            [gstat("a.w", 10.0, norm_max=40.0)],  # exactly 10×: explodes
            [gstat("a.w", 1000.0)],  # only the first explosion is reported
        ]
    )
    assert one(F.gradients_rule(fr)) == (
        "exploding_gradients",
        "alert",
        "Gradients exploded in epoch 4: model gradient norm ×10",
        "Model gradient norm 10 in epoch 4, against 1 in epoch 2 (threshold ×10); largest single-tensor norm 40. "
        "Lower the learning rate or clip gradients.",
        "parameters",
    )


def test_exploding_gradients_ignore_zero_norm_epochs_and_combine_tensors():
    assert F.gradients_rule(grad_run([[gstat("a.w", 0.0), gstat("b.w", 0.0)], [gstat("a.w", 5.0)]])) == []
    # the model norm is the root of the sum of squares: 3 and 4 make 5, and 50 is exactly 10× that
    fr = grad_run([[gstat("a.w", 3.0), gstat("b.w", 4.0)], [gstat("a.w", 30.0), gstat("b.w", 40.0)]])
    f = one(F.gradients_rule(fr))
    assert f[2] == "Gradients exploded in epoch 2: model gradient norm ×10"
    assert f[3].startswith("Model gradient norm 50 in epoch 2, against 5 in epoch 1")


def test_vanishing_gradients_below_the_floor_in_the_last_epoch_only():
    arch = architecture([("", "M", 0, 0, 0), ("c", "L", 1, 1, 0), ("a", "L", 1, 1, 0), ("b", "L", 1, 1, 0)])
    fr = grad_run(
        [
            [gstat("a.w", 0.0), gstat("b.w", 1.0), gstat("c.w", 1.0)],  # an earlier epoch does not count
            [gstat("a.w", 1e-12), gstat("b.w", 0.0), gstat("c.w", 1e-13)],  # 1e-12 is on the floor: not below
        ],
        arch,
    )
    assert one(F.gradients_rule(fr)) == (
        "vanishing_gradients",
        "warning",
        "2 trainable layer(s) received no gradient in epoch 2",
        "Gradient norm below 1e-12 in c, b: these parameters are trainable but do not learn (unused in the "
        "forward pass, or the gradient vanished).",
        "parameters",
    )


def test_gradients_rule_reports_every_problem_in_order():
    fr = grad_run([[gstat("a.w", 1.0), gstat("b.w", 1.0)], [gstat("a.w", 100.0, 3, nonfinite=1), gstat("b.w", 0.0)]])
    assert [f.rule for f in F.gradients_rule(fr)] == [
        "nonfinite_gradients",
        "exploding_gradients",
        "vanishing_gradients",
    ]
    # a layer whose every sampled step was non-finite has no norm: it did not vanish
    all_bad = grad_run([[gstat("a.w", 1.0, 2, nonfinite=2), gstat("b.w", 1.0)]])
    assert [f.rule for f in F.gradients_rule(all_bad)] == ["nonfinite_gradients"]
    assert F.gradients_rule(frames([snap(0), snap(1)])) == []


# --------------------------------------------------------------------------- update ratio


def ratio_run(per_epoch: list[tuple[float | None, list]]):
    return frames([snap(0)] + [snap(i, lr=lr, weights=w) for i, (lr, w) in enumerate(per_epoch, 1)])


def exact(name: str, upd: float, **kw):
    """A ratio from exact sums: sqrt(1e-8) is exactly 1e-4, sqrt(1e-4) exactly 1e-2."""
    return wstat(name, update_sq=upd, before=1.0, **kw)


def test_update_ratios_on_the_band_edges_are_in_the_band():
    assert F.update_ratio_rule(ratio_run([(0.1, [exact("a.w", 1e-8), exact("b.w", 1e-4), ratio("c.w", 1e-3)])])) == []


def test_update_ratios_just_outside_the_band_are_named():
    w = [ratio("a.w", 0.02), ratio("b.w", 1e-3), ratio("c.w", 5e-5), ratio("d.w", 1e-3), ratio("e.w", 1e-3)]
    assert one(F.update_ratio_rule(ratio_run([(None, w)]))) == (
        "update_ratio",
        "info",
        "Update-to-weight ratio outside 0.0001…0.01 in 2 of 5 trainable layers (epoch 1)",
        "One optimizer step's ‖update‖/‖W‖ per layer at epoch 1; the usual target is about 1e-3, the band used "
        "here is 0.0001…0.01. Median 1.0e-03; 1 above 0.01 (largest: a 2.0e-02); 1 below 0.0001 (smallest: c 5.0e-05).",
        "parameters",
    )


def test_update_ratio_far_outside_the_band_is_a_warning_but_ten_times_exactly_is_not():
    on = [exact("a.w", 0.01), exact("b.w", 1e-10), ratio("c.w", 1e-3)]  # exactly 10× above and 10× below
    assert one(F.update_ratio_rule(ratio_run([(None, on)])))[1] == "info"
    far = [ratio("a.w", 0.2), ratio("b.w", 1e-3), ratio("c.w", 1e-3), ratio("d.w", 9e-6)]
    f = one(F.update_ratio_rule(ratio_run([(None, far)])))
    assert f[1] == "warning"
    assert f[3].endswith(
        "Median 1.0e-03; 1 above 0.01 (largest: a 2.0e-01); 1 below 0.0001 (smallest: d 9.0e-06). 2 layer(s) are "
        "more than 10× outside the band (a 2.0e-01, d 9.0e-06): consider a smaller learning rate for them "
        "(layer-wise rates) or gradient clipping."
    )


def test_update_ratio_median_outside_the_band_says_which_way():
    high = [ratio("a.w", 0.05), ratio("b.w", 0.03), ratio("c.w", 0.02), ratio("d.w", 0.04), ratio("e.w", 0.06)]
    f = one(F.update_ratio_rule(ratio_run([(None, high)])))
    assert f[1] == "warning"
    assert "5 above 0.01 (largest: e 6.0e-02, a 5.0e-02, d 4.0e-02 and 2 more)." in f[3]
    assert "Median 4.0e-02; 5 above 0.01" in f[3]
    assert f[3].endswith(" The median is outside the band: the learning rate is probably too high for this model.")
    low = [ratio("a.w", 5e-5), ratio("b.w", 2e-5), ratio("c.w", 1e-3)]
    g = one(F.update_ratio_rule(ratio_run([(None, low)])))
    assert "2 below 0.0001 (smallest: b 2.0e-05, a 5.0e-05)." in g[3]
    assert g[3].endswith("the learning rate is probably too low for this model.")


def test_update_ratio_judges_the_epoch_with_the_highest_learning_rate():
    inside = [ratio("a.w", 1e-3), ratio("b.w", 1e-3)]
    outside = [ratio("a.w", 1e-3), ratio("b.w", 0.05)]
    assert F.update_ratio_rule(ratio_run([(0.1, inside), (0.05, outside)])) == []
    f = one(F.update_ratio_rule(ratio_run([(0.05, inside), (0.1, outside), (0.01, inside)])))
    assert f[2].endswith("in 1 of 2 trainable layers (epoch 2)")
    assert f[3].startswith(
        "One optimizer step's ‖update‖/‖W‖ per layer at epoch 2 (learning rate 0.1, the highest of the run);"
    )
    # no learning rate recorded: the last epoch is judged, and no learning rate is claimed
    g = one(F.update_ratio_rule(ratio_run([(None, inside), (None, outside)])))
    assert "(epoch 2)" in g[2] and "learning rate" not in g[3].split(";")[0]
    # equal learning rates: the later epoch
    h = one(F.update_ratio_rule(ratio_run([(0.1, outside), (0.1, outside)])))
    assert "(epoch 2)" in h[2]


def test_update_ratio_ignores_frozen_zero_and_missing_ratios():
    w = [
        ratio("a.w", 0.5, trainable=False),  # frozen: not judged
        wstat("b.w", update_sq=0.0, before=1.0),  # no update at all
        wstat("c.w", update_sq=NAN, before=NAN),  # diverged
        wstat("d.w"),  # never measured
        ratio("e.w", 1e-3),
    ]
    assert F.update_ratio_rule(ratio_run([(None, w)])) == []
    assert F.update_ratio_rule(frames([snap(0)])) == []


# --------------------------------------------------------------------------- dead units


def dead_run(per_epoch: list[list]):
    return frames([snap(i, activations=a) for i, a in enumerate(per_epoch)])


def test_dead_units_growth_exactly_on_the_threshold_fires():
    fr = dead_run(
        [
            [astat("x", 20, 0), astat("y", 20, 0), astat("z", 20, 0, nonnegative=False), astat("w", 10_000, 0)],
            [astat("x", 20, 10), astat("y", 20, 10), astat("z", 20, 10, nonnegative=False), astat("w", 10_000, 0)],
            [astat("x", 20, 1), astat("y", 20, 0), astat("z", 20, 19, nonnegative=False), astat("w", 10_000, 499)],
        ]
    )
    assert one(F.dead_units_rule(fr)) == (
        "dead_units",
        "warning",
        "Dead units grew in 1 layer(s); most in x (+5.0 points)",
        "Channels whose output is 0 for every probe image, epoch 0 → 2 (threshold: +5 points): x: 1 of 20 channels "
        "(0.0% → 5.0%). A high learning rate often kills ReLU units.",
        "activations",
    )


def test_dead_units_sorted_by_growth_and_at_most_three_listed():
    first = [astat(n, 10, 0) for n in "abcd"]
    last = [astat("a", 10, 2), astat("b", 10, 5), astat("c", 10, 3), astat("d", 10, 1)]
    f = one(F.dead_units_rule(dead_run([first, last])))
    assert f[2] == "Dead units grew in 4 layer(s); most in b (+50.0 points)"
    assert (
        "b: 5 of 10 channels (0.0% → 50.0%), c: 3 of 10 channels (0.0% → 30.0%), a: 2 of 10 channels "
        "(0.0% → 20.0%) and 1 more." in f[3]
    )


def test_dead_units_need_more_dead_channels_a_known_layer_and_two_epochs():
    # the fraction grew only because the layer reports fewer channels: no more dead channels
    assert F.dead_units_rule(dead_run([[astat("a", 40, 2)], [astat("a", 20, 2)]])) == []
    # a layer first seen at the last epoch, or non-negative only at the last epoch, has nothing to compare with
    assert F.dead_units_rule(dead_run([[astat("a", 10, 0)], [astat("a", 10, 0), astat("b", 10, 9)]])) == []
    assert F.dead_units_rule(dead_run([[astat("a", 10, 0, nonnegative=False)], [astat("a", 10, 9)]])) == []
    # no channels: the dead fraction is undefined
    assert F.dead_units_rule(dead_run([[astat("a", 0, 0)], [astat("a", 0, 0)]])) == []
    assert F.dead_units_rule(dead_run([[astat("a", 10, 0)]])) == []
    assert F.dead_units_rule(frames([snap(0), snap(1)])) == []


# --------------------------------------------------------------------------- moved layers


def moved_run(last: list, epochs: int = 1):
    first = [wstat(w.name, shape=w.shape, trainable=w.trainable, new=w.new) for w in last]
    return frames([snap(0, weights=first)] + [snap(e, weights=last) for e in range(1, epochs + 1)])


def test_moved_layers_most_least_median_new_and_frozen():
    fr = moved_run(
        [
            moved("conv1.weight", 0.01),
            moved("layer1.weight", 0.05),
            moved("layer2.weight", 0.2),
            moved("layer3.weight", 0.1),
            moved("frozen.weight", 0.0, trainable=False),
            moved("frozen2.weight", 0.0, trainable=False),
            moved("fc.weight", 0.5, new=True),
        ]
    )
    assert one(F.moved_layers_rule(fr)) == (
        "moved",
        "info",
        "Pretrained layer that moved most: layer2 (20% of its norm); least: conv1 (1%)",
        "Relative change ‖Wₜ−W₀‖/‖W₀‖ of the pretrained layers at epoch 1: most moved layer2 (20%), layer3 (10%), "
        "layer1 (5%); least moved conv1 (1%), layer1 (5%), layer3 (10%); median 7.5% over 4 layers. New layers "
        "moved from their initialisation by fc 50%. 2 layers were frozen and did not change.",
        "parameters",
    )


def test_one_frozen_layer_is_singular():
    fr = moved_run([moved("a.weight", 0.1), moved("f.weight", 0.0, trainable=False)])
    assert one(F.moved_layers_rule(fr))[3].endswith(" 1 layer was frozen and did not change.")


def test_moved_layers_three_or_fewer_name_no_least_and_merge_tensors_per_layer():
    fr = moved_run(
        [
            wstat("a.weight", diff_sq=0.03, ref_sq=2.0),  # a: sqrt((0.03 + 0.01) / (2 + 2)) = 10 %
            wstat("a.bias", diff_sq=0.01, ref_sq=2.0),
            moved("b.weight", 0.3),
        ]
    )
    f = one(F.moved_layers_rule(fr))
    assert f[2] == "Pretrained layer that moved most: b (30% of its norm); least: a (10%)"
    assert f[3] == (
        "Relative change ‖Wₜ−W₀‖/‖W₀‖ of the pretrained layers at epoch 1: most moved b (30%), a (10%); least moved "
        "–; median 20% over 2 layers."
    )


def test_pretrained_weights_overwritten_above_their_own_norm_only():
    fr = moved_run([moved("a.weight", 1.0), moved("b.weight", 1.5), moved("c.weight", 2.5), moved("d.weight", 0.1)])
    f = one(F.moved_layers_rule(fr))
    assert f[:3] == (
        "moved",
        "warning",
        "Pretrained weights largely overwritten in 2 layer(s), most in c (250% of its norm)",
    )
    assert f[3].startswith(
        "Layers whose weights moved further than their own pretrained norm (‖Wₜ−W₀‖/‖W₀‖ > 1): c (250%), b (150%). "
        "What they learned in pre-training is mostly gone; a smaller learning rate (or freezing them) keeps it. "
        "Relative change ‖Wₜ−W₀‖/‖W₀‖ of the pretrained layers at epoch 1: most moved c (250%), b (150%), a (100%);"
    )
    exactly_one = moved_run([moved("a.weight", 1.0), moved("d.weight", 0.1)])
    assert one(F.moved_layers_rule(exactly_one))[1] == "info"


def test_moved_layers_when_only_the_new_head_trained():
    fr = moved_run(
        [
            moved("a.weight", 0.0, trainable=False),
            moved("b.weight", 0.0, trainable=False),
            moved("c.weight", 0.0, trainable=False),
            moved("fc.weight", 0.5, new=True),
        ],
        epochs=2,
    )
    assert one(F.moved_layers_rule(fr)) == (
        "moved",
        "info",
        "Only the new layers changed; the pretrained layers were frozen",
        "At epoch 2: New layers moved from their initialisation by fc 50%. 3 layers were frozen and did not change.",
        "parameters",
    )


def test_moved_layers_of_a_run_from_scratch():
    fr = moved_run([moved("a.weight", 0.1, new=True), moved("b.weight", 0.2, new=True)])
    assert fr.from_scratch
    assert one(F.moved_layers_rule(fr)) == (
        "moved",
        "info",
        "Every layer was trained from its initialisation (no pretrained weights)",
        "At epoch 1: New layers moved from their initialisation by a 10%, b 20%.",
        "parameters",
    )


def test_moved_layers_skip_non_finite_changes_and_need_a_trained_epoch():
    fr = moved_run(
        [
            wstat("a.weight", diff_sq=NAN),
            wstat("b.weight", diff_sq=1.0, ref_sq=0.0),  # infinite relative change
            moved("c.weight", 0.1),
            moved("d.weight", 0.2),
        ]
    )
    f = one(F.moved_layers_rule(fr))
    assert f[3].endswith("most moved d (20%), c (10%); least moved –; median 15% over 2 layers.")
    assert F.moved_layers_rule(frames([snap(0, weights=[moved("a.w", 0.1)])])) == []
    assert F.moved_layers_rule(moved_run([moved("a.w", 0.0, trainable=False)])) == []
    assert F.moved_layers_rule(frames([snap(0), snap(1)])) == []


# --------------------------------------------------------------------------- representation


def rep_run(ckas: list[dict], knn: list[float] | None = None, new: tuple[str, ...] = ("fc",), scratch=False):
    epochs = []
    for i, values in enumerate(ckas):
        weights = [moved(f"{m}.weight", 0.1, new=scratch or m in new) for m in ("conv", "layer1", "fc")]
        kw = {"features": features(knn[i], 0.5)} if knn else {}
        epochs.append(snap(2 * i, weights=weights, cka=cka(values), **kw))
    return frames(epochs)


def test_representation_names_lowest_and_highest_pretrained_layers_and_new_ones_apart():
    one_ = {"conv": 1.0, "layer1#1": 1.0, "layer1#2": 1.0, "fc": 1.0}
    last = {"conv": 0.9, "layer1#1": 0.5, "layer1#2": 0.7, "fc": 0.2}
    assert one(F.representation_rule(rep_run([one_, last], knn=[0.5, 0.75]))) == (
        "representation",
        "info",
        "Representations changed most in layer1#1 (CKA 0.50 to the pretrained model)",
        "Linear CKA between each probed pretrained layer's representation now (epoch 2) and in the pretrained "
        "model: lowest layer1#1 (0.500), highest conv (0.900); 1 means unchanged. New layers, compared with their "
        "initialisation: fc (0.200). Class separability of the penultimate features (k-NN accuracy on the probe "
        "set): 50.0% → 75.0%.",
        "features",
    )


def test_representation_of_new_layers_only_and_of_a_run_from_scratch():
    f = one(F.representation_rule(rep_run([{"fc#1": 1.0, "fc#2": 1.0}, {"fc#1": 0.25, "fc#2": 0.5}])))
    assert f[2:4] == (
        "Only new layers were probed for representation change",
        "Linear CKA to epoch 0 at epoch 2. New layers, compared with their initialisation: fc#1 (0.250), fc#2 (0.500).",
    )
    s = one(F.representation_rule(rep_run([{"conv": 1.0, "fc": 1.0}, {"conv": 0.6, "fc": 0.3}], scratch=True)))
    assert s[2] == "Representations changed most in fc (CKA 0.30 to the initial model)"
    assert s[3] == (
        "Linear CKA between each probed layer's representation now (epoch 2) and in the initial model: lowest fc "
        "(0.300), highest conv (0.600); 1 means unchanged."
    )


def test_representation_ties_nan_and_missing_inputs():
    tie = one(F.representation_rule(rep_run([{"conv": 1.0, "layer1": 1.0}, {"conv": 0.5, "layer1": 0.5}])))
    assert "lowest conv (0.500), highest conv (0.500)" in tie[3]
    nan_one = one(F.representation_rule(rep_run([{"conv": 1.0, "layer1": 1.0}, {"conv": NAN, "layer1": 0.5}])))
    assert "lowest layer1 (0.500), highest layer1 (0.500)" in nan_one[3]
    assert F.representation_rule(rep_run([{"conv": 1.0}, {"conv": NAN}])) == []
    assert F.representation_rule(rep_run([{"conv": 1.0}])) == []
    assert F.representation_rule(frames([snap(0), snap(1)])) == []
    # one epoch with features: no separability sentence
    only_last = rep_run([{"conv": 1.0}, {"conv": 0.5}])
    only_last.epochs[1].features = features(0.9, 0.9)
    assert "separability" not in one(F.representation_rule(only_last))[3]


# --------------------------------------------------------------------------- all rules together


def test_findings_sorted_by_severity_keeping_rule_order_within_one():
    fr = frames(
        [
            snap(0, val=ev(500, 1000, 1.0), gradients=[]),
            snap(1, train_loss=1.0, val=ev(600, 1000, 1.0), gradients=[gstat("a.w", 1.0, 2, nonfinite=1)]),
            snap(2, train_loss=NAN, val=ev(700, 1000, 0.9), gradients=[gstat("a.w", 0.0)]),
        ],
        status="interrupted",
        planned=4,
    )
    found = F.derive_findings(fr)
    assert [(f.rule, f.severity) for f in found] == [
        ("nonfinite_loss", "alert"),
        ("nonfinite_gradients", "alert"),
        ("status", "warning"),
        ("vanishing_gradients", "warning"),
        ("accuracy", "good"),
    ]


def test_only_the_starting_point_recorded():
    only = F.derive_findings(frames([snap(0)]))
    assert [(f.rule, f.severity, f.title, f.evidence, f.section) for f in only] == [
        (
            "only_pretrained",
            "info",
            "Only the pretrained model (epoch 0) was recorded",
            "No training epoch has finished yet; the report shows the starting point.",
            "training",
        )
    ]
    scratch = frames([snap(0, weights=[moved("a.w", 0.0, new=True)])])
    assert F.derive_findings(scratch)[0].title == "Only the initial model (epoch 0) was recorded"
    # a status finding already says so
    assert [f.rule for f in F.derive_findings(frames([snap(0)], status="running"))] == ["status"]


@pytest.mark.parametrize("rule", F.RULES, ids=lambda r: r.__name__)
def test_every_rule_is_silent_on_an_empty_run(rule):
    assert rule(frames([])) == []


# --------------------------------------------------------------------------- second round: what mutation testing found untested


def test_accuracy_unchanged_is_a_training_finding_and_a_perfect_start_is_named_best():
    assert one(F.accuracy_rule(acc_run((0, 1000), (5, 1000))))[0::4] == ("accuracy", "training")
    # best accuracy 1.0 at epoch 0 and a last epoch numbered 1: the best epoch is still named
    f = one(F.accuracy_rule(acc_run((1000, 1000), (500, 1000))))
    assert f[3].endswith(" The best epoch was 0 (100.0%), +50.0 points above the last.")


def test_dead_units_growth_is_measured_from_a_non_zero_start():
    first = [astat("a", 10, 2), astat("b", 10, 5)]
    last = [astat("later", 10, 9), astat("a", 10, 3), astat("b", 10, 5)]
    # "later" first appears at the last epoch and comes first in network order: it is skipped, not the end
    arch = architecture([("", "M", 0, 0, 0), ("later", "R", 0, 0, 0), ("a", "R", 0, 0, 0), ("b", "R", 0, 0, 0)])
    fr = frames([snap(0, activations=first), snap(1, activations=last)], architecture=arch)
    assert list(fr.activations["layer"])[:2] == ["later", "a"]
    f = one(F.dead_units_rule(fr))
    assert f[2] == "Dead units grew in 1 layer(s); most in a (+10.0 points)"
    assert "a: 3 of 10 channels (20.0% → 30.0%)." in f[3]
    assert F.dead_units_rule(dead_run([[astat("a", 50, 25)], [astat("a", 50, 26)]])) == []  # +2 points only


def test_moved_layers_with_exactly_three_pretrained_layers_names_no_least():
    fr = moved_run([moved("a.weight", 0.1), moved("b.weight", 0.2), moved("c.weight", 0.3)])
    assert one(F.moved_layers_rule(fr))[3] == (
        "Relative change ‖Wₜ−W₀‖/‖W₀‖ of the pretrained layers at epoch 1: most moved c (30%), b (20%), a (10%); "
        "least moved –; median 20% over 3 layers."
    )


def test_overwritten_layers_are_a_parameters_finding():
    fr = moved_run([moved("a.weight", 1.5), moved("d.weight", 0.1)])
    assert one(F.moved_layers_rule(fr))[4] == "parameters"


def test_overfitting_leaves_out_epochs_without_both_losses_and_epoch_zero_with_a_training_loss():
    # the last epoch has a training loss but no finite validation loss: the epoch before is judged
    f = one(F.overfitting_rule(fit_run((1.0, 1.0), (0.5, 2.0), (0.4, NAN))))
    assert "rose to 2 by epoch 2 (+100%)" in f[3]
    # epoch 0 is never a training epoch, even when a training loss was stored for it
    g = one(F.overfitting_rule(fit_run((1.0, 1.0), (0.5, 2.0), zero=(5.0, 0.5))))
    assert g[2].startswith("Overfitting from epoch 2:") and "lowest at epoch 1 (1)" in g[3]


def test_representation_separability_spans_first_to_last_epoch_and_new_only_finding_fields():
    fr = rep_run([{"conv": 1.0}, {"conv": 0.8}, {"conv": 0.6}], knn=[0.5, 0.6, 0.9])
    assert one(F.representation_rule(fr))[3].endswith("(k-NN accuracy on the probe set): 50.0% → 90.0%.")
    f = one(F.representation_rule(rep_run([{"fc": 1.0}, {"fc": 0.25}])))
    assert (f[0], f[1], f[4]) == ("representation", "info", "features")


def test_update_ratio_median_exactly_on_a_band_edge_is_inside():
    on_lo = [exact("a.w", 1e-8), exact("b.w", 1e-8), ratio("c.w", 0.02)]
    f = one(F.update_ratio_rule(ratio_run([(None, on_lo)])))
    assert f[1] == "info" and "Median 1.0e-04;" in f[3] and "The median" not in f[3]
    on_hi = [exact("a.w", 1e-4), exact("b.w", 1e-4), ratio("c.w", 5e-5)]
    g = one(F.update_ratio_rule(ratio_run([(None, on_hi)])))
    assert g[1] == "info" and "Median 1.0e-02;" in g[3] and "The median" not in g[3]


def test_update_ratio_lists_at_most_three_per_side_and_three_far_ones():
    w = [ratio(f"hi{i}.w", 0.2 + i / 10) for i in range(4)] + [ratio(f"lo{i}.w", 5e-6 - i * 1e-6) for i in range(4)]
    w += [ratio(f"ok{i}.w", 1e-3) for i in range(9)]
    f = one(F.update_ratio_rule(ratio_run([(None, w)])))
    assert "4 above 0.01 (largest: hi3 5.0e-01, hi2 4.0e-01, hi1 3.0e-01 and 1 more)" in f[3]
    assert "4 below 0.0001 (smallest: lo3 2.0e-06, lo2 3.0e-06, lo1 4.0e-06 and 1 more)" in f[3]
    assert "8 layer(s) are more than 10× outside the band (hi0 2.0e-01, hi1 3.0e-01, hi2 4.0e-01 and 5 more)" in f[3]


def test_update_ratio_names_the_learning_rate_only_when_epochs_were_compared():
    outside = [ratio("a.w", 1e-3), ratio("b.w", 0.05)]
    single = one(F.update_ratio_rule(ratio_run([(0.1, outside)])))
    assert single[3].startswith("One optimizer step's ‖update‖/‖W‖ per layer at epoch 1; the usual")
    two = one(F.update_ratio_rule(ratio_run([(0.1, outside), (0.05, outside)])))
    assert two[3].startswith("One optimizer step's ‖update‖/‖W‖ per layer at epoch 1 (learning rate 0.1, the highest")


def test_validation_loss_ratio_is_last_over_first():
    f = one(F.val_loss_rule(loss_run(2.0, 3.0)))
    assert f[2] == "Validation loss ended ×1.5 above the pretrained model's (2 → 3)"
