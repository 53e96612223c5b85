"""The figures of a mutation campaign (tests/benchmarks/mutation.sh), per module, from mutmut's own records
under mutants/.

    python tests/benchmarks/mutation_report.py               the table
    python tests/benchmarks/mutation_report.py --survivors   and every mutant no test killed

A mutant is detected when a test fails on it (killed) or its tests run far past their usual time (timeout:
mutmut stops them; an endless loop, say). Equivalent mutants, which change no behaviour any test could see,
are listed with their reason in mutation_equivalent.txt and left out of the adjusted share. Some more change
behaviour on a CUDA device only (a tensor made on the default device, the histc route chosen by is_cuda): no
test on a CPU-only machine can see them. They are listed there too, their reason starting "[cuda]", and
counted apart:

    raw             (killed + timeout) / all
    adjusted        (killed + timeout) / (all − equivalent − cuda)
    with cuda       (killed + timeout) / (all − equivalent)       cuda-only mutants counted as survivors
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENT = Path(__file__).with_name("mutation_equivalent.txt")
TARGETS = [
    "sftreport/store.py",
    "sftreport/schema.py",
    "sftreport/report/findings.py",
    "sftreport/report/frames.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sftreport" / "record").glob("*.py") if p.stem != "__init__"),
]
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", 24: "timeout",
          -24: "timeout", 152: "timeout", 255: "timeout", None: "unchecked"}  # fmt: skip


COLUMNS = ["killed", "timeout", "survived", "no tests", "unchecked", "other", "equivalent", "cuda"]


def equivalent() -> dict[str, str]:
    """mutant name -> why it is equivalent ('#' starts a comment line)."""
    out = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, why = line.partition(" ")
                out[name] = why.strip()
    return out


def results(path: str) -> dict[str, str]:
    meta = ROOT / "mutants" / (path + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: STATUS.get(code, "suspicious") for name, code in codes.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survivors", action="store_true", help="list the mutants no test killed")
    args = ap.parse_args()
    eq = equivalent()
    cols = COLUMNS
    print(
        f"{'module':24} {'all':>5} "
        + " ".join(f"{c:>9}" for c in cols)
        + f" {'raw':>6} {'adjusted':>8} {'with cuda':>9}"
    )
    total: Counter = Counter()
    survivors = []
    stale = [n for n in eq if not any(n in results(p) for p in TARGETS)]
    for path in TARGETS:
        res = results(path)
        if not res:
            continue
        c: Counter = Counter()
        for name, status in res.items():
            if name in eq and status != "killed":
                c["cuda" if eq[name].startswith("[cuda]") else "equivalent"] += 1
                continue
            if name in eq:
                print(f"note: {name} is listed as equivalent but was killed: take it off the list", file=sys.stderr)
            key = status if status in cols else "other"
            c[key] += 1
            if key in ("survived", "no tests", "unchecked", "other"):
                survivors.append((name, status))
        n = len(res)
        c["all"] = n
        total += c
        print(_row(path, c))
    print(_row("all", total))
    if stale:
        print(f"note: {len(stale)} equivalent entries name no current mutant: {', '.join(stale[:5])}", file=sys.stderr)
    if args.survivors:
        for name, status in sorted(survivors):
            print(f"{status:9} {name}")
    return 0


def _share(found: int, n: int) -> float:
    return found / n if n else float("nan")


def _row(label: str, c: Counter) -> str:
    n, found = c["all"], c["killed"] + c["timeout"]
    cells = " ".join(f"{c[k]:>9}" for k in COLUMNS)
    raw, adj = _share(found, n), _share(found, n - c["equivalent"] - c["cuda"])
    with_cuda = _share(found, n - c["equivalent"])
    return f"{re.sub('^sftreport/', '', label):24} {n:>5} {cells} {raw:>6.1%} {adj:>8.1%} {with_cuda:>9.1%}"


if __name__ == "__main__":
    sys.exit(main())
