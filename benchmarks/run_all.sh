#!/usr/bin/env bash
# Every benchmark, one after the other: bash benchmarks/run_all.sh [--quick]
# Each prints its own table, with ratios against a baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
quick=()
[ "${1:-}" = "--quick" ] && quick=(--quick)
"$python" benchmarks/segmentation_quality.py
"$python" benchmarks/bench_embedding.py "${quick[@]}"
"$python" benchmarks/bench_finetune.py "${quick[@]}"
if [ -n "${DISPLAY:-}" ]; then
  "$python" benchmarks/bench_responsiveness.py "${quick[@]}"
else
  xvfb-run -a "$python" benchmarks/bench_responsiveness.py "${quick[@]}"
fi
