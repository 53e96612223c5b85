"""Progress on stderr: a live rich display on a terminal, plain lines when stderr is not a terminal or
in CI (CI=true), nothing with --quiet. Only rank 0 shows anything."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class Progress:
    """`start_epoch`, `update` (every step; cheap), `end_epoch`, `message`, `close`."""

    PLAIN_EVERY_S = 10.0  # plain mode: a step line at most this often, plus one line per epoch

    def __init__(self, epochs: int, steps_per_epoch: int, enabled: bool = True):
        self.epochs, self.steps = epochs, steps_per_epoch
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true", "yes")
        self._started = time.perf_counter()
        self._last_plain = 0.0
        self._last_check = 0.0
        self._rich: RichProgress | None = None
        self._task: TaskID | None = None
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._rich = RichProgress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} img/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._rich.start()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_epoch(self, epoch: int) -> None:
        self._epoch, self._epoch_started = epoch, time.perf_counter()
        if self._rich is not None:
            self._task = self._rich.add_task(
                "train", total=self.steps, epoch=epoch, epochs=self.epochs, loss="-", rate="-"
            )

    def due(self) -> bool:
        """Whether to read the loss now (a host sync): a few times a second on a live display, once a
        second otherwise (the runner also checks it for NaN then)."""
        now = time.perf_counter()
        if now - self._last_check < (0.25 if self.live else 1.0):
            return False
        self._last_check = now
        return True

    def update(self, step: int, images: int, loss: float | None) -> None:
        if not self.enabled:
            return
        rate = images / max(1e-9, time.perf_counter() - self._epoch_started)
        if self._rich is not None:
            assert self._task is not None, "start_epoch() comes before update()"
            fields: dict[str, Any] = {"rate": f"{rate:,.0f}"}
            if loss is not None:
                fields["loss"] = f"{loss:.4f}"
            self._rich.update(self._task, completed=step, **fields)
        elif loss is not None and time.perf_counter() - self._last_plain > self.PLAIN_EVERY_S:
            self._last_plain = time.perf_counter()
            eta = self._eta(step)
            print(
                f"epoch {self._epoch}/{self.epochs} step {step}/{self.steps} loss {loss:.4f} "
                f"{rate:,.0f} img/s eta {_fmt_eta(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def _eta(self, step: int) -> float:
        done = (self._epoch - 1) * self.steps + step
        total = self.epochs * self.steps
        elapsed = time.perf_counter() - self._started
        return elapsed / max(done, 1) * (total - done)

    def end_epoch(self, line: str) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, completed=self.steps)
            self._rich.remove_task(self._task)
        self.message(line)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
