#!/usr/bin/env bash
# Proves the tests catch the bugs that matter: applies deliberate bugs (mutants), one at a time, to a scratch
# copy of the sources, runs the tests that should catch each, and reports caught or MISSED.
#   bash launch/mutants.sh              # every mutant (about 20-30 minutes on 2 cores)
#   bash launch/mutants.sh adam lr      # only the mutants whose name contains one of these words
# The scratch copy lives in ${MUTANTS_DIR:-/tmp/attunet-mutants} (kept between runs: its builds are reused).
# Every filter first runs on the unmutated copy and must pass there, else the run stops: a mutant "caught" by
# a test that fails anyway proves nothing. Mutants marked release=yes are caught by tests that run the
# attunet binary, so the copy's release build is rebuilt for them. Not part of CI (too slow). Exit status 0
# when every mutant is caught, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SCRATCH=${MUTANTS_DIR:-/tmp/attunet-mutants}
bash launch/setup.sh >/dev/null
source launch/test-env.sh          # the repository's .venv; the binary is the scratch copy's, below

# name | file | find (verbatim, unique in the file) | replace | test filter | needs the release binary
MUTANTS=$(cat <<'TABLE'
bn-backward-sign | Sources/NN/BatchNorm3d.swift | for i in 0..<v { dst[i] = a * (src[i] - mdy) - bx * (xs[i] - mu) } | for i in 0..<v { dst[i] = a * (src[i] - mdy) + bx * (xs[i] - mu) } | BatchNormTests | no
syncbn-reducer-skipped | Sources/NN/BatchNorm3d.swift | if let reduce = statisticsReducer { try stats.withUnsafeMutableBufferPointer { try reduce($0) } } | if false, let reduce = statisticsReducer { try stats.withUnsafeMutableBufferPointer { try reduce($0) } } | BatchNormTests/testTwoRanksOnHalvesOfABatchMatchOneLayerOnTheWholeBatch | no
last-bucket-not-reduced | Sources/Training/Trainer.swift | while offset < g.count { | while offset + bucketFloats < g.count { | TrainerTests/testTwoRanksWithSyncBNMatchOneRank | yes
gradient-average-wrong-rank-count | Sources/Training/Trainer.swift | let scale = 1 / Float(comm.size) | let scale = 1 / Float(comm.size + 1) | TrainerTests/testTwoRanksWithSyncBNMatchOneRank | yes
inference-padding-off-by-one | Sources/Training/Inference.swift | try store.readBox(c, start: (-before.z, -before.y, -before.x), | try store.readBox(c, start: (-before.z, -before.y, -before.x - 1), | ValidationTests/testWholeVolumePredictionPadsEvenlyAndCropsBack | no
dice-counts-absent-classes | Sources/Evaluation/DiceScore.swift | guard t > 0 else { continue }  // the class is absent from this case | // (mutant: absent classes counted as Dice 0) | ValidationTests/testDiceCountsAndTheMeanSkipCasesWithoutTheClass | no
resume-ignores-step-counter | Sources/Training/TrainingCheckpoint.swift | optimizer.restore(step: try opt.intAttribute("step")) | optimizer.restore(step: 0) | TrainerTests/testResumeAfterSigkillIsBitIdentical | yes
lr-schedule-off-by-one-epoch | Sources/Training/Trainer.swift | optimizer.learningRate = config.schedule.rate(base: config.learningRate, epoch: epoch) | optimizer.learningRate = config.schedule.rate(base: config.learningRate, epoch: epoch + 1) | TrainerTests/testLearningRateSchedulesReachTheOptimizer | yes
adam-bias-correction-dropped | Sources/NN/Optimizers.swift | let c1 = Float(1 - Foundation.pow(beta1, Double(step))), c2 = Float(1 - Foundation.pow(beta2, Double(step))) | let c1 = Float(1), c2 = Float(1) | TrainerStepTests | no
mid-epoch-resume-skips-loader-position | Sources/Training/Trainer.swift | loader.startEpoch(epoch, fromStep: state.stepInEpoch) | loader.startEpoch(epoch) | TrainerTests/testStopRequestOnOneRankCheckpointsAndResumes | yes
num-batches-tracked-as-float | Sources/NN/IO/StateDict.swift | let d = try group.createDataset(e.name, type: .int64, shape: []) | let d = try group.createDataset(e.name, type: .float64, shape: []) | TrainerTests/testNumBatchesTrackedIsAnInt64ScalarInTheCheckpoint | yes
edt-x-pass-with-y-spacing | Sources/Evaluation/DistanceTransform.swift | (dim.x, 1, spacing.x, [(dim.z * dim.y, dim.x)]), | (dim.x, 1, spacing.y, [(dim.z * dim.y, dim.x)]), | DistanceTests/testDistanceTransformMatchesScipy | no
surface-ignores-z-neighbours | Sources/Evaluation/SurfaceDistance.swift | && mask[v - sz] != 0 && mask[v + sz] != 0 | && true | DistanceTests/testBinaryMetricsMatchMedpyAndSurfaceDistance | no
pooled-assd-as-mean-of-directed-means | Sources/Evaluation/SurfaceDistance.swift | let assd = all.reduce(0, +) / Double(all.count) | let assd = (aToB.reduce(0, +) / Double(aToB.count) + bToA.reduce(0, +) / Double(bToA.count)) / 2 | DistanceTests/testBinaryMetricsMatchMedpyAndSurfaceDistance | no
deepmind-percentile-strict | Sources/Evaluation/SurfaceDistance.swift | if Double(mid + 1) / n >= target { hi = mid } | if Double(mid + 1) / n > target { hi = mid } | DistanceTests/testPercentilesMatchNumpyAndSurfaceDistance | no
both-empty-scored-as-miss | Sources/Evaluation/CaseMetrics.swift | m.dice = 1; m.precision = 1; m.recall = 1 | m.dice = 0; m.precision = 1; m.recall = 1 | DistanceTests/testLabelMapsPerClassAndEmptyMasks | no
s2s-traces-components-in-holes | Sources/Evaluation/SliceContourDistance.swift | if external { trace(from: p, into: &points) } | if true { trace(from: p, into: &points) } | SliceContourTests | no
wilcoxon-tie-correction-dropped | Sources/Evaluation/Wilcoxon.swift | if j > i { ties = true; tieTerm += t * t * t - t } | if j > i { ties = true } | StatisticsTests/testWilcoxonMatchesScipy | no
TABLE
)
MUTANTS+=$'\n'$(cat launch/mutants-data.txt 2>/dev/null || true)

WORDS=("$@")
selected() {  # is mutant $1 asked for (its name contains one of the words given on the command line)?
  [ ${#WORDS[@]} -eq 0 ] && return 0
  for w in "${WORDS[@]}"; do [[ $1 == *"$w"* ]] && return 0; done
  return 1
}

echo "mutants: scratch copy in $SCRATCH"
mkdir -p "$SCRATCH"
# The sources as they are in the working tree (tracked and untracked, not ignored), times kept so the copy's
# .build only rebuilds what changed since the last run.
(cd "$SCRATCH" && find . -mindepth 1 -maxdepth 1 ! -name .build -exec rm -rf {} +)
git ls-files -co --exclude-standard -z | xargs -0 cp -p --parents -t "$SCRATCH"
cd "$SCRATCH"
export ATTUNET_BIN="$SCRATCH/.build/release/attunet"

build() {  # $1 = yes|no: also the release binary
  swift build --build-tests >"$SCRATCH/build.log" 2>&1 || return 1
  if [ "$1" = yes ]; then swift build -c release --product attunet >>"$SCRATCH/build.log" 2>&1 || return 1; fi
}
run_filter() { swift test --skip-build --filter "$1" >"$SCRATCH/test.log" 2>&1; }

rows=()
while IFS= read -r line; do
  [ -n "${line// /}" ] || continue
  IFS='|' read -r name file find replace filter release <<<"$line"
  name=$(echo "$name" | xargs); filter=$(echo "$filter" | xargs); release=$(echo "$release" | xargs)
  selected "$name" || continue
  rows+=("$line")
done <<<"$MUTANTS"
[ ${#rows[@]} -gt 0 ] || { echo "mutants: no mutant matches: $*" >&2; exit 1; }

echo "mutants: building the unmutated copy (debug tests + release binary)"
build yes || { cat "$SCRATCH/build.log" >&2; echo "mutants: the unmutated copy does not build" >&2; exit 1; }
echo "mutants: checking that every filter passes without a mutant"
declare -A checked
for line in "${rows[@]}"; do
  IFS='|' read -r _ _ _ _ filter _ <<<"$line"; filter=$(echo "$filter" | xargs)
  [ -n "${checked[$filter]:-}" ] && continue
  checked[$filter]=1
  if ! run_filter "$filter"; then
    grep -E "error:|failed" "$SCRATCH/test.log" | head -20 >&2
    echo "mutants: '$filter' fails without any mutant; fix that first" >&2
    exit 1
  fi
done

caught=0; total=0; report=()
for line in "${rows[@]}"; do
  IFS='|' read -r name file find replace filter release <<<"$line"
  name=$(echo "$name" | xargs); file=$(echo "$file" | xargs); filter=$(echo "$filter" | xargs); release=$(echo "$release" | xargs)
  find=$(echo "$find" | sed 's/^ *//; s/ *$//'); replace=$(echo "$replace" | sed 's/^ *//; s/ *$//')
  total=$((total + 1))
  cp "$REPO/$file" "$SCRATCH/$file"
  if ! python3 - "$SCRATCH/$file" "$find" "$replace" <<'PY'
import sys
path, find, replace = sys.argv[1:4]
text = open(path).read()
if text.count(find) != 1:
    sys.exit(f"{path}: the mutant's text occurs {text.count(find)} times, not once")
open(path, "w").write(text.replace(find, replace))
PY
  then
    report+=("$(printf '%-40s %s' "$name" "NOT APPLIED (the source changed: update the table)")")
    continue
  fi
  started=$SECONDS
  if ! build "$release"; then
    verdict="BUILD FAILED (see $SCRATCH/build.log)"
  elif run_filter "$filter"; then
    verdict="MISSED"
  else
    verdict="caught"; caught=$((caught + 1))
  fi
  cp "$REPO/$file" "$SCRATCH/$file"
  line=$(printf '%-40s %-7s by %s (%ds)' "$name" "$verdict" "$filter" $((SECONDS - started)))
  echo "$line"
  report+=("$line")
done
build yes >/dev/null 2>&1 || true   # leave the copy unmutated and built for the next run
echo
echo "mutants: $caught of $total caught"
[ "$caught" -eq "$total" ]
