#!/usr/bin/env bash
# attunet against the original PyTorch model on this machine, side by side: training throughput, inference
# time and peak memory, with the ratios and their spread.
#
# Every repetition runs attunet and PyTorch one right after the other (alternating which goes first), so both
# see the same machine state; the ratio of each pair is taken, and the median and range of those ratios are
# printed. Configurations, for one --patch and --batch:
#   1 rank x 1 thread      attunet bench train          vs  PyTorch with 1 thread
#   N ranks x 1 thread     mpirun -np N attunet bench train  vs  PyTorch with N threads (N = --ranks, default the cores)
#   1 rank x N threads     attunet bench train --threads N   vs  PyTorch with N threads (threads inside one rank)
#   inference              one eval-mode forward of a batch-1 patch, 1 rank vs 1 thread (--infer-patch)
# and the targets: training and inference throughput >= 2x PyTorch's, peak memory per sample <= PyTorch's,
# no page faults in steady-state steps, N-rank scaling >= 0.95 N.
#
# Every run's JSON report is kept in runs/compare-pytorch/<date-time>/.
# PyTorch runs the original model classes (Tests/Fixtures/make_fixtures.py) from a venv with CPU torch (made by
# launch/test-env.sh on first use). OPENBLAS_CORETYPE is set to SkylakeX when unset on an AVX-512 CPU (said
# below); PyTorch does not use OpenBLAS.
#
# Usage: launch/compare-pytorch.sh [--patch 96x96x48] [--batch 2] [--model attention-unet] [--reps 3]
#                                  [--steps 3] [--warmup 2] [--ranks N] [--infer-patch 160x160x96] [--json FILE]
#   e.g. launch/compare-pytorch.sh --patch 160x160x96 --batch 2 --reps 3
set -euo pipefail
cd "$(dirname "$0")/.."
PATCH=96x96x48 BATCH=2 MODEL=attention-unet REPS=3 STEPS=3 WARMUP=2 RANKS=$(nproc) INFER=160x160x96 JSON=""
while [ $# -gt 0 ]; do
  case "$1" in
    --patch) PATCH=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --ranks) RANKS=$2; shift 2 ;;
    --infer-patch) INFER=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare-pytorch.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
if [ $((BATCH % RANKS)) -ne 0 ]; then
  echo "compare-pytorch.sh: --batch $BATCH is not divisible by --ranks $RANKS" >&2; exit 64
fi
source launch/env.sh
source launch/test-env.sh >/dev/null
PY=$ATTUNET_PYTHON
OUT=runs/compare-pytorch/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
STORE_DIR=$(mktemp -d /tmp/attunet-compare.XXXXXX)
trap 'rm -rf "$STORE_DIR"' EXIT
echo "compare-pytorch: $MODEL, patch $PATCH, batch $BATCH, $REPS repetitions of $WARMUP warm-up + $STEPS timed steps; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"

# One phantom store for every attunet run (the bench synthesises one per run otherwise).
"$BIN" synth --cases 2 --out "$STORE_DIR/nii" --seed 0 >/dev/null
"$BIN" prepare --input "$STORE_DIR/nii" --out "$STORE_DIR/store.h5" >/dev/null
COMMON=(--model "$MODEL" --store "$STORE_DIR/store.h5" --steps "$STEPS" --warmup "$WARMUP" --json)

ours() {  # ours RANKS PATCH BATCH [--inference] > json
  local n=$1 patch=$2 batch=$3; shift 3
  # --threads is explicit: bench train's default is every CPU the rank may use (divided among the ranks).
  if [ "$n" = 1 ]; then
    OPENBLAS_NUM_THREADS=1 "$BIN" bench train "${COMMON[@]}" --patch "$patch" --batch "$batch" --threads 1 "$@"
  elif [ "${n#t}" != "$n" ]; then   # tN: one rank with N threads
    OPENBLAS_NUM_THREADS=1 "$BIN" bench train "${COMMON[@]}" --patch "$patch" --batch "$batch" --threads "${n#t}" "$@"
  else
    OPENBLAS_NUM_THREADS=1 mpirun -np "$n" --bind-to none "${MPIRUN_ENV[@]}" "$BIN" bench train "${COMMON[@]}" \
      --patch "$patch" --batch "$batch" --threads 1 "$@"
  fi
}
theirs() {  # theirs THREADS PATCH BATCH [--infer] > json
  local t=$1 patch=$2 batch=$3; shift 3
  "$PY" launch/bench_pytorch.py --model "$MODEL" --patch "$patch" --batch "$batch" --threads "$t" \
    --steps "$STEPS" --warmup "$WARMUP" "$@"
}

