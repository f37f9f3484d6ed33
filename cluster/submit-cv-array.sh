#!/usr/bin/env bash
# Submits the cross-validation as a job array (cluster/cv-array.sbatch: one task per fold) and the job that
# writes the summaries once every task has succeeded (--dependency=afterok; cancelled if a task fails).
#   cluster/submit-cv-array.sh [extra sbatch options for the fold tasks, e.g. --nodes=2 --time=06:00:00]
#   STORE=data/ct.h5 FOLDS=4 CV_OPTS="--batch 2 --epochs 50" cluster/submit-cv-array.sh   # --batch: divisible by the ranks
# The variables are cv-array.sbatch's (STORE, OUT_BASE, FOLDS, CV_OPTS, ...); FOLDS defaults to the value there.
# Prints the two job ids and the CV folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SBATCH_FILE=$here/cv-array.sbatch
FOLDS=${FOLDS:-$(sed -n 's/^FOLDS=\${FOLDS:-\([0-9]*\)}.*/\1/p' "$SBATCH_FILE")}
[[ "$FOLDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: FOLDS=$FOLDS is not a number of folds" >&2; exit 1; }
export FOLDS
OUT_BASE=${OUT_BASE:-runs}
export OUT_BASE
SUMMARY_TIME=${SUMMARY_TIME:-00:10:00}   # wall limit of the summary job (it only reads results.json files)

array=$(sbatch --parsable --array="0-$((FOLDS - 1))" "$@" "$SBATCH_FILE")
array=${array%%;*}   # "id;cluster" on multi-cluster setups
# The summary needs no MPI: one task. --kill-on-invalid-dep: a failed fold cancels it instead of leaving it
# pending forever.
summary=$(RUN_DIR=$OUT_BASE/cv-$array CV_SUMMARIZE=1 sbatch --parsable --job-name=attunet-cv-summary \
  --dependency="afterok:$array" --kill-on-invalid-dep=yes --nodes=1 --ntasks=1 --ntasks-per-node=1 --time="$SUMMARY_TIME" \
  --output="attunet-cv-$array-summary.out" "$SBATCH_FILE")
summary=${summary%%;*}
echo "folds: job array $array (tasks 0-$((FOLDS - 1))); summary: job $summary (after all folds succeed)"
echo "CV folder: $OUT_BASE/cv-$array"
