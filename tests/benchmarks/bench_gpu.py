"""The GPU path, measured: the article's plain loop against `sftreport run`, resnet50 at 224 px.

    python tests/benchmarks/bench_gpu.py --out DIR           # on a CUDA machine (about 2-3 minutes on one H200)
    python tests/benchmarks/bench_gpu.py --tiny --out DIR    # the CPU smoke mode the test suite runs

Both sides read one CIFAR-10-format dataset written here in the real on-disk layout (pickled
`data_batch_1..5`, `test_batch`, `batches.meta`; synthetic pixels with a learnable colour cue):

- **plain loop** (the article's code): torchvision's CIFAR10 dataset, `Resize(224)`, `ToTensor`, `Normalize`
  on the CPU in a DataLoader with 2 workers, fp32, SGD(lr 0.001, momentum 0.9), no probes;
- **sftreport**: `run(RunConfig(...))` in this process, exactly what `sftreport run` does (the dataset
  on the device as uint8, resized and augmented there, bf16 autocast, channels_last, every probe on),
  one epoch over all training images; then the same run with recording off, capped, for the
  recording-free throughput.

Printed as a Markdown table and written to DIR/results.json; DIR/run.tar.gz holds the recorded run
directory (render it anywhere: `sftreport render run --out report.pdf`).
Targets: sftreport at least 2x the plain loop's images/s; the probes at most 2 % of a
50,000-image epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import tarfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests"):  # run from a checkout without installing; tests/support.py writes the data
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from support import CIFAR10_CLASSES, py2_pickle, unchecked_cifar10  # noqa: E402

from sftreport.config import RecordOptions, RunConfig  # noqa: E402
from sftreport.store import read_run  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- data and weights


def write_cifar10(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """CIFAR-10 in its standard python layout (Python 2 pickles, as the official files) with `train`
    training and `test` test images."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    py2_pickle(
        {b"label_names": CIFAR10_CLASSES, b"num_cases_per_batch": train // 5, b"num_vis": 3072}, base / "batches.meta"
    )

    def batch(n: int, name: bytes) -> dict:
        labels = rng.integers(0, 10, size=n)
        data = rng.integers(0, 256, size=(n, 3, 1024), dtype=np.uint8)
        data[np.arange(n), labels % 3] //= 4  # class k darkens channel k % 3: something to learn
        return {
            b"batch_label": name,
            b"labels": labels.tolist(),
            b"data": data.reshape(n, 3072),
            b"filenames": [b"x.png"] * n,
        }

    for i in range(1, 6):
        py2_pickle(batch(train // 5, f"training batch {i} of 5".encode()), base / f"data_batch_{i}")
    py2_pickle(batch(test, b"testing batch 1 of 1"), base / "test_batch")
    return root


def write_pretrained(model_name: str, path: Path) -> Path:
    """A stand-in for the ImageNet checkpoint (no downloads here): the model's own initial weights with
    its 1000-class head, saved as a state_dict file that `--weights FILE` loads."""
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model(model_name, weights=None).state_dict(), path)
    return path


# --------------------------------------------------------------------------- the article's plain loop


def plain_loop(
    root: Path,
    weights: Path,
    model_name: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    workers: int,
    device: torch.device,
) -> dict:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    transform = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    data = unchecked_cifar10()(str(root), train=True, transform=transform, download=False)
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    model = torchvision.models.get_model(model_name, weights=None)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Linear(model.fc.in_features, 10)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    started = None
    done = 0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            sync(device)
            started = time.perf_counter()
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            done += 1
        if done == steps:
            break
    sync(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "images_per_s": done * batch / elapsed,
        "steps": done,
        "batch": batch,
        "seconds": elapsed,
        "peak_gpu_bytes": peak,
        "final_loss": loss.item(),
    }


# --------------------------------------------------------------------------- sftreport


def sftreport_run(
    root: Path,
    weights: Path,
    model_name: str,
    size: int,
    batch: int,
    out: Path,
    record: bool,
    max_steps: int | None,
    probe_size: int,
    device: str,
    name: str | None = None,
) -> dict:
    from sftreport.train.runner import run

    name = name or ("run" if record else "run-no-record")
    reports = [out / "report.html", out / "summary.md"] if record else [out / f"{name}.md"]
    cfg = RunConfig(
        name=f"bench_gpu {model_name} {size}px",
        model=model_name,
        weights=str(weights),
        dataset="cifar10",
        data_root=root,
        image_size=size,
        epochs=1,
        batch_size=batch,
        lr=0.001,
        momentum=0.9,
        scheduler="constant",
        device=device,
        run_dir=out / name,
        out=reports,
        quiet=True,
        max_steps_per_epoch=max_steps,
        record=RecordOptions(enabled=record, probe_size=probe_size, image_every=1),
    )
    dev = torch.device("cuda") if torch.cuda.is_available() and device != "cpu" else None
    if dev is not None:
        torch.cuda.reset_peak_memory_stats(dev)
    started = time.perf_counter()
    outcome = run(cfg)
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(dev) if dev is not None else None
    stored = read_run(outcome.run_dir)
    e0, e1 = stored.epochs[0], stored.epochs[-1]
    t = e1.timing
    result = {
        "status": outcome.status,
        "detail": outcome.detail,
        "wall_s": wall,
        "peak_gpu_bytes": peak,
        "images": stored.info.dataset.train_size if max_steps is None else max_steps * batch,
        "train_s": t.train_s,
        "eval_s": t.eval_s,
        "record_s": t.record_s,
        "images_per_s": t.samples_per_s,
        "epoch0_eval_s": e0.timing.eval_s,
        "epoch0_record_s": e0.timing.record_s,
        "probes": t.probes,
        "epoch0_probes": e0.timing.probes,
        "precision": stored.info.environment.precision,
        "device": stored.info.environment.device_name,
        "val_accuracy": [e.val.accuracy for e in stored.epochs if e.val],
        "reports": [str(p) for p in outcome.reports],
    }
    if record:
        missing = [
            f"epoch {e.epoch}: {what}"
            for e in stored.epochs
            for what, ok in (
                ("weights", e.weights),
                ("activations", e.activations),
                ("features", e.features),
                ("cka", e.cka),
                ("val", e.val),
                ("images", e.images),
            )
            if not ok
        ]
        missing += [f"epoch {e.epoch}: gradients" for e in stored.epochs[1:] if not e.gradients]
        result["missing_probes"] = missing
        result["report_bytes"] = (out / "report.html").stat().st_size if (out / "report.html").exists() else 0
    return result


def short_run(root: Path, out: Path, name: str, device: str, lr: float = 0.01, fp16: bool = False) -> dict:
    """A short resnet18 run at 64 px through the other CUDA paths: fp16 with a GradScaler (bf16 hidden),
    or a learning rate that diverges (NaN weights, activations and histograms on the device)."""
    from unittest import mock

    from sftreport.train.runner import run

    cfg = RunConfig(
        name=name,
        model="resnet18",
        weights="none",
        dataset="cifar10",
        data_root=root,
        image_size=64,
        epochs=2,
        batch_size=64,
        lr=lr,
        device=device,
        run_dir=out / name,
        out=[out / f"{name}.md"],
        quiet=True,
        max_steps_per_epoch=30,
        record=RecordOptions(probe_size=64, grad_every=1),
    )
    with mock.patch("torch.cuda.is_bf16_supported", return_value=False) if fp16 else contextlib.nullcontext():
        outcome = run(cfg)
    stored = read_run(outcome.run_dir)
    last = stored.epochs[-1]
    return {
        "status": outcome.status,
        "detail": outcome.detail,
        "precision": stored.info.environment.precision,
        "epochs": [e.epoch for e in stored.epochs],
        "nonfinite_grad_steps": max((g.nonfinite for g in last.gradients), default=0),
        "grad_samples": max((g.samples for g in last.gradients), default=0),
        "weights_finite": all(math.isfinite(w.stats.mean) for w in last.weights),
        "report": [p.name for p in outcome.reports],
    }


# --------------------------------------------------------------------------- the probes alone


def stats_micro(model_name: str, device: torch.device, repeat: int = 7) -> dict:
    """Weight + gradient statistics of every parameter at an epoch end, on the device (median seconds)."""
    from sftreport.record.gradients import GradientProbe
    from sftreport.record.weights import WeightProbe

    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None, num_classes=10).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    wprobe = WeightProbe(model, {"fc.weight", "fc.bias"}, bins=32)
    gprobe = GradientProbe(model, every=1)
    wprobe.measure()
    times = []
    for _ in range(repeat):
        gprobe.maybe_sample()
        sync(device)
        t = time.perf_counter()
        wprobe.measure()
        gprobe.collect()
        sync(device)
        times.append(time.perf_counter() - t)
    return {
        "weight_grad_stats_s": statistics.median(times[1:]),
        "params": sum(p.numel() for p in model.parameters()),
        "tensors": len(list(model.parameters())),
    }


