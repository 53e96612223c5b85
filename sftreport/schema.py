"""The snapshot schema: the only contract between the recorder (torch) and the renderer (no torch).

Plain pydantic models of plain numbers and short lists; no tensors, no import of the rest of
sftreport. Every statistic is stored in a form that merges exactly across shards or batches
(counts, sums, sums of squares, min, max, fixed-bin histogram counts); the familiar numbers
(mean, std, norm, ratios) are derived properties, not stored twice.

Bump SCHEMA_VERSION when a stored field changes meaning or disappears.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1


class _Model(BaseModel):
    # A stored run is data we may not have written ourselves: refuse unknown fields so a
    # typo or a newer schema is caught on read rather than silently ignored.
    # NaN and infinities are legitimate values of a diverged run: keep them as JSON constants.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


# --------------------------------------------------------------------------- building blocks


class TensorStats(_Model):
    """Mergeable moments of a tensor (or of many calls of one module)."""

    count: int = Field(ge=0)
    sum: float
    sum_sq: float  # NaN when the tensor holds NaN (a diverged run), so no lower bound
    min: float
    max: float
    zeros: int = Field(ge=0, description="elements exactly equal to 0")

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        if not self.count:
            return math.nan
        var = self.sum_sq / self.count - self.mean**2
        return math.sqrt(max(var, 0.0))

    @property
    def norm(self) -> float:
        return math.sqrt(self.sum_sq)

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.count if self.count else math.nan


class Histogram(_Model):
    """Fixed uniform bins on [lo, hi], chosen once (from the pretrained model) so epochs compare.

    Values outside the range are counted in `below` / `above`, so
    sum(counts) + below + above equals the number of values.
    """

    lo: float
    hi: float
    counts: list[int]
    below: int = 0
    above: int = 0

    @classmethod
    def from_counts(cls, lo: float, hi: float, counts: list[int]) -> Histogram:
        """From bins+2 counts laid out [below, bin 1 .. bin n, above]."""
        return cls(lo=lo, hi=hi, counts=counts[1:-1], below=counts[0], above=counts[-1])

    @property
    def edges(self) -> list[float]:
        n = len(self.counts)
        step = (self.hi - self.lo) / n
        return [self.lo + i * step for i in range(n + 1)]

    @property
    def total(self) -> int:
        return sum(self.counts) + self.below + self.above


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


class BlockSummary(_Model):
    name: str = Field(description="top-level child of the model")
    type: str
    params: int
    trainable: int
    new: int


class Architecture(_Model):
    model_type: str
    modules: list[ModuleInfo]
    blocks: list[BlockSummary]
    total_params: int
    trainable_params: int
    new_params: int
    input_shape: list[int]

    @model_validator(mode="after")
    def _totals_add_up(self) -> Architecture:
        totals = {"params": self.total_params, "trainable": self.trainable_params, "new": self.new_params}
        for field, total in totals.items():
            for rows, what in ((self.modules, "module"), (self.blocks, "block")):
                if sum(getattr(r, field) for r in rows) != total:
                    raise ValueError(f"{what} '{field}' counts do not sum to the total {total}")
        return self


# --------------------------------------------------------------------------- per-epoch probes


class WeightStat(_Model):
    name: str = Field(description="parameter name")
    module: str
    shape: list[int]
    trainable: bool
    new: bool = Field(description="not loaded from pretrained weights (compared with its initialisation)")
    stats: TensorStats
    hist: Histogram
    diff_sq: float = Field(description="sum of (W_t - W_0)^2")
    ref_sq: float = Field(description="sum of W_0^2")
    update_sq: float | None = Field(None, description="sum of (one optimizer step's update)^2")
    before_update_sq: float | None = Field(None, description="sum of W^2 before that step")

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
    samples: int = Field(ge=0, description="steps whose gradient was sampled")
    norm_sum: float = Field(description="sum over sampled steps of the finite gradient norms")
    norm_max: float
    nonfinite: int = Field(ge=0, description="sampled steps whose gradient held a NaN or an infinity")

    @property
    def mean_norm(self) -> float:
        finite = self.samples - self.nonfinite
        return self.norm_sum / finite if finite > 0 else math.nan


class ActivationStat(_Model):
    module: str = Field(description="module name; '#k' marks the k-th call of a module called more than once")
    type: str
    shape: list[int] = Field(description="output shape of one probe sample")
    stats: TensorStats
    channels: int = Field(ge=0)
    dead_channels: int = Field(ge=0, description="channels that are 0 for every probe sample and position")
    nonnegative: bool = Field(description="output is >= 0 everywhere (ReLU-like), so zeros mean inactive units")
    hist: Histogram

    @property
    def dead_fraction(self) -> float:
        return self.dead_channels / self.channels if self.channels else math.nan


class Projection(_Model):
    method: Literal["pca", "tsne"]
    x: list[float]
    y: list[float]


class Features(_Model):
    module: str = Field(description="the module whose input is the penultimate representation")
    dim: int
    projections: list[Projection]
    knn_accuracy: float = Field(description="leave-one-out k-NN accuracy on the probe set (NaN with under 2 samples)")
    knn_k: int
    probe_accuracy: float = Field(description="accuracy of the model's predictions on the probe set")


class CKA(_Model):
    module: str
    value: float = Field(description="linear CKA between the representation now and in the pretrained model")


class FeatureMapImage(_Model):
    module: str
    sample: int = Field(description="index into the probe set")
    path: str
    channels: int = Field(description="channels shown")


class Images(_Model):
    filters: str | None = Field(None, description="PNG of first-layer filters, relative to the run directory")
    filters_module: str | None = None
    feature_maps: list[FeatureMapImage] = []


class Evaluation(_Model):
    loss: float
    accuracy: float = Field(ge=0, le=1)
    count: int = Field(ge=0)
    confusion: list[list[int]] = Field(description="rows: true class, columns: predicted class")
    per_class_accuracy: list[float | None]

    @model_validator(mode="after")
    def _confusion_is_square(self) -> Evaluation:
        n = len(self.confusion)
        if any(len(r) != n for r in self.confusion):
            raise ValueError("confusion matrix is not square")
        if sum(map(sum, self.confusion)) != self.count:
            raise ValueError("confusion matrix does not sum to the sample count")
        return self


class StepPoint(_Model):
    step: int = Field(ge=0, description="global optimizer step (1-based, at the end of the span)")
    loss: float
    lr: float | None = None
    steps: int = Field(1, ge=1, description="optimizer steps averaged into this point")


class Timing(_Model):
    train_s: float = Field(0.0, ge=0)
    eval_s: float = Field(0.0, ge=0)
    record_s: float = Field(0.0, ge=0, description="time spent in the probes")
    samples_per_s: float | None = None


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
    train_accuracy: float | None = Field(None, ge=0, le=1)
    lr: float | None = None
    val: Evaluation | None = None
    steps: list[StepPoint] = []
    weights: list[WeightStat] = []
    gradients: list[GradStat] = []
    activations: list[ActivationStat] = []
    features: Features | None = None
    cka: list[CKA] = []
    images: Images | None = None
    timing: Timing = Timing()


# --------------------------------------------------------------------------- the run


class DatasetInfo(_Model):
    name: str
    classes: list[str]
    train_size: int
    val_size: int
    image_size: int
    channels: int = 3
    source: str = Field("", description="where the data came from, in words")


class ProbeInfo(_Model):
    labels: list[int] = Field(description="class index of every probe sample, in probe order")
    size: int


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
    git_commit: str | None = None
    hostname: str | None = None


RunStatus = Literal["running", "completed", "interrupted", "diverged", "failed"]


class RunInfo(_Versioned):
    name: str
    status: RunStatus = "running"
    status_detail: str = ""
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    config: dict = Field(default_factory=dict, description="the run's configuration as given")
    model: str
    weights: str
    strategy: str
    dataset: DatasetInfo
    environment: Environment
    architecture: Architecture | None = None
    probe: ProbeInfo | None = None
    planned_epochs: int | None = None


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
