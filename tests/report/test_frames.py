"""The run as frames, value by value: every expected number below is worked out by hand from the tiny run
it comes from (tiny_run.py), never by the code under test."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from tiny_run import (
    architecture,
    astat,
    cka,
    ev,
    features,
    frames,
    gstat,
    hist,
    snap,
    tstats,
    wstat,
)

from sftreport.report import frames as FR
from sftreport.schema import Evaluation, Projection, StepPoint, Timing

NAN = math.nan


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain dicts, NaN written as the string 'nan' (NaN never equals itself)."""

    def plain(v):
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        return v.item() if hasattr(v, "item") else v

    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict("records")]


def approx_records(df: pd.DataFrame, expected: list[dict]) -> None:
    got = records(df)
    assert len(got) == len(expected), got
    for g, e in zip(got, expected):
        assert set(g) == set(e), (g, e)
        for k in e:
            if isinstance(e[k], float):
                assert g[k] == pytest.approx(e[k], rel=1e-12, abs=1e-15), (k, g, e)
            else:
                assert g[k] == e[k], (k, g, e)


# --------------------------------------------------------------------------- small functions


def test_choose_epochs_spreads_keeps_ends_and_wanted_ones():
    assert FR.choose_epochs([3, 1, 2], 5) == [1, 2, 3]
    assert FR.choose_epochs([0, 1, 2, 3, 4], 5) == [0, 1, 2, 3, 4]  # exactly the limit: all of them
    # positions round(i * 10 / 4) = 0, 2 (2.5 rounds to even), 5, 8 (7.5 to even), 10
    assert FR.choose_epochs(list(range(11)), 5) == [0, 2, 5, 8, 10]
    assert FR.choose_epochs(list(range(10, -1, -1)), 5, keep=[3, 99]) == [0, 2, 3, 5, 8, 10]
    assert FR.choose_epochs(list(range(6)), 2) == [0, 5]


def test_num_ratio_unique_names_and_finite():
    assert FR.num(None) != FR.num(None) and FR.num(3) == 3.0 and isinstance(FR.num(3), float)
    assert FR._ratio(0.0, 0.0) == 0.0 and FR._ratio(1.0, 0.0) == math.inf and FR._ratio(9.0, 4.0) == 1.5
    assert FR.unique_names(["a", "a", "a (2)", "b", "a"]) == ["a", "a (2)", "a (2) (2)", "b", "a (3)"]
    assert FR._finite(1) and FR._finite(2.5) and not FR._finite(None) and not FR._finite("1")
    assert not FR._finite(NAN) and not FR._finite(math.inf)


def test_class_names_are_unique_and_out_of_range_indices_are_numbers():
    fr = frames([snap(0)], classes=["cat", "cat", "dog"])
    assert fr.classes == ["cat", "cat (2)", "dog"]
    assert [fr.class_name(i) for i in (-1, 0, 1, 2, 3)] == ["-1", "cat", "cat (2)", "dog", "3"]


# --------------------------------------------------------------------------- epochs


def test_epoch_table_values():
    fr = frames(
        [
            snap(0, val=ev(3, 4, 0.7), timing=Timing(eval_s=0.5, record_s=0.25)),
            snap(
                1,
                5,
                train_loss=0.4,
                train_accuracy=0.75,
                lr=0.01,
                features=features(0.6, 0.8),
                timing=Timing(train_s=2.0, eval_s=0.5, record_s=0.125, samples_per_s=100.0),
            ),
        ]
    )
    assert records(fr.epoch_table) == [
        {
            "epoch": 0,
            "step": 0,
            "train_loss": "nan",
            "train_accuracy": "nan",
            "val_loss": 0.7,
            "val_accuracy": 0.75,
            "lr": "nan",
            "knn_accuracy": "nan",
            "probe_accuracy": "nan",
            "train_s": 0.0,
            "eval_s": 0.5,
            "record_s": 0.25,
            "samples_per_s": "nan",
        },
        {
            "epoch": 1,
            "step": 5,
            "train_loss": 0.4,
            "train_accuracy": 0.75,
            "val_loss": "nan",
            "val_accuracy": "nan",
            "lr": 0.01,
            "knn_accuracy": 0.6,
            "probe_accuracy": 0.8,
            "train_s": 2.0,
            "eval_s": 0.5,
            "record_s": 0.125,
            "samples_per_s": 100.0,
        },
    ]
    assert list(frames([]).epoch_table.columns) == list(fr.epoch_table.columns)


