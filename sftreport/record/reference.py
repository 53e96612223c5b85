"""The fixed references a run is measured against, kept in RUN_DIR/reference.pt so that a run resumed from a
checkpoint measures against the same ones as a run never interrupted.

Written once, at epoch 0, by the writing process (before epoch 0's line), with `torch.save`; read with
`torch.load(..., weights_only=True)`. It holds:

- `run_id`, a random id a checkpoint names its run by, and what the run was started with (the parameters'
  names and shapes, the probe set's shape, labels and sums, the histogram bin count, the probed modules),
  checked when it resumes;
- the probes' references (only when recording is on): where W₀ is, the pretrained weights the relative
  change is measured from and the weight histograms' bins follow from (weights/epoch_000.pt, which every
  save_weights mode but "none" keeps: a run recorded with "none" kept no W₀ and cannot be resumed), the
  activation histograms' bins, the PCA axes and the centred Gram matrices of CKA fixed at epoch 0, and the
  feature-map channels chosen at epoch 0.

Its size is about N² × 8 bytes per probed layer for a probe set of N images (N = 256: 0.5 MB a layer; a
ResNet-50's 18 default layers, 9.5 MB); the rest is a few kilobytes.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import torch

from sftreport.errors import RunDirError, StorageError, UserError, one_line
from sftreport.store import RunWriter

REFERENCE_FILE = "reference.pt"
FORMAT = 1


def new_run_id() -> str:
    return uuid.uuid4().hex


def identity(
    params: list[tuple[str, torch.Tensor]], probe_x: torch.Tensor, probe_y: torch.Tensor, bins: int, modules: list[str]
) -> dict:
    """What a resumed run must share with the run it continues: the model's parameters (names and shapes),
    the probe set (shape, labels, and the float64 sum and sum of squares of its inputs), the histograms' bin
    count and the modules whose activations are probed."""
    x = probe_x.double()
    return {
        "params": [[name, list(p.shape)] for name, p in params],
        "hist_bins": bins,
        "modules": list(modules),
        "probe_shape": list(probe_x.shape),
        "probe_labels": probe_y.tolist(),
        "probe_sums": [float(x.sum()), float(x.square().sum())],
    }


def check_identity(saved: dict, now: dict, root: Path) -> None:
    """Refuse, in one line, to continue a run with another model or another probe set."""
    where = f"cannot continue the run in {root}"
    if saved["params"] != now["params"]:
        have = {n: s for n, s in saved["params"]}
        for name, shape in now["params"]:
            if have.get(name) != shape:
                was = "no such parameter" if name not in have else f"shape {have[name]}"
                raise UserError(f"{where}: the model differs from the one it started with ({name}: {shape}, was {was})")
        raise UserError(f"{where}: the model has fewer parameters than the one it started with")
    if saved["probe_shape"] != now["probe_shape"] or saved["probe_labels"] != now["probe_labels"]:
        raise UserError(f"{where}: the probe set differs from the one it started with (shape or labels)")
    if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(saved["probe_sums"], now["probe_sums"])):
        raise UserError(f"{where}: the probe set's images differ from the ones it started with")
    for key, what in (("hist_bins", "a histogram bin count of"), ("modules", "activations probed at")):
        if saved[key] != now[key]:
            raise UserError(f"{where}: it was recorded with {what} {saved[key]}, not {now[key]}")


def save_reference(writer: RunWriter, state: dict) -> None:
    try:
        writer.write_file(REFERENCE_FILE, lambda f: torch.save({"format": FORMAT, **state}, f))
    except RuntimeError as e:  # torch's zip writer reports a refused write without its errno
        raise StorageError(f"cannot write {writer.root / REFERENCE_FILE}: {one_line(e).split('] ')[-1]}") from None


def load_reference(root: Path) -> dict:
    """The reference of the run in `root`, or one line saying why it cannot be read."""
    path = Path(root) / REFERENCE_FILE
    if not path.is_file():
        raise RunDirError(
            f"cannot continue the run in {root}: it has no {REFERENCE_FILE} (a run recorded before sftreport could "
            "resume, or not by the writing process)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise RunDirError(f"{path}: cannot read: {one_line(e, limit=200)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunDirError(f"{path}: not a reference file of this sftreport version")
    return state


def load_weights_file(root: Path, rel: str) -> dict[str, torch.Tensor]:
    """A state_dict saved in the run directory (W₀ kept as weights/epoch_000.pt)."""
    path = Path(root) / rel
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise RunDirError(
            f"cannot continue the run in {root}: {rel}, the pretrained weights it is measured from, is gone"
        ) from None
    except (OSError, RuntimeError, ValueError) as e:
        raise RunDirError(f"{path}: cannot read: {one_line(e, limit=200)}") from None