def cuda_matches_cpu(device: torch.device) -> dict:
    """The same statistics of the same values on the device and on the CPU: counts, zeros, min, max and
    histograms identical (bin assignment is exact), moments equal to numpy's float64 ones within 1e-6.
    Weights of a resnet18; activations of an identity + ReLU fed hard values (mean 1, std 1e-5, values on
    bin edges); the accuracy of CUDA's sums of squares on a 25 M-element tensor."""
    from torch import nn

    from sftreport.record.activations import ActivationProbe
    from sftreport.record.stats import FlatBuffer
    from sftreport.record.weights import WeightProbe

    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10)
    g = torch.Generator().manual_seed(2)
    x = torch.cat([1 + 1e-5 * torch.randn(4000, generator=g), torch.randn(4000, generator=g)]).view(8, 10, 100)
    x[0, 0, :33] = torch.linspace(-1, 1, 33)  # edges of a [-1, 1) grid: exactly representable
    results = {}
    for dev in (torch.device("cpu"), device):
        w = WeightProbe(model.to(dev), set(), bins=32).measure()
        acts_model = nn.Sequential(nn.Identity(), nn.ReLU()).to(dev)
        probe = ActivationProbe(["0", "1"], 32, [], 0)
        with torch.no_grad():
            with probe.hooks(acts_model, want_hist=False, want_reps=False) as nxt:
                acts_model(x.to(dev))
                nxt()
            probe.fix_bins()
            with probe.hooks(acts_model, want_hist=True, want_reps=False) as nxt:
                for chunk in x.to(dev).split(3):
                    acts_model(chunk)
                    nxt()
        acts, _, _ = probe.collect()
        results[dev.type] = (w, acts)
    (w_cpu, a_cpu), (w_dev, a_dev) = results["cpu"], results[device.type]
    worst, hist_moved, mismatched = 0.0, 0, []
    for a, b in list(zip(w_cpu, w_dev)) + list(zip(a_cpu, a_dev)):
        sa, sb = a.stats, b.stats
        if (sa.count, sa.zeros, sa.min, sa.max) != (sb.count, sb.zeros, sb.min, sb.max):
            mismatched.append(getattr(a, "name", getattr(a, "module", "?")))
        # means to within a millionth of the spread, spreads to within a millionth of themselves
        worst = max(worst, abs(sa.mean - sb.mean) / max(sa.std, 1e-30), abs(sa.std - sb.std) / max(sa.std, 1e-30))
        hist_moved += sum(
            abs(c1 - c2)
            for c1, c2 in zip(
                a.hist.counts + [a.hist.below, a.hist.above], b.hist.counts + [b.hist.below, b.hist.above]
            )
        )
    big = torch.randn(25_000_000, generator=torch.Generator().manual_seed(3)) + 0.5
    exact = float((big.double() ** 2).sum())
    flat = FlatBuffer([big.numel()], device).load([big.to(device)])
    ours = float(flat.square_sums()[0])
    foreach = float(torch._foreach_norm([big.to(device)])[0].double() ** 2)
    return {
        "tensors": len(w_cpu),
        "activations": len(a_cpu),
        "worst_rel_diff": worst,
        "hist_moved": hist_moved,
        "mismatched_min_max_zeros": mismatched,
        "values": sum(a.stats.count for a in w_cpu + a_cpu),
        "sum_sq_25M_rel_err": abs(ours - exact) / exact,
        "foreach_norm_25M_rel_err": abs(foreach - exact) / exact,
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: resnet18 at 32 px, a few steps")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-images", type=int, default=50_000)
    ap.add_argument("--val-images", type=int, default=10_000)
    ap.add_argument("--plain-steps", type=int, default=40)
    ap.add_argument("--probe-size", type=int, default=256)
    a = ap.parse_args()
    if a.tiny:
        a.model, a.image_size, a.batch_size, a.train_images, a.val_images = "resnet18", 32, 8, 80, 40
        a.plain_steps, a.probe_size = 2, 16
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "model": a.model,
        "image_size": a.image_size,
        "batch_size": a.batch_size,
        "train_images": a.train_images,
        "errors": {},
    }
    log(
        f"bench_gpu: {results['device']}, torch {torch.__version__}, {a.model} at {a.image_size} px, "
        f"batch {a.batch_size}, {a.train_images} training images"
    )

    t = time.perf_counter()
    data = write_cifar10(out / "data", a.train_images, a.val_images)
    weights = write_pretrained(a.model, out / f"{a.model}_init.pt")
    log(f"dataset and weights written in {time.perf_counter() - t:.1f} s")

    def part(name: str, fn):
        t0 = time.perf_counter()
        try:
            results[name] = fn()
            log(f"{name}: {json.dumps(results[name], default=str)} ({time.perf_counter() - t0:.1f} s)")
        except Exception as e:
            results["errors"][name] = f"{type(e).__name__}: {e}"
            log(f"{name} FAILED after {time.perf_counter() - t0:.1f} s:\n{traceback.format_exc()}")
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    part("cuda_matches_cpu", lambda: cuda_matches_cpu(device) if device.type == "cuda" else {"skipped": "no CUDA"})
    # cuDNN's autotuning and CUDA's lazy start-up go to a short run first, so both measured runs start warm
    part(
        "warm_up",
        lambda: sftreport_run(
            data,
            weights,
            a.model,
            a.image_size,
            a.batch_size,
            out,
            False,
            max(2, min(40, a.train_images // a.batch_size // 3)),
            a.probe_size,
            device.type,
            name="warm-up",
        ),
    )
    part(
        "sftreport_no_record",
        lambda: sftreport_run(
            data, weights, a.model, a.image_size, a.batch_size, out, False, None, a.probe_size, device.type
        ),
    )
    part(
        "sftreport",
        lambda: sftreport_run(
            data, weights, a.model, a.image_size, a.batch_size, out, True, None, a.probe_size, device.type
        ),
    )
    part(
        "plain",
        lambda: plain_loop(
            data,
            weights,
            a.model,
            a.image_size,
            a.batch_size,
            a.plain_steps,
            warmup=1 if a.tiny else 5,
            workers=2,
            device=device,
        ),
    )
    part("stats", lambda: stats_micro(a.model, device))
    if device.type == "cuda":
        part("fp16_path", lambda: short_run(data, out, "fp16", device.type, fp16=True))
        part("diverged_path", lambda: short_run(data, out, "diverged", device.type, lr=1e6))

    if (out / "run").is_dir():
        with tarfile.open(out / "run.tar.gz", "w:gz") as tar:
            tar.add(out / "run", arcname="run")
    print_table(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 1 if results["errors"] else 0


def print_table(r: dict) -> None:
    s, s0, p, st = r.get("sftreport", {}), r.get("sftreport_no_record", {}), r.get("plain", {}), r.get("stats", {})

    def gb(v):
        return f"{v / 2**30:.1f} GiB" if v else "–"

    rows = [("device", f"{r['device']}, torch {r['torch']}")]
    if p:
        rows.append(
            (
                "plain loop (fp32, CPU Resize in 2 workers): images/s",
                f"{p['images_per_s']:,.0f} (peak GPU {gb(p['peak_gpu_bytes'])})",
            )
        )
    if s:
        layout = ", channels_last" if s["precision"] != "fp32" else ""
        rows.append(
            (
                f"sftreport run ({s['precision']}{layout}, probes on): images/s over a {s['images']:,}-image epoch",
                f"{s['images_per_s']:,.0f} (peak GPU {gb(s['peak_gpu_bytes'])})",
            )
        )
    if s0:
        rows.append(("sftreport run, recording off: images/s", f"{s0['images_per_s']:,.0f}"))
    if p and s:
        speedup = s["images_per_s"] / p["images_per_s"]
        rows.append(("speed-up over the plain loop", f"{speedup:.1f}x (target >= 2x)"))
    if s:
        share = s["record_s"] / s["train_s"] if s["train_s"] else math.nan
        rows.append(
            (
                "probes at the epoch end",
                f"{s['record_s']:.2f} s = {share:.2%} of the epoch's training time (target <= 2 %)",
            )
        )
        if s0 and s0.get("train_s"):
            step_cost = s["train_s"] - s0["train_s"]
            total = s["record_s"] + max(0.0, step_cost)
            rows.append(("rec.step over the epoch (training time, recording on minus off)", f"{step_cost:.2f} s"))
            rows.append(
                (
                    "all recording over the epoch (probes + rec.step)",
                    f"{total:.2f} s = {total / s0['train_s']:.2%} of the recording-free epoch (target <= 2 %)",
                )
            )
        rows.append(
            ("probes at the epoch end, by part", ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in s["probes"].items()))
        )
        rows.append(("evaluation of the validation set", f"{s['eval_s']:.2f} s"))
        rows.append(
            (
                "report",
                f"{s['status']}, HTML {s.get('report_bytes', 0) / 1e6:.2f} MB, missing probes: {s.get('missing_probes') or 'none'}",
            )
        )
    if st:
        rows.append(
            (
                f"weight + gradient statistics per epoch end ({st['tensors']} tensors)",
                f"{st['weight_grad_stats_s'] * 1000:.1f} ms",
            )
        )
    c = r.get("cuda_matches_cpu", {})
    if c and "skipped" not in c:
        rows.append(
            (
                "CUDA vs CPU statistics",
                f"means and stds within {c['worst_rel_diff']:.1e} of the std; "
                f"{c['hist_moved']} of {c['values']:,} values in another bin; "
                f"count/zeros/min/max differ in {len(c['mismatched_min_max_zeros'])}",
            )
        )
        rows.append(
            (
                "sum of squares of 25 M values on CUDA, relative error",
                f"ours {c['sum_sq_25M_rel_err']:.1e}, _foreach_norm {c['foreach_norm_25M_rel_err']:.1e}",
            )
        )
    for key in ("fp16_path", "diverged_path"):
        if key in r:
            rows.append((key.replace("_", " "), json.dumps(r[key])))
    for k, v in r["errors"].items():
        rows.append((f"FAILED: {k}", v))
    print("| measurement | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
