"""What recording costs: the same fine-tuning with recording off and on, side by side in one process.

    python tests/benchmarks/bench_recording.py            # default run + resnet50 (a few minutes on 2 CPU cores)
    python tests/benchmarks/bench_recording.py --quick    # smaller resnet50 probe set
    python tests/benchmarks/bench_recording.py --sequence # an LSTM and a BERT-base-size encoder instead
    python tests/benchmarks/bench_recording.py --segmentation  # deeplabv3_mobilenet_v3_large at 256 px
    python tests/benchmarks/bench_recording.py --detection     # fasterrcnn_mobilenet_v3_large_fpn at 320 px

Prints a Markdown table (the README holds the latest one); each target's row says whether it is met.
Targets: all probes together at most 2 % of an epoch (a CIFAR-10-size ResNet-50 epoch; 5,000 images for the
segmenter and the detector); the weight and gradient statistics alone at most 0.08 s per epoch end for
resnet50 on the CPU, 0.10 s for the segmenter and the detector. The TensorBoard route (add_histogram of every
parameter and gradient) is timed for comparison (needs the `bench` extra: pip install '.[bench]').
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from sftreport.config import RecordOptions, RunConfig
from sftreport.record.gradients import GradientProbe
from sftreport.record.recorder import Recorder
from sftreport.record.weights import WeightProbe
from sftreport.train.runner import run

CIFAR_EPOCH = 50_000


def timed(fn, repeat: int = 5) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def against(value: float, limit: float, shown: str, unit: str = " s") -> str:
    """`shown`, the target and whether it is met."""
    return f"{shown} (target ≤ {limit:g}{unit}: {'met' if value <= limit else 'NOT met'})"


def statistics_seconds(model: torch.nn.Module, repeat: int = 7) -> tuple[float, float]:
    """Median and fastest seconds of the weight and gradient statistics of an epoch end (the weights'
    moments, histograms and changes, and the gradients' norms collected), after one untimed warm-up; a
    gradient sample is taken, untimed, before each. The model's parameters must have gradients."""
    wprobe = WeightProbe(model, set(), bins=32)
    wprobe.measure()
    gprobe = GradientProbe(model, every=1)
    times = []
    for _ in range(repeat + 1):
        gprobe.maybe_sample()
        t = time.perf_counter()
        wprobe.measure()
        gprobe.collect()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]), min(times[1:])


def default_run_rows(tmp: Path) -> list[tuple[str, str]]:
    """The embedded default run, recording off and on; per-epoch train time and probe time."""
    from sftreport.store import read_run

    out: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    # alternate off/on twice and keep each one's faster run: the first run in a process pays warm-ups
    for i, enabled in enumerate((False, True, False, True)):
        cfg = RunConfig(
            run_dir=tmp / f"default-{i}", quiet=True, out=[tmp / f"d{i}.md"], record=RecordOptions(enabled=enabled)
        )
        started = time.perf_counter()
        outcome = run(cfg)
        wall = time.perf_counter() - started
        epochs = read_run(outcome.run_dir).epochs[1:]
        out[enabled].append(
            (
                wall,
                statistics.mean(e.timing.train_s for e in epochs),
                statistics.mean(e.timing.record_s for e in epochs),
            )
        )
    out = {k: min(v) for k, v in out.items()}
    (w0, t0, _), (w1, t1, r1) = out[False], out[True]
    return [
        ("default run (in-process, rendering Markdown), wall time, recording off / on", f"{w0:.1f} s / {w1:.1f} s"),
        ("default run, train time per epoch, off / on", f"{t0:.2f} s / {t1:.2f} s"),
        ("default run, probes per epoch end", f"{r1:.3f} s ({r1 / (t1 + r1):.1%} of an epoch)"),
    ]


