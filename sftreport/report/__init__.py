"""The render stage: a run directory → HTML, PDF and Markdown reports. Never imports torch.

    render.py     render_run(run_dir, outs): the entry point; the format follows each output's extension
    frames.py     the run as tidy pandas frames, aggregated per layer and epoch (what charts and rules read)
    findings.py   explicit rules over the frames → findings with their evidence
    charts.py     Altair charts, pure functions of the frames
    sections.py   builds the Report (model.py: what the report says) for one medium, "html" or "pdf"
    vega.py       Vega-Lite plumbing: JSON-safe specs, the <script> blob, the JavaScript bundle, static drawing
    convert.py    draws the PDF's charts with vl-convert on two cores (a helper process)
    html.py       the self-contained interactive page
    pdf.py        the A4 PDF (WeasyPrint), charts as static images, no network
    markdown.py   the short summary for a CI job summary or a review comment
    templating.py Jinja2 environments (autoescaped HTML; Markdown escaped through `finalize`) and filters
    fmt.py        the number formatters the templates and findings share

Templates and stylesheets live in the repository's top-level templates/ (sftreport/templates/ once installed).
"""
