#!/usr/bin/env bash
# One round of issue 7's GPU measurement on a single GPU, in the order the results depend on each other:
#   1. a fresh llama-3-8b profile, written where `search --gpu NAME` looks (results/reference/NAME/);
#   2. a validated search on constant 1024/512 (300 requests) and on ShareGPT (600 requests): the tuned plan,
#      the sequential plan and nb2 each run twice on the engine (warm-up pass, then the measured pass).
# Each step is archived into $OUT as soon as it ends, so a step that runs out of time loses only itself.
#   GPU=h200 OUT=/tmp/out bash scripts/search_round.sh [steps: profile c1024 sharegpt]
set -u
GPU=${GPU:-h200}
OUT=${OUT:-/tmp/search-round}
mkdir -p "$OUT"
STEPS=${*:-profile c1024 sharegpt}
REF=results/reference/$GPU
for step in $STEPS; do
  start=$(date +%s)
  case $step in
    profile)
      python -m nanotune profile --model llama-3-8b --out "$REF/profile-llama-3-8b-tp1.json" --no-progress \
        > "$OUT/profile.log" 2>&1; rc=$?
      tar czf "$OUT/profile.tgz" "$REF"/profile-llama-3-8b-tp1* "$OUT/profile.log" ;;
    c1024)
      python -m nanotune search --model llama-3-8b --gpu "$GPU" --trace constant:1024:512 --n-trials 100 \
        --validate 1 --validate-requests 300 --results-dir "$OUT/c1024" --no-progress \
        > "$OUT/c1024.log" 2>&1; rc=$?
      tar czf "$OUT/c1024.tgz" -C "$OUT" c1024 c1024.log && rm -rf "$OUT/c1024" ;;
    sharegpt)
      python -m nanotune search --model llama-3-8b --gpu "$GPU" --trace sharegpt --n-trials 100 \
        --validate 1 --validate-requests 600 --results-dir "$OUT/sharegpt" --no-progress \
        > "$OUT/sharegpt.log" 2>&1; rc=$?
      tar czf "$OUT/sharegpt.tgz" -C "$OUT" sharegpt sharegpt.log && rm -rf "$OUT/sharegpt" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
  echo "$step: exit $rc after $(( $(date +%s) - start )) s"
  tail -n 4 "$OUT/$step.log"
done