def test_trained_last_and_evaluated_epochs():
    fr = frames([snap(0), snap(1, val=ev(1, 2)), snap(2, val=ev(2, 2)), snap(3)])
    assert [e.epoch for e in fr.trained] == [1, 2, 3] and fr.last.epoch == 3
    assert fr.has_val and fr.first_eval.epoch == 1 and fr.last_eval.epoch == 2
    assert fr.first_eval.eval.accuracy == 0.5 and fr.last_eval.eval.accuracy == 1.0
    none = frames([snap(0)])
    assert not none.has_val and none.first_eval is None and none.last_eval is None and none.best_epoch() is None
    assert frames([]).last is None


def test_step_positions_on_the_fractional_epoch_axis():
    fr = frames(
        [
            snap(0),
            snap(1, 4, steps=[StepPoint(step=2, loss=1.0, steps=2), StepPoint(step=4, loss=0.8, lr=0.1, steps=2)]),
            snap(2, 10, steps=[StepPoint(step=7, loss=0.6, steps=3), StepPoint(step=10, loss=0.5, steps=3)]),
            snap(3, 12),  # no step points: the next epoch still starts at step 12
            snap(4, 16, steps=[StepPoint(step=13, loss=0.4), StepPoint(step=16, loss=0.3)]),
        ]
    )
    approx_records(
        fr.steps,
        [
            {"epoch": 1, "x": 0.5, "step": 2, "loss": 1.0, "lr": "nan"},
            {"epoch": 1, "x": 1.0, "step": 4, "loss": 0.8, "lr": 0.1},
            {"epoch": 2, "x": 1.5, "step": 7, "loss": 0.6, "lr": "nan"},
            {"epoch": 2, "x": 2.0, "step": 10, "loss": 0.5, "lr": "nan"},
            {"epoch": 4, "x": 3.25, "step": 13, "loss": 0.4, "lr": "nan"},
            {"epoch": 4, "x": 4.0, "step": 16, "loss": 0.3, "lr": "nan"},
        ],
    )


def test_step_positions_of_a_run_recorded_from_a_later_epoch_and_of_an_empty_span():
    # no earlier snapshot: the epoch starts where its first point's span starts (25 − 5 = 20)
    fr = frames([snap(3, 30, steps=[StepPoint(step=25, loss=1.0, steps=5), StepPoint(step=30, loss=0.9, steps=5)])])
    approx_records(
        fr.steps,
        [
            {"epoch": 3, "x": 2.5, "step": 25, "loss": 1.0, "lr": "nan"},
            {"epoch": 3, "x": 3.0, "step": 30, "loss": 0.9, "lr": "nan"},
        ],
    )
    # a snapshot claiming no steps since the previous one: the span counts as one step, never zero
    odd = frames([snap(0, 0), snap(1, 0, steps=[StepPoint(step=1, loss=1.0)])])
    assert records(odd.steps) == [{"epoch": 1, "x": 1.0, "step": 1, "loss": 1.0, "lr": "nan"}]
    assert list(frames([snap(0)]).steps.columns) == ["epoch", "x", "step", "loss", "lr"]


def test_steps_at_most_averages_neighbours_within_each_epoch():
    e1 = [StepPoint(step=s, loss=float(s), lr=s / 100) for s in range(1, 6)]  # 5 points
    e2 = [StepPoint(step=s, loss=float(s), lr=s / 100) for s in range(6, 9)]  # 3 points
    fr = frames([snap(0), snap(1, 5, steps=e1), snap(2, 8, steps=e2)])
    assert fr.steps_at_most(8) is fr.steps  # already few enough (exactly the limit)
    # 8 points, at most 4: buckets of ceil(8 / 4) = 2 within each epoch, each placed where its last step ends
    approx_records(
        fr.steps_at_most(4),
        [
            {"epoch": 1, "x": 0.4, "step": 2, "loss": 1.5, "lr": 0.02},
            {"epoch": 1, "x": 0.8, "step": 4, "loss": 3.5, "lr": 0.04},
            {"epoch": 1, "x": 1.0, "step": 5, "loss": 5.0, "lr": 0.05},
            {"epoch": 2, "x": 1 + 2 / 3, "step": 7, "loss": 6.5, "lr": 0.07},
            {"epoch": 2, "x": 2.0, "step": 8, "loss": 8.0, "lr": 0.08},
        ],
    )
    approx_records(
        fr.steps_at_most(3)[["step", "loss"]],
        [
            {"step": 3, "loss": 2.0},
            {"step": 5, "loss": 4.5},
            {"step": 8, "loss": 7.0},
        ],
    )


