#!/usr/bin/env bash
# Runs `attunet train` on this machine with N MPI ranks (default: one per core), with the flags that work
# here and on a cluster node:
#   --bind-to none         on a small node, 2-3x the intra-node all-reduce bandwidth of the default binding
#   ATTUNET_THREADS        threads per rank (attunet's --threads): the cores divided among the ranks
#   -x VAR                 passes the environment to every rank (needed once ranks run on other hosts)
#   --oversubscribe        only when more ranks than cores are asked for
# Paths in the options are the caller's: they are resolved against the folder it runs from.
# Usage: launch/train.sh [-n RANKS] [train options...]
#   launch/train.sh -n 2 --store data/phantoms.h5 --patch 64x64x48 --batch 2 --epochs 40 --out runs/demo
# Exit status is attunet's: 0 done, 75 stopped on request (checkpoint written; rerun with --resume), 3 NaN loss.
set -euo pipefail
RANKS=$(nproc)
if [ "${1:-}" = "-n" ]; then RANKS=$2; shift 2; fi
CORES=$(nproc)
# Threads per rank: the cores shared among the ranks (attunet's --threads; OpenBLAS runs single-threaded inside).
if [ -z "${ATTUNET_THREADS:-}" ]; then
  export ATTUNET_THREADS=$(( CORES / RANKS > 0 ? CORES / RANKS : 1 ))
fi
export OPENBLAS_NUM_THREADS=1
source "$(dirname "$0")/env.sh"
EXTRA=()
[ "$RANKS" -gt "$CORES" ] && EXTRA+=(--oversubscribe)
echo "train.sh: $RANKS rank(s) x $ATTUNET_THREADS thread(s)"
exec mpirun -np "$RANKS" --bind-to none "${EXTRA[@]}" "${MPIRUN_ENV[@]}" "$BIN" train "$@"
