"""The snapshot schema: the only contract between the recorder (torch) and the renderer (no torch).

Plain pydantic models of plain numbers and short lists; no tensors, no import of the rest of
sftreport. Every statistic is stored in a form that merges exactly across shards or batches: counts,
means with centred sums of squares (merged with Chan's formula, `TensorStats.merge`), min, max and
fixed-bin histogram counts; the familiar numbers (std, norm, ratios) are derived properties.

Bump SCHEMA_VERSION when a stored field changes meaning or disappears, and keep reading the older
versions (see `TensorStats._from_v1`).

Version history:
  1  TensorStats stored `sum` and `sum_sq` (variance lost when |mean| >> std).
  2  TensorStats stores `mean` and `m2`, the centred sum of squares; histograms hold bin-exact counts.
  3  New, optional (versions 1 and 2 read as before): the source task's evaluation (`EpochSnapshot.source`,
     `RunInfo.source_task`), the effective-weight change of LoRA-adapted layers (`EpochSnapshot.adapters`,
     `ModuleInfo.adapter`) and how the strategy trained (`RunInfo.training`: lp-ft's switch, per-group
     learning rates, LoRA's settings).
  4  New, optional (versions 1–3 read as before): the model's components (`Architecture.components`: backbone
     body, FPN, RPN, heads ...) with their trainable, frozen and new counts, and the values of FrozenBatchNorm
     layers (`ModuleInfo.frozen_norm`), which are buffers and so in no parameter count.
"""

from __future__ import annotations

import itertools
import math
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

SCHEMA_VERSION = 4


def _not_negative(v: float) -> float:
    # NaN stays allowed: a diverged run's statistics are NaN, and that is evidence, not bad data
    if v < 0:
        raise ValueError("must not be negative")
    return v


NonNegative = Annotated[float, AfterValidator(_not_negative)]  # >= 0 or NaN
Count = Annotated[int, Field(ge=0)]


class _Model(BaseModel):
    # A stored run is data we may not have written ourselves: refuse unknown fields so a
    # typo or a newer schema is caught on read rather than silently ignored.
    # NaN and infinities are legitimate values of a diverged run: keep them as JSON constants.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


# --------------------------------------------------------------------------- building blocks


class TensorStats(_Model):
    """Mergeable moments of a tensor (or of many calls of one module): count, mean and the centred sum of
    squares M2 = Σ(x − mean)², which keeps the variance exact when |mean| is far larger than the spread
    (a LayerNorm weight of mean 1 and std 1e-6); `merge` combines two with Chan's formula."""

    count: Count
    mean: float
    m2: NonNegative = Field(description="centred sum of squares Σ(x − mean)²")
    min: float
    max: float
    zeros: Count = Field(description="elements exactly equal to 0")

    @model_validator(mode="before")
    @classmethod
    def _from_v1(cls, data: Any) -> Any:
        """Schema version 1 stored `sum` and `sum_sq`: read them as the same moments (with v1's precision)."""
        if isinstance(data, dict) and "sum" in data and "mean" not in data:
            data = dict(data)
            n, total, sq = data.get("count") or 0, data.pop("sum"), data.pop("sum_sq", math.nan)
            if isinstance(n, (int, float)) and isinstance(total, (int, float)) and isinstance(sq, (int, float)):
                mean = total / n if n else math.nan
                data["mean"] = mean
                data["m2"] = max(sq - total * mean, 0.0) if n and math.isfinite(sq - total * mean) else sq
            else:
                data["mean"], data["m2"] = total, sq  # let field validation name the bad type
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TensorStats:
        if self.zeros > self.count:
            raise ValueError(f"zeros ({self.zeros}) exceed count ({self.count})")
        if self.min > self.max:  # NaN compares false: a diverged tensor passes
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.count else math.nan

    @property
    def sum_sq(self) -> float:
        """Σx² = M2 + n·mean² (no cancellation: both terms are non-negative)."""
        return self.m2 + self.count * self.mean * self.mean

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.count if self.count else math.nan

    def merge(self, other: TensorStats) -> TensorStats:
        """The moments of both together, exactly (Chan, Golub and LeVeque's pairwise update)."""
        if not other.count:
            return self
        if not self.count:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        return TensorStats(
            count=n,
            mean=self.mean + delta * other.count / n,
            m2=self.m2 + other.m2 + delta * delta * self.count * other.count / n,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            zeros=self.zeros + other.zeros,
        )


