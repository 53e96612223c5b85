"""Hand-planted one-line bugs where mutmut cannot reach: it never mutates a decorated function (@property,
@cached_property, pydantic's @model_validator, @torch.no_grad(), @contextmanager), and that is most of
frames.py, the schema's validators and derived numbers, WeightProbe.measure, evaluate, describe, the gradient
fold and the recorder's probe pass. Each bug is planted alone in a copy of the project, the fast tests of
[tool.mutmut] run against it, and the table says which were caught. Run by hand (a few minutes):

    python tests/benchmarks/planted_bugs.py [--jobs 2] [--only frames]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

F, S = "sftreport/report/frames.py", "sftreport/schema.py"
W, E, AR = "sftreport/record/weights.py", "sftreport/record/evaluation.py", "sftreport/record/architecture.py"
G, R, A = "sftreport/record/gradients.py", "sftreport/record/recorder.py", "sftreport/record/activations.py"
FE, IM = "sftreport/record/features.py", "sftreport/record/images.py"

# (file, the line as it is, the line with the bug); each line must occur exactly once in its file
BUGS: list[tuple[str, str, str]] = [
    (F, '"val_accuracy": num(e.val.accuracy) if e.val else NAN,', '"val_accuracy": num(e.val.loss) if e.val else NAN,'),
    (F, '"x": (e.epoch - 1) + (p.step - start) / span,', '"x": e.epoch + (p.step - start) / span,'),
    (F, "span = max(1, e.step - start)", "span = max(1, e.step)"),
    (F, "start = prev_step if prev_step is not None else e.steps[0].step - e.steps[0].steps",
        "start = e.steps[0].step - e.steps[0].steps"),
    (F, "return [e for e in self.epochs if e.epoch > 0]", "return [e for e in self.epochs if e.epoch >= 0]"),
    (F, "return next((EvalPoint(e.epoch, e.val) for e in self.epochs if e.val is not None), None)",
        "return next((EvalPoint(e.epoch, e.val) for e in self.epochs[1:] if e.val is not None), None)"),
    (F, "return next((EvalPoint(e.epoch, e.val) for e in reversed(self.epochs) if e.val is not None), None)",
        "return next((EvalPoint(e.epoch, e.val) for e in self.epochs if e.val is not None), None)"),
    (F, "return arch.new_params == arch.total_params", "return arch.new_params > 0"),
    (F, "return bool(first) and all(w.new for w in first)", "return bool(first) and any(w.new for w in first)"),
    (F, 'a["ref"] += w.ref_sq', 'a["ref"] = w.ref_sq'),
    (F, '"frozen": a["trainable"] == 0,', '"frozen": a["trainable"] < a["params"],'),
    (F, 'ratio = _ratio(a["upd"], a["before"]) if a["has_upd"] and a["before"] > 0 else NAN',
        'ratio = _ratio(a["upd"], a["ref"]) if a["has_upd"] and a["before"] > 0 else NAN'),
    (F, 'a["matrix"] = a["matrix"] or len(w.shape) >= 2', 'a["matrix"] = a["matrix"] or len(w.shape) > 2'),
    (F, 'a["sq"] += m * m', 'a["sq"] += m'),
    (F, 'a["nonfinite"] = max(a["nonfinite"], g.nonfinite)', 'a["nonfinite"] += g.nonfinite'),
    (F, '"samples": max(g.samples for g in e.gradients),', '"samples": sum(g.samples for g in e.gradients),'),
    (F, '"order": self._order(base, seen[a.module]) + seen[a.module] * 1e-4,',
        '"order": self._order(a.module, seen[a.module]) + seen[a.module] * 1e-4,'),
    (F, '"order": act_order.get(c.module, self._order(c.module.split("#")[0], seen[c.module])),',
        '"order": self._order(c.module.split("#")[0], seen[c.module]),'),
    (F, '"accuracy": num(e.features.knn_accuracy),', '"accuracy": num(e.features.probe_accuracy),'),
    (F, '"std": a.stats.std,', '"std": a.stats.var,'),
    (S, "return self.m2 / self.count if self.count else math.nan",
        "return self.m2 / (self.count - 1) if self.count > 1 else math.nan"),
    (S, "return math.sqrt(self.var) if self.count else math.nan", "return math.sqrt(self.m2) if self.count else math.nan"),
    (S, "return self.zeros / self.count if self.count else math.nan", "return self.zeros / self.count if self.count else 0.0"),
    (S, "return sum(self.counts) + self.below + self.above", "return sum(self.counts) + self.above"),
    (S, "step = (self.hi - self.lo) / n", "step = (self.hi - self.lo) / (n + 1)"),
    (S, "return math.sqrt(self.diff_sq / self.ref_sq)", "return self.diff_sq / self.ref_sq"),
    (S, "if self.update_sq is None or not self.before_update_sq:", "if self.update_sq is None:"),
    (S, "finite = self.samples - self.nonfinite", "finite = self.samples"),
    (S, "return self.dead_channels / self.channels if self.channels else math.nan",
        "return self.dead_channels / self.stats.count if self.channels else math.nan"),
    (S, "if self.count and abs(self.accuracy - correct / self.count) > 1e-9:",
        "if self.count and abs(self.accuracy - correct / self.count) > 1e-2:"),
    (S, "if (acc is None) != (total == 0) or (acc is not None and abs(acc - row[i] / total) > 1e-9):",
        "if (acc is None) != (total == 0):"),
    (S, "if self.min > self.max:  # NaN compares false: a diverged tensor passes", "if self.min >= self.max:"),
    (S, 'data["m2"] = max(sq - total * mean, 0.0) if n and math.isfinite(sq - total * mean) else sq',
        'data["m2"] = max(sq - total * total, 0.0) if n and math.isfinite(sq - total * mean) else sq'),
    (S, 'for rows, what in ((self.modules, "module"), (self.blocks, "block")):',
        'for rows, what in ((self.modules, "module"),):'),
    (S, "if self.probe is not None and any(c >= len(self.dataset.classes) for c in self.probe.labels):",
        "if self.probe is not None and any(c > len(self.dataset.classes) for c in self.probe.labels):"),
    (S, "if self.schema_version > SCHEMA_VERSION:", "if self.schema_version > SCHEMA_VERSION + 1:"),
    (S, "if self.nonfinite > self.samples:", "if self.nonfinite > self.samples + 1:"),
    (W, "diff_sq=row[6],", "diff_sq=row[7],"),
    (W, "self._before_sq = mom[:, 2] + mom[:, 0] * mom[:, 1] ** 2", "self._before_sq = mom[:, 2]"),
    (W, "new=name in self.new,", "new=not p.requires_grad,"),
    (W, "self._awaiting_update, self._update = True, None", "self._awaiting_update, self._update = False, None"),
    (E, "model.train(was_training)", "model.train()"),
    (E, 'loss_sum += loss_fn(logits, y, reduction="sum").double()', 'loss_sum += loss_fn(logits, y, reduction="mean").double()'),
    (E, "confusion += count_bins(y * num_classes + pred, num_classes * num_classes)",
        "confusion += count_bins(pred * num_classes + y, num_classes * num_classes)"),
    (AR, 'depth=0 if not name else name.count(".") + 1,', 'depth=0 if not name else name.count("."),'),
    (AR, "calls[name] = calls.get(name, 0) + 1", "calls[name] = 1"),
    (AR, "shapes.setdefault(name, _shape(output))", "shapes[name] = _shape(output)"),
    (G, "torch.maximum(self._acc[:, 1], part[:, 1]),", "part[:, 1],"),
    (G, "part = torch.stack([clean.sum(0), clean.amax(0), ((~finite).float() * weight).sum(0), weight.sum(0)], dim=1)",
        "part = torch.stack([clean.sum(0), clean.amax(0), (~finite).float().sum(0), weight.sum(0)], dim=1)"),
    (R, "        model.train(was_training)\n    if not isinstance(out, torch.Tensor)",
        "        model.train()\n    if not isinstance(out, torch.Tensor)"),
    (R, "            self.model.train(was_training)\n        return seconds", "            self.model.train()\n        return seconds"),
    (R, "                probes.activations.fix_bins()", "                pass"),
    (A, "                calls.clear()", "                pass"),
    (FE, "sink.append(args[0].detach().reshape(args[0].shape[0], -1).float())",
         "sink.append(args[0].detach().reshape(-1, args[0].shape[-1]).float())"),
    (IM, "pixels = (w / scale * 127.5 + 127.5).clamp(0, 255).round().to(torch.uint8).numpy()",
         "pixels = (w / scale * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()"),
    (IM, "m = maps[channels].float().cpu().numpy()", "m = maps[: len(channels)].float().cpu().numpy()"),
]  # fmt: skip


def selection() -> list[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return cfg["pytest_add_cli_args_test_selection"]


def copy_project(dest: Path) -> Path:
    for part in ("sftreport", "tests", "templates"):
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def try_bug(copy: Path, bug: tuple[str, str, str], tests: list[str]) -> tuple[bool, float, str]:
    path, old, new = bug
    target = copy / path
    original = target.read_text()
    assert original.count(old) == 1, f"{path}: the line to change occurs {original.count(old)} times: {old!r}"
    target.write_text(original.replace(old, new))
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.perf_counter()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        target.write_text(original)
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return r.returncode != 0, time.perf_counter() - t, (failed[0] if failed else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="plant only the bugs of files whose path contains this")
    args = ap.parse_args()
    bugs = [b for b in BUGS if not args.only or args.only in b[0]]
    tests = selection()
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        copies = [copy_project(Path(tmp) / str(i)) for i in range(args.jobs)]
        free = list(copies)

        def run(bug):
            copy = free.pop()
            try:
                return bug, *try_bug(copy, bug, tests)
            finally:
                free.append(copy)

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run, bugs))
    caught = 0
    for (path, old, new), hit, secs, first in results:
        caught += hit
        print(
            f"{'caught' if hit else 'MISSED'} {secs:5.1f} s  {Path(path).name}: {old.strip()[:60]!r} -> {new.strip()[:60]!r}"
        )
        if hit and first:
            print(f"              by {first[:110]}")
    print(f"{caught} of {len(results)} planted bugs caught ({caught / len(results):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