def test_best_epoch_is_the_earliest_of_equal_accuracies():
    fr = frames([snap(0, val=ev(1, 4)), snap(1, val=ev(3, 4)), snap(2), snap(3, val=ev(3, 4)), snap(4, val=ev(2, 4))])
    assert fr.best_epoch() == (1, 0.75)
    assert frames([snap(0, val=ev(0, 4)), snap(1, val=ev(0, 4))]).best_epoch() == (0, 0.0)


def test_confusion_cells_and_row_shares():
    conf = Evaluation(
        loss=1.0,
        accuracy=3 / 8,
        count=8,
        confusion=[[1, 3, 0], [0, 0, 0], [1, 1, 2]],
        per_class_accuracy=[0.25, None, 0.5],
    )
    fr = frames([snap(0, val=ev(1, 2)), snap(1, val=conf), snap(2)], classes=["x", "x"])
    rows = records(fr.confusion(1))
    assert [(r["true"], r["pred"], r["ti"], r["pi"], r["count"]) for r in rows[:3]] == [
        ("x", "x", 0, 0, 1),
        ("x", "x (2)", 0, 1, 3),
        ("x", "2", 0, 2, 0),
    ]
    assert [r["share"] for r in rows] == [0.25, 0.75, 0.0, "nan", "nan", "nan", 0.25, 0.25, 0.5]
    assert [r["true"] for r in rows[6:]] == ["2", "2", "2"]
    with pytest.raises(StopIteration):
        fr.confusion(2)  # not evaluated


def test_per_class_accuracy_first_and_last_evaluated_epochs():
    e0 = Evaluation(loss=1, accuracy=0.5, count=4, confusion=[[1, 1], [1, 1]], per_class_accuracy=[0.5, 0.5])
    e2 = Evaluation(loss=1, accuracy=0.75, count=4, confusion=[[2, 0], [1, 1]], per_class_accuracy=[1.0, 0.5])
    e3 = Evaluation(loss=1, accuracy=1.0, count=2, confusion=[[2, 0], [0, 0]], per_class_accuracy=[1.0, None])
    fr = frames([snap(0, val=e0), snap(1), snap(2, val=e2)], classes=["a", "b"])
    assert records(fr.per_class()) == [
        {"class": "a", "ci": 0, "epoch": 0, "which": "pretrained (epoch 0)", "accuracy": 0.5},
        {"class": "b", "ci": 1, "epoch": 0, "which": "pretrained (epoch 0)", "accuracy": 0.5},
        {"class": "a", "ci": 0, "epoch": 2, "which": "fine-tuned (epoch 2)", "accuracy": 1.0},
        {"class": "b", "ci": 1, "epoch": 2, "which": "fine-tuned (epoch 2)", "accuracy": 0.5},
    ]
    scratch = frames(
        [snap(0, val=e0, weights=[wstat("a.w", new=True)]), snap(3, val=e3, weights=[wstat("a.w", new=True)])]
    )
    assert [(r["which"], r["accuracy"]) for r in records(scratch.per_class())] == [
        ("initial (epoch 0)", 0.5),
        ("initial (epoch 0)", 0.5),
        ("trained (epoch 3)", 1.0),
        ("trained (epoch 3)", "nan"),
    ]
    single = frames([snap(0, val=e0)])
    assert [r["which"] for r in records(single.per_class())] == ["pretrained (epoch 0)"] * 2
    empty = frames([snap(0)]).per_class()
    assert empty.empty and list(empty.columns) == ["class", "ci", "epoch", "which", "accuracy"]


def test_from_scratch_from_the_architecture_or_else_the_first_weights():
    all_new = architecture([("", "M", 0, 0, 0), ("fc", "L", 4, 4, 4)])
    some_new = architecture([("", "M", 0, 0, 0), ("a", "L", 4, 4, 0), ("fc", "L", 4, 4, 4)])
    empty_arch = architecture([("", "M", 0, 0, 0)])
    new_w = [wstat("a.w", new=True), wstat("b.w", new=True)]
    mixed_w = [wstat("a.w", new=True), wstat("b.w", new=False)]
    assert frames([snap(0)], architecture=all_new).from_scratch
    assert not frames([snap(0, weights=new_w)], architecture=some_new).from_scratch  # the architecture decides
    assert frames([snap(0), snap(1, weights=new_w)], architecture=empty_arch).from_scratch  # no parameters listed
    assert not frames([snap(0, weights=mixed_w)]).from_scratch
    assert not frames([snap(0)]).from_scratch  # nothing known: pretrained
    assert frames([snap(0, weights=new_w)]).start_name == "initial model"
    assert frames([snap(0)]).start_name == "pretrained model"


