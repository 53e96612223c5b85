"""`sftreport diff BASE TUNED --model NAME`: what changed between two checkpoints, with no training.

    diff_checkpoints(Path("resnet50.pth"), Path("tuned.pt"), "resnet50", [Path("diff.html")])

Both files are state_dicts read with `torch.load(weights_only=True)` (the `state_dict`/`model` wrappers and
DDP's `module.` prefixes of `--weights FILE` are accepted). They must hold the same tensors with the same
shapes, and fit the model named by `--model`, except for the classifier head, which fine-tuning may have
replaced (1000 ImageNet classes → 10): a head of another shape is reported as replaced, with nothing to compare
it with. Anything else that does not fit is refused in one line naming the first mismatches.

The two checkpoints become a run directory of two epochs (epoch 0: BASE, epoch 1: TUNED; a temporary one
unless --run-dir keeps it): the weights probe measures every tensor's change, the spectrum of each weight
matrix's change is written as at a run's end, and with `--dataset` the Recorder measures both models on the
dataset's validation split and probe set (accuracy, activations, CKA of TUNED's representations to BASE's,
first-layer filters). The diff report (report/diff.py) is rendered from that directory without torch.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sftreport.config import RecordOptions, RunConfig
from sftreport.errors import UserError
from sftreport.schema import DatasetInfo, EpochSnapshot, RunInfo

SHOWN = 3  # mismatching names quoted in a refusal


@dataclass
class Pair:
    """The two checkpoints, checked against each other and the model."""

    base: dict[str, torch.Tensor]
    tuned: dict[str, torch.Tensor]
    model: torch.nn.Module  # built for TUNED's head, holding nothing loaded yet
    head: str
    classes: int  # TUNED's head outputs
    replaced: list[str]  # head tensors whose shapes differ between BASE and TUNED

    def base_for_model(self) -> dict[str, torch.Tensor]:
        """BASE's tensors, with TUNED's head in place of a replaced one (there is no BASE value of that shape)."""
        return {k: (self.tuned[k] if k in self.replaced else v) for k, v in self.base.items()}


def _names(keys: list[str]) -> str:
    more = len(keys) - SHOWN
    return ", ".join(keys[:SHOWN]) + (f" (and {more} more)" if more > 0 else "")


def _shape(t: torch.Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def load_pair(base_path: Path, tuned_path: Path, model_name: str) -> Pair:
    """Read both checkpoints and check them against each other and the model (one line on any mismatch)."""
    from sftreport.train.models import _load_file, build_model, replace_head

    base, tuned = _load_file(Path(base_path)), _load_file(Path(tuned_path))
    with torch.device("meta"):  # the skeleton only (shapes, names): no second of random initialisation
        bundle = build_model(model_name, "none", 2)
    head = bundle.head
    only_base = [k for k in base if k not in tuned]
    only_tuned = [k for k in tuned if k not in base]
    if only_base or only_tuned:
        parts = [
            f"only in BASE: {_names(only_base)}" if only_base else "",
            f"only in TUNED: {_names(only_tuned)}" if only_tuned else "",
        ]
        raise UserError(f"{base_path} and {tuned_path} hold different tensors: {'; '.join(p for p in parts if p)}")
    head_weight = tuned.get(f"{head}.weight")
    if head_weight is None or head_weight.dim() < 2:
        raise UserError(f"{tuned_path} does not fit {model_name}: it has no classifier head {head}.weight")
    classes = int(head_weight.shape[0])
    with torch.device("meta"):
        replace_head(bundle.model, classes)
    own = bundle.model.state_dict()
    missing = [k for k in own if k not in tuned]
    unexpected = [k for k in tuned if k not in own]
    if missing or unexpected:
        parts = [
            f"missing {_names(missing)}" if missing else "",
            f"unexpected {_names(unexpected)}" if unexpected else "",
        ]
        raise UserError(f"the checkpoints do not fit {model_name}: {'; '.join(p for p in parts if p)}")
    wrong = [k for k in own if tuned[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise UserError(
            f"{tuned_path} does not fit {model_name}: {k} is {_shape(tuned[k])} in the file and {_shape(own[k])} in "
            f"the model{more}"
        )
    differ = [k for k in own if base[k].shape != tuned[k].shape]
    in_head = [k for k in differ if k.startswith(head + ".")]
    other = [k for k in differ if k not in in_head]
    if other:
        k = other[0]
        more = f" (and {len(other) - 1} more)" if len(other) > 1 else ""
        raise UserError(
            f"{base_path} and {tuned_path} differ in shape outside the classifier head: {k} is {_shape(base[k])} in "
            f"BASE and {_shape(tuned[k])} in TUNED{more}"
        )
    replaced = [k for k in own if k.startswith(head + ".")] if in_head else []
    model = bundle.model.to_empty(device="cpu")  # every value comes from a checkpoint ...
    if any(name not in own for name, _ in model.named_buffers()):  # ... but buffers kept out of state_dicts
        model = build_model(model_name, "none", 2).model
        replace_head(model, classes)
    return Pair(base, tuned, model, head, classes, replaced)


def pick_device(requested: str) -> torch.device:
    from sftreport.train.distributed import DistContext
    from sftreport.train.distributed import pick_device as pick

    return pick(requested, DistContext())


class _Val:
    """The validation split as device batches (re-iterable, as the Recorder evaluates it more than once)."""

    def __init__(self, data, pipeline, batch: int, workers: int | None, device: torch.device):
        self.data, self.pipeline, self.batch, self.workers, self.device = data, pipeline, batch, workers, device

    def __iter__(self):
        from sftreport.train.data import eval_batches

        for x, y in eval_batches(self.data, self.batch, 0, 1, self.workers, self.device):
            yield self.pipeline.eval_batch(x), y.to(self.device)


def diff_checkpoints(
    base_path: Path,
    tuned_path: Path,
    model_name: str,
    outs: list[Path],
    *,
    dataset: str | None = None,
    data_root: Path | None = None,
    image_size: int | None = None,
    probe_size: int = 256,
    batch_size: int = 64,
    device: str = "auto",
    run_dir: Path | None = None,
) -> list[Path]:
    """Measure what changed from BASE to TUNED and write the diff report to each of `outs`."""
    from sftreport.report.diff import render_diff
    from sftreport.report.render import check_outputs
    from sftreport.store import check_run_dir_free

    check_outputs(outs)
    if run_dir is not None:
        check_run_dir_free(run_dir)
    cfg = None
    if dataset is not None:  # the same checks as `run` makes of the data options, before any loading
        from sftreport.config import build_config

        cfg = build_config(
            None,
            {
                "model": model_name,
                "dataset": dataset,
                "data_root": data_root,
                "image_size": image_size,
                "batch_size": batch_size,
                "record": {"probe_size": probe_size},
            },
        )
    elif data_root is not None:
        raise UserError("--data-root needs --dataset (digits, cifar10 or imagefolder)")
    pair = load_pair(base_path, tuned_path, model_name)
    torch_device = pick_device(device)
    keep = run_dir is not None
    root = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="sftreport-diff-")) / "run"
    try:
        described = {
            "base": str(base_path),
            "tuned": str(tuned_path),
            "replaced": pair.replaced,
            "base_classes": int(pair.base[f"{pair.head}.weight"].shape[0]),
            "tuned_classes": pair.classes,
        }
        if cfg is None:
            _measure_weights(pair, model_name, root, described, torch_device)
        else:
            _measure_with_data(pair, model_name, cfg, root, described, torch_device)
        return render_diff(root, outs)
    finally:
        if not keep:
            shutil.rmtree(root.parent, ignore_errors=True)


def _describe_run(model_name: str, described: dict, dataset: DatasetInfo):
    from sftreport.record.recorder import RunDescription

    return RunDescription(
        name=f"{Path(described['base']).name} → {Path(described['tuned']).name}",
        model=model_name,
        weights=f"file {described['base']}",
        strategy="diff",
        planned_epochs=1,
        config={"diff": described},
        dataset=dataset,
    )


def _measure_weights(pair: Pair, model_name: str, root: Path, described: dict, device: torch.device) -> None:
    """Without data: the weights probe on BASE (epoch 0) and on TUNED (epoch 1), and the spectrum. No forward
    pass, so no architecture table: the layers keep the order of the model's parameters."""
    from sftreport.record.recorder import _now, environment
    from sftreport.record.spectrum import spectrum
    from sftreport.record.weights import WeightProbe
    from sftreport.store import RunWriter
    from sftreport.train.models import default_image_size

    model = pair.model
    model.load_state_dict(pair.base_for_model())
    model.to(device).eval()
    new = set(pair.replaced)
    size = default_image_size(model_name) or 224
    probe = WeightProbe(model, new, RecordOptions().hist_bins)
    writer = RunWriter(root)
    d = _describe_run(
        model_name,
        described,
        DatasetInfo(
            name="(no data)", classes=[str(i) for i in range(pair.classes)], train_size=0, val_size=0, image_size=size
        ),
    )
    info = RunInfo(
        name=d.name,
        started_at=_now(),
        config=d.config,
        model=model_name,
        weights=d.weights,
        strategy=d.strategy,
        dataset=d.dataset,
        environment=environment(device),
        planned_epochs=1,
    )
    writer.write_run(info)
    writer.append_epoch(EpochSnapshot(epoch=0, step=0, weights=probe.measure()))
    model.load_state_dict(pair.tuned)
    writer.append_epoch(EpochSnapshot(epoch=1, step=0, weights=probe.measure()))
    pairs = ((n, ref.view(p.shape), p, n in new) for n, ref, p in zip(probe.names, probe.ref.views, probe.params))
    info.spectrum = spectrum(1, pairs)
    info.status, info.finished_at = "completed", _now()
    writer.write_run(info)


