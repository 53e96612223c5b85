"""The command line: `sftreport run | render | schema | pretrain` (also `python -m sftreport`).

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
    a("--strategy", help="full (default) | linear-probe | freeze-until:MODULE")
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
    return p


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
            return {"run": cmd_run, "render": cmd_render, "schema": cmd_schema, "pretrain": cmd_pretrain}[ns.command](
                ns
            )
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
