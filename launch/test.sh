#!/usr/bin/env bash
# Runs the test suite. Tests compare against files written by real libraries (h5py, nibabel), so a small
# Python environment with them is made once in .venv (pip, from PyPI) and handed to the tests.
# Tests never set OPENBLAS_CORETYPE: results must hold on whatever kernel OpenBLAS picks.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import h5py, nibabel, numpy, scipy" 2>/dev/null; then
  echo "test: creating .venv with h5py, nibabel, numpy, scipy"
  python3 -m venv .venv
  .venv/bin/pip install -q -r launch/requirements-test.txt
fi
export ATTUNET_PYTHON="$PWD/.venv/bin/python"
# Tests that spawn the tool (mpirun, training runs) use the release build: same code, 10x faster.
swift build -c release --product attunet 2>&1 | grep -E "error|warning: unre|omplete" || true
export ATTUNET_BIN="$PWD/.build/release/attunet"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
swift test "$@"
