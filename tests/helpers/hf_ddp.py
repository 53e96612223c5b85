"""A 2-process Trainer fit on the CPU (gloo) with SFTReportCallback, run by tests/test_transformers.py as

    python -m torch.distributed.run --nproc_per_node 2 tests/helpers/hf_ddp.py RUN_DIR REPORT OUT_DIR

256 training images, 16 per process and step (8 optimizer steps an epoch); the Trainer's log history goes
to OUT_DIR/history.json from world process zero."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hf_vit import accuracy, datasets, digit_images, tiny_vit, training_args
from transformers import Trainer

from sftreport.integrations.transformers import SFTReportCallback


def main() -> None:
    run_dir, report, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    train, val = datasets()
    x, y = digit_images()
    cb = SFTReportCallback(probe=(x[1400:1432], y[1400:1432]), val_data=val, run_dir=run_dir, out=report)
    args = training_args(out / "hf", logging_steps=1, per_device_train_batch_size=16)
    trainer = Trainer(tiny_vit(), args, train_dataset=train, eval_dataset=val, compute_metrics=accuracy, callbacks=[cb])
    trainer.train()
    if trainer.state.is_world_process_zero:
        (out / "history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main()