class Histogram(_Model):
    """Fixed uniform bins on [lo, hi), chosen once (from the pretrained model) so epochs compare.

    Bin k holds the values x with edges[k] <= x < edges[k + 1]; values below lo are counted in
    `below`, values at or above hi in `above`, so sum(counts) + below + above is the number of
    values (NaN counts nowhere). The recorder picks lo, hi and the bin width so that every edge is
    exactly representable and the counts are exact, also for values exactly on an edge.
    """

    lo: float
    hi: float
    counts: list[Count]
    below: Count = 0
    above: Count = 0

    @model_validator(mode="after")
    def _range(self) -> Histogram:
        if not self.counts:
            raise ValueError("a histogram needs at least one bin")
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"histogram range [{self.lo}, {self.hi}) is empty or not finite")
        return self

    @classmethod
    def from_counts(cls, lo: float, hi: float, counts: list[int]) -> Histogram:
        """From bins+2 counts laid out [below, bin 1 .. bin n, above]."""
        return cls(lo=lo, hi=hi, counts=counts[1:-1], below=counts[0], above=counts[-1])

    @property
    def edges(self) -> list[float]:
        n = len(self.counts)
        step = (self.hi - self.lo) / n
        return [self.lo + i * step for i in range(n)] + [self.hi]

    @property
    def total(self) -> int:
        return sum(self.counts) + self.below + self.above

    @property
    def outside(self) -> int:
        return self.below + self.above


# --------------------------------------------------------------------------- architecture


class ModuleInfo(_Model):
    name: str = Field(description="dotted module name; '' is the model itself")
    type: str
    depth: int = Field(ge=0)
    output_shape: list[int] | None = Field(None, description="from one forward pass of a probe batch")
    calls: int = Field(0, ge=0, description="times the module ran in that forward pass")
    params: int = Field(ge=0, description="parameters owned directly by this module")
    trainable: int = Field(ge=0, description="of `params`, how many require grad")
    new: int = Field(ge=0, description="of `params`, how many were not loaded from pretrained weights")
    adapter: str | None = Field(
        None,
        description="an adapter this module is or belongs to, in words: 'LoRA r=8, α=16' on an adapted layer, "
        "'LoRA A' / 'LoRA B' on its low-rank factors (None: not an adapter)",
    )
    frozen_norm: Count = Field(
        0,
        description="a FrozenBatchNorm layer's affine weight and bias values: buffers, never trained and in no "
        "parameter count (its running mean and variance are statistics, as in any BatchNorm, and not counted)",
    )


class BlockSummary(_Model):
    name: str = Field(description="top-level child of the model")
    type: str
    params: Count
    trainable: Count
    new: Count


class ComponentSummary(_Model):
    """A part of the model named for what it does (backbone body, FPN, RPN, box head ...; see
    sftreport.record.components): the modules under its prefixes, less those under a longer prefix of
    another component."""

    name: str = Field(description="the component in words, e.g. 'backbone body'")
    modules: list[str] = Field(description="module-name prefixes it covers; '' is the model's own parameters")
    params: Count
    trainable: Count = Field(description="of `params`, how many require grad")
    new: Count = Field(description="of `params`, how many were not loaded from pretrained weights")
    frozen_norm: Count = Field(0, description="FrozenBatchNorm weight and bias values (buffers, see ModuleInfo)")

    @property
    def frozen(self) -> int:
        """Parameters that do not require grad."""
        return self.params - self.trainable


def component_of(prefixes: dict[str, str], module: str) -> str | None:
    """The component (by `Architecture.component_prefixes`) that owns the module named `module`: the one
    whose prefix is the module itself or its nearest parent; '' only owns the model's own parameters."""
    if module == "":
        return prefixes.get("")
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        found = prefixes.get(".".join(parts[:k]))
        if found is not None:
            return found
    return None


