# Sourced by launch/test.sh and launch/mutants.sh (not run): the environment the test suite needs.
# Tests compare against files written by real libraries (h5py, nibabel, scipy, CPU torch; medpy,
# surface-distance and OpenCV for the evaluation metrics; pydicom for DICOM series, tensorboard for the event files), so a small Python
# environment with them is made once in .venv (pip) and handed to the tests; the tests that spawn the tool get
# the release build (same code, 10x faster than debug); mpirun may run as root (when the tests run as root). OPENBLAS_CORETYPE is never set:
# results must hold on whatever kernel OpenBLAS picks.
ATTUNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! "$ATTUNET_ROOT/.venv/bin/python" -c "import h5py, nibabel, numpy, scipy, safetensors, torch, medpy, surface_distance, cv2, pydicom, tensorboard" 2>/dev/null; then
  echo "test: creating .venv with h5py, nibabel, numpy, scipy, safetensors, torch (CPU), medpy, surface-distance, opencv, pydicom, tensorboard"
  python3 -m venv "$ATTUNET_ROOT/.venv"
  "$ATTUNET_ROOT/.venv/bin/pip" install -q -r "$ATTUNET_ROOT/launch/requirements-test.txt"
fi
export ATTUNET_PYTHON="$ATTUNET_ROOT/.venv/bin/python"
export ATTUNET_BIN="${ATTUNET_BIN:-$ATTUNET_ROOT/.build/release/attunet}"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
