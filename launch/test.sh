#!/usr/bin/env bash
# Runs the test suite, on a fresh machine too: launch/setup.sh first (system packages when missing, release
# build; quick when everything is there). Tests compare against files written by real libraries (h5py,
# nibabel, scipy, CPU torch), so a small Python environment with them is made once in .venv (pip) and handed
# to them.
# Tests never set OPENBLAS_CORETYPE: results must hold on whatever kernel OpenBLAS picks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
if ! .venv/bin/python -c "import h5py, nibabel, numpy, scipy, safetensors, torch" 2>/dev/null; then
  echo "test: creating .venv with h5py, nibabel, numpy, scipy, safetensors, torch (CPU)"
  python3 -m venv .venv
  .venv/bin/pip install -q -r launch/requirements-test.txt
fi
export ATTUNET_PYTHON="$PWD/.venv/bin/python"
# Tests that spawn the tool (mpirun, training runs) use the release build setup.sh made: same code, 10x faster.
export ATTUNET_BIN="$PWD/.build/release/attunet"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
swift test "$@"
