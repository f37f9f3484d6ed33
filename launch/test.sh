#!/usr/bin/env bash
# Runs the test suite, on a fresh machine too: launch/setup.sh first (system packages when missing, release
# build; quick when everything is there), then the test environment (launch/test-env.sh: a .venv with h5py,
# nibabel, scipy and CPU torch, made once), then `swift test` with any arguments given (e.g. --filter NNTests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/test-env.sh
swift test "$@"
