"""Realistic run directories without torch: the schema's pydantic models filled with plausible numbers.

    build_run(tmp_path / "run", epochs=6)                       # a small ResNet on digits, completed
    build_run(path, arch="resnet50", epochs=10, probe_size=256)  # the size of a recorded resnet50 run
    build_run(path, overfit_at=3)                                # validation loss turns up after epoch 3
    build_run(path, status="diverged", diverge_at=4)             # NaN losses, non-finite gradients

Every knob that a findings rule looks at can be switched on or off here, so each rule has a run that
triggers it and one that does not. The numbers follow the shapes real fine-tuning runs show (loss
decays, later layers move more than earlier ones, the new head moves most), deterministic per seed.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sftreport.schema import (
    CKA,
    ActivationStat,
    Architecture,
    BlockSummary,
    ComponentSummary,
    DatasetInfo,
    Environment,
    EpochSnapshot,
    Evaluation,
    FeatureMapImage,
    Features,
    GradStat,
    Histogram,
    Images,
    ModuleInfo,
    ProbeInfo,
    Projection,
    RunInfo,
    StepPoint,
    TensorStats,
    Timing,
    WeightStat,
)
from sftreport.store import RunWriter

DIGITS = [str(i) for i in range(10)]
BINS = 32


# --------------------------------------------------------------------------- architecture


@dataclass
class Mod:
    name: str
    type: str
    out: list[int] | None
    params: list[tuple[str, list[int]]] = field(default_factory=list)  # (parameter name, shape)
    calls: int = 1

    @property
    def depth(self) -> int:
        return 0 if not self.name else self.name.count(".") + 1

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for _, s in self.params)


def _conv(name, cin, cout, k, out):
    return Mod(name, "Conv2d", out, [("weight", [cout, cin, k, k])])


def _bn(name, c, out):
    return Mod(name, "BatchNorm2d", out, [("weight", [c]), ("bias", [c])])


def resnet_layout(arch: str, classes: int, size: int) -> tuple[list[Mod], list[str]]:
    """named_modules() of a torchvision-style ResNet, and the probed modules (stem, blocks, head)."""
    if arch == "small":
        widths, counts, bottleneck, stem_stride = (16, 32, 64, 128), (1, 1, 1, 1), False, 1
    elif arch == "resnet50":
        widths, counts, bottleneck, stem_stride = (64, 128, 256, 512), (3, 4, 6, 3), True, 2
    else:
        raise ValueError(arch)
    exp = 4 if bottleneck else 1
    mods = [Mod("", "ResNet", [classes])]
    s = size // stem_stride
    k = 7 if bottleneck else 3
    mods += [
        _conv("conv1", 3, widths[0], k, [widths[0], s, s]),
        _bn("bn1", widths[0], [widths[0], s, s]),
        Mod("relu", "ReLU", [widths[0], s, s]),
        Mod("maxpool", "MaxPool2d", [widths[0], s // 2, s // 2]),
    ]
    s //= 2
    probed = ["maxpool"]
    cin = widths[0]
    for li, (w, n) in enumerate(zip(widths, counts), 1):
        stride = 1 if li == 1 else 2
        so = s // stride
        mods.append(Mod(f"layer{li}", "Sequential", [w * exp, so, so]))
        for b in range(n):
            p = f"layer{li}.{b}"
            bs = so
            mods.append(Mod(p, "Bottleneck" if bottleneck else "BasicBlock", [w * exp, bs, bs]))
            if bottleneck:
                mods += [
                    _conv(f"{p}.conv1", cin, w, 1, [w, s if b == 0 else bs, s if b == 0 else bs]),
                    _bn(f"{p}.bn1", w, [w, bs, bs]),
                    _conv(f"{p}.conv2", w, w, 3, [w, bs, bs]),
                    _bn(f"{p}.bn2", w, [w, bs, bs]),
                    _conv(f"{p}.conv3", w, w * 4, 1, [w * 4, bs, bs]),
                    _bn(f"{p}.bn3", w * 4, [w * 4, bs, bs]),
                    Mod(f"{p}.relu", "ReLU", [w, bs, bs], calls=3),
                ]
            else:
                mods += [
                    _conv(f"{p}.conv1", cin, w, 3, [w, bs, bs]),
                    _bn(f"{p}.bn1", w, [w, bs, bs]),
                    Mod(f"{p}.relu", "ReLU", [w, bs, bs], calls=2),
                    _conv(f"{p}.conv2", w, w, 3, [w, bs, bs]),
                    _bn(f"{p}.bn2", w, [w, bs, bs]),
                ]
            if b == 0 and (stride != 1 or cin != w * exp):
                mods += [
                    Mod(f"{p}.downsample", "Sequential", [w * exp, bs, bs]),
                    _conv(f"{p}.downsample.0", cin, w * exp, 1, [w * exp, bs, bs]),
                    _bn(f"{p}.downsample.1", w * exp, [w * exp, bs, bs]),
                ]
            cin = w * exp
            probed.append(p)
        s = so
    mods += [
        Mod("avgpool", "AdaptiveAvgPool2d", [cin, 1, 1]),
        Mod("fc", "Linear", [classes], [("weight", [classes, cin]), ("bias", [classes])]),
    ]
    probed.append("fc")
    return mods, probed


def architecture(mods: list[Mod], trainable: set[str], new: set[str], size: int) -> Architecture:
    rows = []
    for m in mods:
        full = [f"{m.name}.{p}" if m.name else p for p, _ in m.params]
        sizes = [math.prod(s) for _, s in m.params]
        rows.append(
            ModuleInfo(
                name=m.name,
                type=m.type,
                depth=m.depth,
                output_shape=m.out,
                calls=m.calls,
                params=sum(sizes),
                trainable=sum(n for f, n in zip(full, sizes) if f in trainable),
                new=sum(n for f, n in zip(full, sizes) if f in new),
            )
        )
    blocks = []
    for m in mods:
        if m.depth != 1:
            continue
        members = [r for r in rows if r.name == m.name or r.name.startswith(m.name + ".")]
        blocks.append(
            BlockSummary(
                name=m.name,
                type=m.type,
                params=sum(r.params for r in members),
                trainable=sum(r.trainable for r in members),
                new=sum(r.new for r in members),
            )
        )
    # the components a recording names a ResNet by (record/components.py): its stem and stages, and the head
    top = [m.name for m in mods if m.depth == 1]
    parts = [("backbone", [n for n in top if n != "avgpool" and n != "fc"]), ("fc", ["fc"])]
    components = []
    for cname, prefixes in parts:
        members = [r for r in rows if any(r.name == p or r.name.startswith(p + ".") for p in prefixes)]
        components.append(
            ComponentSummary(
                name=cname,
                modules=prefixes,
                params=sum(r.params for r in members),
                trainable=sum(r.trainable for r in members),
                new=sum(r.new for r in members),
            )
        )
    return Architecture(
        model_type=mods[0].type,
        modules=rows,
        blocks=blocks,
        components=components,
        total_params=sum(r.params for r in rows),
        trainable_params=sum(r.trainable for r in rows),
        new_params=sum(r.new for r in rows),
        input_shape=[3, size, size],
    )


# --------------------------------------------------------------------------- numbers


def gaussian_hist(rng, lo, hi, mean, std, count, bins=BINS) -> Histogram:
    edges = np.linspace(lo, hi, bins + 1)
    cdf = 0.5 * (
        1 + np.vectorize(math.erf)((np.concatenate([[-np.inf], edges, [np.inf]]) - mean) / (std * math.sqrt(2)))
    )
    probs = np.diff(cdf)
    counts = np.round(probs * count).astype(int)
    counts[np.argmax(counts)] += count - counts.sum()
    return Histogram(lo=lo, hi=hi, counts=[int(c) for c in counts[1:-1]], below=int(counts[0]), above=int(counts[-1]))


def relu_hist(rng, lo, hi, scale, count, zero_frac, bins=BINS) -> Histogram:
    """Non-negative outputs: a spike of zeros, then a half-normal tail."""
    zeros = int(count * zero_frac)
    tail = gaussian_hist(rng, -hi, hi, 0.0, scale, (count - zeros) * 2, bins * 2)
    half = tail.counts[bins:]
    h = np.zeros(bins, dtype=int)
    edges = np.linspace(lo, hi, bins + 1)
    centers = (np.linspace(0, hi, bins + 1)[:-1] + np.linspace(0, hi, bins + 1)[1:]) / 2
    idx = np.clip(np.searchsorted(edges, centers) - 1, 0, bins - 1)
    for i, c in zip(idx, half):
        h[i] += c
    h[int(np.clip(np.searchsorted(edges, 0.0) - 1, 0, bins - 1))] += zeros
    h[-1] += max(0, (count - zeros) - int(h.sum() - zeros))
    h[int(np.argmax(h))] -= max(0, int(h.sum()) - count)  # rounding: never more values than the outputs have
    total = int(h.sum())
    return Histogram(lo=lo, hi=hi, counts=[int(c) for c in h], below=0, above=max(0, count - total))


def stats(count, mean, std, lo, hi, zeros=0) -> TensorStats:
    return TensorStats(count=count, mean=mean, m2=count * std * std, min=lo, max=hi, zeros=zeros)


def evaluation(rng, acc, loss, classes, per_class_n) -> Evaluation:
    n = len(classes)
    conf = np.zeros((n, n), dtype=int)
    for c in range(n):
        a = float(np.clip(acc + rng.normal(0, 0.05), 0, 1))
        right = round(a * per_class_n)
        conf[c, c] = right
        wrong = per_class_n - right
        others = [o for o in range(n) if o != c]
        if others and wrong:
            p = rng.dirichlet(np.ones(len(others)) * 0.5)
            spread = rng.multinomial(wrong, p)
            for o, k in zip(others, spread):
                conf[c, o] += k
        elif wrong:
            conf[c, c] += wrong
    count = int(conf.sum())
    correct = int(np.trace(conf))
    per_class = [float(conf[i, i] / conf[i].sum()) if conf[i].sum() else None for i in range(n)]
    return Evaluation(
        loss=loss, accuracy=correct / count, count=count, confusion=conf.tolist(), per_class_accuracy=per_class
    )


def png(rng, base: np.ndarray, jitter: float, zoom: int = 8) -> bytes:
    """A blocky picture (low-resolution `base` plus noise, scaled up `zoom` times): compresses like real tiles."""
    from PIL import Image

    arr = np.clip(base.astype(float) + rng.normal(0, jitter, base.shape), 0, 255).astype(np.uint8)
    arr = arr.repeat(zoom, axis=0).repeat(zoom, axis=1)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the run


def build_run(
    root: Path,
    *,
    name: str = "synthetic fine-tuning run",
    arch: str = "small",
    epochs: int = 6,
    planned_epochs: int | None = None,
    classes: list[str] | None = None,
    status: str = "completed",
    status_detail: str = "",
    strategy: str = "full",
    probes: bool = True,
    images: bool = True,
    val: bool = True,
    probe_size: int = 64,
    steps_per_epoch: int = 30,
    overfit_at: int | None = None,
    dead_growth: bool = False,
    nonfinite_at: int | None = None,
    explode_at: int | None = None,
    diverge_at: int | None = None,
    update_scale: float = 1e-3,
    accuracy_drop: bool = False,
    tsne: bool = False,
    seed: int = 0,
    image_size: int | None = None,
    config: dict | None = None,
    val_blowup: float = 1.0,
    hot_layer: str | None = None,
) -> Path:
    """Write a run directory at `root` (epochs 0..`epochs`) and return it.

    `val_blowup`: validation loss after epoch 0 multiplied by this (an unstable run). `hot_layer`: a module
    whose weights are overwritten (relative change ×1000) by far too large updates (update ratio ×300)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    classes = classes or DIGITS
    n_cls = len(classes)
    size = image_size or (32 if arch == "small" else 64)
    mods, probed = resnet_layout(arch, n_cls, size)
    params = [(f"{m.name}.{p}", m, shape) for m in mods for p, shape in m.params]
    new = {n for n, m, _ in params if m.name == "fc"}
    if strategy == "linear-probe":
        trainable = set(new)
    else:
        trainable = {n for n, _, _ in params}
    arch_info = architecture(mods, trainable, new, size)
    planned = planned_epochs if planned_epochs is not None else epochs
    if status == "diverged" and diverge_at is None:
        diverge_at = max(1, epochs)

    writer = RunWriter(root)
    info = RunInfo(
        name=name,
        status="running",
        started_at="2025-01-01T10:00:00+00:00",
        config=config
        if config is not None
        else {
            "model": "digits_resnet" if arch == "small" else arch,
            "epochs": planned,
            "lr": 0.01,
            "batch_size": 64,
            "strategy": strategy,
            "record": {"probe_size": probe_size, "hist_bins": BINS},
        },
        model="digits_resnet" if arch == "small" else arch,
        weights="digits_resnet_0to4.pt (digits 0-4)" if arch == "small" else "IMAGENET1K_V2",
        strategy=strategy,
        dataset=DatasetInfo(
            name="digits" if arch == "small" else "cifar10",
            classes=classes,
            train_size=1200,
            val_size=597,
            image_size=size,
            source="scikit-learn load_digits",
        ),
        environment=Environment(
            python="3.12.3",
            platform="Linux-6.1-x86_64",
            torch="2.14.1",
            torchvision="0.29.1",
            sftreport="0.1.0",
            device="cpu",
            device_name="x86_64",
            precision="fp32",
            git_commit="abc1234",
            hostname="builder",
        ),
        architecture=arch_info if probes else None,
        probe=ProbeInfo(labels=[i % n_cls for i in range(probe_size)], size=probe_size) if probes else None,
        planned_epochs=planned,
    )
    writer.write_run(info)

    n_params = len(params)
    depth_of = {n: i / max(1, n_params - 1) for i, (n, _, _) in enumerate(params)}
    # the pretrained reference per parameter tensor: (mean, std)
    ref = {}
    for n, m, shape in params:
        numel = math.prod(shape)
        if m.type == "BatchNorm2d":
            ref[n] = (1.0, 0.15) if n.endswith("weight") else (0.0, 0.1)
        elif n.endswith("bias"):
            ref[n] = (0.0, 0.02)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else numel
            ref[n] = (0.0, math.sqrt(2.0 / fan_in))
    bins_range = {n: (mu - 5 * sd, mu + 5 * sd) for n, (mu, sd) in ref.items()}
    grad_base = {n: float(np.exp(rng.normal(-3, 0.7))) * (3 if n.startswith("fc") else 1) for n, _, _ in params}
    upd_noise = {n: float(np.exp(rng.normal(0, 0.4))) for n, _, _ in params}
    act_info = {m.name: m for m in mods}
    act_scale = {p: 0.5 + 1.5 * i / max(1, len(probed) - 1) for i, p in enumerate(probed)}
    centers = rng.normal(0, 1, (n_cls, 2))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True) + 1e-9
    noise = rng.normal(0, 1, (probe_size, 2))
    labels = np.array([i % n_cls for i in range(probe_size)])
    base_filters = rng.integers(0, 255, (5, 16, 3), dtype=np.uint8)
    base_maps = {p: rng.integers(0, 255, (6, 54, 3), dtype=np.uint8) for p in probed}
    image_mods = [probed[0], probed[len(probed) // 2], probed[-2]]

    probe_context = dict(
        params=params,
        ref=ref,
        bins_range=bins_range,
        depth_of=depth_of,
        trainable=trainable,
        new=new,
        grad_base=grad_base,
        upd_noise=upd_noise,
        update_scale=update_scale,
        steps_per_epoch=steps_per_epoch,
        nonfinite_at=nonfinite_at,
        explode_at=explode_at,
        probed=probed,
        act_info=act_info,
        act_scale=act_scale,
        dead_growth=dead_growth,
        probe_size=probe_size,
        centers=centers,
        noise=noise,
        labels=labels,
        n_cls=n_cls,
        tsne=tsne,
        hot_layer=hot_layer,
    )
    step = 0
    lr0 = 0.01
    for e in range(0, epochs + 1):
        diverged = diverge_at is not None and e >= diverge_at
        t = e / max(1, planned)
        # losses and accuracies
        val_loss = 0.25 + 2.05 * math.exp(-e / 1.3)
        if overfit_at is not None and e > overfit_at:
            val_loss = 0.25 + 2.05 * math.exp(-overfit_at / 1.3) + 0.12 * (e - overfit_at)
        val_acc = 0.1 + 0.85 * (1 - math.exp(-e / 1.1))
        if accuracy_drop:
            val_acc = 0.6 - 0.05 * e
            val_loss = 1.0 + 0.1 * e
        train_loss = None if e == 0 else 0.15 + 2.1 * math.exp(-e / 1.2)
        train_acc = None if e == 0 else min(1.0, val_acc + 0.03 * e)
        if e:
            val_loss *= val_blowup
        if diverged:
            val_loss, val_acc = math.nan, 1.0 / n_cls
            train_loss = math.nan
            train_acc = 1.0 / n_cls
        lr = lr0 * 0.5 * (1 + math.cos(math.pi * t)) if e else None
        snap = EpochSnapshot(epoch=e, step=step, train_loss=train_loss, train_accuracy=train_acc, lr=lr)
        if e:
            pts = []
            for k in range(steps_per_epoch):
                s = step + k + 1
                frac = (e - 1) + (k + 1) / steps_per_epoch
                loss = 0.15 + 2.1 * math.exp(-frac / 1.2) * float(np.exp(rng.normal(0, 0.12)))
                if diverged and k > steps_per_epoch // 2:
                    loss = math.nan
                lr_s = lr0 * 0.5 * (1 + math.cos(math.pi * frac / max(1, planned)))
                pts.append(StepPoint(step=s, loss=loss, lr=lr_s, steps=1))
            step += steps_per_epoch
            snap.step = step
            snap.steps = pts
        if val:
            snap.val = evaluation(rng, val_acc, val_loss, classes, 12)
        snap.timing = Timing(
            train_s=0.0 if e == 0 else 4.2, eval_s=0.4, record_s=0.25, samples_per_s=None if e == 0 else 480.0
        )
        if probes:
            _probe_epoch(snap, rng, e, diverged=diverged, **probe_context)
            if images and (e == 0 or e == epochs or e % 5 == 0):
                snap.images = _images(writer, rng, e, base_filters, base_maps, image_mods)
        writer.append_epoch(snap)

    info.status = status
    info.status_detail = status_detail or {
        "interrupted": f"stopped after epoch {epochs} of {planned} (SIGINT)",
        "diverged": f"training loss became NaN at epoch {diverge_at}",
        "failed": "RuntimeError: CUDA out of memory",
    }.get(status, "")
    if status != "running":
        info.finished_at = "2025-01-01T10:03:12+00:00"
        info.duration_s = 192.4 + epochs
    writer.write_run(info)
    return root


def _probe_epoch(
    snap,
    rng,
    e,
    params,
    ref,
    bins_range,
    depth_of,
    trainable,
    new,
    grad_base,
    upd_noise,
    update_scale,
    steps_per_epoch,
    nonfinite_at,
    explode_at,
    diverged,
    probed,
    act_info,
    act_scale,
    dead_growth,
    probe_size,
    centers,
    noise,
    labels,
    n_cls,
    tsne,
    hot_layer=None,
):
    weights = []
    for n, m, shape in params:
        numel = math.prod(shape)
        mu, sd = ref[n]
        is_new = n in new
        rel = 0.0
        if e and n in trainable:
            base = 0.4 if is_new else (0.002 + 0.03 * depth_of[n] ** 2)
            rel = base * math.sqrt(e) * (1 + 0.1 * rng.normal())
            rel = abs(rel) * (1000 if m.name == hot_layer else 1)
        ref_sq = numel * (sd * sd + mu * mu)
        sd_now = sd * (1 + rel * 0.5)
        lo, hi = bins_range[n]
        update_sq = before_sq = None
        if e and n in trainable:
            before_sq = ref_sq * (1 + rel) ** 2
            ratio = update_scale * upd_noise[n] * (3 if is_new else 1) * (300 if m.name == hot_layer else 1)
            update_sq = before_sq * ratio * ratio
        weights.append(
            WeightStat(
                name=n,
                module=m.name,
                shape=shape,
                trainable=n in trainable,
                new=is_new,
                stats=stats(numel, mu, sd_now, mu - 4 * sd_now, mu + 4 * sd_now),
                hist=gaussian_hist(rng, lo, hi, mu, sd_now, numel),
                diff_sq=rel * rel * ref_sq,
                ref_sq=ref_sq,
                update_sq=update_sq,
                before_update_sq=before_sq,
            )
        )
    if diverged:  # the weights of a diverged run hold NaN: sums and changes become NaN, as the recorder writes them
        nan = math.nan
        for w in weights:
            if w.trainable:
                w.stats.mean = w.stats.m2 = w.stats.min = w.stats.max = nan
                w.diff_sq = nan
                if w.update_sq is not None:
                    w.update_sq = w.before_update_sq = nan
    snap.weights = weights
    if e:
        samples = steps_per_epoch // 5
        grads = []
        for n, m, _ in params:
            if n not in trainable:
                continue
            g = grad_base[n] * (1 + 0.3 * math.exp(-e))
            bad = 0
            if explode_at is not None and e >= explode_at:
                g *= 50 * (e - explode_at + 1)
            if (nonfinite_at is not None and e >= nonfinite_at) or diverged:
                bad = max(1, samples // 3)
            grads.append(
                GradStat(
                    name=n,
                    module=m.name,
                    samples=samples,
                    norm_sum=g * (samples - bad),
                    norm_max=g * 2.5,
                    nonfinite=bad,
                )
            )
        snap.gradients = grads
    acts = []
    for i, p in enumerate(probed):
        m = act_info[p]
        shape = m.out
        count = probe_size * math.prod(shape)
        channels = shape[0]
        scale = act_scale[p] * (1 + 0.05 * e)
        if m.type == "Linear":
            mu, sd = 0.0, 2.0 + 0.5 * e
            acts.append(
                ActivationStat(
                    module=p,
                    type=m.type,
                    shape=shape,
                    stats=stats(count, mu, sd, -4 * sd, 4 * sd),
                    channels=channels,
                    dead_channels=0,
                    nonnegative=False,
                    hist=gaussian_hist(rng, -10, 10, mu, sd, count),
                )
            )
            continue
        zero_frac = 0.45 + 0.02 * i / len(probed)
        dead = 0
        if dead_growth and i >= len(probed) // 2:
            dead = int(channels * min(0.6, 0.08 * e))
            zero_frac = min(0.95, zero_frac + dead / channels)
        mean = scale * 0.4
        acts.append(
            ActivationStat(
                module=p,
                type=m.type,
                shape=shape,
                stats=stats(count, mean, scale * 0.6, 0.0, scale * 6, int(count * zero_frac)),
                channels=channels,
                dead_channels=dead,
                nonnegative=True,
                hist=relu_hist(rng, -0.1 * 6 * act_scale[p], 6.6 * act_scale[p], scale * 0.8, count, zero_frac),
            )
        )
    if diverged:
        for a in acts:
            a.stats.mean = a.stats.m2 = a.stats.min = a.stats.max = math.nan
    snap.activations = acts
    spread = 0.6 + 2.5 * (1 - math.exp(-e / 1.5))
    xy = centers[labels] * spread + noise * 0.7
    if diverged:
        xy = np.full_like(xy, np.nan)
    projections = [
        Projection(method="pca", x=[round(float(v), 4) for v in xy[:, 0]], y=[round(float(v), 4) for v in xy[:, 1]])
    ]
    if tsne:
        t = centers[labels] * 20 + rng.normal(0, 5, xy.shape)
        projections.append(Projection(method="tsne", x=t[:, 0].tolist(), y=t[:, 1].tolist()))
    knn = min(1.0, 0.45 + 0.5 * (1 - math.exp(-e / 1.2)))
    snap.features = Features(
        module="fc",
        dim=128,
        projections=projections,
        knn_accuracy=knn,
        knn_k=5,
        probe_accuracy=min(1.0, max(0.0, snap.val.accuracy if snap.val else knn)),
    )
    snap.cka = [
        CKA(
            module=p,
            value=math.nan
            if diverged
            else 1.0
            if e == 0
            else max(0.0, 1 - 0.7 * (i / len(probed)) ** 2 * (1 - math.exp(-e / 2))),
        )
        for i, p in enumerate(probed)
    ]


def _images(writer, rng, e, base_filters, base_maps, image_mods) -> Images:
    img = Images(
        filters=writer.write_asset(f"filters_e{e:03d}.png", png(rng, base_filters, 4.0 * e)), filters_module="conv1"
    )
    for p in image_mods:
        for s in range(2):
            path = writer.write_asset(f"fmap_{p}_s{s}_e{e:03d}.png", png(rng, base_maps[p], 6.0 * e))
            img.feature_maps.append(FeatureMapImage(module=p, sample=s, path=path, channels=8))
    return img
