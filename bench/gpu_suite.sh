#!/usr/bin/env bash
# One command for a bare GPU machine (see ../shared/gpu/README.md): the book's run records first, then every
# benchmark, each step under its own time limit and all of them under one budget, records and logs in one folder.
#
#   bash bench/gpu_suite.sh [--dry-run] [--out DIR] [--budget SECONDS] [--benchmarks-only]
#
# The records step can take most of one call; --benchmarks-only, in a second call, runs the benchmarks alone.
#
# Needs only what that machine has (python, torch, numpy, pandas, scipy, transformers, tqdm, tensorboard): no install
# of recbook (PYTHONPATH is the checkout), no Jupyter, nbdev, faiss, fastapi or MiniLM package. The MiniLM text
# vectors come from the cache that travels with the working tree: before the trip, on the CPU,
#   RECBOOK_CACHE=$PWD/.cache/recbook python -c "from recbook.data import load_dataset; \
#     from recbook.towers import catalogue_text_vectors as v; v(load_dataset('beauty').items['text'].tolist(), 'minilm')"
# and carry `.cache` (about 19 MB). Committed run records are copied into DIR first, so only missing or stale runs
# train there; bring DIR/results/beauty/*.json back into results/beauty/.  The runs go in parallel (bench/run_records.sh). --dry-run prints the plan and checks the
# prerequisites without training anything (the tests run it on the CPU).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
BUDGET=560  # seconds: under 9.5 minutes, so that one device call (10 minutes at most) holds it all
DRY=0
RECORDS=1
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --benchmarks-only) RECORDS=0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$ROOT:$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}
export RECBOOK_CACHE=${RECBOOK_CACHE:-$ROOT/.cache/recbook}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT/results/beauty"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
STARTED=$OUT/.started  # its time tells this call's benchmark records from older ones
touch "$STARTED"

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT COMMAND...: run under min(LIMIT, what is left of the budget); skipped when under 60 s are left
# (a dry run plans the worst case: every step uses its whole limit)
PLANNED=0 LAST_STATUS=0 LAST_SECONDS=0
step() {
  local name=$1 limit=$2
  shift 2
  local used=$SECONDS
  [ "$DRY" = 1 ] && used=$PLANNED
  local left=$((BUDGET - used))
  if [ "$left" -lt 60 ]; then say "skipped  $name (budget spent: ${used}s of ${BUDGET}s)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$DRY" = 1 ]; then PLANNED=$((PLANNED + limit)); say "plan     $name  (limit ${limit}s): $*"; return; fi
  local start=$SECONDS status=0
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1 || status=$?
  LAST_STATUS=$status LAST_SECONDS=$((SECONDS - start))
  say "$( [ $status = 0 ] && echo done || echo "rc=$status" )     $name  ${LAST_SECONDS}s (limit ${limit}s)"
}

# prerequisites: the modules a training run imports, and the cached MiniLM vectors
DRY=$DRY $PYTHON - <<'PY' || { say "prerequisites missing: see above"; exit 1; }
import importlib.util, os, sys
missing = [m for m in ("torch", "numpy", "pandas", "scipy", "transformers", "tqdm") if importlib.util.find_spec(m) is None]
if missing: sys.exit(f"missing modules: {missing}")
import torch
from recbook.data import load_dataset
from recbook.towers import _cache_dir, catalogue_text_vectors
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no GPU)")
if os.environ["DRY"] == "1": sys.exit(print("a dry run: the MiniLM cache is not checked"))
try:
    catalogue_text_vectors(load_dataset("beauty").items["text"].tolist(), "minilm")
    print("MiniLM text vectors: cached under", _cache_dir())
except Exception as error:  # no MiniLM package here: the cache must have come along
    sys.exit(f"MiniLM text vectors are not cached under {_cache_dir()} ({error}); see the header of this script")
PY
cp -n "$ROOT"/results/beauty/*.json "$OUT/results/beauty/" 2>/dev/null || true

if [ "$RECORDS" = 1 ]; then
  [ "$DRY" = 1 ] && bash bench/run_records.sh "$OUT/results/beauty" /tmp/recbook-runs/full --dry-run
  # all fifteen runs at once took about 450 s on an H200 (2026-11-30)
  step records 450 bash bench/run_records.sh "$OUT/results/beauty" /tmp/recbook-runs/full
  # a run that fails (rather than runs out of time) within two minutes points to a fault in the set-up: stop, so
  # that the call's time is left for a second try once it is fixed
  if [ "$DRY" = 0 ] && [ "$LAST_STATUS" != 0 ] && [ "$LAST_STATUS" != 124 ] && [ "$LAST_STATUS" != 137 ] \
     && [ "$LAST_SECONDS" -lt 120 ]; then
    say "records failed after ${LAST_SECONDS}s: see $OUT/results/runs-seed*.log; benchmarks not run"; exit 1
  fi
fi
# the benchmarks most wanted first: after the records, the budget reaches only these two; --benchmarks-only, in a
# second call, runs them all
step bench-evaluation 30 $PYTHON bench/bench_evaluation.py
step bench-training 80 $PYTHON bench/bench_training.py --epochs 5
step bench-sampled-softmax 60 $PYTHON bench/bench_sampled_softmax.py --steps 30
step bench-pretraining 50 $PYTHON bench/bench_pretraining.py --epochs 3
# only the records this call wrote: a skipped or failed benchmark leaves an older committed one behind
find "$ROOT/bench/results" -name '*-cuda.json' -newer "$STARTED" -exec cp {} "$OUT/" \;
say "total ${SECONDS}s of ${BUDGET}s; records in $OUT/results/beauty, logs and benchmark records in $OUT"
