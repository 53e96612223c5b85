"""The fit of the Hugging Face Trainer tests (and of its benchmark): a tiny ViTForImageClassification built
from a ViTConfig (no download) with a 10-class head, on scikit-learn's digits as 3×16×16 images in dict
samples, the way the transformers image-classification guide feeds a Trainer."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification


class DictDigits(torch.utils.data.Dataset):
    """Samples as the Trainer takes them: {"pixel_values": (3, 16, 16), "labels": int}."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div(16).unsqueeze(1)
    return F.interpolate(x, size=16).repeat(1, 3, 1, 1), torch.tensor(d.target)


def datasets(train_size: int = 256, val_size: int = 128) -> tuple[DictDigits, DictDigits]:
    x, y = digit_images()
    return DictDigits(x[:train_size], y[:train_size]), DictDigits(x[1400 : 1400 + val_size], y[1400 : 1400 + val_size])


def tiny_vit(dropout: float = 0.0) -> ViTForImageClassification:
    """Seeded: every call builds the same model (the stand-in for a pretrained one, with a new head)."""
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        hidden_dropout_prob=dropout,
    )
    return ViTForImageClassification(config)


def accuracy(p) -> dict[str, float]:
    return {"accuracy": float((np.argmax(p.predictions, axis=-1) == p.label_ids).mean())}


def training_args(out_dir, **kw) -> TrainingArguments:
    """CPU, nothing written but what is asked for, evaluation at every epoch end."""
    base = dict(
        output_dir=str(out_dir),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="epoch",
        num_train_epochs=2,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=5e-3,
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**{**base, **kw})
