"""What the Hugging Face Trainer callback costs, against what the Recorder costs in an own loop doing the same training.

    python tests/benchmarks/bench_transformers.py [--epochs 2] [--repeat 3]

A ViT built from a ViTConfig (16×16 images, patch 4, hidden 64, 4 layers: the README example's) fine-tuned on
scikit-learn's digits (1,400 training images in dict samples, batch 32, AdamW with the Trainer's linear decay,
gradients clipped at 1.0), four ways: a Trainer fit without and with `SFTReportCallback`, and the same training
as an own loop without and with `Recorder` (same probes: the recorder's defaults, 128 probe images, evaluation
on the 397 validation images). The Trainer evaluates at every epoch end in both of its ways. Each way is run
`--repeat` times and its fastest kept. Target: the callback adds at most what the Recorder adds to the own
loop, + 5 % of the plain fit's time.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
import transformers
from torch.utils.data import DataLoader
from transformers import PrinterCallback, Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from sftreport.integrations.transformers import EvalBatches, SFTReportCallback
from sftreport.record.recorder import Recorder
from sftreport.store import read_run

LR, BATCH = 5e-3, 32
HEAD = ["classifier.weight", "classifier.bias"]
# seconds of each recorded epoch end (the recorder's evaluation + probes), from the runs' timing, per way
EPOCH_END: dict[str, list[float]] = {"callback": [], "Recorder": []}


def data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div(16).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=16).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target)
    train = [{"pixel_values": x[i], "labels": y[i]} for i in range(1400)]
    val = [{"pixel_values": x[i], "labels": y[i]} for i in range(1400, len(y))]
    return train, val, (x[-128:], y[-128:])


def vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
    )
    return ViTForImageClassification(config)


def trainer_fit(train, val, probe, epochs: int, tmp: Path, record: bool) -> float:
    args = TrainingArguments(
        str(tmp / "hf"),
        num_train_epochs=epochs,
        learning_rate=LR,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=256,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
    )
    run_dir = tmp / f"hf{time.time()}"
    callbacks = [SFTReportCallback(probe=probe, val_data=val, new_params=HEAD, run_dir=run_dir)] if record else []
    trainer = Trainer(vit(), args, train_dataset=train, eval_dataset=val, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # no metrics printed
    t = time.perf_counter()
    trainer.train()
    s = time.perf_counter() - t
    if record:
        EPOCH_END["callback"].extend(e.timing.eval_s + e.timing.record_s for e in read_run(run_dir).epochs)
    return s


def own_loop(train, val, probe, epochs: int, tmp: Path, record: bool) -> float:
    model = vit()
    loader = DataLoader(train, batch_size=BATCH, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / (epochs * len(loader)))
    t = time.perf_counter()
    rec = None
    run_dir = tmp / f"own{time.time()}"
    if record:
        rec = Recorder(model, probe=probe, val_data=EvalBatches(val, batch_size=256), new_params=HEAD, run_dir=run_dir)
    for _ in range(epochs):
        model.train()
        for batch in loader:
            out = model(**batch)
            opt.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            if rec is not None:
                rec.step(out.loss, out.logits, batch["labels"], lr=lr)
        if rec is not None:
            rec.epoch_end()
    if rec is not None:
        rec.finish()
    s = time.perf_counter() - t
    if record:
        EPOCH_END["Recorder"].extend(e.timing.eval_s + e.timing.record_s for e in read_run(run_dir).epochs)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    train, val, probe = data()
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeat):  # interleaved, so a slow moment of the machine touches every way alike
            for name, fn, record in (
                ("Trainer", trainer_fit, False),
                ("Trainer + SFTReportCallback", trainer_fit, True),
                ("own loop", own_loop, False),
                ("own loop + Recorder", own_loop, True),
            ):
                s = fn(train, val, probe, a.epochs, Path(tmp), record)
                times[name] = min(times.get(name, float("inf")), s)
    cb = times["Trainer + SFTReportCallback"] - times["Trainer"]
    rec = times["own loop + Recorder"] - times["own loop"]
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"{a.epochs} epochs, fastest of {a.repeat}"
    )
    print("| way | wall time |\n|---|---|")
    for name, s in times.items():
        print(f"| {name} | {s:.2f} s |")
    limit = rec + 0.05 * times["Trainer"]
    verdict = "ok" if cb <= limit else "over"
    print(f"callback adds {cb:.2f} s; the Recorder adds {rec:.2f} s to the own loop; limit {limit:.2f} s: {verdict}")
    median = {way: sorted(v)[len(v) // 2] for way, v in EPOCH_END.items()}
    print(
        f"an epoch end (the recorder's evaluation + probes, median): {median['callback']:.3f} s under the callback, "
        f"{median['Recorder']:.3f} s in the own loop"
    )


if __name__ == "__main__":
    main()
