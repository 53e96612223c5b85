"""A 2-process Lightning DDP fit on the CPU with the SFTReport callback (run by tests/test_lightning.py;
Lightning's ddp strategy starts the second process by running this script again), then a second fit in
the same processes resumed from the checkpoint of its first epoch to 3 epochs.

    python tests/helpers/lightning_ddp.py RUN_DIR REPORT CKPT_DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_module import BATCH, Finetune, digits
from torch.utils.data import DataLoader

from sftreport.integrations.lightning import SFTReport


def main() -> None:
    run_dir, report, ckpt_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    train, val = digits()
    for epochs, ckpt_path in ((2, None), (3, ckpt_dir / "epoch=0.ckpt")):
        cb = SFTReport(
            probe=(val.tensors[0][:16], val.tensors[1][:16]),
            val_data=DataLoader(val, batch_size=16),  # 4 batches: each process evaluates 2 of them
            run_dir=run_dir,
            out=report,
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            callbacks=[cb, ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1)],
            max_epochs=epochs,
            limit_train_batches=3,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Finetune(), DataLoader(train, batch_size=BATCH), ckpt_path=ckpt_path)
        if ckpt_path is None and trainer.is_global_zero:  # what the first fit recorded
            shutil.copy(run_dir / "epochs.jsonl", ckpt_dir.parent / "first.jsonl")


if __name__ == "__main__":
    main()
