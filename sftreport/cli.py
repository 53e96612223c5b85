"""The command line: `sftreport run | render | schema | pretrain | compare | diff | check` (also `python -m sftreport`).

Bad input (a flag, a config value, a dataset, a weights file, a run directory) ends with one line on
stderr and exit code 2, never a traceback; a disk that refuses a write, with one line and exit code 1
(errors.ExitCode lists them all). `render` and `schema` never import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

from sftreport import __version__
from sftreport.errors import ExitCode, StorageError, UserError, one_line
from sftreport.store import check_output_path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {value!r}")
    return int(value)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sftreport", description="Fine-tune a pretrained model and report what fine-tuning changed.")
    p.add_argument("--version", action="version", version=f"sftreport {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser(
        "run",
        help="fine-tune, record every epoch, render the report",
        description="Fine-tune and record. With no arguments: the embedded default "
        "(digits_resnet pretrained on digits 0-4, fine-tuned on digits 5-9).",
    )
    a = r.add_argument
    a("--config", type=Path, metavar="FILE.toml", help="TOML file with the same fields; flags override it")
    a("--name", help="run name shown in the report")
    a(
        "--model",
        help="torchvision classification model (resnet50, vit_b_16, ...), sftreport's own: digits_resnet "
        "(default), digits_lstm, digits_transformer, or hf:MODEL_ID (a Hugging Face text classifier, hub id or "
        "local directory)",
    )
    a("--weights", help="none | torchvision weights name (DEFAULT, IMAGENET1K_V2, ...) | path to a state_dict file")
    a(
        "--dataset",
        help="digits (default) | digits-seq (the same, as sequences of rows) | cifar10 | imagefolder | "
        "text (DIR/train.jsonl and DIR/val.jsonl, or .csv; with --model hf:MODEL_ID)",
    )
    a(
        "--task",
        help="classify (default) | segment (digit canvases, or --dataset voc-seg) | detect (digit scenes, or coco)",
    )
    a("--data-root", type=Path, metavar="DIR", help="cifar10: DIR/cifar-10-batches-py; imagefolder: DIR/train, DIR/val")
    a("--download", action="store_const", const=True, help="let torchvision download CIFAR-10 into --data-root")
    a("--image-size", type=int, metavar="PX", help="input side in pixels (default: the dataset's own; 224 for ViT)")
    a("--strategy", help="full (default) | linear-probe | freeze-until:MODULE | lp-ft | lora:RANK")
    a("--lp-epochs", type=int, metavar="N", help="lp-ft: epochs of linear probing first (default: half the epochs)")
    a("--lr-decay", type=float, metavar="F", help="layer-wise learning-rate decay: block k below the head gets lr·F^k")
    a(
        "--lora-targets",
        type=_csv,
        metavar="M1,M2",
        help="lora: modules to adapt (default: every Linear and Conv2d but the head)",
    )
    a("--lora-alpha", type=float, metavar="A", help="lora: B·A is scaled by A / RANK (default: RANK)")
    a(
        "--source-data",
        type=Path,
        metavar="DIR",
        help="ImageFolder of the pretrained head's classes: measure forgetting of the source task every epoch",
    )
    a("--epochs", type=int)
    a("--batch-size", type=int)
    a("--lr", type=float)
    a("--optimizer", help="sgd (default) | adamw")
    a("--momentum", type=float)
    a("--weight-decay", type=float)
    a("--scheduler", help="cosine (default) | constant")
    a("--seed", type=int)
    a("--device", help="auto (default: CUDA, then MPS, then CPU) | cpu | cuda | mps")
    a("--no-amp", dest="amp", action="store_const", const=False, help="no mixed precision / channels_last on CUDA")
    a("--shard", help="under torchrun: none (default: the model replicated, DDP) | fsdp (parameters sharded, FSDP2)")
    a("--workers", type=int, help="DataLoader workers for ImageFolder")
    a("--max-steps-per-epoch", type=int, metavar="N", help="cap optimizer steps per epoch (quick runs)")
    a("--out", type=Path, action="append", metavar="FILE", help="report file (.html, .pdf, .md); repeatable")
    a(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="where the run directory goes (default: runs/<time>-<model>-<dataset>)",
    )
    a("--quiet", action="store_const", const=True, help="no progress display")
    g = r.add_argument_group("recording")
    g.add_argument(
        "--no-record",
        dest="record_enabled",
        action="store_const",
        const=False,
        help="metrics only, no probes (for timing comparisons)",
    )
    g.add_argument("--probe-size", type=int, help="validation images in the fixed probe set (default 256)")
    g.add_argument("--hist-bins", type=int)
    g.add_argument("--grad-every", type=int, metavar="K", help="sample gradient norms every K steps (default 5)")
    g.add_argument("--image-every", type=int, metavar="N", help="save filter/feature-map images every N epochs")
    g.add_argument("--activations", type=_csv, metavar="M1,M2", help="modules to probe (default: stem, blocks, head)")
    g.add_argument("--tsne", action="store_const", const=True, help="also project features with t-SNE")
    g.add_argument(
        "--save-weights",
        metavar="WHICH",
        help="weights kept in RUN_DIR/weights/: none | last (default; with epoch 0) | best | every",
    )

    d = sub.add_parser("render", help="render reports from a run directory (no torch needed)")
    d.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    d.add_argument(
        "--out",
        type=Path,
        action="append",
        metavar="FILE",
        help="report file (.html, .pdf, .md); repeatable (default: RUN_DIR/report.html)",
    )

    sub.add_parser("schema", help="print the JSON Schema of a run directory's files")

    t = sub.add_parser("pretrain", help="rebuild an embedded model's pretrained checkpoint (digits 0-4)")
    t.add_argument(
        "--model",
        default="digits_resnet",
        choices=["digits_resnet", "digits_lstm", "digits_transformer"],
        help="which embedded model (default digits_resnet)",
    )
    t.add_argument("--out", type=Path, help="where to write it (default: inside the installed package)")
    t.add_argument("--epochs", type=_positive_int, default=30)
    t.add_argument("--seed", type=int, default=0)
    add_decision_commands(sub)
    return p


# --------------------------------------------------------------------------- compare | diff | check


def add_decision_commands(sub) -> None:
    """The commands that help decide between fine-tuning choices: compare runs, diff checkpoints, gate CI."""
    c = sub.add_parser(
        "compare",
        help="compare runs side by side in one report (no torch needed)",
        description="Compare fine-tuning runs (the same model and dataset) side by side in one report.",
    )
    c.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="two or more run directories")
    c.add_argument(
        "--out",
        type=Path,
        action="append",
        metavar="FILE",
        help="report file (.html, .pdf, .md); repeatable (default: compare.html)",
    )
    c.add_argument(
        "--label", action="append", metavar="NAME", help="a run's name in the report: one per run, in their order"
    )
    c.add_argument("--allow-mixed", action="store_true", help="compare runs of different models or datasets anyway")

    d = sub.add_parser(
        "diff",
        help="report what changed between two checkpoints (state_dict files), with no training",
        description="What changed from BASE to TUNED: relative change and the spectrum of the change per layer; "
        "with --dataset also accuracy, activations and CKA.",
    )
    d.add_argument("base", type=Path, metavar="BASE", help="state_dict file of the model before (e.g. pretrained)")
    d.add_argument("tuned", type=Path, metavar="TUNED", help="state_dict file of the model after (fine-tuned)")
    d.add_argument("--model", required=True, help="torchvision classification model (resnet50, ...) or digits_resnet")
    d.add_argument(
        "--out",
        type=Path,
        action="append",
        metavar="FILE",
        help="report file (.html, .pdf, .md); repeatable (default: diff.html)",
    )
    d.add_argument("--dataset", help="digits | cifar10 | imagefolder: measure both models on its validation split")
    d.add_argument(
        "--data-root", type=Path, metavar="DIR", help="cifar10: DIR/cifar-10-batches-py; imagefolder: DIR/val"
    )
    d.add_argument("--image-size", type=int, metavar="PX", help="input side in pixels (default: the dataset's own)")
    d.add_argument(
        "--probe-size", type=_positive_int, default=256, help="validation images in the probe set (default 256)"
    )
    d.add_argument("--batch-size", type=_positive_int, default=64)
    d.add_argument("--device", default="auto", help="auto (default) | cpu | cuda | mps")
    d.add_argument("--run-dir", type=Path, metavar="DIR", help="keep the measurements as a run directory here")

    from sftreport.check import fraction

    k = sub.add_parser(
        "check",
        help="CI gate: exit 1 when a run's findings or thresholds fail (no torch needed)",
        description="Exit 1 with the failing findings one line each, 0 when the run passes.",
    )
    k.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    k.add_argument(
        "--fail-on",
        choices=["error", "warning"],
        default="error",
        help="error (default): fail on alerts (divergence, NaN, exploding gradients, ...); warning: on warnings too",
    )
    k.add_argument("--min-accuracy", type=fraction, metavar="X", help="fail below this final validation accuracy (0.9)")
    k.add_argument(
        "--max-forgetting",
        type=fraction,
        metavar="Y",
        help="fail when the source-task accuracy fell more than this (0.05)",
    )
    k.add_argument(
        "--summary", type=Path, metavar="FILE.md", help="write the verdict and the run's summary as Markdown"
    )


_RECORD_FLAGS = {
    "record_enabled": "enabled",
    "probe_size": "probe_size",
    "hist_bins": "hist_bins",
    "grad_every": "grad_every",
    "image_every": "image_every",
    "activations": "activations",
    "tsne": "tsne",
    "save_weights": "save_weights",
}


def _overrides(ns: argparse.Namespace) -> dict:
    skip = {"command", "config", *_RECORD_FLAGS}
    out = {k: v for k, v in vars(ns).items() if k not in skip and v is not None}
    record = {_RECORD_FLAGS[k]: getattr(ns, k) for k in _RECORD_FLAGS if getattr(ns, k) is not None}
    if record:
        out["record"] = record
    return out


def cmd_run(ns: argparse.Namespace) -> int:
    from sftreport.config import build_config

    cfg = build_config(ns.config, _overrides(ns))
    for out in cfg.out:  # before hours of training, not after
        check_output_path(out)
    from sftreport.train.runner import run  # torch is imported only now, after the config is valid

    with kept_warnings() as kept:
        outcome = run(cfg)
    _save_warnings(outcome.run_dir, kept)
    if outcome.status != "completed" or outcome.problems:
        hint = " (SFTREPORT_DEBUG=1 shows the traceback)" if outcome.unexpected else ""
        said = [f"run {outcome.status}" + (f": {outcome.detail}" if outcome.detail else "")] + outcome.problems
        print(f"{_prefix()}: {'; '.join(said)}{hint}", file=sys.stderr)
    return outcome.exit_code


def cmd_render(ns: argparse.Namespace) -> int:
    from sftreport.report.render import check_outputs, render_run
    from sftreport.store import read_run

    outs = ns.out or [ns.run_dir / "report.html"]
    check_outputs(outs)
    run = read_run(ns.run_dir)
    if run.dropped:
        print(f"{_prefix()}: warning: {run.dropped}", file=sys.stderr)
    for path in render_run(ns.run_dir, outs, run=run):
        print(f"report: {path}")
    return ExitCode.COMPLETED


def cmd_compare(ns: argparse.Namespace) -> int:
    from sftreport.report.compare import compare_runs

    for path in compare_runs(ns.run_dirs, ns.out or [Path("compare.html")], ns.label, ns.allow_mixed):
        print(f"report: {path}")
    return ExitCode.COMPLETED


def cmd_schema(ns: argparse.Namespace) -> int:
    from sftreport.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return ExitCode.COMPLETED


def cmd_pretrain(ns: argparse.Namespace) -> int:
    from sftreport.train.models import EMBEDDED
    from sftreport.train.pretrain import WEIGHTS_DIR, pretrain_digits

    out = ns.out or WEIGHTS_DIR / EMBEDDED[ns.model].weights_file(ns.model)
    check_output_path(out)
    pretrain_digits(out, epochs=ns.epochs, seed=ns.seed, model_name=ns.model)
    return ExitCode.COMPLETED


def cmd_diff(ns: argparse.Namespace) -> int:
    from sftreport.diff import diff_checkpoints  # imports torch

    with kept_warnings():
        written = diff_checkpoints(
            ns.base,
            ns.tuned,
            ns.model,
            ns.out or [Path("diff.html")],
            dataset=ns.dataset,
            data_root=ns.data_root,
            image_size=ns.image_size,
            probe_size=ns.probe_size,
            batch_size=ns.batch_size,
            device=ns.device,
            run_dir=ns.run_dir,
        )
    for path in written:
        print(f"report: {path}")
    return ExitCode.COMPLETED


def cmd_check(ns: argparse.Namespace) -> int:
    from sftreport.check import check_run

    v = check_run(ns.run_dir, ns.fail_on, ns.min_accuracy, ns.max_forgetting, ns.summary)
    if v.run.dropped:
        print(f"{_prefix()}: warning: {v.run.dropped}", file=sys.stderr)
    for line in v.failures:
        print(line)
    what = "; ".join(v.checked)
    print(f"check {'passed' if v.passed else 'failed'}: {ns.run_dir} ({what}; {len(v.failures)} failing)")
    return v.exit_code


DECISION_COMMANDS = {"compare": cmd_compare, "diff": cmd_diff, "check": cmd_check}


@contextlib.contextmanager
def kept_warnings():
    """Python warnings (torch's, pydantic's, ...) are kept off the terminal, which shows sftreport's own lines
    only; the caller decides where the kept lines go (`run` writes them to RUN_DIR/warnings.log).
    SFTREPORT_DEBUG=1 shows them as usual."""
    kept: list[str] = []
    if os.environ.get("SFTREPORT_DEBUG"):
        yield kept
        return
    shown = warnings.showwarning

    def keep(message, category, filename, lineno, file=None, line=None):
        kept.append(warnings.formatwarning(message, category, filename, lineno, line).rstrip())

    warnings.showwarning = keep
    try:
        yield kept
    finally:
        warnings.showwarning = shown


def _save_warnings(run_dir: Path | None, kept: list[str]) -> None:
    if not kept or run_dir is None or not Path(run_dir).is_dir():
        return
    try:
        with open(Path(run_dir) / "warnings.log", "a", encoding="utf-8") as f:
            f.write("\n".join(kept) + "\n")
    except OSError:
        pass  # a log of third-party warnings is not worth failing a finished run over


def _prefix() -> str:
    rank = os.environ.get("RANK")
    return f"sftreport[rank {rank}]" if rank not in (None, "0") else "sftreport"


def main(argv: list[str] | None = None) -> int:
    prefix = _prefix()
    try:
        with kept_warnings():  # warnings of a run that fails before its directory exists go nowhere
            ns = build_parser().parse_args(argv)
            commands = {"run": cmd_run, "render": cmd_render, "schema": cmd_schema, "pretrain": cmd_pretrain}
            commands.update(DECISION_COMMANDS)
            return commands[ns.command](ns)
    except UserError as e:
        print(f"{prefix}: error: {one_line(e, limit=2000)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except StorageError as e:
        print(f"{prefix}: error: {one_line(e, limit=2000)}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.FAILED
