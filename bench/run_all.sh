#!/bin/sh
# Every benchmark of docs/PERFORMANCE.md, in order (about 8 min on a quiet 2-core CPU, 21 with THREADS=1).
# THREADS=1 sh bench/run_all.sh  -> single-threaded runs (results/<name>-t1.json), the robust
# choice on a shared machine; without THREADS torch's default thread count is used.
set -e
cd "$(dirname "$0")/.."
T=${THREADS:+--threads $THREADS}
python bench/bench_encoder.py $T
python bench/bench_decoder.py $T
python bench/bench_query.py $T
python bench/bench_load.py
python bench/bench_budget.py  # simulated clock: no model, about a minute
