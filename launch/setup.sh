#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for attunet and builds it in release mode.
# Idempotent: packages already present are not reinstalled, and a second run only rebuilds what changed.
#   bash launch/setup.sh            # system packages (needs root or sudo) + release build
#   SKIP_APT=1 bash launch/setup.sh # build only
#   SKIP_BUILD=1 ...                # system packages only
#   NO_CLUSTER_PACKAGES=1 ...       # without the packages of the emulated-cluster test (Tests/cluster)
set -euo pipefail
cd "$(dirname "$0")/.."

# dcm2niix converts DICOM series to NIfTI for prepare (README: "Real data: DICOM and the Decathlon"; DICOMTests).
PACKAGES=(libopenmpi-dev openmpi-bin libopenblas-dev libhdf5-dev hdf5-tools libnifti2-dev libpng-dev libssl-dev zlib1g-dev
          pkg-config python3 python3-venv python3-pip dcm2niix)
# The emulated-cluster test (Tests/cluster/run.sh) runs a real Slurm (munge, slurmctld, one slurmd per network
# namespace) with ip, unshare, nsenter, ps and timeout. Without systemd Debian starts none of these daemons.
CLUSTER_PACKAGES=(slurmctld slurmd slurm-client munge iproute2 util-linux procps coreutils)
[ "${NO_CLUSTER_PACKAGES:-0}" = 1 ] || PACKAGES+=("${CLUSTER_PACKAGES[@]}")

if [ "${SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: system packages present"
  fi
fi

[ "${SKIP_BUILD:-0}" != 1 ] || exit 0
command -v swift >/dev/null || { echo "setup: swift not found on PATH (install Swift 6.x from swift.org)" >&2; exit 1; }
echo "setup: building attunet (release)"
source launch/quiet-build.sh
# A failed build fails setup, with the compiler's messages: an older .build/release/attunet must never stand
# in for the sources.
quiet_build setup "the release build" -c release --product attunet || exit 1
echo "setup: done: .build/release/attunet"
