#!/usr/bin/env bash
# The main job on the small built-in default, on this machine with 2 MPI ranks: the paper's experiment in
# miniature.
#   1. attunet doctor under mpirun (ranks, MPI, OpenBLAS kernel, all-reduce check)
#   2. attunet synth: 20 synthetic abdominal CT phantoms (NIfTI, Decathlon layout) in data/phantoms
#   3. attunet prepare: resample to 4 mm (the paper uses 2 mm; 4 mm keeps this demo to minutes) into
#      data/phantoms_4mm.h5
#   4. attunet cv: 5-fold cross-validation of the Attention U-Net and the U-Net on the same folds, on 2 ranks
#      (--fold-parallel 2: each rank trains its share of the 10 folds), every test case segmented with its
#      fold's best checkpoint and scored; the paper's results table printed at the end and written to
#      runs/cv/summary.md (with summary.csv, summary.json, summary.svg and fold_<k>/<model>/ run folders, each
#      with its test predictions in test/)
#   5. attunet postprocess: per model and class, whether keeping the largest connected component (the two
#      largest for the kidney label, which holds both kidneys) or removing small ones helps on those test
#      predictions: runs/cv/postprocessing.json and the raw against postprocessed table
#      runs/cv/summary_postprocessed.md; attunet predict --cv-dir runs/cv applies the decision
# Steps whose output exists are skipped, and a stopped CV continues where it stopped (rerun this script); set
# FRESH=1 to redo everything. EPOCHS=N changes the epochs per fold.
# The settings differ from the paper's (2 mm, feature scale 4, 160x160x96 patches, Adam 1e-4, the paper's
# augmentation, 5-fold on 150 cases) only to fit the budget: at most 20 minutes on 2 cores. Without augmentation
# the small network learns these phantoms (one generator, one orientation) in 120 epochs; with the paper's
# augmentation it needs more than twice as many. On real scans keep the cv defaults (the paper's augmentation).
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
source launch/env.sh
[ "${FRESH:-0}" = 1 ] && rm -rf data/phantoms data/phantoms_4mm.h5 runs/cv
started=$(date +%s)

echo "== 1/5 doctor"
mpirun -np 2 --bind-to none "${MPIRUN_ENV[@]}" "$BIN" doctor

echo "== 2/5 synth"
if [ -f data/phantoms/dataset.json ]; then echo "data/phantoms exists, kept"
else "$BIN" synth --cases 20 --out data/phantoms --seed 1; fi

echo "== 3/5 prepare"
if [ -f data/phantoms_4mm.h5 ]; then echo "data/phantoms_4mm.h5 exists, kept"
else "$BIN" prepare --input data/phantoms --out data/phantoms_4mm.h5 --spacing 4; fi

echo "== 4/5 cv: 5 folds x 2 models on 2 ranks"
SETTINGS=(--feature-scale 16 --patch 48x48x32 --batch 2 --epochs "${EPOCHS:-120}" --samples-per-case 2 --lr 5e-3
          --schedule poly --foreground-fraction 0.67 --augment none --val-every 20 --seed 0)
mpirun -np 2 --bind-to none "${MPIRUN_ENV[@]}" "$BIN" cv --store data/phantoms_4mm.h5 --out runs/cv --folds 5 \
  --models attention-unet,unet --fold-parallel 2 "${SETTINGS[@]}"

echo "== 5/5 postprocess: chosen per class on the test predictions"
"$BIN" postprocess --cv-dir runs/cv --keep kidney:2

elapsed=$(( $(date +%s) - started ))
cat <<EOF
run-default: done in $((elapsed / 60)) min $((elapsed % 60)) s. The table above is runs/cv/summary.md; per-case and per-fold rows
  in runs/cv/summary.csv and summary.json, a Dice box plot in runs/cv/summary.svg, each fold's run (checkpoints,
  log.csv, progress.svg, results.json, test/ predictions) in runs/cv/fold_<k>/<model>/; the postprocessing chosen
  on them in runs/cv/postprocessing.json, raw against postprocessed in runs/cv/summary_postprocessed.md.
To scale up to the paper:
  your data       attunet prepare --input /data/Task07_Pancreas --out ct.h5 --spacing 2    (2 mm, as the paper)
  its settings    the cv defaults are the paper's: feature scale 4, 160x160x96 patches, Adam 1e-4, batch 2
  plan first      mpirun -np 8 $BIN cv --store ct.h5 --out runs/ct --dry-run
                  (folds, steps, and the wall time, core-hours and memory per rank on those ranks)
  more ranks      mpirun -np 8 ... cv --store ct.h5 --fold-parallel 4   (4 groups of 2 ranks train folds side by side)
  a stopped run   rerun the same command: finished folds are skipped, an unfinished one resumes
  on a cluster    STORE=ct.h5 sbatch cluster/cv.sbatch, or cluster/submit-cv-array.sh (a job per fold;
                  see README.md, Running on a cluster)
  postprocess     attunet postprocess --cv-dir runs/ct --keep kidney:2   (on the kept test predictions)
  segment, score  attunet predict --cv-dir runs/ct --input imagesTs/ --out pred   (the folds' ensemble,
                  its postprocessing.json applied)
                  attunet evaluate --pred pred --ref labelsTs
EOF
