"""The same small fine-tune recorded twice (run by tests/test_fsdp.py): in one process with a plain model,
and under torchrun with the model sharded by FSDP2's `fully_shard` over gloo.

    python tests/helpers/fsdp_record.py RUN_DIR                            # one process
    torchrun --nproc-per-node 2 tests/helpers/fsdp_record.py RUN_DIR       # two processes, sharded

The computation is the same in both: no BatchNorm (GroupNorm normalises each sample alone), every
global batch of 16 split into equal halves (FSDP averages the halves' mean gradients: the mean over 16),
the probe set the same on every process, the validation set split into equal numbers of batches (the shorter shard padded with an empty one). The
model is built so that the shards are hard: a 1×6×1×1 convolution whose second shard is empty, a
GroupNorm weight of mean 1 and spread 1e-6, tensors that split 2 + 1 rows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from sftreport import Recorder
from sftreport.config import RecordOptions
from sftreport.train.data import ImageTensors, eval_batches

GLOBAL_BATCH, STEPS, EPOCHS = 16, 3, 2


def model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 1, 1),  # weight 1×6×1×1, bias of 1: the second process holds empty shards
        nn.Flatten(),
        nn.Linear(64, 3),  # 3 rows: shards of 2 and 1
    )
    with torch.no_grad():
        m[1].weight.copy_(1 + 1e-6 * torch.randn(4))  # a mean far larger than its spread
    return m


def data() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    keep = torch.tensor(d.target) < 3
    x = torch.tensor(d.images, dtype=torch.float32)[keep].div(16).unsqueeze(1)  # 1×8×8
    return x, torch.tensor(d.target)[keep]


def main() -> None:
    run_dir = Path(sys.argv[1])
    sharded = "WORLD_SIZE" in os.environ
    rank, world = 0, 1
    if sharded:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    net = model()
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for layer in net:
            if any(True for _ in layer.parameters()):
                fully_shard(layer)
        fully_shard(net)
    if sharded:  # what each process holds, for the test to check that the shards are as hard as intended
        from sftreport.record.sharded import local

        shards = {n: local(p).numel() for n, p in net.named_parameters()}
        (run_dir.parent / f"{run_dir.name}.shards{rank}.json").write_text(json.dumps(shards))
    x, y = data()
    train_x, train_y = x[: GLOBAL_BATCH * STEPS], y[: GLOBAL_BATCH * STEPS]
    # 33 validation samples: 17 and 16, in batches of 8: the second process ends with an empty batch, so
    # that both run 3 forward passes (a sharded forward is a collective)
    val_set = ImageTensors(x[200:233], y[200:233])
    val = list(eval_batches(val_set, 8, rank, world, None, torch.device("cpu"), equal_batches=sharded))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    rec = Recorder(
        net,
        probe=(x[300:312], y[300:312]),
        val_data=val,
        run_dir=run_dir,
        options=RecordOptions(grad_every=1, image_every=1),
        writer=rank == 0,
    )
    for _ in range(EPOCHS):
        for step in range(STEPS):
            batch = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
            xb, yb = train_x[batch][rank::world], train_y[batch][rank::world]  # equal halves
            logits = net(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step(loss, logits, yb)
        rec.epoch_end()
    rec.finish(out=run_dir / "report.html")
    if sharded:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