class Architecture(_Model):
    model_type: str
    modules: list[ModuleInfo]
    blocks: list[BlockSummary]
    total_params: Count
    trainable_params: Count
    new_params: Count
    input_shape: list[int]
    components: list[ComponentSummary] = Field(
        [], description="the model's components, each parameter in exactly one (none in runs before version 4)"
    )

    @model_validator(mode="after")
    def _totals_add_up(self) -> Architecture:
        totals = {"params": self.total_params, "trainable": self.trainable_params, "new": self.new_params}
        for field, total in totals.items():
            for rows, what in ((self.modules, "module"), (self.blocks, "block")):
                if sum(getattr(r, field) for r in rows) != total:
                    raise ValueError(f"{what} '{field}' counts do not sum to the total {total}")
        if self.components:
            self._components_cover_the_modules()
        return self

    def _components_cover_the_modules(self) -> None:
        """Every module with parameters (or FrozenBatchNorm values) lies in exactly one component, and each
        component's counts are the sums of its modules' (so the components sum to the totals)."""
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError("two components have the same name")
        prefixes = [p for c in self.components for p in c.modules]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("a module prefix is listed under two components")
        index = self.component_prefixes()
        fields = ("params", "trainable", "new", "frozen_norm")
        sums = {c.name: dict.fromkeys(fields, 0) for c in self.components}
        for m in self.modules:
            owner = component_of(index, m.name)
            if owner is None:
                if m.params or m.frozen_norm:
                    raise ValueError(f"module '{m.name}' holds parameters but lies in no component")
                continue
            for f in fields:
                sums[owner][f] += getattr(m, f)
        for c in self.components:
            for f in fields:
                if getattr(c, f) != sums[c.name][f]:
                    raise ValueError(f"component '{c.name}': {f} {getattr(c, f)} is not its modules' {sums[c.name][f]}")

    def component_prefixes(self) -> dict[str, str]:
        """Module-name prefix -> component name (for `component_of`)."""
        return {p: c.name for c in self.components for p in c.modules}

    @property
    def frozen_norm(self) -> int:
        """FrozenBatchNorm weight and bias values in the whole model (buffers, in no parameter count)."""
        return sum(m.frozen_norm for m in self.modules)


# --------------------------------------------------------------------------- per-epoch probes


class GateStat(_Model):
    """One gate's rows of a recurrent weight (LSTM: input, forget, cell, output; GRU: reset, update, new)."""

    gate: str
    diff_sq: NonNegative = Field(description="sum of (W_t - W_0)^2 over the gate's rows")
    ref_sq: NonNegative = Field(description="sum of W_0^2 over the gate's rows")
    update_sq: NonNegative | None = None
    before_update_sq: NonNegative | None = None

    @property
    def rel_change(self) -> float:
        if self.ref_sq == 0:
            return 0.0 if self.diff_sq == 0 else math.inf
        return math.sqrt(self.diff_sq / self.ref_sq)

    @property
    def update_ratio(self) -> float | None:
        if self.update_sq is None or not self.before_update_sq:
            return None
        return math.sqrt(self.update_sq / self.before_update_sq)


class WeightStat(_Model):
    name: str = Field(description="parameter name")
    module: str
    shape: list[int]
    trainable: bool
    new: bool = Field(description="not loaded from pretrained weights (compared with its initialisation)")
    stats: TensorStats
    hist: Histogram
    diff_sq: NonNegative = Field(description="sum of (W_t - W_0)^2")
    ref_sq: NonNegative = Field(description="sum of W_0^2")
    update_sq: NonNegative | None = Field(None, description="sum of (one optimizer step's update)^2")
    before_update_sq: NonNegative | None = Field(None, description="sum of W^2 before that step")
    gates: list[GateStat] = Field([], description="a recurrent layer's weight or bias, split by gate")

    @model_validator(mode="after")
    def _sizes(self) -> WeightStat:
        if self.stats.count != math.prod(self.shape):
            raise ValueError(f"{self.name}: stats count {self.stats.count} is not the size of shape {self.shape}")
        if self.hist.total > self.stats.count:
            raise ValueError(f"{self.name}: the histogram counts more values than the tensor has")
        return self

    @property
    def rel_change(self) -> float:
        """‖W_t − W_0‖ / ‖W_0‖ (0 for a frozen parameter)."""
        if self.ref_sq == 0:
            return 0.0 if self.diff_sq == 0 else math.inf
        return math.sqrt(self.diff_sq / self.ref_sq)

    @property
    def update_ratio(self) -> float | None:
        if self.update_sq is None or not self.before_update_sq:
            return None
        return math.sqrt(self.update_sq / self.before_update_sq)


class GradStat(_Model):
    name: str
    module: str
    samples: Count = Field(description="steps whose gradient was sampled")
    norm_sum: NonNegative = Field(description="sum over sampled steps of the finite gradient norms")
    norm_max: NonNegative
    nonfinite: Count = Field(description="sampled steps whose gradient held a NaN or an infinity")

    @model_validator(mode="after")
    def _steps(self) -> GradStat:
        if self.nonfinite > self.samples:
            raise ValueError(
                f"{self.name}: more non-finite steps ({self.nonfinite}) than sampled steps ({self.samples})"
            )
        return self

    @property
    def mean_norm(self) -> float:
        finite = self.samples - self.nonfinite
        return self.norm_sum / finite if finite > 0 else math.nan


SPECTRUM_TOP = 16  # singular values of a weight change kept per layer


