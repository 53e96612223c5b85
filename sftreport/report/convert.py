"""Draw the PDF's charts with vl-convert on two cores.

vl-convert holds the GIL and runs one chart at a time, so a helper process (`python -m
sftreport.report.convert`, started early so its start-up overlaps the report's construction) takes charts
from the front of the list (in the order the report builds them) while this process takes them from the
back; whoever is free takes the next one. A subprocess rather than multiprocessing: spawning would re-run the caller's
`__main__` (a training script that renders at its end). Anything wrong with the helper (no second core,
not POSIX, it died, it is slow to answer) and this process simply draws the rest itself.

Protocol on the helper's pipes: request `<n>\\n` + n bytes of JSON `[spec, fmt]`; answer
`<n> <mime>\\n` + n bytes, or `0 error/<message>\\n`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections import deque
from pathlib import Path

from sftreport.report import vega

MIN_CHARTS = 4  # fewer charts than this are not worth a second process
HELPER_QUEUE = 2  # requests outstanding at the helper
ANSWER_TIMEOUT_S = 120


class Helper:
    def __init__(self) -> None:
        import sftreport

        env = dict(os.environ)
        root = str(Path(sftreport.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sftreport.report.convert"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes (PIPE above)
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    @classmethod
    def start(cls, charts: int | None = None) -> Helper | None:
        """A helper when it can help: a POSIX system with a second core, and enough charts."""
        if os.name != "posix" or (os.cpu_count() or 1) < 2 or os.environ.get("SFTREPORT_NO_HELPER"):
            return None
        if charts is not None and charts < MIN_CHARTS:
            return None
        try:
            return cls()
        except OSError:
            return None

    def send(self, spec: dict, fmt: str) -> None:
        body = json.dumps([spec, fmt], allow_nan=False).encode("utf-8")
        self.stdin.write(b"%d\n" % len(body) + body)
        self.stdin.flush()

    def ready(self, timeout: float = 0.0) -> bool:
        r, _, _ = select.select([self.stdout], [], [], timeout)
        return bool(r)

    def receive(self) -> tuple[bytes, str]:
        if not self.ready(ANSWER_TIMEOUT_S):
            raise TimeoutError("chart helper did not answer")
        header = self.stdout.readline().decode("ascii").split(" ", 1)
        if len(header) != 2:
            raise EOFError("chart helper ended")
        n, mime = int(header[0]), header[1].strip()
        if mime.startswith("error/"):
            raise RuntimeError(mime[6:])
        data = self.stdout.read(n)
        if len(data) != n:
            raise EOFError("chart helper ended")
        return data, mime

    def close(self) -> None:
        try:
            self.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class Drawer:
    """Draws charts as they are handed in. While the report is still being built (`add`), charts go to the
    helper, which starts on them at once; `finish` then shares what is left: the helper takes from the
    front, this process from the back, whoever is free takes the next one. Without a helper (or once it
    failed) this process draws everything itself."""

    def __init__(self, helper: Helper | None = None, fmt: str = "auto"):
        self.helper, self.fmt = helper, fmt
        self.specs: dict[str, dict] = {}
        self.results: dict[str, tuple[bytes, str]] = {}
        self.todo: deque[str] = deque()  # not yet given to anyone
        self.sent: deque[str] = deque()  # at the helper, oldest first (it always has the next one waiting)

    def add(self, key: str, spec: dict) -> None:
        self.specs[key] = spec
        self.todo.append(key)
        self._feed()
        self._poll()

    def draw_own(self) -> None:
        """Draw every chart not already given to the helper (from the back), keeping the helper fed; what the
        helper still works on is left to `result` / `finish`."""
        while self.todo:
            self._feed()
            if self.todo:
                key = self.todo.pop()
                self.results[key] = _draw(self.specs[key], self.fmt)
                self._poll()

    def result(self, key: str) -> tuple[bytes, str]:
        """One chart, waiting for the helper if it has it (or drawing it here if the helper failed)."""
        while key not in self.results:
            if key in self.todo:
                self.todo.remove(key)
                self.results[key] = _draw(self.specs[key], self.fmt)
            elif self.sent:
                self._collect()
            else:
                raise KeyError(key)
        return self.results[key]

    def finish(self) -> dict[str, tuple[bytes, str]]:
        """Every chart added, drawn; closes the helper."""
        try:
            self.draw_own()
            while self.sent:
                self._collect()
            self.draw_own()  # what a failed helper handed back
        finally:
            self.close()
        return self.results

    def close(self) -> None:
        if self.helper is not None:
            self.helper.close()
            self.helper = None

    def _feed(self) -> None:
        while self.helper is not None and len(self.sent) < HELPER_QUEUE and self.todo:
            key = self.todo.popleft()
            try:
                self.helper.send(self.specs[key], self.fmt)
                self.sent.append(key)
            except OSError:
                self.todo.appendleft(key)
                self._drop(self.helper)

    def _poll(self) -> None:
        while self.helper is not None and self.sent and self.helper.ready():
            self._collect()

    def _collect(self) -> None:
        """The helper's answer to its oldest request; on any trouble, drop it and take its work back."""
        helper = self.helper
        assert helper is not None, "requests are outstanding only at a live helper (_drop takes them back)"
        try:
            self.results[self.sent[0]] = helper.receive()
            self.sent.popleft()
        except (OSError, EOFError, TimeoutError, RuntimeError, ValueError):
            self._drop(helper)

    def _drop(self, helper: Helper) -> None:
        helper.proc.kill()
        helper.proc.wait()
        self.helper = None
        self.todo.extend(self.sent)
        self.sent.clear()


def _draw(spec: dict, fmt: str) -> tuple[bytes, str]:
    """One chart; a chart that cannot be drawn becomes a one-line note in its place, not a failed report."""
    try:
        return vega.to_static(spec, fmt)
    except Exception as e:  # vl-convert raises plain RuntimeError/ValueError with a Rust backtrace
        return vega.placeholder_svg(f"This chart could not be drawn: {str(e).splitlines()[0][:160]}")


def warm_up() -> None:
    """vl-convert's first chart in a process costs ~0.5 s (its JavaScript runtime, fonts, the rasteriser)."""
    spec = {
        "data": {"values": [{"a": 1, "b": "x"}]},
        "mark": "point",
        "title": "warm-up",
        "encoding": {"x": {"field": "a", "type": "quantitative"}, "color": {"field": "b", "type": "nominal"}},
    }
    vega.to_static(spec, "png")


def _serve() -> None:
    """The helper: warm vl-convert up, then answer requests until stdin closes. A thread reads requests as
    they come, so the caller's writes never wait on our (possibly blocked) writes: no pipe deadlock."""
    import queue
    import threading

    requests: queue.Queue = queue.Queue()

    def read() -> None:
        stdin = sys.stdin.buffer
        while True:
            line = stdin.readline()
            if not line:
                requests.put(None)
                return
            requests.put(stdin.read(int(line)))

    threading.Thread(target=read, daemon=True).start()
    warm_up()
    stdout = sys.stdout.buffer
    while (body := requests.get()) is not None:
        spec, fmt = json.loads(body)
        data, mime = _draw(spec, fmt)
        stdout.write(f"{len(data)} {mime}\n".encode("ascii") + data)
        stdout.flush()


if __name__ == "__main__":
    _serve()
