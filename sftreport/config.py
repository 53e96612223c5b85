"""RunConfig: every setting of a run in one pydantic model; a TOML file, then command-line flags on top.

No torch here: the CLI validates a configuration (and fails with one clear line) before the slow imports.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from sftreport.errors import UserError, validation_message

DEFAULT_MODEL = "digits_resnet"
# what a model is fine-tuned with unless the config says otherwise: the sequence models learn slowly with
# SGD at 0.01 (the LSTM reaches 74 % on digits 5–9 in 10 epochs, 98.7 % with AdamW at 0.003; measured)
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits_lstm": {"optimizer": "adamw", "lr": 0.003},
    "digits_transformer": {"optimizer": "adamw", "lr": 0.003},
}
HF_DEFAULTS: dict[str, Any] = {"optimizer": "adamw", "lr": 5e-5}  # the usual for fine-tuning a pretrained BERT
# the digit segmenter's new head learns slowly with SGD at 0.01 (mIoU 0.20 after 3 epochs; AdamW 0.003: 0.53)
SEGMENT_DEFAULTS: dict[str, Any] = {"optimizer": "adamw", "lr": 0.003}
# the digit detector's new RPN and box head with SGD at 0.01: mAP 0.045 after 3 epochs; AdamW 0.001: 0.189
DETECT_DEFAULTS: dict[str, Any] = {"optimizer": "adamw", "lr": 0.001}
# torchvision's segmentation and detection registries, by name (config does not import torch)
SEGMENTER_PREFIXES = ("fcn_", "deeplabv3_", "lraspp_")
DETECTOR_PREFIXES = ("fasterrcnn_", "retinanet_", "fcos_", "ssd", "maskrcnn_", "keypointrcnn_")
REPORT_FORMATS = {".html": "html", ".htm": "html", ".pdf": "pdf", ".md": "md"}  # extension -> format
_STRATEGY = re.compile(r"^(full|linear-probe|lp-ft|freeze-until:[A-Za-z0-9_.]+|lora:.*)$")
STRATEGY_HELP = "full | linear-probe | freeze-until:MODULE | lp-ft | lora:RANK"


class RecordOptions(BaseModel):
    """What the recorder measures at each epoch end (see sftreport.record)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="record probes at all (off: metrics only, for timing comparisons)")
    probe_size: int = Field(256, ge=8, le=4096, description="validation images in the fixed probe set")
    hist_bins: int = Field(32, ge=4, le=256)
    grad_every: int = Field(5, ge=1, description="sample gradient norms every k optimizer steps")
    image_every: int = Field(
        5, ge=0, description="save filter and feature-map images every N epochs (0: first and last only)"
    )
    activations: list[str] | None = Field(None, description="module names to probe; default: stem, every block, head")
    knn_k: int = Field(5, ge=1, le=50)
    tsne: bool = Field(False, description="also project features with t-SNE (slower)")
    max_steps_points: int = Field(200, ge=10, description="per-step loss points kept per epoch (averaged in buckets)")
    save_weights: Literal["none", "last", "best", "every"] = Field(
        "last",
        description="model weights kept in RUN_DIR/weights/: none, last (and epoch 0), best (and epoch 0), every epoch",
    )


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str | None = Field(None, description="run name shown in the report")
    model: str = Field(
        DEFAULT_MODEL,
        description="torchvision classification model name, or digits_resnet, digits_lstm, digits_transformer",
    )
    weights: str = Field(
        "DEFAULT",
        description="none | a torchvision weights name (DEFAULT, IMAGENET1K_V2, ...) | a path to a state_dict file",
    )
    task: Literal["classify", "segment", "detect"] = Field(
        "classify",
        description="classify | segment | detect (follows from a segmentation or detection model or dataset)",
    )
    dataset: Literal["digits", "digits-seq", "cifar10", "imagefolder", "text", "voc-seg", "coco"] = "digits"
    data_root: Path | None = None
    download: bool = Field(False, description="let torchvision download CIFAR-10 into data_root")
    image_size: int | None = Field(
        None,
        ge=8,
        le=1024,
        description="input side in pixels; default: the dataset's own (224 for ImageFolder and ViT)",
    )
    strategy: str = Field("full", description=STRATEGY_HELP)
    source_data: Path | None = Field(
        None,
        description="ImageFolder of the pretrained head's classes: measures forgetting of the source task "
        "(the embedded default measures digits 0–4 without it)",
    )
    epochs: int = Field(10, ge=1, le=10_000)
    lp_epochs: int | None = Field(
        None,
        ge=1,
        validate_default=True,
        description="lp-ft: epochs of linear probing before every layer trains (default: half the epochs)",
    )
    lr_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay: the head gets lr, each block below it lr·F^depth",
    )
    lora_targets: list[str] | None = Field(
        None, description="lora: the modules to adapt (default: every Linear and Conv2d but the head)"
    )
    lora_alpha: float | None = Field(None, gt=0, description="lora: B·A is scaled by alpha / rank (default: the rank)")
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: bool = Field(True, description="mixed precision and channels_last on CUDA")
    shard: Literal["none", "fsdp"] = Field(
        "none",
        description="under torchrun: none replicates the model in every process (DDP); fsdp shards parameters, "
        "gradients and optimizer state across them (FSDP2's fully_shard, one unit per block)",
    )
    workers: int | None = Field(None, ge=0, description="DataLoader workers for ImageFolder (default: up to 8)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on optimizer steps per epoch (quick runs)")
    out: list[Path] = Field(default_factory=list, description="report files; the format follows the extension")
    run_dir: Path | None = None
    quiet: bool = False
    record: RecordOptions = Field(default_factory=RecordOptions)

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model") in MODEL_DEFAULTS:
            data = {**MODEL_DEFAULTS[data["model"]], **data}
        elif isinstance(data, dict) and str(data.get("model", "")).startswith("hf:"):
            data = {**HF_DEFAULTS, **data}
        elif isinstance(data, dict):
            model = str(data.get("model", ""))
            if (
                data.get("task") == "segment"
                or data.get("dataset") == "voc-seg"
                or model.startswith(SEGMENTER_PREFIXES)
            ):
                data = {**SEGMENT_DEFAULTS, **data}
            elif data.get("task") == "detect" or data.get("dataset") == "coco" or model.startswith(DETECTOR_PREFIXES):
                data = {**DETECT_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _task(self) -> RunConfig:
        """The task follows from a segmentation or detection model or dataset; a model of one task given the
        data of another is refused here, before anything is loaded."""
        segmenter = self.model.startswith(SEGMENTER_PREFIXES)
        detector = self.model.startswith(DETECTOR_PREFIXES)
        if (segmenter and self.dataset == "coco") or (detector and self.dataset == "voc-seg"):
            model_task, data_task = ("segments", "boxes") if segmenter else ("detects", "masks")
            raise ValueError(
                f"model {self.model} {model_task} images, but dataset {self.dataset} holds {data_task}: "
                "choose a model and a dataset of the same task"
            )
        if self.dataset == "voc-seg" or segmenter:
            self.task = "segment"
        elif self.dataset == "coco" or detector:
            self.task = "detect"
        return self

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if not _STRATEGY.match(v):
            raise ValueError("must be full, linear-probe, freeze-until:MODULE, lp-ft or lora:RANK")
        if v.startswith("lora:"):
            rank = v.removeprefix("lora:")
            if not rank.isdigit() or int(rank) < 1:
                raise ValueError(f"lora's rank must be a whole number of at least 1, not {rank!r}")
        return v

    @field_validator("lp_epochs")
    @classmethod
    def _lp_epochs(cls, v: int | None, info: ValidationInfo) -> int | None:
        strategy, epochs = info.data.get("strategy"), info.data.get("epochs")
        if strategy is None or epochs is None:  # already refused
            return v
        if strategy != "lp-ft":
            if v is not None:
                raise ValueError(f"only --strategy lp-ft has a linear-probe phase, not {strategy}")
            return v
        lp = v if v is not None else epochs // 2
        if not 1 <= lp < epochs:
            raise ValueError(
                f"lp-ft needs at least one epoch of linear probing and one of full fine-tuning: {lp} of {epochs} epochs"
            )
        return lp

    @field_validator("lora_targets", "lora_alpha")
    @classmethod
    def _lora_only(cls, v: Any, info: ValidationInfo) -> Any:
        strategy = info.data.get("strategy")
        if v is not None and strategy is not None and not strategy.startswith("lora:"):
            raise ValueError(f"only --strategy lora:RANK adapts modules, not {strategy}")
        if info.field_name == "lora_targets" and v is not None and not v:
            raise ValueError("name at least one module")
        return v

    @property
    def lora_rank(self) -> int | None:
        return int(self.strategy.removeprefix("lora:")) if self.strategy.startswith("lora:") else None

    @field_validator("out")
    @classmethod
    def _out(cls, v: list[Path]) -> list[Path]:
        for p in v:
            if p.suffix.lower() not in REPORT_FORMATS:
                raise ValueError(f"{p}: the report format follows the extension: .html, .pdf or .md")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v.startswith("hf:"):  # a Hugging Face hub id or a local directory
            if len(v) == 3:
                raise ValueError("hf: needs a model id or a directory after it (hf:MODEL_ID)")
            return v
        if not re.fullmatch(r"[A-Za-z0-9_]+", v):
            raise ValueError("is not a model name")
        return v

    def resolved_name(self) -> str:
        return self.name or f"{self.model} on {self.dataset}"


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None


def build_config(file: Path | None, overrides: dict[str, Any]) -> RunConfig:
    """The file's fields, then the command line's on top (nested `record` tables merge key by key)."""
    data: dict[str, Any] = load_toml(file) if file else {}
    for key, value in overrides.items():
        if key == "record":
            data["record"] = {**data.get("record", {}), **value}
        else:
            data[key] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(f"config{f' ({file})' if file else ''}: {validation_message(e)}") from None
