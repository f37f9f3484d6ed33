# Sourced by the launchers (not run): the environment every mpirun of attunet needs, in one place.
#   BIN                      the attunet binary (ATTUNET_BIN, else the release build); checked to exist
#   OMPI_ALLOW_RUN_AS_ROOT*  Open MPI refuses to start as root without them (containers, VMs); exported only when
#                            running as root, never for other users
#   OPENBLAS_CORETYPE        OpenBLAS 0.3.21 falls back to its slow SSE3 kernel on AVX-512 CPUs it does not know:
#                            on an AVX-512 CPU with the variable unset, SkylakeX (its AVX-512 kernel) is set and
#                            said; on other CPUs (AVX2-only: Zen 2/3, Haswell, Broadwell) OpenBLAS picks right
#                            by itself and the variable stays unset
#   MPIRUN_ENV               the -x flags that pass these variables to every rank (remote hosts included)
# The caller sets ATTUNET_THREADS (threads per rank, the default of attunet's --threads) to fit its rank count, and
# OPENBLAS_NUM_THREADS=1 (attunet sets OpenBLAS to one thread itself once it runs its own threads).
# Sourcing this returns 0 on every CPU: callers run under `set -e`, where any failing last command would end them
# silently. The facts it reads can be replaced for a test: ATTUNET_CPUINFO (a file in /proc/cpuinfo's format,
# default /proc/cpuinfo) and ATTUNET_UID (default `id -u`).
ATTUNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${ATTUNET_BIN:-$ATTUNET_ROOT/.build/release/attunet}
test -x "$BIN" || { echo "$(basename "$0"): $BIN missing; run launch/setup.sh first" >&2; exit 1; }
MPIRUN_ENV=(-x OPENBLAS_NUM_THREADS)
if [ "${ATTUNET_UID:-$(id -u)}" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  MPIRUN_ENV+=(-x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)
fi
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512f "${ATTUNET_CPUINFO:-/proc/cpuinfo}" 2>/dev/null; then
  export OPENBLAS_CORETYPE=SkylakeX
  echo "$(basename "$0"): OPENBLAS_CORETYPE was unset; set to SkylakeX (AVX-512 kernels) for this run"
fi
if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
  MPIRUN_ENV+=(-x OPENBLAS_CORETYPE)
fi
if [ -n "${ATTUNET_THREADS:-}" ]; then
  MPIRUN_ENV+=(-x ATTUNET_THREADS)
fi
