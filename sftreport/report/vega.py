"""Vega-Lite plumbing: chart → JSON-safe spec, specs → a <script> JSON blob, spec → static SVG/PNG,
and the Vega + Vega-Lite + vega-embed JavaScript bundle (inlined once per HTML page).

No NaN or infinity ever reaches JSON (a diverged run has them): they become null, which Vega-Lite
treats as a missing value. Text inside the blob cannot close the <script> element: every `<`, `>` and
`&` is written as a \\u escape, which JSON.parse turns back into the character.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
from pathlib import Path

# the look shared by every chart; fonts: only DejaVu is installed on the machines that make PDFs
CONFIG = {
    "font": "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif",
    "background": "white",
    "padding": 6,
    "axis": {
        "labelFontSize": 11,
        "titleFontSize": 12,
        "titleFontWeight": "normal",
        "labelLimit": 220,
        "titleColor": "#333",
        "labelColor": "#333",
    },
    "legend": {"labelFontSize": 11, "titleFontSize": 11, "titleFontWeight": "normal", "labelLimit": 260},
    "header": {"labelFontSize": 11, "titleFontSize": 12},
    "title": {"fontSize": 12, "fontWeight": "bold", "anchor": "start", "offset": 6},
    "view": {"stroke": "#ddd"},
    "point": {"size": 36},
}


def json_safe(obj):
    """A copy of `obj` with every non-finite float replaced by None (recursively)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def chart_spec(chart) -> dict:
    """The Vega-Lite dict of an Altair chart with its data inlined as CSV, the shared config, and no NaN."""
    import altair as alt

    _frames_as_csv(chart)
    with alt.data_transformers.enable("default", max_rows=None):
        spec = chart.to_dict(validate=False)
    spec = json_safe(spec)
    spec["config"] = {**CONFIG, **spec.get("config", {})}
    return spec


CSV_DIGITS = 5  # significant digits of a drawn number: far finer than a chart's pixels or a tooltip's format


def csv_data(df):
    """A DataFrame as Vega-Lite inline CSV with each column's type given to the parser, or None when a
    column holds something CSV cannot (lists). The rows' keys are not repeated and numbers keep CSV_DIGITS
    significant digits, so a chart's data is several times smaller than JSON rows, for the browser and
    vl-convert alike, and pandas writes it in C. Text is never parsed as numbers (a class named "5" stays
    "5"); a missing, NaN or infinite value is an empty cell, which parses as null (a gap). The exact numbers
    stay in the run directory."""
    import altair as alt
    import numpy as np
    import pandas as pd

    out: dict[str, pd.Series] = {}
    parse: dict[str, str] = {}  # Vega's parse type per column
    for c in df.columns:
        col = df[c]
        if pd.api.types.is_bool_dtype(col):
            out[c], parse[c] = col.map({True: "true", False: "false"}), "boolean"  # Vega reads only lowercase
        elif pd.api.types.is_numeric_dtype(col):
            out[c], parse[c] = col.replace([np.inf, -np.inf], np.nan), "number"
        elif col.map(lambda v: v is None or isinstance(v, str) or (isinstance(v, float) and v != v)).all():
            # text stays text; "string", not null: a null reached Vega unfiltered, and failed there ("Illegal
            # format pattern"), when two views shared one dataset (a confusion matrix equal at both epochs)
            out[c], parse[c] = col, "string"
        else:
            return None
    text = pd.DataFrame(out, index=df.index).to_csv(
        index=False, float_format=f"%.{CSV_DIGITS}g", na_rep="", lineterminator="\n"
    )
    return alt.InlineData(values=text, format=alt.CsvDataFormat(type="csv", parse=parse))


def _frames_as_csv(chart) -> None:
    """Replace every DataFrame given to the chart or its parts (layers, concatenations, facets) by CSV."""
    import altair as alt
    import pandas as pd

    data = getattr(chart, "data", alt.Undefined)
    if isinstance(data, pd.DataFrame):
        csv = csv_data(data)
        if csv is not None:
            chart.data = csv
    for attr in ("layer", "hconcat", "vconcat", "concat"):
        parts = getattr(chart, attr, alt.Undefined)
        if isinstance(parts, list):
            for part in parts:
                _frames_as_csv(part)
    inner = getattr(chart, "spec", alt.Undefined)
    if inner is not alt.Undefined and not isinstance(inner, dict):
        _frames_as_csv(inner)


def script_json(obj) -> str:
    """JSON for inside <script type="application/json">: no `<`, `>`, `&` (so no `</script>`, no `<!--`)."""
    text = json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sftreport"


