#!/usr/bin/env bash
# Are `recbook train`'s defaults tuned to Beauty alone (issue 12)? Two checks that need hours on the 2-core CPU and
# minutes on a GPU, run at once in one call on a bare GPU machine (see ../shared/gpu/README.md):
#
#   1. `recbook tune` of the two-tower model on Beauty's validation split (--jobs processes share the GPU), then the
#      tuned configuration trained with seeds 0, 1 and 2 (`recbook train --config`): the tuned model's run records;
#   2. bench/defaults_elsewhere.py on Amazon Toys and Sports (one process each): SASRec with the defaults against
#      ItemKNN with its recency decay chosen on validation, on shops never used to choose anything.
#
#   bash bench/gpu_defaults.sh DATA OUT [--dry-run] [--budget SECONDS]
#
# DATA holds Toys_and_Games.txt.gz and Sports_and_Outdoors.txt.gz (../shared/data/amazon-sports-toys does not travel
# to that machine: copy it into an ignored folder of the checkout and carry it). OUT receives tuned-twotower.json,
# tuned/twotower-seedS.json (bring them to results/tuned/), defaults-elsewhere/*.json (to results/defaults-elsewhere/)
# and one log per process. The same MiniLM cache as bench/gpu_suite.sh must come along (see its header).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DATA=$1 OUT=$2
shift 2
DRY=0
BUDGET=540  # seconds, for everything: one device call (10 minutes at most) holds it
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$ROOT:$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}
export RECBOOK_CACHE=${RECBOOK_CACHE:-$ROOT/.cache/recbook}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
WORK=/tmp/recbook-defaults
mkdir -p "$OUT/tuned" "$OUT/defaults-elsewhere"
for name in Toys_and_Games Sports_and_Outdoors; do
  [ -f "$DATA/$name.txt.gz" ] || { echo "missing $DATA/$name.txt.gz" >&2; exit 1; }
done

# trials: 16 over 8 processes is two rounds of at most 20 epochs each; the three tuned runs follow
tune_then_train() {
  $PYTHON -m recbook tune --model twotower --dataset beauty --trials 16 --epochs 20 --jobs 8 \
    --out "$OUT/tuned-twotower.json" || return 1
  local pids=() seed
  for seed in 0 1 2; do
    $PYTHON -m recbook train --model twotower --dataset beauty --config "$OUT/tuned-twotower.json" --seed $seed \
      --out "$WORK/tuned-seed$seed" > "$OUT/tuned-train-seed$seed.log" 2>&1 &
    pids+=($!)
  done
  local failed=0 pid
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  for seed in 0 1 2; do
    [ -f "$WORK/tuned-seed$seed/run.json" ] && cp "$WORK/tuned-seed$seed/run.json" "$OUT/tuned/twotower-seed$seed.json"
  done
  return $failed
}

elsewhere() {
  $PYTHON bench/defaults_elsewhere.py --datasets "$1" --data "$DATA" --work "$WORK/elsewhere" --out "$OUT/defaults-elsewhere"
}

if [ "$DRY" = 1 ]; then
  echo "plan (limit ${BUDGET}s, all at once): tune 16 trials x 20 epochs (--jobs 8) then 3 tuned seeds;" \
       "defaults_elsewhere Toys_and_Games; defaults_elsewhere Sports_and_Outdoors"
  exit 0
fi
# background jobs of a script ignore SIGINT: a time limit reaches them as TERM, through this trap
pids=()
stop() { [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null; wait; exit 124; }
trap stop INT TERM
export -f tune_then_train elsewhere
export PYTHON OUT DATA WORK
timeout --signal=TERM --kill-after=15 "$BUDGET" bash -c tune_then_train > "$OUT/tune.log" 2>&1 &
pids+=($!)
for name in Toys_and_Games Sports_and_Outdoors; do
  timeout --signal=TERM --kill-after=15 "$BUDGET" bash -c "elsewhere $name" > "$OUT/elsewhere-$name.log" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
ls -R "$OUT"
exit $failed