def resnet50_rows(probe_size: int, batch: int, steps: int) -> list[tuple[str, str]]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10)
    new = {"fc.weight", "fc.bias"}
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 10, (batch,))

    def train_step(rec: Recorder | None = None):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss, logits, y)

    model.train()
    step_plain = timed(train_step, repeat=steps)
    per_image = step_plain / batch
    epoch_s = per_image * CIFAR_EPOCH
    steps_per_epoch = CIFAR_EPOCH // 32

    # weight and gradient statistics alone, at an epoch end (gradients sampled once so there is data)
    wg, wg_min = statistics_seconds(model)
    # every probe at an epoch end, through the public Recorder (probe set at 224 px)
    with tempfile.TemporaryDirectory() as tmp:
        probe = (torch.randn(probe_size, 3, 224, 224), torch.arange(probe_size) % 10)
        rec = Recorder(
            model,
            probe=probe,
            run_dir=Path(tmp) / "r",
            new_params=new,
            head="fc",
            options=RecordOptions(grad_every=5, image_every=0, save_weights="none"),
        )
        train_step()
        logits = model(x[:2]).detach()
        loss = F.cross_entropy(logits, y[:2])
        t = time.perf_counter()
        rec.step(loss, logits, y[:2])  # the epoch's first step also measures the update-to-weight ratio
        first_step = time.perf_counter() - t
        n = 50
        t = time.perf_counter()
        for _ in range(n):  # every 5th of these samples the gradient norms
            rec.step(loss, logits, y[:2])
        per_step = (time.perf_counter() - t) / n
        t = time.perf_counter()
        rec.epoch_end()
        probes = time.perf_counter() - t
    per_epoch_steps = per_step * steps_per_epoch + first_step
    total = probes + per_epoch_steps

    rows = [
        (f"resnet50 224 px, one training step (batch {batch})", f"{step_plain:.2f} s"),
        ("resnet50, CIFAR-10-size epoch (50,000 images), estimated from it", f"{epoch_s / 3600:.1f} h"),
        (
            "resnet50, weight + gradient statistics per epoch end (median; fastest)",
            against(wg, 0.08, f"{wg:.3f} s; {wg_min:.3f} s"),
        ),
        (
            "resnet50, `rec.step` per step (gradient norms every 5th)",
            f"{per_step * 1000:.2f} ms; first step of an epoch {first_step * 1000:.0f} ms",
        ),
        ("resnet50, `rec.step` over an epoch of 1,562 steps (batch 32)", f"{per_epoch_steps:.1f} s"),
        (f"resnet50, all probes at an epoch end (probe set {probe_size} at 224 px)", f"{probes:.1f} s"),
        (
            "resnet50, recording share of a CIFAR-10-size epoch",
            against(total / epoch_s * 100, 2, f"{total / epoch_s:.2%}", " %"),
        ),
    ]
    rows += tensorboard_rows(model, wg)
    return rows


def tensorboard_rows(model: torch.nn.Module, ours: float) -> list[tuple[str, str]]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return [("TensorBoard add_histogram route", "not measured: pip install '.[bench]'")]
    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        step = [0]

        def tb():
            step[0] += 1
            for name, p in model.named_parameters():
                writer.add_histogram(name, p, step[0])
                if p.grad is not None:
                    writer.add_histogram(name + ".grad", p.grad, step[0])
            writer.flush()

        t = timed(tb, repeat=3)
        writer.close()
    return [
        ("TensorBoard add_histogram, every parameter and gradient", f"{t:.2f} s per epoch end ({t / ours:.0f}× ours)")
    ]


class _LSTMClassifier(torch.nn.Module):
    def __init__(self, features: int, hidden: int, classes: int):
        super().__init__()
        self.lstm = torch.nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])


class _EncoderClassifier(torch.nn.Module):
    """BERT-base's size: 30,522-token embedding, 12 layers of width 768, 12 heads, 3,072 feed-forward."""

    def __init__(self, classes: int, vocab: int = 30522, width: int = 768, layers: int = 12):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        block = torch.nn.TransformerEncoderLayer(width, 12, 4 * width, dropout=0.1, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.fc = torch.nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x)).mean(dim=1))


def sequence_rows(probe_size: int) -> list[tuple[str, str]]:
    """An LSTM and a BERT-base-size encoder with random weights: weight + gradient statistics per epoch end,
    every probe at an epoch end, and the share of it the recurrent and attention probes take."""
    rows = []
    cases = [
        ("2-layer LSTM, 512 units (3.3 M parameters), sequences of 50 × 64", _LSTMClassifier(64, 512, 10),
         lambda n: torch.randn(n, 50, 64), "recurrent"),
        ("BERT-base-size encoder (110 M parameters), 128 tokens", _EncoderClassifier(10),
         lambda n: torch.randint(0, 30522, (n, 128)), "attention"),
    ]  # fmt: skip
    for what, model, inputs, part in cases:
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x, y = inputs(8), torch.randint(0, 10, (8,))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        wg, _ = statistics_seconds(model, repeat=3)
        with tempfile.TemporaryDirectory() as tmp:
            rec = Recorder(
                model,
                probe=(inputs(probe_size), torch.arange(probe_size) % 10),
                run_dir=Path(tmp) / "r",
                head="fc",
                options=RecordOptions(image_every=0, save_weights="none"),
            )
            rec.step(loss.detach())
            snap = rec.epoch_end()
        params = sum(p.numel() for p in model.parameters())
        rows += [
            (f"{what}: weight + gradient statistics per epoch end", f"{wg:.3f} s ({params / 1e6:.1f} M values)"),
            (
                f"{what}: all probes at an epoch end (probe set {probe_size})",
                f"{snap.timing.record_s:.2f} s, of which the {part} probe {snap.timing.probes.get(part, 0):.3f} s",
            ),
        ]
    return rows