# --------------------------------------------------------------------------- weights and gradients


def test_layer_weights_merge_tensors_of_a_layer_exactly_and_follow_network_order():
    arch = architecture([("", "M", 0, 0, 0), ("b", "L", 6, 6, 0), ("a", "L", 8, 2, 0)])
    w1 = [
        wstat("a.weight", shape=[2, 3], trainable=False, diff_sq=0.0, ref_sq=3.0),
        wstat("a.bias", shape=[2], diff_sq=1.0, ref_sq=1.0, update_sq=0.04, before=2.0),
        wstat("b.weight", shape=[6], diff_sq=0.25, ref_sq=4.0),
        wstat("x.weight", shape=[3], new=True, diff_sq=2.0, ref_sq=0.0, m2=NAN),  # not in the architecture
        wstat("y.weight", shape=[1], update_sq=0.0, before=0.0),  # also not in it: after x
    ]
    fr = frames([snap(1, weights=w1)], architecture=arch)
    approx_records(
        fr.layer_weights,
        [
            {
                "layer": "b",
                "module": "b",
                "epoch": 1,
                "order": 1,
                "type": "L",
                "params": 6,
                "trainable": True,
                "frozen": False,
                "new": False,
                "rel_change": 0.25,
                "update_ratio": "nan",
                "matrix": False,
                "finite": True,
                "adapter": False,
                "diff_sq": 0.25,
                "ref_sq": 4.0,
                "component": "",  # no components recorded
            },
            {
                "layer": "a",
                "module": "a",
                "epoch": 1,
                "order": 2,
                "type": "L",
                "params": 8,
                "trainable": True,
                "frozen": False,
                "new": False,
                "rel_change": 0.5,  # sqrt((0 + 1) / (3 + 1))
                "update_ratio": math.sqrt(0.04 / 2.0),
                "matrix": True,
                "finite": True,
                "adapter": False,
                "diff_sq": 1.0,
                "ref_sq": 4.0,
                "component": "",  # no components recorded
            },
            {
                "layer": "x",
                "module": "x",
                "epoch": 1,
                "order": 1e6 + 2,
                "type": "",
                "params": 3,
                "trainable": True,
                "frozen": False,
                "new": True,
                "rel_change": math.inf,
                "update_ratio": "nan",
                "matrix": False,
                "finite": False,
                "adapter": False,
                "diff_sq": 2.0,
                "ref_sq": 0.0,
                "component": "",  # no components recorded
            },
            {
                "layer": "y",
                "module": "y",
                "epoch": 1,
                "order": 1e6 + 3,
                "type": "",
                "params": 1,
                "trainable": True,
                "frozen": False,
                "new": False,
                "rel_change": 0.0,
                "update_ratio": "nan",  # measured, but against a zero weight norm
                "matrix": False,
                "finite": True,
                "adapter": False,
                "diff_sq": 0.0,
                "ref_sq": 1.0,
                "component": "",  # no components recorded
            },
        ],
    )


def test_layer_weights_of_frozen_and_model_level_parameters_sorted_by_order_then_epoch():
    w = [wstat("pos", shape=[4], trainable=False), wstat("a.w", shape=[1, 1], trainable=False, new=True)]
    fr = frames([snap(0, weights=w), snap(1, weights=w)])
    rows = records(fr.layer_weights)
    assert [(r["layer"], r["module"], r["epoch"], r["order"]) for r in rows] == [
        ("(model)", "", 0, 1e6),
        ("(model)", "", 1, 1e6),
        ("a", "a", 0, 1e6 + 1),
        ("a", "a", 1, 1e6 + 1),
    ]
    assert [(r["frozen"], r["trainable"], r["new"], r["matrix"], r["params"]) for r in rows[2:]] == [
        (True, False, True, True, 1)
    ] * 2
    assert fr.layers_in_order(fr.layer_weights) == ["(model)", "a"]
    assert fr.layers_in_order(pd.DataFrame()) == []


