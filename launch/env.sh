# Sourced by the launchers (not run): the environment every mpirun of attunet needs, in one place.
#   BIN                      the attunet binary (ATTUNET_BIN, else the release build); checked to exist
#   OMPI_ALLOW_RUN_AS_ROOT*  Open MPI refuses to start as root without them (containers, VMs)
#   OPENBLAS_CORETYPE        OpenBLAS 0.3.21 falls back to its slow SSE3 kernel on CPUs it does not know; on an
#                            AVX-512 CPU with the variable unset, SkylakeX (its AVX-512 kernel) is set and said
#   MPIRUN_ENV               the -x flags that pass these variables to every rank (remote hosts included)
# The caller sets OPENBLAS_NUM_THREADS to fit its rank count (one BLAS thread per rank when ranks fill the cores).
ATTUNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${ATTUNET_BIN:-$ATTUNET_ROOT/.build/release/attunet}
test -x "$BIN" || { echo "$(basename "$0"): $BIN missing; run launch/setup.sh first" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -q avx512f /proc/cpuinfo; then
  export OPENBLAS_CORETYPE=SkylakeX
  echo "$(basename "$0"): OPENBLAS_CORETYPE was unset; set to SkylakeX (AVX-512 kernels) for this run"
fi
MPIRUN_ENV=(-x OPENBLAS_NUM_THREADS -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)
[ -n "${OPENBLAS_CORETYPE:-}" ] && MPIRUN_ENV+=(-x OPENBLAS_CORETYPE)