def _measure_with_data(
    pair: Pair, model_name: str, cfg: RunConfig, root: Path, described: dict, device: torch.device
) -> None:
    """With data: the Recorder on BASE (epoch 0) and on TUNED (epoch 1); BASE is evaluated only when its head is
    TUNED's (a replaced head has no BASE predictions for these classes)."""
    from sftreport.record.recorder import Recorder, environment
    from sftreport.train.data import DevicePipeline, load_data
    from sftreport.train.models import default_image_size

    data = load_data(cfg, default_image_size(model_name))
    if data.num_classes != pair.classes:
        raise UserError(
            f"TUNED's head {pair.head} has {pair.classes} outputs but {data.name} has {data.num_classes} classes"
        )
    model = pair.model
    model.load_state_dict(pair.base_for_model())
    model.to(device)
    pipeline = DevicePipeline(device, data.image_size, hflip=False, channels_last=False)
    val = _Val(data.val, pipeline, cfg.batch_size, cfg.workers, device)
    probe = (pipeline.eval_batch(data.probe.images), data.probe.labels.to(device))
    dataset = DatasetInfo(
        name=data.name,
        classes=data.classes,
        train_size=len(data.train),
        val_size=len(data.val),
        image_size=data.image_size,
        source=data.source,
    )
    run = _describe_run(model_name, described, dataset)
    run.environment = environment(device)
    rec = Recorder(
        model,
        probe=probe,
        val_data=None if pair.replaced else val,
        run_dir=root,
        class_names=data.classes,
        new_params=pair.replaced,
        head=pair.head,
        options=cfg.record.model_copy(update={"save_weights": "none", "image_every": 0}),
        run=run,
    )
    model.load_state_dict(pair.tuned)
    rec.val_data = val  # TUNED is evaluated whatever its head
    rec.epoch_end()
    rec.finish("completed")