class AdapterSpectrum(_Model):
    """The singular values of a weight change ΔW, taken as a matrix (a convolution's kernel flattened per
    output channel: out × in·kh·kw). `energy` is ‖ΔW‖²_F, the sum of every squared singular value, so the
    share of the change in its top directions and the stable rank follow from what is stored even when
    only the largest values are listed."""

    singular_values: list[NonNegative] = Field(
        description=f"the largest singular values of ΔW, largest first (at most {SPECTRUM_TOP})"
    )
    energy: NonNegative = Field(description="‖ΔW‖²_F: the sum of all squared singular values, listed or not")
    rank: Count = Field(
        description="numerical rank of ΔW: singular values above σ₁·max(m, n)·ε(float64), numpy's matrix_rank rule"
    )

    @model_validator(mode="after")
    def _ordered(self) -> AdapterSpectrum:
        sv = self.singular_values
        if any(a < b for a, b in pairwise(sv)):
            raise ValueError("singular values must be listed largest first")
        listed = sum(v * v for v in sv)
        if listed > self.energy * (1 + 1e-6) + 1e-300:  # NaN compares false: a diverged change passes
            raise ValueError(f"the listed singular values hold more energy ({listed}) than ΔW has ({self.energy})")
        return self

    def top_share(self, k: int = 1) -> float:
        """The share of ‖ΔW‖² in its k largest directions (NaN when nothing changed)."""
        if not self.energy:
            return math.nan
        return sum(v * v for v in self.singular_values[:k]) / self.energy

    @property
    def stable_rank(self) -> float:
        """‖ΔW‖²_F / σ₁²: an effective rank between 1 (one direction) and the rank (all directions equal);
        NaN when nothing changed."""
        if not self.singular_values or not self.singular_values[0]:
            return math.nan
        return self.energy / self.singular_values[0] ** 2


class AdapterStat(_Model):
    """A LoRA-adapted layer (peft's LoRA): its effective weight W = W_base + (α/r)·B·A, the weight the layer
    computes with, measured against the effective weight at epoch 0, in the same mergeable sums as
    WeightStat. The factors A and B are new parameters; W_base stays frozen unless made trainable."""

    module: str = Field(description="the adapted layer, e.g. 'layer1.0.conv1' (peft's layer wrapping the base layer)")
    type: str = Field(description="the base layer's type (Linear, Conv2d, ...)")
    shape: list[int] = Field(description="shape of the base weight")
    rank: int = Field(ge=1, description="r (summed over the active adapters)")
    alpha: float = Field(description="lora_alpha (of the first active adapter)")
    scaling: float = Field(description="the factor peft applies to B·A: α/r (α/√r with rsLoRA)")
    diff_sq: NonNegative = Field(description="‖W_t − W_0‖² of the effective weight")
    ref_sq: NonNegative = Field(description="‖W_0‖² of the effective weight at epoch 0")
    update_sq: NonNegative | None = Field(
        None, description="‖change of the effective weight in the epoch's first optimizer step‖²"
    )
    before_update_sq: NonNegative | None = Field(None, description="‖effective weight before that step‖²")
    spectrum: AdapterSpectrum = Field(
        description="singular values of W_t − W_0 (of rank at most 2r while W_base is frozen)"
    )

    @property
    def rel_change(self) -> float:
        """‖W_t − W_0‖ / ‖W_0‖ of the effective weight."""
        if self.ref_sq == 0:
            return 0.0 if self.diff_sq == 0 else math.inf
        return math.sqrt(self.diff_sq / self.ref_sq)

    @property
    def update_ratio(self) -> float | None:
        if self.update_sq is None or not self.before_update_sq:
            return None
        return math.sqrt(self.update_sq / self.before_update_sq)


class ActivationStat(_Model):
    module: str = Field(description="module name; '#k' marks the k-th call of a module called more than once")
    type: str
    shape: list[int] = Field(description="output shape of one probe sample")
    stats: TensorStats
    channels: Count
    dead_channels: Count = Field(description="channels that are 0 for every probe sample and position")
    nonnegative: bool = Field(description="output is >= 0 everywhere (ReLU-like), so zeros mean inactive units")
    hist: Histogram

    @model_validator(mode="after")
    def _counts(self) -> ActivationStat:
        if self.dead_channels > self.channels:
            raise ValueError(
                f"{self.module}: more dead channels ({self.dead_channels}) than channels ({self.channels})"
            )
        if self.hist.total > self.stats.count:
            raise ValueError(f"{self.module}: the histogram counts more values than the outputs have")
        return self

    @property
    def dead_fraction(self) -> float:
        return self.dead_channels / self.channels if self.channels else math.nan


Fraction = Annotated[float, Field(ge=0, le=1)]


def _fraction_or_nan(v: float) -> float:
    if not (v != v or -1e-6 <= v <= 1 + 1e-6):  # NaN allowed (undefined), else within [0, 1] up to rounding
        raise ValueError("must be between 0 and 1")
    return v


