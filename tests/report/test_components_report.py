"""What a report says about a model's components (schema.Architecture.components): the "What actually trained"
table, the parameters by component, the change of each component per epoch and the component strip of the
per-layer charts, for a detector-like run built by hand (a frozen stage, FrozenBatchNorm values, a component
never measured, one whose weights started at 0); and that a run recorded before components were (schema
version 3) still renders as before."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from tiny_run import cka, frames, gstat, moved, snap, wstat

from sftreport.report.sections import build_report
from sftreport.schema import Architecture, BlockSummary, ComponentSummary, ModuleInfo

ROOT = Path(__file__).resolve().parents[2]

# (name, type, params, trainable, new, FrozenBatchNorm values): a detector in miniature
MODULES = [
    ("", "FasterRCNN", 0, 0, 0, 0),
    ("backbone", "BackboneWithFPN", 0, 0, 0, 0),
    ("backbone.body", "IntermediateLayerGetter", 0, 0, 0, 0),
    ("backbone.body.conv1", "Conv2d", 100, 0, 0, 0),  # frozen (trainable_backbone_layers)
    ("backbone.body.bn1", "FrozenBatchNorm2d", 0, 0, 0, 16),  # 8 channels: weight and bias buffers
    ("backbone.body.layer1", "Conv2d", 50, 50, 0, 0),
    ("backbone.fpn", "FeaturePyramidNetwork", 0, 0, 0, 0),
    ("backbone.fpn.inner", "Conv2d", 40, 0, 0, 0),  # frozen too: it never moves
    ("rpn", "RegionProposalNetwork", 0, 0, 0, 0),
    ("rpn.head", "Conv2d", 30, 30, 30, 0),
    ("roi_heads", "RoIHeads", 0, 0, 0, 0),
    ("roi_heads.box_head", "Linear", 20, 20, 20, 0),
    ("roi_heads.box_predictor", "Linear", 10, 10, 10, 0),
]
COMPONENTS = [  # name, prefixes, params, trainable, new, FrozenBatchNorm values: the sums of MODULES by hand
    ("backbone body", ["backbone.body"], 150, 50, 0, 16),
    ("FPN", ["backbone.fpn"], 40, 0, 0, 0),
    ("RPN", ["rpn"], 30, 30, 30, 0),
    ("box head", ["roi_heads.box_head"], 20, 20, 20, 0),
    ("box predictor", ["roi_heads.box_predictor"], 10, 10, 10, 0),
]


def _architecture() -> Architecture:
    rows = [
        ModuleInfo(
            name=n, type=t, depth=0 if not n else n.count(".") + 1, params=p, trainable=tr, new=nw, frozen_norm=f
        )
        for n, t, p, tr, nw, f in MODULES
    ]
    return Architecture(
        model_type="FasterRCNN",
        modules=rows,
        blocks=[
            BlockSummary(name="backbone", type="B", params=190, trainable=50, new=0),
            BlockSummary(name="rpn", type="R", params=30, trainable=30, new=30),
            BlockSummary(name="roi_heads", type="H", params=30, trainable=30, new=30),
        ],
        total_params=250,
        trainable_params=110,
        new_params=60,
        input_shape=[3, 8, 8],
        components=[
            ComponentSummary(name=n, modules=m, params=p, trainable=t, new=nw, frozen_norm=f)
            for n, m, p, t, nw, f in COMPONENTS
        ],
    )


def _weights(epoch: int) -> list:
    """Epoch 1: conv1 frozen (0), layer1 moved by 0.3, the FPN frozen, the RPN by 0.5; the box head's weights
    started at 0 (‖W₀‖ = 0) and moved; the box predictor has no weight statistics at all."""
    if epoch == 0:
        return [
            wstat("backbone.body.conv1.weight", trainable=False),
            wstat("backbone.body.layer1.weight"),
            wstat("backbone.fpn.inner.weight", trainable=False),
            wstat("rpn.head.weight", new=True),
            wstat("roi_heads.box_head.weight", new=True, ref_sq=0.0),
        ]
    return [
        moved("backbone.body.conv1.weight", 0.0, trainable=False),
        moved("backbone.body.layer1.weight", 0.3),
        moved("backbone.fpn.inner.weight", 0.0, trainable=False),
        moved("rpn.head.weight", 0.5, new=True),
        wstat("roi_heads.box_head.weight", new=True, diff_sq=0.04, ref_sq=0.0),
    ]


def _run():
    layers = ["backbone.body.layer1", "backbone.fpn.inner", "rpn.head"]
    epochs = [
        snap(0, weights=_weights(0), cka=cka(dict.fromkeys(layers, 1.0))),
        snap(
            1,
            weights=_weights(1),
            gradients=[gstat("backbone.body.layer1.weight", 0.3), gstat("rpn.head.weight", 0.4)],
            cka=cka({"backbone.body.layer1": 0.9, "backbone.fpn.inner": 1.0, "rpn.head": 0.5}),
        ),
    ]
    return frames(epochs, architecture=_architecture())


def _blocks(report) -> dict:
    return {b.id: b for s in report.sections for b in s.blocks if hasattr(b, "id")}


def test_the_table_says_per_component_what_trained_what_was_frozen_and_how_far_it_moved():
    f = _run()
    report = build_report(f.run, "html", frames=f)
    table = _blocks(report)["what-trained"]
    assert table.columns == [
        "component",
        "modules",
        "parameters",
        "trainable",
        "frozen",
        "frozen (FrozenBatchNorm)",
        "new (not pretrained)",
        "moved by epoch 1",
        "gradient norm, epoch 1",
    ]
    rows = {r[0].text: [c.text for c in r[1:]] for r in table.rows}
    body = math.sqrt((0.0 + 0.09) / (1.0 + 1.0))  # conv1 unchanged, layer1 by 0.3, each ‖W₀‖² = 1
    assert rows["backbone body"] == [
        "backbone.body",
        "150",
        "33% trainable",
        "100",
        "16",
        "0",
        f"{body * 100:.3g}%",
        "3.0e-01",
    ]
    assert rows["FPN"] == ["backbone.fpn", "40", "frozen", "40", "–", "0", "0%", "–"]  # frozen: exactly 0
    assert rows["RPN"][-2:] == ["50%", "4.0e-01"]
    assert rows["box head"][-2] == "∞"  # moved from ‖W₀‖ = 0
    assert rows["box predictor"][-2:] == ["–", "–"]  # never measured
    whole = math.sqrt((0.09 + 0.25 + 0.04) / (1.0 + 1.0 + 1.0 + 1.0))
    assert rows["whole model"][:5] == ["", "250", "44% trainable", "140", "16"]
    assert rows["whole model"][-2:] == [f"{whole * 100:.3g}%", f"{math.sqrt(0.3**2 + 0.4**2):.1e}"]
    totals = dict(_blocks(report)["arch-totals"].items)
    assert "16 FrozenBatchNorm values" in totals["Frozen"]


def test_parameters_and_layers_are_shown_by_component():
    f = _run()
    report = build_report(f.run, "html", frames=f)
    blocks = _blocks(report)
    assert blocks["params-by-block"].title == "Parameters by component"
    change = blocks["component-change"]
    assert "Not drawn, unchanged at epoch 1 (frozen): FPN." in change.caption
    drawn = {row["component"] for row in _values(change.spec)}
    assert drawn == {"backbone body", "RPN"}  # 0 and ∞ have no place on a log scale: the caption names them
    assert "Not drawn, moved from weights that were all 0 at epoch 0 (no relative change: ∞): box head." in (
        change.caption
    )
    for chart in ("rel-change", "cka"):
        spec = blocks[chart].spec
        assert "vconcat" in spec and "colour strip" in blocks[chart].caption
        strip = [r for r in _values(spec) if set(r) == {"layer", "component"}]
        assert {r["layer"]: r["component"] for r in strip}["rpn.head"] == "RPN"


def test_a_run_without_components_keeps_its_blocks_and_has_no_table():
    f = frames([snap(0, weights=_weights(0))], architecture=_architecture().model_copy(update={"components": []}))
    blocks = _blocks(build_report(f.run, "html", frames=f))
    assert "what-trained" not in blocks and "component-change" not in blocks
    assert blocks["params-by-block"].title == "Parameters by block"


def test_a_schema_version_3_detection_run_still_renders(tmp_path: Path):
    """tests/data/run_v3_detect was recorded before components were (a digit detector, 2 epochs)."""
    from sftreport.store import read_run

    run = read_run(ROOT / "tests" / "data" / "run_v3_detect")
    assert run.info.schema_version == 3 and run.info.architecture and not run.info.architecture.components
    blocks = _blocks(build_report(run, "html"))
    assert "what-trained" not in blocks and blocks["params-by-block"].title == "Parameters by block"
    assert blocks["rel-change"].spec.get("vconcat") is None  # no strip: nothing to mark
    copy = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "data" / "run_v3_detect", copy)
    assert json.loads((copy / "run.json").read_text())["schema_version"] == 3


def _values(spec) -> list[dict]:
    """Every data row inlined anywhere in a Vega-Lite spec (CSV, as vega.py writes them, or values)."""
    import csv
    import io

    rows: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "values" in data:
                values = data["values"]
                if isinstance(values, str):
                    rows.extend(csv.DictReader(io.StringIO(values)))
                else:
                    rows.extend(values)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    for values in (spec.get("datasets") or {}).values():
        rows.extend(csv.DictReader(io.StringIO(values)) if isinstance(values, str) else values)
    return rows