def task_rows(
    what: str, batch: int, step_s: float, wg: tuple[float, float], probe_size: int, probes_s: float
) -> list[tuple[str, str]]:
    """A segmenter's or a detector's rows: its training step, its statistics and its probes against the
    targets (0.10 s; 2 % of an epoch of 5,000 images, estimated from the step)."""
    epoch_s = step_s / batch * 5000
    return [
        (f"{what}: one training step (batch {batch})", f"{step_s:.2f} s"),
        (
            f"{what}: weight + gradient statistics per epoch end (median; fastest)",
            against(wg[0], 0.10, f"{wg[0]:.3f} s; {wg[1]:.3f} s"),
        ),
        (f"{what}: all probes at an epoch end (probe set {probe_size})", f"{probes_s:.2f} s"),
        (
            f"{what}: probes' share of an epoch of 5,000 images ({epoch_s / 60:.0f} min)",
            against(probes_s / epoch_s * 100, 2, f"{probes_s / epoch_s:.2%}", " %"),
        ),
    ]


def segmentation_rows(probe_size: int, size: int = 256, batch: int = 4) -> list[tuple[str, str]]:
    """deeplabv3_mobilenet_v3_large (21 classes, random weights) at `size` px: one training step, weight +
    gradient statistics per epoch end, every probe at an epoch end through the Recorder with the
    segmentation task, and their share of an epoch of 5,000 images."""
    from sftreport.record.segmentation_eval import SegmentationTask

    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "deeplabv3_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=21
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 21, (batch, size, size))

    def train_step():
        loss = F.cross_entropy(model(x)["out"], y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model.train()
    step_s = timed(train_step, repeat=3)
    wg, wg_min = statistics_seconds(model)
    with tempfile.TemporaryDirectory() as tmp:
        masks = torch.randint(0, 21, (probe_size, size, size))
        rec = Recorder(
            model,
            probe=(torch.randn(probe_size, 3, size, size), masks),
            run_dir=Path(tmp) / "r",
            head="classifier.4",
            task=SegmentationTask(21),
            options=RecordOptions(image_every=0, save_weights="none"),
        )
        loss = train_step()
        rec.step(loss.detach())
        snap = rec.epoch_end()
    params = sum(p.numel() for p in model.parameters())
    what = f"deeplabv3_mobilenet_v3_large ({params / 1e6:.1f} M parameters), {size} px"
    return task_rows(what, batch, step_s, (wg, wg_min), probe_size, snap.timing.record_s)


def detection_rows(probe_size: int, size: int = 320, batch: int = 4) -> list[tuple[str, str]]:
    """fasterrcnn_mobilenet_v3_large_fpn (random weights, 91 classes) at `size` px: one training step, weight +
    gradient statistics per epoch end, every probe at an epoch end through the Recorder with the detection
    task, and their share of an epoch of 5,000 images."""
    from sftreport.record.detection_eval import DetectionTask
    from sftreport.train.detectors import backbone_modules

    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None, num_classes=91,
        min_size=size, max_size=size,
    )  # fmt: skip
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def targets(n: int) -> list[dict]:
        return [
            {"boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0]]), "labels": torch.tensor([1 + i % 90])}
            for i in range(n)
        ]

    x = torch.rand(batch, 3, size, size)

    def train_step():
        loss = sum(model(list(x), targets(batch)).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model.train()
    step_s = timed(train_step, repeat=3)
    wg, wg_min = statistics_seconds(model)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(
            model,
            probe=(torch.rand(probe_size, 3, size, size), targets(probe_size)),
            run_dir=Path(tmp) / "r",
            head="roi_heads.box_predictor.cls_score",
            task=DetectionTask(91),
            options=RecordOptions(image_every=0, save_weights="none", activations=backbone_modules(model)),
        )
        loss = train_step()
        rec.step(loss.detach())
        snap = rec.epoch_end()
    params = sum(p.numel() for p in model.parameters())
    what = f"fasterrcnn_mobilenet_v3_large_fpn ({params / 1e6:.1f} M parameters), {size} px"
    return task_rows(what, batch, step_s, (wg, wg_min), probe_size, snap.timing.record_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="probe set of 64 instead of 256 for resnet50")
    ap.add_argument("--skip-default", action="store_true")
    ap.add_argument("--sequence", action="store_true", help="only the sequence models (LSTM, BERT-base-size encoder)")
    ap.add_argument("--segmentation", action="store_true", help="only a segmenter (deeplabv3_mobilenet_v3_large)")
    ap.add_argument("--detection", action="store_true", help="only a detector (fasterrcnn_mobilenet_v3_large_fpn)")
    a = ap.parse_args()
    rows: list[tuple[str, str]] = []
    if a.detection:
        rows += detection_rows(probe_size=8 if a.quick else 32)
    elif a.segmentation:
        rows += segmentation_rows(probe_size=8 if a.quick else 32)
    elif a.sequence:
        rows += sequence_rows(probe_size=16 if a.quick else 64)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            if not a.skip_default:
                rows += default_run_rows(Path(tmp))
        rows += resnet50_rows(probe_size=64 if a.quick else 256, batch=8, steps=3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| measurement | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