FractionOrNaN = Annotated[float, AfterValidator(_fraction_or_nan)]


class Projection(_Model):
    method: Literal["pca", "tsne"]
    x: list[float]
    y: list[float]

    @model_validator(mode="after")
    def _pairs(self) -> Projection:
        if len(self.x) != len(self.y):
            raise ValueError(f"projection has {len(self.x)} x but {len(self.y)} y coordinates")
        return self


class Features(_Model):
    module: str = Field(description="the module whose input is the penultimate representation")
    dim: Count
    projections: list[Projection]
    knn_accuracy: FractionOrNaN = Field(
        description="leave-one-out k-NN accuracy on the probe set (NaN with under 2 samples)"
    )
    knn_k: Count
    probe_accuracy: FractionOrNaN = Field(description="accuracy of the model's predictions on the probe set")


class GateSaturation(_Model):
    """How often a recurrent layer's gates sit in the flat tails of their nonlinearity over the probe
    sequences (every sample and time step): sigmoid gates below 0.03 or above 0.97, tanh beyond ±0.97."""

    module: str
    layer: Count
    direction: Literal["forward", "reverse"] = "forward"
    gate: str = Field(description="input, forget, cell, output, cell state (LSTM); reset, update, new (GRU)")
    saturated: Fraction
    mean: float = Field(description="mean activation of the gate")


class HiddenStates(_Model):
    """A recurrent layer's hidden state over time for one probe sequence (the top layer, forward direction)."""

    module: str
    sample: Count = Field(description="index into the probe set")
    values: list[list[float]] = Field(description="time steps × units")


class AttentionStat(_Model):
    """One attention head over the probe set: the entropy of its attention distributions (nats, averaged
    over samples and queries) and how far its attention moved from the pretrained model's."""

    module: str
    head: Count
    entropy: NonNegative
    max_entropy: NonNegative = Field(description="log of the number of keys: the entropy of uniform attention")
    change: Fraction | None = Field(
        None, description="total variation distance to the pretrained model's attention, mean over samples and queries"
    )


class TokenChange(_Model):
    """One token's row of a text model's input embedding: how far it moved from the pretrained one."""

    token_id: Count
    token: str
    rel_change: NonNegative = Field(description="‖e_t − e_0‖ / ‖e_0‖ of the token's embedding row")
    norm: NonNegative = Field(description="‖e_t‖")
    ref_norm: NonNegative = Field(description="‖e_0‖")


class CKA(_Model):
    module: str
    value: FractionOrNaN = Field(description="linear CKA between the representation now and in the pretrained model")


class FeatureMapImage(_Model):
    module: str
    sample: Count = Field(description="index into the probe set")
    path: str
    channels: Count = Field(description="channels shown")


class MaskImage(_Model):
    """A segmentation model's prediction for one probe image: image, ground truth and predicted mask."""

    sample: Count = Field(description="index into the probe set")
    path: str


class Images(_Model):
    filters: str | None = Field(None, description="PNG of first-layer filters, relative to the run directory")
    filters_module: str | None = None
    feature_maps: list[FeatureMapImage] = []
    masks: list[MaskImage] = Field([], description="segmentation: predicted mask next to the ground truth")
    detections: list[MaskImage] = Field([], description="detection: predicted boxes next to the ground truth")


class Evaluation(_Model):
    task: Literal["classify"] = "classify"
    loss: float
    accuracy: Fraction
    count: Count
    confusion: list[list[Count]] = Field(description="rows: true class, columns: predicted class")
    per_class_accuracy: list[Fraction | None]

    @model_validator(mode="after")
    def _consistent(self) -> Evaluation:
        """Every derived number must follow from the confusion matrix: an evaluation that contradicts
        itself is refused rather than drawn."""
        n = len(self.confusion)
        if any(len(r) != n for r in self.confusion):
            raise ValueError("confusion matrix is not square")
        if sum(map(sum, self.confusion)) != self.count:
            raise ValueError("confusion matrix does not sum to the sample count")
        if len(self.per_class_accuracy) != n:
            raise ValueError(f"{len(self.per_class_accuracy)} per-class accuracies for {n} classes")
        correct = sum(self.confusion[i][i] for i in range(n))
        if self.count and abs(self.accuracy - correct / self.count) > 1e-9:
            raise ValueError(f"accuracy {self.accuracy} is not the confusion matrix's {correct}/{self.count}")
        for i, (row, acc) in enumerate(zip(self.confusion, self.per_class_accuracy)):
            total = sum(row)
            if (acc is None) != (total == 0) or (acc is not None and abs(acc - row[i] / total) > 1e-9):
                raise ValueError(f"per-class accuracy of class {i} does not follow from the confusion matrix")
        return self


