"""`sftreport check RUN_DIR`: the gate near each of its thresholds (tiny runs, every number chosen by hand), its
refusals (one line, exit 2), one end-to-end check in a fresh process, and the GitHub Actions example: valid
YAML, naming only commands and flags that exist, shown verbatim in the README."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from synthetic_run import build_run
from tiny_run import ev, frames, snap

from sftreport.check import gate, summary_markdown
from sftreport.cli import build_parser, main
from sftreport.errors import UserError
from sftreport.schema import EpochSnapshot, Evaluation

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "github_actions.yml"


class WithSource(EpochSnapshot):
    """An epoch of a recorder that also evaluates the source task (the pretrained head on its own data)."""

    source: Evaluation | None = None


def run_of(epochs, **kw):
    return frames(epochs, **kw).run


def test_findings_fail_at_or_above_the_level_asked():
    diverged = run_of([snap(0), snap(1)], status="diverged", planned=3)
    v = gate(diverged)
    assert not v.passed and v.exit_code == 1
    assert v.failures == ["error: The run diverged after 1 epoch [status]"]
    assert gate(diverged, "warning").failures == v.failures  # an alert fails at either level
    interrupted = run_of([snap(0), snap(1)], status="interrupted", planned=3)
    assert gate(interrupted, "error").passed
    v = gate(interrupted, "warning")
    assert v.failures == ["warning: The run was interrupted after epoch 1 [status]"]
    fine = run_of([snap(0, val=ev(1, 10)), snap(1, val=ev(9, 10))])  # a "good" finding never fails
    assert gate(fine, "warning").passed and gate(fine).exit_code == 0


@pytest.mark.parametrize("correct, passes", [(899, False), (900, True), (901, True)])
def test_min_accuracy_near_its_threshold(correct, passes):
    v = gate(run_of([snap(0, val=ev(100, 1000)), snap(1, val=ev(correct, 1000))]), min_accuracy=0.9)
    assert v.passed == passes
    if not passes:
        assert v.failures == [
            "accuracy: validation accuracy 89.9% at epoch 1 is below --min-accuracy 90.0% [min_accuracy]"
        ]


def _forgetting(after: int) -> list:
    return [
        WithSource(epoch=0, step=0, source=ev(900, 1000)),
        WithSource(epoch=1, step=1, source=ev(870, 1000)),
        WithSource(epoch=2, step=2, source=ev(after, 1000)),
    ]


@pytest.mark.parametrize("after, passes", [(851, True), (850, True), (849, False)])  # a drop of 4.9, 5, 5.1 points
def test_max_forgetting_near_its_threshold(after, passes):
    v = gate(run_of(_forgetting(after)), max_forgetting=0.05)
    assert v.passed == passes
    if not passes:
        assert v.failures == [
            "forgetting: source-task accuracy fell 5.1 points (90.0% → 84.9% at epoch 2), more than --max-forgetting "
            "5.0% [max_forgetting]"
        ]


def test_a_threshold_the_run_cannot_answer_is_refused():
    with pytest.raises(UserError, match="has no validation accuracy: --min-accuracy cannot be checked"):
        gate(run_of([snap(0), snap(1)]), min_accuracy=0.5)
    with pytest.raises(UserError, match="has no source-task accuracy"):
        gate(run_of([snap(0), snap(1)]), max_forgetting=0.05)
    late = [
        WithSource(epoch=0, step=0),
        WithSource(epoch=1, step=1, source=ev(2, 2)),
        WithSource(epoch=2, step=2, source=ev(1, 2)),
    ]
    with pytest.raises(UserError, match="has no source-task accuracy at epoch 0"):
        gate(run_of(late), max_forgetting=0.05)


def test_the_summary_says_the_verdict_then_the_runs_summary():
    v = gate(run_of([snap(0, val=ev(1, 10)), snap(1, val=ev(2, 10))]), min_accuracy=0.5)
    md = summary_markdown(v)
    assert md.startswith("## sftreport check: **failed**\n\nChecked: findings at or above error; validation accuracy")
    assert "- accuracy: validation accuracy 20.0% at epoch 1 is below --min-accuracy 50.0% \\[min\\_accuracy\\]" in md
    assert "### sftreport: tiny" in md and "### Findings" in md


# --------------------------------------------------------------------------- the command


def _one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftreport: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("check") / "overfit", epochs=5, overfit_at=2)


def test_bad_input_is_one_line_and_exit_2(capsys, overfit, tmp_path):
    assert "not a run directory" in _one_line_error(capsys, ["check", str(tmp_path / "nothing")])
    newer = tmp_path / "newer"
    shutil.copytree(overfit, newer)
    data = json.loads((newer / "run.json").read_text())
    data["schema_version"] = 99
    (newer / "run.json").write_text(json.dumps(data))
    assert "newer than this sftreport" in _one_line_error(capsys, ["check", str(newer)])
    assert "fraction between 0 and 1" in _one_line_error(capsys, ["check", str(overfit), "--min-accuracy", "90"])
    assert "invalid choice: 'alert'" in _one_line_error(capsys, ["check", str(overfit), "--fail-on", "alert"])
    assert "--max-forgetting cannot be checked" in _one_line_error(
        capsys, ["check", str(overfit), "--max-forgetting", "0.05"]
    )
    assert "is a directory" in _one_line_error(capsys, ["check", str(overfit), "--summary", str(tmp_path)])


def test_check_end_to_end(overfit, tmp_path):
    from support import cli

    r = cli("check", str(overfit))
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.strip().splitlines()[-1].startswith("check passed:")
    summary = tmp_path / "summary.md"
    r = cli("check", str(overfit), "--fail-on", "warning", "--min-accuracy", "0.99", "--summary", str(summary))
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("warning: Overfitting from epoch 3") and lines[0].endswith("[overfitting]")
    assert any(line.startswith("accuracy: validation accuracy") for line in lines)
    assert lines[-1].startswith("check failed:") and f"{len(lines) - 1} failing" in lines[-1]
    assert summary.read_text().startswith("## sftreport check: **failed**")


# --------------------------------------------------------------------------- the CI example


def _commands(workflow: dict) -> list[list[str]]:
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    lines = [line for s in steps if "run" in s for line in s["run"].splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.strip().startswith("sftreport ")]


def test_the_github_actions_example_is_valid_and_names_what_exists():
    import yaml

    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["name"] == "fine-tune"
    assert True in workflow or "on" in workflow  # YAML 1.1 reads the key `on` as true
    steps = workflow["jobs"]["fine-tune"]["steps"]
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert uses == ["actions/checkout", "actions/setup-python", "actions/upload-artifact"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "report.pdf" in upload["with"]["path"]
    assert any("$GITHUB_STEP_SUMMARY" in s.get("run", "") for s in steps)
    commands = _commands(workflow)
    assert [c[1] for c in commands] == ["run", "check"]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for argv in commands:
        command = sub.choices[argv[1]]
        flags = {o for a in command._actions for o in a.option_strings}
        for token in argv[2:]:
            if token.startswith("--"):
                assert token.split("=")[0] in flags, f"sftreport {argv[1]} has no flag {token}"
        command.parse_args(argv[2:])  # the flags take the values given
    check = next(c for c in commands if c[1] == "check")
    assert check[check.index("--fail-on") + 1] == "error" and "--summary" in check
    run = next(c for c in commands if c[1] == "run")
    assert run[run.index("--run-dir") + 1] == check[2]  # the gate checks the run the job made


def test_the_readme_shows_the_example_as_it_is():
    m = re.search(
        r"<!-- example: examples/github_actions.yml -->\s*```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S
    )
    assert m, "the README shows examples/github_actions.yml"
    assert m.group(1) == WORKFLOW.read_text()
