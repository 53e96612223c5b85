#!/usr/bin/env bash
# Rebuild sample_reports/compare.html and compare.pdf: the embedded default fine-tuned once per strategy
# (10 epochs each, on the CPU in about 10 s each), then compared. Run from the repository's root:
#
#     bash sample_reports/make_compare.sh
#     STRATEGIES="full linear-probe freeze-until:layer3 lp-ft" bash sample_reports/make_compare.sh   # more runs
#
# The run directories stay in runs/sample-<strategy>/ (replaced on each rebuild).
set -euo pipefail
STRATEGIES="${STRATEGIES:-full linear-probe freeze-until:layer3}"
SFTREPORT="${SFTREPORT:-sftreport}"
runs=()
for strategy in $STRATEGIES; do
  dir="runs/sample-${strategy//:/-}"
  rm -rf "$dir"
  $SFTREPORT run --strategy "$strategy" --run-dir "$dir" --out "$dir/report.html" --quiet
  runs+=("$dir")
done
$SFTREPORT compare "${runs[@]}" --out sample_reports/compare.html --out sample_reports/compare.pdf