class SegmentationEvaluation(Evaluation):
    """Semantic segmentation: the confusion matrix counts pixels (rows: true class, columns: predicted),
    pixels labelled 255 ("void") left out; accuracy is pixel accuracy, per-class accuracy each class's
    pixel recall, and IoU_c = TP / (TP + FP + FN) of each class; mIoU averages the classes present."""

    task: Literal["segment"] = "segment"  # type: ignore[assignment]
    images: Count = Field(description="images evaluated (count is their labelled pixels)")
    iou: list[FractionOrNaN | None] = Field(description="per class; None where the class is neither true nor predicted")
    miou: FractionOrNaN = Field(description="mean of the defined per-class IoUs")

    @model_validator(mode="after")
    def _iou_follows(self) -> SegmentationEvaluation:
        n = len(self.confusion)
        if len(self.iou) != n:
            raise ValueError(f"{len(self.iou)} IoUs for {n} classes")
        for c, value in enumerate(self.iou):
            tp = self.confusion[c][c]
            union = sum(self.confusion[c]) + sum(r[c] for r in self.confusion) - tp
            if (value is None) != (union == 0) or (value is not None and abs(value - tp / union) > 1e-9):
                raise ValueError(f"IoU of class {c} does not follow from the confusion matrix")
        defined = [v for v in self.iou if v is not None]
        expected = sum(defined) / len(defined) if defined else math.nan
        if not (math.isnan(expected) and math.isnan(self.miou)) and abs(self.miou - expected) > 1e-9:
            raise ValueError(f"mIoU {self.miou} is not the mean of the per-class IoUs")
        return self


class DetectionEvaluation(_Model):
    """Object detection, by COCO's evaluation (pycocotools through torchmetrics): mAP over IoU thresholds
    .50:.05:.95, at .50 and at .75, and AP per class (None where the class has no ground-truth box)."""

    task: Literal["detect"] = "detect"
    images: Count
    objects: Count = Field(description="ground-truth boxes")
    map: FractionOrNaN = Field(description="mAP@[.5:.95]; NaN without any ground-truth box")
    map_50: FractionOrNaN
    map_75: FractionOrNaN
    ap_per_class: list[FractionOrNaN | None] = Field(description="AP@[.5:.95] by class index (0: background, None)")

    # what code written for classifiers reads of every evaluation (ranking epochs, the loss curves)
    @property
    def accuracy(self) -> float:
        """The main metric, mAP@[.5:.95], where epochs are ranked."""
        return self.map

    @property
    def loss(self) -> float:
        """Not measured: a torchvision detector computes its losses only in training mode."""
        return math.nan

    @property
    def count(self) -> int:
        return self.images


def _task_of(v: Any) -> str:
    """Old runs (and classifiers) carry no `task`: classification."""
    return (v.get("task") if isinstance(v, dict) else getattr(v, "task", None)) or "classify"


AnyEvaluation = Annotated[
    Annotated[Evaluation, Tag("classify")]
    | Annotated[SegmentationEvaluation, Tag("segment")]
    | Annotated[DetectionEvaluation, Tag("detect")],
    Discriminator(_task_of),
]


class StepPoint(_Model):
    step: int = Field(ge=0, description="global optimizer step (1-based, at the end of the span)")
    loss: float
    lr: NonNegative | None = None
    steps: int = Field(1, ge=1, description="optimizer steps averaged into this point")


class Timing(_Model):
    train_s: float = Field(0.0, ge=0)
    eval_s: float = Field(0.0, ge=0)
    record_s: float = Field(0.0, ge=0, description="time spent in the probes")
    probes: dict[str, NonNegative] = Field(default_factory=dict, description="seconds per probe within record_s")
    samples_per_s: NonNegative | None = None


class _Versioned(_Model):
    """A file-level record: refuses a schema version newer than this sftreport understands."""

    schema_version: int = SCHEMA_VERSION

    @model_validator(mode="after")
    def _version(self):
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is newer than this sftreport ({SCHEMA_VERSION})")
        return self


