"""A 2-process Lightning DDP fit on the CPU with the SFTReport callback (run by tests/test_lightning.py;
Lightning's ddp strategy starts the second process by running this script again).

    python tests/helpers/lightning_ddp.py RUN_DIR REPORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning_module import BATCH, Finetune, digits
from torch.utils.data import DataLoader

from sftreport.integrations.lightning import SFTReport


def main() -> None:
    run_dir, report = Path(sys.argv[1]), Path(sys.argv[2])
    train, val = digits()
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
        callbacks=[cb],
        max_epochs=2,
        limit_train_batches=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Finetune(), DataLoader(train, batch_size=BATCH))


if __name__ == "__main__":
    main()