def test_layer_grads_root_of_summed_squared_mean_norms():
    g1 = [
        gstat("a.weight", 3.0, samples=4, norm_max=7.0),
        gstat("a.bias", 4.0, samples=2, nonfinite=1, norm_max=9.0),
        gstat("b.weight", 1.0, samples=3, nonfinite=3),  # every sample non-finite: no norm
        gstat("c.weight", 2.0, samples=2, nonfinite=2),
        gstat("c.bias", 2.0, samples=5, nonfinite=1),  # one finite tensor keeps c's norm
    ]
    fr = frames([snap(1, gradients=g1)])
    approx_records(
        fr.layer_grads,
        [
            {
                "layer": "a",
                "module": "a",
                "epoch": 1,
                "order": 1e6,
                "norm": 5.0,
                "max_norm": 9.0,
                "nonfinite": 1,
                "samples": 4,
                "component": "",
            },
            {
                "layer": "b",
                "module": "b",
                "epoch": 1,
                "order": 1e6 + 1,
                "norm": "nan",
                "max_norm": 1.0,
                "nonfinite": 3,
                "samples": 3,
                "component": "",
            },
            {
                "layer": "c",
                "module": "c",
                "epoch": 1,
                "order": 1e6 + 2,
                "norm": 2.0,
                "max_norm": 2.0,
                "nonfinite": 2,
                "samples": 5,
                "component": "",
            },
        ],
    )
    approx_records(
        fr.grad_total,
        [{"epoch": 1, "norm": math.sqrt(9 + 16 + 4), "max_norm": 9.0, "nonfinite": 3, "samples": 5}],
    )


def test_grad_total_skips_epochs_without_gradients():
    fr = frames([snap(0), snap(1, gradients=[gstat("a.w", 2.0)]), snap(2), snap(3, gradients=[gstat("a.w", 0.5)])])
    assert records(fr.grad_total) == [
        {"epoch": 1, "norm": 2.0, "max_norm": 2.0, "nonfinite": 0, "samples": 1},
        {"epoch": 3, "norm": 0.5, "max_norm": 0.5, "nonfinite": 0, "samples": 1},
    ]


def test_weight_tensors_and_histogram_choice():
    def w(name, shape, new=False, rel=0.0, trainable=True):
        return wstat(name, shape=shape, new=new, diff_sq=rel * rel, trainable=trainable)

    layout = [
        ("conv1.weight", [2, 1, 1, 1], False, 0.01),
        ("conv1.bias", [2], False, 0.0),  # a vector never gets a histogram while matrices exist
        ("l1.weight", [2, 2], False, 0.3),
        ("l2.weight", [2, 2], False, 0.1),
        ("l3.weight", [2, 2], False, 0.2),
        ("fc.weight", [2, 2], True, 0.5),
        ("fc.bias", [2], True, 0.5),
    ]
    first = [w(n, s, nw) for n, s, nw, _ in layout]
    last = [w(n, s, nw, r) for n, s, nw, r in layout]
    fr = frames([snap(0), snap(1, weights=first), snap(2, weights=last)])
    assert fr.weight_tensors() == [n for n, *_ in layout]
    assert fr.histogram_tensors(6) == ["conv1.weight", "l1.weight", "l2.weight", "l3.weight", "fc.weight"]
    assert fr.histogram_tensors(3) == ["conv1.weight", "l1.weight", "fc.weight"]
    assert fr.histogram_tensors(2) == ["conv1.weight", "l1.weight"]
    # nothing pretrained moved (all frozen): the last pretrained matrix stands in for the most moved
    frozen = [w(n, s, nw, r, trainable=nw) for n, s, nw, r in layout]
    fz = frames([snap(0, weights=first), snap(1, weights=frozen)])
    assert fz.histogram_tensors(3) == ["conv1.weight", "l3.weight", "fc.weight"]
    # no matrices at all: vectors are the candidates; no new layer: no head
    vec = frames([snap(0, weights=[w("a.b", [3], rel=0.1), w("b.b", [3], rel=0.2), w("c.b", [3], rel=0.3)])])
    assert vec.histogram_tensors(3) == ["a.b", "c.b"]
    assert frames([snap(0)]).weight_tensors() == [] and frames([snap(0)]).histogram_tensors(6) == []


