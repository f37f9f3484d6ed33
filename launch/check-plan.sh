#!/usr/bin/env bash
# Checks the planner (attunet plan) against measurement on this machine: it calibrates one rank at 1 and 2
# threads, prints the plan's predicted step time for 1 rank x 2 threads and for 2 ranks x 1 thread, measures the
# same two layouts with attunet bench train (the second under mpirun, on one node), and prints predicted,
# measured and the difference. The planner's promise: within 15% of what bench train measures.
#
# The 1 x 2 prediction is the calibration's own 2-thread point (an exact fit through it), so it mostly measures
# the machine's noise; the 2 x 1 prediction is the model proper: half the patches per rank, the optimizer and the
# rest unchanged, plus a ring all-reduce over shared memory. Timings are only comparable on an otherwise idle
# machine: other processes on the same cores slow threads that wait for each other most.
#
# Every JSON (the profile, the predictions, the two bench reports) is kept in runs/check-plan/<date-time>/.
#
# Usage: launch/check-plan.sh [--patch 96x96x48] [--batch 2] [--model attention-unet] [--steps 3] [--warmup 2]
#   e.g. launch/check-plan.sh --patch 160x160x96 --steps 2 --warmup 1
set -euo pipefail
cd "$(dirname "$0")/.."
PATCH=96x96x48 BATCH=2 MODEL=attention-unet STEPS=3 WARMUP=2
while [ $# -gt 0 ]; do
  case "$1" in
    --patch) PATCH=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "check-plan.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
if [ $((BATCH % 2)) -ne 0 ]; then
  echo "check-plan.sh: --batch $BATCH is not divisible by the 2 ranks of the 2 x 1 layout" >&2; exit 64
fi
source launch/env.sh
export OPENBLAS_NUM_THREADS=1
unset ATTUNET_THREADS
PY=${ATTUNET_PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=runs/check-plan/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
STORE_DIR=$(mktemp -d /tmp/attunet-check-plan.XXXXXX)
trap 'rm -rf "$STORE_DIR"' EXIT
OVERSUBSCRIBE=()
[ "$(nproc)" -lt 2 ] && OVERSUBSCRIBE=(--oversubscribe)
echo "check-plan: $MODEL, patch $PATCH, batch $BATCH, $WARMUP warm-up + $STEPS timed steps; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"

# One phantom store for the calibration and both benches.
"$BIN" synth --cases 2 --out "$STORE_DIR/nii" --seed 0 >/dev/null
"$BIN" prepare --input "$STORE_DIR/nii" --out "$STORE_DIR/store.h5" >/dev/null
STORE=(--store "$STORE_DIR/store.h5")

echo "1/4 calibrating (1 rank at 1 and 2 threads) ..."
"$BIN" plan --calibrate --out "$OUT/profile.json" "${STORE[@]}" --models "$MODEL" --patch "$PATCH" --batch "$BATCH" \
  --calibration-threads 1,2 --calibration-steps "$STEPS" --calibration-warmup "$WARMUP" 2>/dev/null
"$BIN" plan --profile "$OUT/profile.json" --models "$MODEL" --patch "$PATCH" --batch "$BATCH" \
  --layouts 1x2,2x1 --json > "$OUT/predicted.json"
BENCH=(bench train --model "$MODEL" "${STORE[@]}" --patch "$PATCH" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --json)
echo "2/4 bench train, 1 rank x 2 threads ..."
"$BIN" "${BENCH[@]}" --threads 2 > "$OUT/measured-1x2.json"
echo "3/4 bench train, 2 ranks x 1 thread (mpirun) ..."
mpirun -np 2 --bind-to none "${OVERSUBSCRIBE[@]}" "${MPIRUN_ENV[@]}" "$BIN" "${BENCH[@]}" --threads 1 > "$OUT/measured-2x1.json"
echo "4/4 load average now: $(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
predicted = {(r["ranks"], r["threads"]): r for r in json.load(open(f"{out}/predicted.json"))}
worst = 0.0
print(f"\n{'layout':<22}{'predicted s':>12}{'measured s':>12}{'difference':>12}")
for (ranks, threads), name in [((1, 2), "1x2"), ((2, 1), "2x1")]:
    p = predicted[(ranks, threads)]["step_seconds"]
    m = json.load(open(f"{out}/measured-{name}.json"))["step_seconds"]["median"]
    d = (p - m) / m
    worst = max(worst, abs(d))
    print(f"{f'{ranks} rank(s) x {threads} thread(s)':<22}{p:>12.3f}{m:>12.3f}{100 * d:>+11.1f}%")
print(f"\nlargest difference {100 * worst:.1f}% ({'within' if worst <= 0.15 else 'NOT within'} 15%); figures in {out}")
EOF
