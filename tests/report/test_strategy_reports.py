"""The render stage's side of lp-ft, layer-wise learning rates, LoRA and forgetting, on tiny runs whose every
number is chosen by hand (tiny_run.py): the forgetting finding just below, on and just above its threshold,
a LoRA-adapted layer folded into one layer of the per-layer frames, the summary's and appendix's lines,
and the new charts drawn by Vega (vl-convert)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from tiny_run import ev, frames, gstat, snap, wstat

from sftreport.report import charts
from sftreport.report import findings as F
from sftreport.report.sections import build_report, strategy_text
from sftreport.report.thresholds import FORGETTING_DROP
from sftreport.report.vega import chart_spec
from sftreport.schema import (
    AdapterSpectrum,
    AdapterStat,
    LoRAInfo,
    ParamGroupInfo,
    SourceTaskInfo,
    TrainingInfo,
)

COUNT = 1000  # source images: accuracies are k/1000


def _source_run(correct: list[int], **kw):
    fr = frames([snap(e, val=ev(500 + 10 * e, COUNT), source=ev(c, COUNT)) for e, c in enumerate(correct)], **kw)
    fr.info.source_task = SourceTaskInfo(
        name="digits 0–4", classes=["0", "1"], head="fc", head_classes=2, size=COUNT, image_size=32
    )
    return fr


def _forgets(c0: int, c1: int) -> bool:
    """Worked out in integers: a fall of more than 5 points of 1000 images is more than 50 images."""
    return (c0 - c1) * 100 > 5 * COUNT


@pytest.mark.parametrize(
    "c0, c1", [(1000, 951), (1000, 950), (1000, 949), (800, 750), (800, 749), (700, 720), (640, 590), (640, 589)]
)
def test_forgetting_just_below_on_and_just_above_the_threshold(c0, c1):
    assert FORGETTING_DROP == 0.05
    (f,) = F.forgetting_rule(_source_run([c0, (c0 + c1) // 2, c1]))
    assert f.rule == "forgetting" and f.section == "training"
    assert f.severity == ("warning" if _forgets(c0, c1) else "good")


def test_forgetting_finding_says_its_numbers_and_threshold():
    (f,) = F.forgetting_rule(_source_run([990, 700, 900]))
    assert f.title == "Fine-tuning forgot part of the source task: digits 0–4 accuracy fell 9.0 points (99.0% → 90.0%)"
    assert f.evidence == (
        "Accuracy on digits 0–4 of the backbone as it is at each epoch with the pretrained 2-class head, kept "
        "aside, on 1,000 held-out images: 99.0% at epoch 0, 90.0% at epoch 2 (-9.0 points). It was lowest at epoch "
        "1 (70.0%). Forgetting is a fall of more than 5 points. Lower learning rates for the pretrained layers "
        "(--lr-decay), lp-ft or LoRA usually keep more of it."
    )
    (kept,) = F.forgetting_rule(_source_run([990, 995]))
    assert kept.severity == "good" and kept.title == "The source task was kept: digits 0–4 accuracy 99.0% → 99.5%"
    assert "(+0.5 points)" in kept.evidence and "lowest" not in kept.evidence


def test_no_forgetting_finding_without_a_source_task_or_its_epoch_0():
    assert F.forgetting_rule(frames([snap(0, val=ev(1, 2)), snap(1, val=ev(2, 2))])) == []
    assert F.forgetting_rule(_source_run([900])) == []  # epoch 0 only: nothing to compare
    fr = _source_run([900, 800])
    fr.epochs[0].source = None  # a run whose first source evaluation is not epoch 0's
    fr.__dict__.pop("source", None)
    assert F.forgetting_rule(fr) == []


def test_summary_epoch_table_and_forgetting_chart_of_a_run_with_a_source_task():
    fr = _source_run([990, 940, 900])
    report = build_report(fr.run, "html", frames=fr)
    assert (
        "Source task",
        "digits 0–4, pretrained head kept aside: 99.0% at epoch 0 → 90.0% at epoch 2 (-9.0 points)",
    ) in (report.summary.items)
    blocks = {getattr(b, "id", None): b for s in report.sections for b in s.blocks}
    table = blocks["epochs"]
    assert table.columns[6] == "source acc." and [r[6].text for r in table.rows] == ["99.0%", "94.0%", "90.0%"]
    chart = blocks["forgetting"]
    assert chart.title == "Forgetting of the source task (digits 0–4)"
    _draws(chart.spec)
    rules = [layer for layer in chart.spec["layer"] if layer["mark"]["type"] == "rule"]
    assert len(rules) == 1  # the threshold line; no lp-ft switch in this run


def _draws(spec: dict) -> str:
    import vl_convert as vlc

    svg = vlc.vegalite_to_svg(spec)
    assert "<svg" in svg
    return svg


def test_lp_ft_switch_is_drawn_on_the_training_charts_and_said_in_the_summary():
    epochs = pd.DataFrame(
        {
            "epoch": [0, 1, 2, 3],
            "step": [0, 2, 4, 6],
            "train_loss": [math.nan, 1.0, 0.8, 0.6],
            "val_loss": [1.2, 0.9, 0.7, 0.6],
            "train_accuracy": [math.nan, 0.5, 0.6, 0.7],
            "val_accuracy": [0.3, 0.5, 0.6, 0.7],
            "lr": [math.nan, 0.01, 0.01, 0.005],
        }
    )
    steps = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "x": [1.0, 2.0, 3.0],
            "step": [2, 4, 6],
            "loss": [1.0, 0.8, 0.6],
            "lr": [0.01, 0.01, 0.005],
        }
    )
    source = pd.DataFrame(
        {"epoch": [0, 1, 2, 3], "source_accuracy": [0.99, 0.99, 0.95, 0.9], "val_accuracy": [0.3, 0.5, 0.6, 0.7]}
    )
    for chart in (
        charts.loss_curves(epochs, steps, 500, switch=1),
        charts.accuracy_curves(epochs, 500, switch=1),
        charts.learning_rate(steps, epochs, 500, switch=1),
        charts.forgetting_curves(source, 500, switch=1),
    ):
        spec = chart_spec(chart)
        switch = [layer for layer in spec["layer"] if layer["mark"].get("strokeDash") == [6, 4]]
        assert len(switch) == 1, spec
        _draws(spec)
    fr = frames([snap(0), snap(1), snap(2)])
    fr.info.strategy = "lp-ft"
    fr.info.training = TrainingInfo(
        lp_epochs=1,
        lr_decay=0.5,
        schedule="cosine over the 1 linear-probe epochs, then ...",
        param_groups=[
            ParamGroupInfo(name="fc", depth=0, lr=0.02, params=10),
            ParamGroupInfo(name="layer1.0", depth=1, lr=0.01, params=100),
        ],
    )
    assert strategy_text(fr.info) == (
        "lp-ft: linear probe for epochs 1–1 (only the new head trained), then every layer from epoch 2; "
        "layer-wise learning-rate decay ×0.5 per block (head 0.02 … 0.01)"
    )
    report = build_report(fr.run, "html", frames=fr)
    groups = next(b for s in report.sections for b in s.blocks if getattr(b, "id", None) == "param-groups")
    assert [[c.text for c in r] for r in groups.rows] == [["fc", "0", "0.02", "10"], ["layer1.0", "1", "0.01", "100"]]


def test_identical_confusion_matrices_before_and_after_still_draw():
    """Regression: a model whose predictions did not change gave two identical panels, one shared dataset,
    whose text columns Vega refused to parse ("Illegal format pattern")."""
    df = pd.DataFrame(
        [
            {"true": t, "pred": p, "ti": i, "pi": j, "count": 3 if j == 0 else 0, "share": 1.0 if j == 0 else 0.0}
            for i, t in enumerate(["cat", "dog"])
            for j, p in enumerate(["cat", "dog"])
        ]
    )
    _draws(chart_spec(charts.confusion_pair([("before", df), ("after", df.copy())], ["cat", "dog"], 600)))


# --------------------------------------------------------------------------- LoRA


def _adapter(module: str, diff: float, ref: float, update=None, before=None, sv=(0.3,), rank=1) -> AdapterStat:
    return AdapterStat(
        module=module,
        type="Linear",
        shape=[2, 2],
        rank=2,
        alpha=4.0,
        scaling=2.0,
        diff_sq=diff,
        ref_sq=ref,
        update_sq=update,
        before_update_sq=before,
        spectrum=AdapterSpectrum(singular_values=list(sv), energy=diff, rank=rank),
    )


def _lora_run():
    def weights(e: int):
        return [
            wstat("l.base_layer.weight", shape=[2, 2], trainable=False, ref_sq=4.0, update_sq=0.0, before=4.0),
            wstat("l.base_layer.bias", shape=[2], trainable=False, ref_sq=1.0, update_sq=0.0, before=1.0),
            wstat(
                "l.lora_A.default.weight",
                shape=[2, 2],
                new=True,
                diff_sq=0.25 * e,
                ref_sq=0.5,
                update_sq=1.0,
                before=1.0,
            ),
            wstat(
                "l.lora_B.default.weight",
                shape=[2, 2],
                new=True,
                diff_sq=1.0 * e,
                ref_sq=0.0,
                update_sq=1.0,
                before=1.0,
            ),
            wstat("fc.weight", shape=[2, 2], new=True, diff_sq=4.0 * e, ref_sq=1.0, update_sq=0.01, before=1.0),
        ]

    epochs = [
        snap(0, weights=weights(0), adapters=[_adapter("l", 0.0, 4.0, sv=(), rank=0)]),
        snap(
            1,
            weights=weights(1),
            adapters=[_adapter("l", 0.09, 4.0, update=0.0004, before=4.0)],
            gradients=[
                gstat("l.lora_A.default.weight", 3.0),
                gstat("l.lora_B.default.weight", 4.0),
                gstat("fc.weight", 1.0),
            ],
        ),
    ]
    return frames(epochs)


def test_a_lora_layer_is_one_layer_measured_by_its_effective_weight():
    fr = _lora_run()
    w = fr.layer_weights
    row = w[(w["layer"] == "l") & (w["epoch"] == 1)].iloc[0]
    # effective weight (0.09 of 4.0) and the frozen bias (0 of 1.0); the factors' own numbers left out
    assert row["rel_change"] == pytest.approx(math.sqrt(0.09 / 5.0), rel=1e-12)
    assert row["update_ratio"] == pytest.approx(math.sqrt((0.0004 + 0.0) / (4.0 + 1.0)), rel=1e-12)
    assert row["params"] == 4 + 2 + 4 + 4 and bool(row["trainable"]) and not bool(row["new"]) and bool(row["adapter"])
    assert list(w[w["epoch"] == 1]["layer"]) == ["l", "fc"]
    g = fr.layer_grads
    assert g[g["epoch"] == 1].set_index("layer")["norm"].to_dict() == {
        "l": pytest.approx(5.0),
        "fc": pytest.approx(1.0),
    }
    assert fr.histogram_tensors(6) == ["l.base_layer.weight", "fc.weight"]  # LoRA's factors are not drawn
    moved = F.moved_layers_rule(fr)
    assert moved and "(of a LoRA-adapted layer, its effective weight W_base + (α/r)·B·A)" in moved[0].evidence
    assert "most moved l (13.4%)" in moved[0].evidence  # sqrt(0.09 / 5) = 0.1342


def test_lora_summary_architecture_and_adapters_table():
    fr = _lora_run()
    fr.info.strategy = "lora:2"
    fr.info.training = TrainingInfo(lora=LoRAInfo(rank=2, alpha=4.0, targets=["l"], params=8))
    assert strategy_text(fr.info) == (
        "LoRA r=2, α=4 on 1 layer (8 adapter parameters): the pretrained weights frozen, the new head trained in full"
    )
    report = build_report(fr.run, "html", frames=fr)
    blocks = {getattr(b, "id", None): b for s in report.sections for b in s.blocks}
    table = blocks["adapters"]
    assert table.title.endswith("(epoch 1)")
    assert [c.text for c in table.rows[0]] == ["l", "2×2", "2", "15%", "1.0e-02", "1", "1.00", "100.0%", "0.3"]