def test_histogram_rows_inside_below_and_above_the_fixed_range():
    h = hist(lo=0.0, hi=1.0, counts=[1, 3], below=2, above=4)
    rows = FR._hist_rows(h, {"tensor": "t", "epoch": 1})
    assert rows == [
        {"tensor": "t", "epoch": 1, "part": "inside", "x0": 0.0, "x1": 0.5, "x": 0.25, "share": 0.1},
        {"tensor": "t", "epoch": 1, "part": "inside", "x0": 0.5, "x1": 1.0, "x": 0.75, "share": 0.3},
        {"tensor": "t", "epoch": 1, "part": "below", "x0": -0.5, "x1": 0.0, "x": -0.25, "share": 0.2},
        {"tensor": "t", "epoch": 1, "part": "above", "x0": 1.0, "x1": 1.5, "x": 1.25, "share": 0.4},
    ]
    only_above = FR._hist_rows(hist(lo=-2.0, hi=2.0, counts=[0, 0, 0, 0], above=5), {})
    assert only_above == [
        {"part": "inside", "x0": x0, "x1": x0 + 1, "x": x0 + 0.5, "share": 0.0} for x0 in (-2.0, -1.0, 0.0, 1.0)
    ] + [{"part": "above", "x0": 2.0, "x1": 3.0, "x": 2.5, "share": 1.0}]
    assert FR._hist_rows(hist(counts=[0, 0]), {}) == []  # nothing counted: nothing to draw
    assert FR._hist_columns("layer") == ["layer", "epoch", "part", "x0", "x1", "x", "share"]


def test_weight_and_activation_histograms_pick_tensors_layers_and_epochs():
    def wh(name, c):
        s = wstat(name, shape=[4])
        s.hist = hist(counts=[c, 4 - c])
        return s

    def ah(module, c):
        a = astat(module, 2, 0, count=4, zeros=0)
        a.hist = hist(counts=[c, 4 - c])
        return a

    fr = frames(
        [
            snap(0, weights=[wh("a.w", 1), wh("b.w", 2)], activations=[ah("x", 1), ah("y", 2)]),
            snap(1, weights=[wh("a.w", 3), wh("b.w", 4)], activations=[ah("x", 3), ah("y", 4)]),
        ]
    )
    wr = records(fr.weight_hist(["b.w"], [1]))
    assert [(r["tensor"], r["epoch"], r["share"]) for r in wr] == [("b.w", 1, 1.0), ("b.w", 1, 0.0)]
    assert [(r["tensor"], r["epoch"]) for r in records(fr.weight_hist(["a.w"]))] == [("a.w", 0)] * 2 + [("a.w", 1)] * 2
    ar = records(fr.activation_hist(["x"], [0]))
    assert [(r["layer"], r["epoch"], r["share"]) for r in ar] == [("x", 0, 0.25), ("x", 0, 0.75)]
    assert fr.activation_hist(["x"], [5]).empty and next(iter(fr.weight_hist([], []).columns)) == "tensor"


# --------------------------------------------------------------------------- activations and features


def test_activation_rows_order_calls_of_one_module_after_it():
    arch = architecture([("", "M", 0, 0, 0), ("conv", "C", 1, 1, 0), ("relu", "R", 0, 0, 0)])
    acts = [
        astat("relu#1", 4, 1, count=10, mean=0.5, m2=2.5, lo=0.0, hi=3.0, zeros=4),
        astat("relu#2", 4, 0, count=10, mean=1.0, m2=0.0, lo=1.0, hi=1.0, zeros=0),
        astat("conv", 8, 2, nonnegative=False, count=10, mean=-1.0, m2=10.0, lo=-2.0, hi=0.0, zeros=5, type="Conv2d"),
        astat("other", 0, 0, count=0, mean=0.0, m2=0.0, zeros=0),
    ]
    fr = frames([snap(0, activations=acts)], architecture=arch)
    approx_records(
        fr.activations,
        [
            {
                "layer": "conv",
                "epoch": 0,
                "order": 1 + 2e-4,
                "type": "Conv2d",
                "mean": -1.0,
                "std": 1.0,
                "zero_fraction": 0.5,
                "dead_fraction": 0.25,
                "dead": 2,
                "channels": 8,
                "nonnegative": False,
                "min": -2.0,
                "max": 0.0,
            },
            {
                "layer": "relu#1",
                "epoch": 0,
                "order": 2.0,
                "type": "ReLU",
                "mean": 0.5,
                "std": 0.5,
                "zero_fraction": 0.4,
                "dead_fraction": 0.25,
                "dead": 1,
                "channels": 4,
                "nonnegative": True,
                "min": 0.0,
                "max": 3.0,
            },
            {
                "layer": "relu#2",
                "epoch": 0,
                "order": 2 + 1e-4,
                "type": "ReLU",
                "mean": 1.0,
                "std": 0.0,
                "zero_fraction": 0.0,
                "dead_fraction": 0.0,
                "dead": 0,
                "channels": 4,
                "nonnegative": True,
                "min": 1.0,
                "max": 1.0,
            },
            {
                "layer": "other",
                "epoch": 0,
                "order": 1e6 + 3 + 3e-4,
                "type": "ReLU",
                "mean": 0.0,
                "std": "nan",
                "zero_fraction": "nan",
                "dead_fraction": "nan",
                "dead": 0,
                "channels": 0,
                "nonnegative": True,
                "min": 0.0,
                "max": 2.0,
            },
        ],
    )


