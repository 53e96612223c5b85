"""`sftreport check RUN_DIR`: a CI gate over a recorded run. Never imports torch.

    sftreport check runs/ci --fail-on error --min-accuracy 0.9 --summary summary.md

Fails (exit code 1, one line per failing finding) when the run's findings (report/findings.py) include one at or
above `--fail-on` (error: an alert — divergence, a failed run, NaN losses or gradients, exploding gradients;
warning: also the warnings — overfitting, accuracy lost after a peak, dead units, update ratios far off, ...),
when the last validation accuracy is below `--min-accuracy`, or when the accuracy on the source task fell by
more than `--max-forgetting` from epoch 0 to the last epoch that measured it. Passes (exit code 0) otherwise.
`--summary FILE.md` writes the verdict and the run's Markdown summary (for $GITHUB_STEP_SUMMARY).

The source task's accuracy is the epoch's `source` evaluation (schema.EpochSnapshot.source, an Evaluation,
recorded when the source task's head and data are at hand); a run without one cannot be checked for
forgetting, which is said in one line (exit code 2) rather than passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sftreport.errors import ExitCode, UserError
from sftreport.report import fmt
from sftreport.report.model import Finding
from sftreport.schema import EpochSnapshot, Evaluation
from sftreport.store import Run, atomic_write_text, check_output_path, read_run

SOURCE_FIELD = "source"  # the epoch's evaluation on the task the model was pretrained for
LEVELS = {"error": ("alert",), "warning": ("alert", "warning")}  # --fail-on: the severities that fail
WORDS = {"alert": "error", "warning": "warning"}
ROUNDING = 1e-9  # on a threshold passes: 90 % of 1,000 images is 0.9 whatever the floating-point rounding


@dataclass
class Verdict:
    run: Run
    failures: list[str] = field(default_factory=list)  # one line each
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # what was checked, in words

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return ExitCode.COMPLETED if self.passed else ExitCode.FAILED


def fraction(value: str) -> float:
    """A command-line fraction in [0, 1] (argparse type)."""
    import argparse

    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (0.9 for 90 %), not {value!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (0.9 for 90 %), not {value}")
    return v


def source_accuracy(snap: EpochSnapshot) -> float | None:
    value = getattr(snap, SOURCE_FIELD, None)
    return value.accuracy if isinstance(value, Evaluation) else None


def gate(
    run: Run, fail_on: str = "error", min_accuracy: float | None = None, max_forgetting: float | None = None
) -> Verdict:
    """The verdict on `run`; a UserError when a threshold asks for a measure the run does not have."""
    from sftreport.report.findings import derive_findings
    from sftreport.report.frames import RunFrames

    frames = RunFrames(run)
    v = Verdict(run, findings=derive_findings(frames))
    severities = LEVELS[fail_on]
    v.checked.append(f"findings at or above {fail_on}")
    for f in v.findings:
        if f.severity in severities:
            v.failures.append(f"{WORDS[f.severity]}: {f.title} [{f.rule}]")
    if min_accuracy is not None:
        last = frames.last_eval
        if last is None:
            raise UserError(f"{run.root} has no validation accuracy: --min-accuracy cannot be checked")
        v.checked.append(f"validation accuracy at least {fmt.pct(min_accuracy)}")
        if last.eval.accuracy < min_accuracy - ROUNDING:
            v.failures.append(
                f"accuracy: validation accuracy {fmt.pct(last.eval.accuracy)} at epoch {last.epoch} is below "
                f"--min-accuracy {fmt.pct(min_accuracy)} [min_accuracy]"
            )
    if max_forgetting is not None:
        measured = [(e.epoch, acc) for e in run.epochs if (acc := source_accuracy(e)) is not None]
        if len(measured) < 2 or measured[0][0] != 0:
            raise UserError(
                f"{run.root} has no source-task accuracy at epoch 0 and after it (recorded without the source task's "
                "data): --max-forgetting cannot be checked"
            )
        (_, before), (epoch, after) = measured[0], measured[-1]
        drop = before - after
        v.checked.append(f"source-task accuracy falling at most {fmt.pct(max_forgetting)}")
        if drop > max_forgetting + ROUNDING:
            v.failures.append(
                f"forgetting: source-task accuracy fell {fmt.points(drop)[1:]} ({fmt.pct(before)} → {fmt.pct(after)} "
                f"at epoch {epoch}), more than --max-forgetting {fmt.pct(max_forgetting)} [max_forgetting]"
            )
    return v


def summary_markdown(v: Verdict) -> str:
    """The verdict, then the run's own Markdown summary (headline numbers and findings)."""
    from sftreport.report.markdown import render_markdown
    from sftreport.report.render import altair_unchecked
    from sftreport.report.sections import build_report
    from sftreport.report.templating import md_escape

    head = ["## sftreport check: " + ("passed" if v.passed else "**failed**"), ""]
    head.append("Checked: " + md_escape("; ".join(v.checked)) + ".")
    head.append("")
    for line in v.failures:
        head.append(f"- {md_escape(line)}")
    if v.failures:
        head.append("")
    with altair_unchecked():
        report = build_report(v.run, "html")
    return "\n".join(head) + "\n" + render_markdown(report).replace("## sftreport:", "### sftreport:", 1)


def check_run(
    run_dir: Path,
    fail_on: str = "error",
    min_accuracy: float | None = None,
    max_forgetting: float | None = None,
    summary: Path | None = None,
) -> Verdict:
    if summary is not None:
        check_output_path(summary)
    run = read_run(Path(run_dir))
    v = gate(run, fail_on, min_accuracy, max_forgetting)
    if summary is not None:
        atomic_write_text(summary, summary_markdown(v))
    return v
