"""The LightningModule of the Lightning tests (and of their 2-process script): the embedded default's
pretrained digits_resnet with a new 5-class head, on scikit-learn's digits 5-9 (no download)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sftreport.train.data import load_digits_split
from sftreport.train.models import build_model

BATCH = 32


def digits(val_size: int | None = 64) -> tuple[TensorDataset, TensorDataset]:
    """Training and validation sets (the first `val_size` validation images; None: all of them)."""
    train, val = load_digits_split((5, 6, 7, 8, 9))

    def images(t):  # 8×8 grey → 3×32×32 in [0, 1], as the model was pretrained
        x = t.images.float().div(255).repeat(1, 3, 1, 1)
        return F.interpolate(x, size=32, mode="nearest")

    return TensorDataset(images(train), train.labels), TensorDataset(images(val)[:val_size], val.labels[:val_size])


class Finetune(pl.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.lr = lr
        torch.manual_seed(0)  # the new head's initialisation
        bundle = build_model("digits_resnet", "DEFAULT", 5)
        self.net, self.new = bundle.model, bundle.new_params

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
