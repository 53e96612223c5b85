"""Behaviours that hand-planted bugs (tests/benchmarks/planted_bugs.py) slipped past: the schema's refusals
exactly at their boundaries (one past the limit is refused, the limit itself is not), the update ratio of a
weight that was zero before its step, the architecture's depths and first-call shapes, the gradient maximum
across folds, the head input of token-shaped features and the feature-map channels a strip shows. Every
expected value is worked out by hand or with numpy, never by the code under test."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from sftreport.record import architecture as AR
from sftreport.record import features as FE
from sftreport.record import gradients as GR
from sftreport.record import images as IM
from sftreport.schema import (
    SCHEMA_VERSION,
    Architecture,
    BlockSummary,
    DatasetInfo,
    Environment,
    EpochSnapshot,
    Evaluation,
    GradStat,
    Histogram,
    ModuleInfo,
    ProbeInfo,
    RunInfo,
    TensorStats,
    WeightStat,
)

# =========================================================================== schema


def _weight(update_sq: float | None, before: float | None) -> WeightStat:
    return WeightStat(
        name="w",
        module="",
        shape=[2],
        trainable=True,
        new=False,
        stats=TensorStats(count=2, mean=0.0, m2=0.0, min=0.0, max=0.0, zeros=2),
        hist=Histogram(lo=0.0, hi=1.0, counts=[2]),
        diff_sq=0.0,
        ref_sq=0.0,
        update_sq=update_sq,
        before_update_sq=before,
    )


def test_update_ratio_is_undefined_when_the_weight_before_the_step_was_zero_or_unknown():
    assert _weight(4.0, 0.0).update_ratio is None  # all-zero weight before the step: no ratio, no division
    assert _weight(4.0, None).update_ratio is None
    assert _weight(None, 9.0).update_ratio is None
    assert _weight(0.0, 0.0).update_ratio is None
    assert _weight(4.0, 9.0).update_ratio == pytest.approx(2.0 / 3.0)  # sqrt(4 / 9)


def _evaluation(accuracy: float) -> Evaluation:
    # 2 of 3 right: accuracy 2/3
    return Evaluation(loss=1.0, accuracy=accuracy, count=3, confusion=[[2, 0], [1, 0]], per_class_accuracy=[1.0, 0.0])


def test_an_accuracy_a_little_off_its_confusion_matrix_is_refused():
    assert _evaluation(2 / 3).accuracy == 2 / 3
    for off in (0.005, -0.005, 1e-6, 1e-8):
        with pytest.raises(ValidationError, match="is not the confusion matrix's 2/3"):
            _evaluation(2 / 3 + off)


def _arch(block_params: int) -> Architecture:
    modules = [
        ModuleInfo(name="", type="M", depth=0, params=0, trainable=0, new=0),
        ModuleInfo(name="a", type="L", depth=1, params=3, trainable=3, new=0),
        ModuleInfo(name="b", type="L", depth=1, params=2, trainable=2, new=2),
    ]
    blocks = [
        BlockSummary(name="a", type="L", params=3, trainable=3, new=0),
        BlockSummary(name="b", type="L", params=block_params, trainable=2, new=2),
    ]
    return Architecture(
        model_type="M",
        modules=modules,
        blocks=blocks,
        total_params=5,
        trainable_params=5,
        new_params=2,
        input_shape=[1],
    )


def test_block_totals_that_do_not_add_up_are_refused_even_when_the_module_rows_do():
    assert _arch(2).total_params == 5
    with pytest.raises(ValidationError, match="block 'params' counts do not sum to the total 5"):
        _arch(3)
    with pytest.raises(ValidationError, match="block 'params' counts do not sum to the total 5"):
        _arch(1)


def _run(labels: list[int], version: int = SCHEMA_VERSION) -> RunInfo:
    return RunInfo(
        schema_version=version,
        name="r",
        started_at="2026-01-01T00:00:00+00:00",
        model="m",
        weights="w",
        strategy="full",
        dataset=DatasetInfo(name="d", classes=["x", "y", "z"], train_size=1, val_size=1, image_size=8),
        environment=Environment(python="3", platform="p", sftreport="0", device="cpu"),
        probe=ProbeInfo(labels=labels, size=len(labels)),
    )


def test_a_probe_label_equal_to_the_number_of_classes_is_refused():
    assert _run([0, 2, 1]).probe.labels == [0, 2, 1]  # the last class, index 2 of 3, is fine
    with pytest.raises(ValidationError, match="probe labels name classes beyond the dataset's 3"):
        _run([0, 3])
    with pytest.raises(ValidationError, match="probe labels name classes beyond the dataset's 3"):
        _run([4])


def test_a_schema_version_one_past_this_sftreports_is_refused_in_both_files():
    assert _run([0], SCHEMA_VERSION).schema_version == SCHEMA_VERSION
    assert EpochSnapshot(epoch=0, step=0, schema_version=SCHEMA_VERSION - 1).schema_version == SCHEMA_VERSION - 1
    newer = f"schema_version {SCHEMA_VERSION + 1} is newer than this sftreport \\({SCHEMA_VERSION}\\)"
    with pytest.raises(ValidationError, match=newer):
        _run([0], SCHEMA_VERSION + 1)
    with pytest.raises(ValidationError, match=newer):
        EpochSnapshot(epoch=0, step=0, schema_version=SCHEMA_VERSION + 1)


def _grad(samples: int, nonfinite: int) -> GradStat:
    return GradStat(name="w", module="", samples=samples, norm_sum=0.0, norm_max=0.0, nonfinite=nonfinite)


def test_one_more_non_finite_step_than_sampled_steps_is_refused():
    assert _grad(3, 3).nonfinite == 3  # every sampled step non-finite: fine
    with pytest.raises(ValidationError, match=r"more non-finite steps \(4\) than sampled steps \(3\)"):
        _grad(3, 4)
    with pytest.raises(ValidationError, match=r"more non-finite steps \(1\) than sampled steps \(0\)"):
        _grad(0, 1)


# =========================================================================== architecture


def test_module_depth_counts_the_model_as_zero_and_each_name_part_as_one_level():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU())), nn.Linear(2, 1))
    arch = AR.describe(model, torch.zeros(1, 2), set())
    assert [(m.name, m.depth) for m in arch.modules] == [
        ("", 0),
        ("0", 1),
        ("0.0", 2),
        ("0.1", 2),
        ("0.1.0", 3),
        ("1", 1),
    ]


class _Twice(nn.Module):
    """Runs one Linear twice: first on (N, 4), then on (N, 3, 4)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        first = self.lin(x)
        return self.lin(first[:, None, :].expand(-1, 3, -1)).sum(1)


