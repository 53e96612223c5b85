"""Fuzzing the render stage: run directories damaged in many ways (dropped keys, wrong types, NaN and
infinities, huge and negative numbers, truncated files, hostile strings, emptied or repeated lists). Each
one either renders or is refused with one line (RunDirError, exit code 2 from the command line), never a
traceback; statistics that cannot be negative are refused when they are."""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
from pathlib import Path

import pytest
from report_support import HOSTILE
from synthetic_run import build_run

from sftreport.errors import UserError

CASES = 120  # seeded: the same damaged directories every time
HOSTILE_STRINGS = [HOSTILE, "", "x" * 5000, "\x00\x1b[31m\u202e", "]]>{{ x }}{% raw %}", "../../etc/passwd"]
BAD_NUMBERS = [math.nan, math.inf, -math.inf, 1e308, -1e308, -1, -1e-300, 0, 2**63, 10**30]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("fuzz") / "run", epochs=2, probe_size=16, steps_per_epoch=5)


def _paths(node, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(tree, path, value):
    node = tree
    for key in path[:-1]:
        node = node[key]
    if value is _DROP:
        if isinstance(node, dict):
            del node[path[-1]]
        else:
            node.pop(path[-1])
    else:
        node[path[-1]] = value


_DROP = object()


def _mutation(rng: random.Random, value):
    """A damaged replacement for `value` (or _DROP): mostly an extreme value of the same kind, which the
    schema may accept and the renderer must then survive; sometimes broken structure."""
    if rng.random() < 0.75:
        if isinstance(value, float):
            return rng.choice(BAD_NUMBERS)
        if isinstance(value, int) and not isinstance(value, bool):
            return rng.choice([0, 1, 2**31, 10**12, -1, 10**30])
        if isinstance(value, str):
            return rng.choice(HOSTILE_STRINGS)
        if isinstance(value, list) and value:
            return rng.choice([[], value[: len(value) // 2], value + value])
    return rng.choice([_DROP, "text", [], {}, None, True, [1, 2], {"a": 1}, math.nan])


def _target(rng: random.Random, tree) -> tuple:
    """A path to damage, not only histogram counts (the most numerous leaves by far)."""
    paths = list(_paths(tree))[1:]
    outside_counts = [p for p in paths if "counts" not in p[0]]
    return rng.choice(outside_counts if outside_counts and rng.random() < 0.85 else paths)


def _damage(base: Path, out: Path, seed: int) -> str:
    """Copy `base` to `out` with one kind of damage; returns what was done, in words."""
    rng = random.Random(seed)
    shutil.copytree(base, out)
    run_json, epochs_file = out / "run.json", out / "epochs.jsonl"
    target = rng.choice(["run", "epoch", "epoch", "epoch", "file"])
    if target == "file":
        which = rng.choice([run_json, epochs_file])
        data = which.read_bytes()
        cut = rng.randrange(len(data))
        which.write_bytes(data[:cut] if rng.random() < 0.5 else data[:cut] + b"\xff\xfe garbage \x00" + data[cut:])
        return f"{which.name} cut or spliced at byte {cut}"
    if target == "run":
        tree = json.loads(run_json.read_text())
        path, value = _target(rng, tree)
        _set(tree, path, _mutation(rng, value))
        run_json.write_text(json.dumps(tree))
        return f"run.json {'.'.join(map(str, path))}"
    lines = epochs_file.read_text().splitlines()
    i = rng.randrange(len(lines))
    tree = json.loads(lines[i])
    path, value = _target(rng, tree)
    _set(tree, path, _mutation(rng, copy.deepcopy(value)))
    lines[i] = json.dumps(tree)
    epochs_file.write_text("\n".join(lines) + "\n")
    return f"epochs.jsonl line {i + 1}: {'.'.join(map(str, path))}"


@pytest.mark.parametrize("seed", range(CASES))
def test_a_damaged_run_directory_renders_or_is_refused_in_one_line(base, tmp_path, seed):
    from sftreport.report.render import render_run

    run = tmp_path / "run"
    what = _damage(base, run, seed)
    outs = [tmp_path / "r.md"] + ([tmp_path / "r.html"] if seed % 3 == 0 else [])
    try:
        written = render_run(run, outs)
    except UserError as e:  # RunDirError included: the command line prints it as one line, exit code 2
        message = str(e)
        assert message and "\n" not in message, (what, message)
        assert len(message) < 2000, what
        return
    assert written == outs, what
    for path in outs:
        text = path.read_text(encoding="utf-8")
        assert len(text) > 200, what
        assert HOSTILE not in text, what  # escaped wherever it landed


def test_some_damaged_directories_through_the_command_line(base, tmp_path):
    """The same kinds of damage as a user meets them: exit code 0 or 2, one line, never a traceback."""
    from support import cli

    for seed in (1, 7, 11, 23):
        run = tmp_path / f"run{seed}"
        what = _damage(base, run, 1000 + seed)
        r = cli("render", str(run), "--out", str(tmp_path / f"r{seed}.pdf"))
        assert r.returncode in (0, 2), (what, r.stderr)
        assert "Traceback" not in r.stderr, (what, r.stderr)
        if r.returncode == 2:
            assert len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)


@pytest.mark.parametrize(
    "path, value, needle",
    [
        (("weights", 0, "stats", "count"), -1, "greater than or equal to 0"),
        (("weights", 0, "stats", "m2"), -1e-9, "must not be negative"),
        (("weights", 0, "stats", "zeros"), 10**9, "exceed count"),
        (("weights", 0, "diff_sq"), -0.5, "must not be negative"),
        (("weights", 0, "hist", "counts", 0), -3, "greater than or equal to 0"),
        (("weights", 0, "hist", "hi"), -1e9, "empty or not finite"),
        (("gradients", 0, "nonfinite"), 10**6, "more non-finite steps"),
        (("gradients", 0, "norm_sum"), -1.0, "must not be negative"),
        (("activations", 0, "dead_channels"), 10**6, "more dead channels"),
        (("val", "accuracy"), 0.123456, "is not the confusion matrix's"),
        (("val", "per_class_accuracy", 0), 1.0, "does not follow from the confusion matrix"),
        (("timing", "record_s"), -2.0, "greater than or equal to 0"),
    ],
)
def test_statistics_that_cannot_be_what_they_say_are_refused(base, tmp_path, path, value, needle):
    """Counts and sums of squares are never negative; derived numbers must follow from their counts."""
    from sftreport.errors import RunDirError
    from sftreport.store import read_run

    run = tmp_path / "run"
    shutil.copytree(base, run)
    lines = (run / "epochs.jsonl").read_text().splitlines()
    tree = json.loads(lines[-1])
    _set(tree, path, value)
    lines[-1] = json.dumps(tree)
    (run / "epochs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match=needle) as e:
        read_run(run)
    assert f"epochs.jsonl:{len(lines)}:" in str(e.value) and "\n" not in str(e.value)