def test_projection_rows_with_labels_and_unlabelled_samples():
    f0 = features(0.5, 0.5, xy=[(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)])
    f0.projections.append(Projection(method="tsne", x=[9.0], y=[9.0]))
    fr = frames([snap(0, features=f0), snap(1)], classes=["a", "b"], probe_labels=[1, 0])
    assert records(fr.projection()) == [
        {"epoch": 0, "sample": 0, "x": 1.0, "y": 2.0, "ci": 1, "class": "b"},
        {"epoch": 0, "sample": 1, "x": 3.0, "y": 4.0, "ci": 0, "class": "a"},
        {"epoch": 0, "sample": 2, "x": 5.0, "y": 6.0, "ci": -1, "class": "?"},
    ]
    assert records(fr.projection("tsne")) == [{"epoch": 0, "sample": 0, "x": 9.0, "y": 9.0, "ci": 1, "class": "b"}]
    assert [r["class"] for r in records(frames([snap(0, features=f0)]).projection())] == ["?"] * 3


def test_cka_rows_take_the_activation_order_or_else_the_module_order():
    arch = architecture([("", "M", 0, 0, 0), ("b", "L", 1, 1, 0), ("a", "L", 1, 1, 0)])
    fr = frames(
        [
            snap(0, activations=[astat("a", 2, 0)], cka=cka({"a": 1.0, "b": 1.0, "z#2": 1.0})),
            snap(1, cka=cka({"a": 0.5, "b": 0.25, "z#2": NAN})),
        ],
        architecture=arch,
    )
    approx_records(
        fr.cka,
        [
            {"layer": "b", "epoch": 0, "order": 1, "cka": 1.0},
            {"layer": "b", "epoch": 1, "order": 1, "cka": 0.25},
            {"layer": "a", "epoch": 0, "order": 2.0, "cka": 1.0},
            {"layer": "a", "epoch": 1, "order": 2.0, "cka": 0.5},
            {"layer": "z#2", "epoch": 0, "order": 1e6 + 2, "cka": 1.0},
            {"layer": "z#2", "epoch": 1, "order": 1e6 + 2, "cka": "nan"},
        ],
    )


def test_separability_and_image_epochs():
    from sftreport.schema import Images

    fr = frames(
        [snap(0, features=features(0.5, 0.25, k=3), images=Images()), snap(1), snap(2, features=features(1.0, 0.75))]
    )
    assert records(fr.separability) == [
        {"epoch": 0, "measure": "k-NN accuracy (k=3)", "accuracy": 0.5},
        {"epoch": 0, "measure": "classifier accuracy on the probe set", "accuracy": 0.25},
        {"epoch": 2, "measure": "k-NN accuracy (k=5)", "accuracy": 1.0},
        {"epoch": 2, "measure": "classifier accuracy on the probe set", "accuracy": 0.75},
    ]
    assert [e.epoch for e in fr.image_epochs()] == [0]


def test_a_layers_statistics_merge_in_frames_like_the_schema_merge():
    """The frames' per-layer sums agree with merging the tensors' moments (TensorStats.merge)."""
    a, b = tstats(4, mean=1.0, m2=2.0, lo=0.0, hi=2.0), tstats(2, mean=4.0, m2=0.5, lo=3.5, hi=4.5, zeros=1)
    m = a.merge(b)
    assert (m.count, m.min, m.max, m.zeros) == (6, 0.0, 4.5, 1)
    assert m.mean == pytest.approx(2.0) and m.m2 == pytest.approx(2.0 + 0.5 + 9 * 4 * 2 / 6)


# --------------------------------------------------------------------------- second round: what mutation testing found untested


def test_empty_results_keep_their_columns():
    empty_eval = Evaluation(loss=0.0, accuracy=0.0, count=0, confusion=[], per_class_accuracy=[])
    fr = frames([snap(0, val=empty_eval), snap(1, val=empty_eval)])
    assert list(fr.confusion(0).columns) == ["true", "pred", "ti", "pi", "count", "share"]
    assert list(fr.per_class().columns) == ["class", "ci", "epoch", "which", "accuracy"] and fr.per_class().empty
    assert list(fr.projection().columns) == ["epoch", "sample", "x", "y", "ci", "class"]
    assert list(fr.activation_hist(["x"], [0]).columns) == ["layer", "epoch", "part", "x0", "x1", "x", "share"]


