#!/usr/bin/env bash
# The main job on the small built-in default: 2 MPI ranks on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OPENBLAS_NUM_THREADS=1
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -q avx512f /proc/cpuinfo; then
  export OPENBLAS_CORETYPE=SkylakeX
  echo "run-default: OPENBLAS_CORETYPE was unset; set to SkylakeX (AVX-512 kernels) for this run"
fi
BIN=.build/release/attunet
test -x "$BIN" || { echo "run-default: $BIN missing; run launch/setup.sh first" >&2; exit 1; }
mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE "$BIN" doctor
echo "run-default: synthetic phantoms, training and cross-validation: not yet implemented"