for rep in $(seq 1 "$REPS"); do
  echo "repetition $rep/$REPS ..."
  pair() {  # pair NAME OURS-CMD... -- THEIRS-CMD...
    local name=$1; shift
    local a=() b=() side=a
    for w in "$@"; do if [ "$w" = "--" ]; then side=b; elif [ $side = a ]; then a+=("$w"); else b+=("$w"); fi; done
    if [ $((rep % 2)) = 1 ]; then
      "${a[@]}" > "$OUT/$name.ours.$rep.json"; "${b[@]}" > "$OUT/$name.torch.$rep.json"
    else
      "${b[@]}" > "$OUT/$name.torch.$rep.json"; "${a[@]}" > "$OUT/$name.ours.$rep.json"
    fi
  }
  pair one ours 1 "$PATCH" "$BATCH" -- theirs 1 "$PATCH" "$BATCH"
  if [ "$RANKS" -gt 1 ]; then
    pair many ours "$RANKS" "$PATCH" "$BATCH" -- theirs "$RANKS" "$PATCH" "$BATCH"
    pair threads ours "t$RANKS" "$PATCH" "$BATCH" -- theirs "$RANKS" "$PATCH" "$BATCH"
  fi
  pair infer ours 1 "$INFER" 1 --inference -- theirs 1 "$INFER" 1 --infer
done

"$PY" - "$OUT" "$REPS" "$RANKS" "$JSON" <<'EOF'
import json, statistics, sys
out, reps, ranks, json_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def load(name, side):
    return [json.load(open(f"{out}/{name}.{side}.{r}.json")) for r in range(1, reps + 1)]
def spread(v): return f"{statistics.median(v):.2f}x (range {min(v):.2f}-{max(v):.2f})"
summary, ok = {}, []
def section(name, title):
    o, t = load(name, "ours"), load(name, "torch")
    speed = [a["patches_per_second"] / b["patches_per_second"] for a, b in zip(o, t)]
    per_sample = lambda j, n: max(j["peak_resident_bytes"]) / j["batch_per_rank"] if isinstance(j["peak_resident_bytes"], list) else j["peak_resident_bytes"] / n
    mem = [per_sample(a, 1) / (b["peak_resident_bytes"] / b["batch"]) for a, b in zip(o, t)]
    faults = max(max(a["minor_faults_per_step"]) for a in o)
    print(f"\n{title}")
    print(f"  attunet  {statistics.median([a['patches_per_second'] for a in o]):.3f} patches/s, step {statistics.median([a['step_seconds']['median'] for a in o]):.3f} s, "
          f"peak {max(max(a['peak_resident_bytes']) for a in o) / 2**30:.2f} GiB per rank ({o[0]['batch_per_rank']} sample(s) per rank), {faults:.0f} page faults per step")
    print(f"  PyTorch  {statistics.median([b['patches_per_second'] for b in t]):.3f} patches/s, step {statistics.median([b['step_seconds']['median'] for b in t]):.3f} s, "
          f"peak {max(b['peak_resident_bytes'] for b in t) / 2**30:.2f} GiB ({t[0]['batch']} sample(s)), {max(b['minor_faults_per_step'] for b in t):.0f} page faults per step")
    print(f"  throughput attunet/PyTorch {spread(speed)}; peak memory per sample attunet/PyTorch {spread(mem)}")
    summary[name] = {"speed_ratio": speed, "memory_ratio": mem, "attunet": o, "pytorch": t}
    return o, speed, mem, faults
o1, s1, m1, f1 = section("one", "training, 1 rank x 1 thread vs PyTorch 1 thread")
ok.append(("training 1 rank >= 2x PyTorch 1 thread", statistics.median(s1) >= 2))
ok.append(("peak memory per sample <= PyTorch's (1 rank)", statistics.median(m1) <= 1))
ok.append(("no page faults in steady-state steps (< 100 per step)", f1 < 100))
if ranks > 1:
    on, sn, mn, fn = section("many", f"training, {ranks} ranks x 1 thread vs PyTorch {ranks} threads")
    ok.append((f"training {ranks} ranks >= 2x PyTorch {ranks} threads", statistics.median(sn) >= 2))
    ok.append((f"peak memory per sample <= PyTorch's ({ranks} ranks)", statistics.median(mn) <= 1))
    scale = [a["patches_per_second"] / b["patches_per_second"] for a, b in zip(on, o1)]
    print(f"\nscaling: {ranks} ranks / 1 rank throughput {spread(scale)}")
    summary["scaling"] = scale
    ok.append((f"{ranks}-rank scaling >= {0.95 * ranks:.2f}x", statistics.median(scale) >= 0.95 * ranks))
    ot, st, mt, ft = section("threads", f"training, 1 rank x {ranks} threads vs PyTorch {ranks} threads")
    ok.append((f"training 1 rank x {ranks} threads >= 2x PyTorch {ranks} threads", statistics.median(st) >= 2))
    tscale = [a["patches_per_second"] / b["patches_per_second"] for a, b in zip(ot, o1)]
    print(f"\nthread scaling: 1 rank x {ranks} threads / 1 thread throughput {spread(tscale)}")
    summary["thread_scaling"] = tscale
    ok.append((f"{ranks}-thread scaling in one rank >= {0.925 * ranks:.2f}x", statistics.median(tscale) >= 0.925 * ranks))
oi, si, mi, fi = section("infer", "inference, one patch, 1 rank x 1 thread vs PyTorch 1 thread")
ok.append(("inference >= 2x PyTorch", statistics.median(si) >= 2))
print("\ntargets:")
for text, good in ok: print(f"  [{'met' if good else 'NOT met'}] {text}")
if json_path:
    json.dump({"targets": [{"target": t, "met": g} for t, g in ok], **summary}, open(json_path, "w"), indent=1)
    print(f"\nall figures: {json_path}")
print(f"every run's report: {out}/")
EOF