def test_histograms_and_projections_skip_epochs_they_do_not_want_without_stopping():
    def ah(module, c):
        a = astat(module, 2, 0, count=4, zeros=0)
        a.hist = hist(counts=[c, 4 - c])
        return a

    fr = frames(
        [
            snap(0, activations=[ah("x", 1), ah("y", 2)]),
            snap(1, activations=[ah("x", 3), ah("y", 4)], features=features(0.5, 0.5, xy=[(1.0, 1.0)])),
            snap(2, activations=[ah("x", 0), ah("y", 0)]),
            snap(3, features=features(0.5, 0.5, xy=[(2.0, 2.0)])),
        ]
    )
    rows = records(fr.activation_hist(["x", "y"], [1, 2]))
    assert [(r["layer"], r["epoch"], r["share"]) for r in rows] == [
        ("x", 1, 0.75),
        ("x", 1, 0.25),
        ("y", 1, 1.0),
        ("y", 1, 0.0),
        ("x", 2, 0.0),
        ("x", 2, 1.0),
        ("y", 2, 0.0),
        ("y", 2, 1.0),
    ]
    assert [(r["epoch"], r["x"]) for r in records(fr.projection())] == [(1, 1.0), (3, 2.0)]


def test_histogram_choice_with_several_matrices_per_layer_and_heads():
    def w(name, shape, new=False, rel=0.0):
        return wstat(name, shape=shape, new=new, diff_sq=rel * rel)

    layout = [
        ("a.weight", [2, 2], False, 0.1),
        ("rnn.weight_ih", [2, 2], False, 0.5),  # the most moved layer holds two matrices: one is shown
        ("rnn.weight_hh", [2, 2], False, 0.5),
        ("b.weight", [2, 2], False, 0.1),
        ("h1.weight", [2, 2], True, 0.1),
        ("h2.weight", [2, 2], True, 0.1),
        ("h3.weight", [2, 2], True, 0.1),
    ]
    fr = frames([snap(0, weights=[w(n, s, nw, r) for n, s, nw, r in layout])])
    assert fr.histogram_tensors(9) == [
        "a.weight",
        "rnn.weight_ih",
        "rnn.weight_hh",
        "b.weight",
        "h1.weight",
        "h2.weight",
    ]
    assert fr.histogram_tensors(3) == ["a.weight", "rnn.weight_ih", "h1.weight"]
    # the first pretrained matrix is also the most moved: the head's second matrix does not fill its place
    first_moves = [w("a.weight", [2, 2], rel=0.9), w("b.weight", [2, 2], rel=0.1)]
    first_moves += [w("h1.weight", [2, 2], True), w("h2.weight", [2, 2], True)]
    assert frames([snap(0, weights=first_moves)]).histogram_tensors(3) == ["a.weight", "h1.weight"]


def test_layers_in_order_keeps_the_first_of_tied_orders_in_row_order():
    n = 17  # past numpy's insertion-sort cutoff: an unstable sort reorders ties here
    df = pd.DataFrame({"order": [float((i * 7) % 3) for i in range(n)], "layer": [f"L{i}" for i in range(n)]})
    fr = frames([snap(0)])
    want = [f"L{i}" for i in range(n) if (i * 7) % 3 == 0]
    want += [f"L{i}" for i in range(n) if (i * 7) % 3 == 1] + [f"L{i}" for i in range(n) if (i * 7) % 3 == 2]
    assert fr.layers_in_order(df) == want


def test_steps_at_most_keeps_buckets_in_step_order_past_ten_buckets():
    pts = [StepPoint(step=s, loss=float(s)) for s in range(1, 25)]  # 24 points, at most 12: 12 buckets of 2
    fr = frames([snap(0), snap(1, 24, steps=pts)])
    assert records(fr.steps_at_most(12))[9:] == [
        {"epoch": 1, "x": 20 / 24, "step": 20, "loss": 19.5, "lr": "nan"},
        {"epoch": 1, "x": 22 / 24, "step": 22, "loss": 21.5, "lr": "nan"},
        {"epoch": 1, "x": 1.0, "step": 24, "loss": 23.5, "lr": "nan"},
    ]