class EpochSnapshot(_Versioned):
    epoch: int = Field(ge=0, description="0 is the pretrained model before the first step")
    step: int = Field(ge=0, description="optimizer steps so far")
    train_loss: float | None = None
    train_accuracy: Fraction | None = None
    lr: NonNegative | None = None
    val: AnyEvaluation | None = None
    steps: list[StepPoint] = []
    weights: list[WeightStat] = []
    gradients: list[GradStat] = []
    activations: list[ActivationStat] = []
    features: Features | None = None
    cka: list[CKA] = []
    gate_saturation: list[GateSaturation] = []
    hidden_states: list[HiddenStates] = Field([], description="at the epochs whose images are kept")
    attention: list[AttentionStat] = []
    tokens: list[TokenChange] = Field([], description="the input embedding's most moved tokens (text models)")
    images: Images | None = None
    weights_file: str | None = Field(
        None,
        description="this epoch's saved weights, relative to the run directory "
        "(a later epoch's may have replaced them: see --save-weights)",
    )
    source: Evaluation | None = Field(
        None,
        description="the source task (RunInfo.source_task): the model's backbone as it is now with the pretrained "
        "head kept aside, on held-out data of the task it was pretrained for. Forgetting is epoch 0's "
        "source accuracy minus a later epoch's",
    )
    adapters: list[AdapterStat] = Field(
        [], description="LoRA-adapted layers: the change of their effective weight W_base + (α/r)·B·A"
    )
    timing: Timing = Timing()
    logged: dict[str, float] = Field(
        {},
        description="metrics the training framework logged for this epoch, by name (a LightningModule's "
        "self.log, the Hugging Face Trainer's evaluation): the last value logged before the epoch was recorded",
    )


# --------------------------------------------------------------------------- the spectrum of a change


class LayerSpectrum(_Model):
    """The singular spectrum of one weight tensor's change ΔW = W₁ − W₀, reshaped to a matrix (out, in·k·k):
    how many directions the change has, and how much of it lies in the top ones (sftreport.record.spectrum)."""

    name: str = Field(description="parameter name")
    module: str
    shape: list[int]
    new: bool = Field(False, description="not in the pretrained weights: compared with its initialisation")
    rank: Count = Field(description="min(out, in·k·k): the most directions a change of this shape can have")
    diff_sq: NonNegative = Field(description="‖ΔW‖²_F, the sum of the squared changes (exact)")
    ref_sq: NonNegative = Field(description="‖W₀‖²_F")
    singular_values: list[NonNegative] = Field(
        [], description="the largest singular values of ΔW, descending (none when ΔW is zero or not finite)"
    )
    effective_rank: float | None = Field(
        None,
        description="entropy effective rank of Roy & Vetterli (2007): exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ / Σⱼ σⱼ over every "
        "singular value; None when ΔW is zero or not finite",
    )
    exact: bool = Field(True, description="full spectrum (svdvals); False: randomized top values (svd_lowrank)")

    @model_validator(mode="after")
    def _consistent(self) -> LayerSpectrum:
        s = self.singular_values
        if len(s) > self.rank:
            raise ValueError(f"{self.name}: {len(s)} singular values for a rank of at most {self.rank}")
        if any(a < b for a, b in itertools.pairwise(s)):
            raise ValueError(f"{self.name}: singular values are not in descending order")
        if math.isfinite(self.diff_sq) and sum(v * v for v in s) > self.diff_sq * (1 + 1e-3) + 1e-30:
            raise ValueError(f"{self.name}: the singular values hold more energy than ‖ΔW‖²")
        er = self.effective_rank
        if er is not None and not (1 - 1e-6 <= er <= max(1, self.rank) * (1 + 1e-6)):
            raise ValueError(f"{self.name}: effective rank {er} is outside 1…{self.rank}")
        return self

    def energy_top(self, k: int) -> float:
        """Share of ‖ΔW‖²_F in the top `k` directions (NaN when ΔW is zero or not finite)."""
        if not self.singular_values or not self.diff_sq or not math.isfinite(self.diff_sq):
            return math.nan
        return min(1.0, sum(v * v for v in self.singular_values[:k]) / self.diff_sq)

    @property
    def rel_change(self) -> float:
        if self.ref_sq == 0:
            return 0.0 if self.diff_sq == 0 else math.inf
        return math.sqrt(self.diff_sq / self.ref_sq)


class Spectrum(_Model):
    """The spectrum of every weight matrix's change from the pretrained weights, at one epoch."""

    epoch: int = Field(ge=0, description="the epoch whose weights were measured against epoch 0's")
    top: Count = Field(description="singular values kept per layer, at most")
    layers: list[LayerSpectrum]


# --------------------------------------------------------------------------- the run


class DatasetInfo(_Model):
    name: str
    classes: list[str]
    train_size: Count
    val_size: Count
    image_size: Count = Field(description="the input side in pixels; for text, the sequence length in tokens")
    channels: Count = 3
    source: str = Field("", description="where the data came from, in words")
    modality: Literal["images", "text"] = "images"


