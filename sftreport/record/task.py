"""What the Recorder asks of a task other than classification (segmentation_eval.SegmentationTask,
detection_eval.DetectionTask): how targets travel and are checked, one label per probe sample for the
feature probe, the forward check, the evaluation, the feature view of the probe pass, and the pictures of
the probe images' predictions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn


class Task(Protocol):
    name: str
    num_classes: int

    def targets_to(self, targets: Any, device: torch.device) -> Any: ...

    def check_targets(self, targets: Any) -> str | None: ...

    def probe_labels(self, targets: Any) -> torch.Tensor: ...

    def check_forward(self, model: nn.Module, x: torch.Tensor) -> int: ...

    def evaluate(self, model: nn.Module, data: Iterable, device: torch.device, autocast: Callable) -> Any: ...

    def correct(self, logits: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor] | None: ...

    def probe_view(
        self,
        model: nn.Module,
        x: torch.Tensor,
        feats: list[torch.Tensor],
        outs: list,
        targets: Any,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def pictures(self, x: torch.Tensor, targets: Any, n: int) -> list[tuple[int, bytes]]: ...