def javascript_bundle() -> str:
    """vl-convert's Vega + Vega-Lite + vega-embed bundle (~900 KB). Making it takes ~2 s per process, so it
    is cached on disk per vl-convert version (any failure to cache is ignored: it is only slower)."""
    import vl_convert as vlc

    version = getattr(vlc, "__version__", None) or "unknown"
    key = f"vega-bundle-{version}-{vlc.get_vega_version()}-{vlc.get_vega_embed_version()}.js"
    path = _cache_dir() / key
    try:
        text = path.read_text(encoding="utf-8")
        if "vegaEmbed" in text and len(text) > 100_000:
            return text
    except OSError:
        pass
    text = vlc.javascript_bundle()  # type: ignore[call-arg]  # the stub omits snippet's default (None: the standard snippet)
    if "</script" in text.lower():  # today's bundle has none (checked); never inline one that does
        text = text.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bundle.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass
    return text


# vl-convert measures text slowly: truncating labels to a width (labelLimit) measures each label many times
# and a list of fallback fonts is resolved per measurement. Static charts use one font and no truncation.
STATIC_CONFIG = {
    "font": "DejaVu Sans",
    "axis": {"labelLimit": 0},
    "legend": {"labelLimit": 0},
    "header": {"labelLimit": 0},
}


def static_spec(spec: dict) -> dict:
    """`spec` with the static-drawing config on top (shallow copies; the input is not changed)."""
    config = dict(spec.get("config", {}))
    for key, value in STATIC_CONFIG.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return {**spec, "config": config}


RASTER_ABOVE_ELEMENTS = 150  # about a bare line chart: WeasyPrint draws SVG at ~0.5 ms per element
JPEG_QUALITY = 92  # with 4:4:4 chroma (no subsampling): text and thin lines stay clean


RASTER_SCALE = 2.0


def printable(value):
    """Every string in a spec without control and format characters (a NUL, an escape sequence, a bidi
    override: a damaged run's layer name) but newlines and tabs, which inline CSV needs. vl-convert's text
    layout panicked on such a label, and its panic aborts the whole process (measured, vl-convert 1.x); a
    browser draws them, so only static drawing is cleaned."""
    if isinstance(value, str):
        return _unprintable().sub("", value)
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


@functools.cache
def _unprintable() -> re.Pattern[str]:
    """Unicode's control (Cc) and format (Cf) characters, newline and tab excepted (built once, ~30 ms)."""
    import unicodedata

    chars = [chr(i) for i in range(0x10000) if unicodedata.category(chr(i)) in ("Cc", "Cf") and chr(i) not in "\n\t"]
    chars += [chr(i) for i in (0x110BD, 0x110CD, *range(0x1BCA0, 0x1BCA4), *range(0x1D173, 0x1D17B), 0xE0001)]
    chars += [chr(i) for i in range(0xE0020, 0xE0080)]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


def to_static(spec: dict, fmt: str = "auto", scale: float = RASTER_SCALE) -> tuple[bytes, str]:
    """The chart drawn by vl-convert: (bytes, MIME type).

    SVG keeps text and lines vector, but WeasyPrint draws SVG slowly (about 0.5 ms per element), so a chart
    with more elements is rasterised at `scale`× (about 190 dpi at A4 width) instead. The raster is JPEG at
    high quality rather than PNG: WeasyPrint embeds JPEG bytes as they are, whereas it decodes and
    re-compresses every PNG (~50 ms per chart). `fmt`: "svg", "png", "jpeg", or "auto"."""
    import vl_convert as vlc

    svg = vlc.vegalite_to_svg(printable(static_spec(spec)), allowed_base_urls=[])
    if fmt == "svg" or (fmt == "auto" and svg.count("<") <= RASTER_ABOVE_ELEMENTS):
        return svg.encode("utf-8"), "image/svg+xml"
    png = vlc.svg_to_png(svg, scale=scale)
    if fmt == "png":
        return png, "image/png"
    return _jpeg(png), "image/jpeg"


def _jpeg(png: bytes) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return out.getvalue()


def placeholder_svg(message: str) -> tuple[bytes, str]:
    """A small SVG that says `message` (escaped), in place of a chart."""
    from html import escape

    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="640" height="40" viewBox="0 0 640 40">'
        '<rect width="640" height="40" fill="#fff8c5"/><text x="10" y="25" font-family="DejaVu Sans, sans-serif" '
        f'font-size="12" fill="#82071e">{escape(message)}</text></svg>'
    )
    return svg.encode("utf-8"), "image/svg+xml"
