"""The embedded sequence models: handwritten digits read as sequences, one 8-pixel row per time step.

They take the same image batches as every other model (the device pipeline's (N, 3, 8, 8) tensors, at
`--image-size 8`, their default) and read each image's rows top to bottom: an LSTM, and a small
Transformer encoder. Both are pretrained by `sftreport pretrain --model NAME` on digits 0–4 and
fine-tuned on 5–9 with a new head, like digits_resnet.
"""

from __future__ import annotations

import torch
from torch import nn

ROWS = 8  # time steps: the image's rows
FEATURES = 8  # values per time step: the pixels of a row


class RowsAsSequence(nn.Module):
    """(N, C, H, W) images → (N, H, W) sequences: time steps are rows, channels averaged (the digits are grey,
    copied into three channels by the pipeline)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class DigitsLSTM(nn.Module):
    def __init__(self, num_classes: int = 5, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.rows = RowsAsSequence()
        self.lstm = nn.LSTM(FEATURES, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.rows(x))
        return self.fc(out[:, -1])  # the last time step's hidden state of the top layer


class DigitsTransformer(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 64, layers: int = 3, heads: int = 4):
        super().__init__()
        self.rows = RowsAsSequence()
        self.embed = nn.Linear(FEATURES, width)
        self.position = nn.Parameter(torch.zeros(1, ROWS, width))
        block = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.1, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.rows(x)) + self.position
        return self.fc(self.norm(self.encoder(tokens)).mean(dim=1))  # mean over the rows
