"""Model weights saved into the run directory at epoch ends (`--save-weights`), so that any number of the
report can be recomputed from them, and runs can be compared or diffed weight by weight.

    none    nothing
    last    weights/epoch_000.pt (the pretrained model with its new head) and the latest epoch's  (default)
    best    epoch 0 and the epoch with the best validation accuracy so far (earliest on ties; the latest
            epoch when there is no validation set)
    every   every epoch

A file is a `torch.save`d state_dict of CPU tensors: `torch.load(path, weights_only=True)` reads it, and
`sftreport run --weights path` starts from it. Each is written atomically and fsync'ed; a file that a newer
one supersedes is removed only after the newer epoch's line is in epochs.jsonl (`prune`), so the run
directory always holds the weights of a recorded epoch. When a run resumes from a checkpoint, the files of
the epochs it supersedes are renamed `epoch_NNN.superseded.pt` (`resume`), not overwritten.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sftreport.errors import StorageError, one_line
from sftreport.schema import EpochSnapshot
from sftreport.store import RunWriter

WEIGHTS_DIR = "weights"
MODES = ("none", "last", "best", "every")


def weights_file(epoch: int) -> str:
    """The path of an epoch's weights, relative to the run directory."""
    return f"{WEIGHTS_DIR}/epoch_{epoch:03d}.pt"


class WeightSaver:
    def __init__(self, writer: RunWriter, mode: str):
        if mode not in MODES:
            raise ValueError(f"save_weights must be one of {', '.join(MODES)}, not {mode!r}")
        self.writer, self.mode = writer, mode
        self.kept: int | None = None  # the latest (or best) epoch kept besides epoch 0
        self.best: float | None = None
        self._superseded: int | None = None  # removed once the epoch replacing it is recorded

    def resume(self, kept: list[EpochSnapshot], superseded: list[int]) -> None:
        """Continue after the `kept` epochs of a resumed run: the latest (or best) file kept stays the one the
        next save supersedes; the files of the `superseded` epochs are renamed out of the way."""
        for epoch in superseded:
            path = self.writer.root / weights_file(epoch)
            if path.exists():
                path.replace(path.with_suffix(".superseded.pt"))
        for snap in kept:
            if snap.epoch > 0 and snap.weights_file and (self.writer.root / snap.weights_file).exists():
                self.kept = snap.epoch  # saved only when better in mode best: the latest is the best so far
                self.best = snap.val.accuracy if snap.val is not None else self.best

    def save(
        self, model: nn.Module, epoch: int, accuracy: float | None, state: dict[str, torch.Tensor] | None = None
    ) -> str | None:
        """Save the model at this epoch end if the mode keeps it; returns the file's relative path. `state`:
        the model's whole state dict when it was gathered already (sharded parameters)."""
        if self.mode == "none":
            return None
        better = accuracy is None or self.best is None or accuracy > self.best
        if epoch > 0 and self.mode == "best" and not better:
            return None
        if state is None:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        rel = weights_file(epoch)
        try:
            self.writer.write_file(rel, lambda f: torch.save(state, f))
        except RuntimeError as e:  # torch's zip writer reports a refused write without its errno
            raise StorageError(
                f"cannot save the weights of epoch {epoch} in {self.writer.root / rel}: {one_line(e).split('] ')[-1]}"
            ) from None
        if epoch > 0 and self.mode in ("last", "best"):
            self._superseded, self.kept = self.kept, epoch
            self.best = accuracy if accuracy is not None else self.best
        return rel

    def prune(self) -> None:
        """Remove the file the last save superseded (call once that epoch is recorded)."""
        if self._superseded is not None:
            Path(self.writer.root / weights_file(self._superseded)).unlink(missing_ok=True)
            self._superseded = None
