#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut, run by hand like the benchmarks (not in CI).
#
#   tests/benchmarks/mutation.sh                  every module, then the table
#   tests/benchmarks/mutation.sh findings frames  some modules (store schema findings frames stats activations
#                                                 features gradients weights evaluation architecture images
#                                                 saved_weights recorder)
#   tests/benchmarks/mutation.sh --report         only the table of the last campaign (add --survivors)
#
# Configuration: [tool.mutmut] in pyproject.toml (the modules mutated and the fast tests run against each
# mutant). mutmut copies the project into ./mutants (ignored by git) and keeps its results there; each module
# is run in turn so that a long campaign can be resumed module by module. JOBS (default 2) sets the workers.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
[[ -x .venv/bin/python && -z ${PYTHON:-} ]] && PY=.venv/bin/python
report() { "$PY" tests/benchmarks/mutation_report.py "$@"; }
if [[ ${1:-} == --report ]]; then
    shift
    report "$@"
    exit
fi

ALL=(store schema report.findings report.frames record.stats record.activations record.features record.gradients
     record.weights record.evaluation record.architecture record.images record.saved_weights record.recorder)
modules=()
for m in "${@:-${ALL[@]}}"; do
    case $m in
        store | schema | report.* | record.*) modules+=("$m") ;;
        findings | frames) modules+=("report.$m") ;;
        *) modules+=("record.$m") ;;
    esac
done

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one thread per worker: JOBS workers use JOBS cores
mkdir -p mutants
start=$SECONDS
for m in "${modules[@]}"; do
    echo "== sftreport.$m"
    t=$SECONDS
    # the names select the module's mutants and make mutmut test them again (results are otherwise kept)
    "$PY" -m mutmut run --max-children "${JOBS:-2}" "sftreport.$m.*" >"mutants/run-$m.log" 2>&1 || {
        tail -n 30 "mutants/run-$m.log"
        exit 1
    }
    rm -f "mutants/run-$m.log"
    echo "   $((SECONDS - t)) s"
done
echo "== $((SECONDS - start)) s in all"
report
