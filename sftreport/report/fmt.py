"""Small number formatters shared by the findings, the sections, the templates (as Jinja filters) and the
Markdown summary. Every one of them accepts None and non-finite values and says so in words."""

from __future__ import annotations

import math


def _bad(v) -> str | None:
    if v is None:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "∞" if f > 0 else "−∞"
    return None


def num(v, digits: int = 3) -> str:
    """A float with `digits` significant digits; scientific notation for very small or large values."""
    bad = _bad(v)
    if bad is not None:
        return bad
    f = float(v)
    if f == 0:
        return "0"
    if abs(f) < 1e-3 or abs(f) >= 1e6:
        return f"{f:.{max(0, digits - 1)}e}"
    if abs(f) >= 10**digits:
        return f"{f:,.0f}"
    return f"{f:.{digits}g}"


def pct(v, digits: int = 1) -> str:
    """A fraction as a percentage: 0.9312 → '93.1%'."""
    bad = _bad(v)
    if bad is not None:
        return bad
    f = float(v) * 100
    if f != 0 and abs(f) < 10**-digits:
        return f"{f:.1g}%"
    return f"{f:.{digits}f}%"


def change(v) -> str:
    """A relative change as a percentage with 3 significant digits: 0.000871 → '0.0871%', 24.6 → '2,461%'."""
    bad = _bad(v)
    if bad is not None:
        return bad
    f = float(v) * 100
    if abs(f) >= 1000:
        return f"{f:,.0f}%"
    if f == 0:
        return "0%"
    return f"{f:.3g}%"


def points(v, digits: int = 1) -> str:
    """A difference of two fractions in percentage points, signed: 0.05 → '+5.0 points'."""
    bad = _bad(v)
    if bad is not None:
        return bad
    return f"{float(v) * 100:+.{digits}f} points"


def integer(v) -> str:
    bad = _bad(v)
    if bad is not None:
        return bad
    return f"{int(v):,}"


def count(v) -> str:
    """A parameter count, short: 23528522 → '23.5 M'."""
    bad = _bad(v)
    if bad is not None:
        return bad
    n = int(v)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return str(n)


def duration(v) -> str:
    bad = _bad(v)
    if bad is not None:
        return bad
    s = float(v)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def shape(v) -> str:
    if not v:
        return "–"
    return "×".join(str(x) for x in v)


def sci(v, digits: int = 2) -> str:
    bad = _bad(v)
    if bad is not None:
        return bad
    return f"{float(v):.{digits - 1}e}"


FILTERS = {
    "num": num,
    "pct": pct,
    "change": change,
    "points": points,
    "integer": integer,
    "count": count,
    "duration": duration,
    "shape": shape,
    "sci": sci,
}


def finite(v) -> bool:
    """A real number that is not NaN or infinite (None and strings are not)."""
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)
