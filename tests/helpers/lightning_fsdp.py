"""A Lightning linear probe with the SFTReport callback, in one process or sharded with FSDP2 over two
(Lightning's ModelParallelStrategy, gloo on the CPU; run by tests/test_lightning.py, Lightning starts the
second process by running this script again).

    python tests/helpers/lightning_fsdp.py RUN_DIR 1|2

The same computation either way: the pretrained backbone frozen and in eval mode (BatchNorm uses its
running statistics), only the new head trains; the same batches of 32, split 16 + 16 (the mean of the
halves' mean gradients is the mean over 32); 3 validation batches of 24, so that the second process ends
with an empty batch to join the sharded forward.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning_module import BATCH, Finetune, digits
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, Sampler

from sftreport.config import RecordOptions
from sftreport.integrations.lightning import SFTReport


class EveryWorldth(Sampler):
    """Sample indices rank, rank + world, ... in order: with per-process batches of 16, the k-th batches of
    the two processes together are the k-th batch of 32 of one process (read once the processes exist)."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return iter(range(rank, self.n, world))

    def __len__(self) -> int:
        return self.n // (dist.get_world_size() if dist.is_initialized() else 1)


class LinearProbe(Finetune):
    def __init__(self, shard: bool):
        super().__init__(lr=0.1)
        self.shard = shard
        for name, p in self.net.named_parameters():
            p.requires_grad = name in self.new

    def configure_model(self):
        if self.shard:  # one unit per stage, the rest (stem and head) at the root
            mesh = self.device_mesh["data_parallel"]
            for name in ("layer1", "layer2", "layer3", "layer4"):
                fully_shard(self.net.get_submodule(name), mesh=mesh)
            fully_shard(self.net, mesh=mesh)

    def on_train_epoch_start(self):
        self.net.eval()  # the frozen backbone's BatchNorm keeps its running statistics
        self.net.fc.train()


def main() -> None:
    run_dir, devices = Path(sys.argv[1]), int(sys.argv[2])
    train, val = digits()
    cb = SFTReport(
        probe=(val.tensors[0][:16], val.tensors[1][:16]),
        val_data=DataLoader(val, batch_size=24),
        run_dir=run_dir,
        out=run_dir.with_suffix(".html"),
        options=RecordOptions(grad_every=1),
    )
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if devices == 2 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        callbacks=[cb],
        max_epochs=2,
        limit_train_batches=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # EveryWorldth splits the batches
    )
    batches = DataLoader(train, batch_size=BATCH // devices, sampler=EveryWorldth(len(train)))  # per process
    trainer.fit(LinearProbe(shard=devices == 2), batches)


if __name__ == "__main__":
    main()