class ProbeInfo(_Model):
    labels: list[Count] = Field(description="class index of every probe sample, in probe order")
    size: Count

    @model_validator(mode="after")
    def _size(self) -> ProbeInfo:
        if self.size != len(self.labels):
            raise ValueError(f"probe size {self.size} but {len(self.labels)} labels")
        return self


class SourceTaskInfo(_Model):
    """The task the model was pretrained for, measured at every epoch with the pretrained head kept aside
    (EpochSnapshot.source)."""

    name: str = Field(description="the source task in words, e.g. 'digits 0–4'")
    classes: list[str] = Field(
        description="rows and columns of each epoch's source confusion matrix: the source classes with images, "
        "then, when `other`, one column for predictions of the pretrained head's other classes"
    )
    other: bool = Field(
        False, description="the last class collects predictions of head classes that have no images here"
    )
    head: str = Field(description="the model's head module whose input the kept-aside pretrained head reads")
    head_classes: Count = Field(description="outputs of the pretrained head")
    size: Count = Field(description="images evaluated")
    image_size: Count
    source: str = Field("", description="where the data came from, in words")

    @model_validator(mode="after")
    def _classes(self) -> SourceTaskInfo:
        if len(self.classes) < (2 if self.other else 1):
            raise ValueError("the source task needs at least one class with images")
        return self


class ParamGroupInfo(_Model):
    """One optimizer parameter group of a run with layer-wise learning-rate decay."""

    name: str = Field(description="what the group holds: the head, a block (e.g. 'layer4.0'), or 'stem'")
    depth: Count = Field(description="blocks below the head: 0 for the head, its learning rate × decay^depth")
    lr: NonNegative = Field(description="the group's peak learning rate (the schedule scales it per step)")
    params: Count = Field(description="trainable parameters in the group")


class LoRAInfo(_Model):
    rank: int = Field(ge=1, description="r")
    alpha: float = Field(gt=0, description="lora_alpha: B·A is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, le=1)
    targets: list[str] = Field(description="the adapted modules")
    params: Count = Field(description="adapter parameters (every A and B)")


class TrainingInfo(_Model):
    """How the strategy trained, beyond the configuration: what the report marks and the appendix lists."""

    lp_epochs: Count | None = Field(
        None,
        description="lp-ft: epochs 1..lp_epochs trained the new head alone (linear probe); from epoch "
        "lp_epochs + 1 every parameter trained, with the optimizer and its schedule rebuilt",
    )
    lr_decay: float | None = Field(None, gt=0, le=1, description="layer-wise learning-rate decay factor")
    param_groups: list[ParamGroupInfo] = Field([], description="the optimizer's groups, head first")
    lora: LoRAInfo | None = None
    schedule: str = Field("", description="how the learning-rate schedule ran, in words")


class Environment(_Model):
    python: str
    platform: str
    torch: str | None = None
    torchvision: str | None = None
    sftreport: str
    device: str
    device_name: str | None = None
    precision: str = "fp32"
    world_size: int = 1
    sharding: Literal["fsdp"] | None = Field(None, description="fsdp: parameters sharded across the processes (FSDP2)")
    git_commit: str | None = None
    hostname: str | None = None


RunStatus = Literal["running", "completed", "interrupted", "diverged", "failed"]


class RunInfo(_Versioned):
    name: str
    status: RunStatus = "running"
    status_detail: str = ""
    started_at: str
    finished_at: str | None = None
    duration_s: NonNegative | None = None
    config: dict = Field(default_factory=dict, description="the run's configuration as given")
    model: str
    weights: str
    strategy: str
    dataset: DatasetInfo
    environment: Environment
    architecture: Architecture | None = None
    probe: ProbeInfo | None = None
    planned_epochs: Count | None = None
    source_task: SourceTaskInfo | None = Field(
        None, description="the task the model was pretrained for, measured at every epoch (EpochSnapshot.source)"
    )
    training: TrainingInfo | None = Field(None, description="lp-ft's switch, per-group learning rates, LoRA")
    spectrum: Spectrum | None = Field(
        None, description="the spectrum of each weight matrix's change at the last epoch (written by finish)"
    )

    @model_validator(mode="after")
    def _probe_labels(self) -> RunInfo:
        if self.probe is not None and any(c >= len(self.dataset.classes) for c in self.probe.labels):
            raise ValueError(f"probe labels name classes beyond the dataset's {len(self.dataset.classes)}")
        return self


def json_schema() -> dict:
    """JSON Schema of both files of a run directory (`sftreport schema` prints it)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"sftreport run directory, schema version {SCHEMA_VERSION}",
        "type": "object",
        "properties": {
            "run.json": RunInfo.model_json_schema(),
            "epochs.jsonl (each line)": EpochSnapshot.model_json_schema(),
        },
    }
