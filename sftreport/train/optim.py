"""The optimizer and the learning-rate schedule of sftreport's runs (the runner's and pretraining's)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def make_optimizer(
    params: Iterable[torch.nn.Parameter] | list[dict],
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """`params`: the parameters, or parameter groups (dicts with "params" and their own "lr")."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per optimizer step: "cosine" decays from the set learning rate to 0 over `total_steps`; "constant"
    keeps it (the article's setup)."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
