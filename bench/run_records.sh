#!/usr/bin/env bash
# Chapter 4's run records, in parallel: one process per (seed, chain of variants), one thread each.
#
#   bash bench/run_records.sh RECORDS WORK [--dry-run]
#
# One run of batch 64 leaves a GPU mostly idle, waiting on Python, so a dozen of them share it with little slow-down
# each. Runs of one seed that depend on each other (BERT4Rec, then the two-tower model started from its IDs) share a
# process; the text-BERT runs wait for one pretraining (a lock in `recbook runs`). `recbook runs` skips every record
# in RECORDS that is current, so only missing or stale runs train. Fails if any process failed; each logs to
# RECORDS/../runs-seedS-CHAIN.log.
set -u
RECORDS=$1 WORK=$2 DRY=${3:-}
PYTHON=${PYTHON:-python3}
LOGS=$(dirname "$RECORDS")
CHAINS=("bert4rec twotower-minilm-bert4rec-ids" "sasrec" "twotower-minilm" "twotower-minilm-text-only" "twotower-own-bert")
# RECBOOK_CHAINS="a b,c" runs only those chains (commas between chains): for a set whose other runs train elsewhere
[ -n "${RECBOOK_CHAINS:-}" ] && IFS=, read -r -a CHAINS <<< "$RECBOOK_CHAINS"
pids=()
# background jobs of a script ignore SIGINT, so a time limit's INT would leave the runs training (and timing the
# benchmarks that follow wrong): pass it on to them as TERM, and wait until they are gone
stop() { [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null; wait; exit 124; }
trap stop INT TERM
for seed in 0 1 2; do
  for chain in "${CHAINS[@]}"; do
    command="$PYTHON -m recbook runs --dataset beauty --records $RECORDS --work $WORK --seeds $seed --variants $chain"
    if [ "$DRY" = --dry-run ]; then echo "$command"; continue; fi
    OMP_NUM_THREADS=1 $command > "$LOGS/runs-seed$seed-${chain%% *}.log" 2>&1 &
    pids+=($!)
  done
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit $failed