def test_a_module_called_twice_keeps_the_output_shape_of_its_first_call():
    arch = AR.describe(_Twice(), torch.zeros(2, 4), set())
    lin = next(m for m in arch.modules if m.name == "lin")
    assert lin.calls == 2 and lin.output_shape == [4]  # not the second call's [3, 4]
    assert arch.modules[0].output_shape == [4] and arch.modules[0].calls == 1


# =========================================================================== gradients


def test_the_gradient_maximum_holds_across_folds_when_the_largest_comes_first():
    lin = nn.Linear(1, 1, bias=False)
    probe = GR.GradientProbe(lin, every=1)
    # the largest norm in the first fold, then two more folds of smaller ones
    norms = [50.0] + [float(1 + i % 7) for i in range(2 * GR.FOLD + 3)]
    for v in norms:
        lin.weight.grad = torch.tensor([[-v]])  # the norm of a 1×1 gradient is |v|
        probe.maybe_sample()
    (s,) = probe.collect()
    assert s.samples == len(norms) and s.nonfinite == 0
    assert s.norm_max == 50.0
    assert s.norm_sum == pytest.approx(float(np.sum(np.array(norms, dtype=np.float64))))


def test_the_gradient_maximum_of_an_early_fold_survives_a_later_fold_of_smaller_norms(monkeypatch):
    monkeypatch.setattr(GR, "FOLD", 2)
    lin = nn.Linear(2, 1, bias=False)
    probe = GR.GradientProbe(lin, every=1)
    grads = [[3.0, 4.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.5]]  # norms 5, 1, 1, 2, 0.5
    for g in grads:
        lin.weight.grad = torch.tensor([g])
        probe.maybe_sample()
    (s,) = probe.collect()
    assert s.samples == 5 and s.norm_max == 5.0 and s.norm_sum == pytest.approx(9.5)


# =========================================================================== features


class _TokenHead(nn.Module):
    """A head applied to (N, T, D) tokens: its input is flattened per sample, to (N, T·D)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(x).mean(1)


def test_head_input_of_token_shaped_features_is_flattened_per_sample():
    x = torch.arange(2 * 4 * 3, dtype=torch.float64).view(2, 4, 3)  # N=2 samples, T=4 tokens, D=3
    model = _TokenHead().double()
    sink: list[torch.Tensor] = []
    with FE.capture_head_input(model, "head", sink):
        model(x)
    (got,) = sink
    assert got.shape == (2, 12) and got.dtype == torch.float32
    expected = np.arange(24, dtype=np.float32).reshape(2, 12)  # sample i holds 12·i .. 12·i + 11, tokens in order
    assert np.array_equal(got.numpy(), expected)


# =========================================================================== images


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))


def test_a_feature_map_strip_shows_the_chosen_channels_in_the_order_given():
    image = torch.zeros(3, 4, 4)
    # channel k of a 2×2 map is hot at one cell only: k=0 top left, 1 top right, 2 bottom left, 3 bottom right
    maps = torch.zeros(4, 2, 2)
    for k in range(4):
        maps[k, k // 2, k % 2] = 1.0 + k
    strip = _decode(IM.feature_map_strip(image, maps, [3, 1]))
    t = IM.MAP_TILE
    assert strip.shape == (t, 3 * t + 4, 3)
    half = t // 2

    def hot(tile: np.ndarray) -> list[tuple[int, int]]:
        # which quarter of a tile is white (each map cell becomes a half × half block)
        return [(r, c) for r in range(2) for c in range(2) if tile[r * half, c * half, 0] == 255]

    first = strip[:, t + 2 : 2 * t + 2]
    second = strip[:, 2 * t + 4 : 3 * t + 4]
    assert hot(first) == [(1, 1)]  # channel 3: bottom right
    assert hot(second) == [(0, 1)]  # channel 1: top right
    assert first[0, 0].tolist() == [0, 0, 0] and second[half, 0].tolist() == [0, 0, 0]
