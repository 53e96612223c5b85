"""sftreport: what did supervised fine-tuning change in my model?

`Recorder` (imports torch) instruments a training loop; `render` (no torch) turns a run directory
into HTML, PDF or Markdown reports. Both are imported lazily so that rendering never loads torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Recorder", "RunDescription", "SourceTask", "__version__", "render"]


def __getattr__(name: str):
    if name in ("Recorder", "RunDescription"):
        from sftreport.record import recorder

        return getattr(recorder, name)
    if name == "SourceTask":
        from sftreport.record.source_task import SourceTask

        return SourceTask
    if name == "render":
        from sftreport.report.render import render_run

        return render_run
    raise AttributeError(f"module 'sftreport' has no attribute {name!r}")
