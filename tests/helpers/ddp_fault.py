"""Launched by torchrun from test_distributed.py: rank 1 fails in its 3rd training step, as a real
fault would (an exception inside the loop), while rank 0 waits for it in a collective."""

import os
import sys

import torch.nn.functional as F

import sftreport.train.runner as runner
from sftreport.cli import main

if os.environ.get("RANK") == "1":
    calls = {"n": 0}
    real = F.cross_entropy

    def failing_cross_entropy(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure on rank 1")
        return real(*args, **kwargs)

    runner.F = type("F", (), {"cross_entropy": staticmethod(failing_cross_entropy)})

sys.exit(main(sys.argv[1:]))
