#!/usr/bin/env bash
# The gradient all-reduce overlapped with the backward pass, on the emulated 2-node cluster (emulate.sh's network
# namespaces and bridge, no Slurm) with each node's link shaped like a slow network: `tc ... netem rate 1gbit
# delay 0.5ms` on both nodes' eth0, or, where the kernel has no netem (sch_netem), `tbf rate 1gbit` (the rate
# without the delay; the script says so). 2 nodes x 1 rank, mpirun over TCP (launch/mpirun-hosts.sh with nsrsh).
#   identity  train (tiny model, 0.01 MiB buckets) with and without --no-overlap: the checkpoints' weights must
#             be equal bit for bit (the one thing asserted)
#   figures   `attunet bench train --overlap both` at each PATCHES entry (global batch 2, 1 patch per rank): the
#             exposed all-reduce time without and with overlap, printed with the ratio (never judged: noise)
# Needs root and network namespaces (prints SKIP and exits 0 otherwise), and no other emulated cluster running
# (it refuses while `ip netns list` shows one). The EXIT trap removes namespaces, bridge and hosts lines.
#   bash Tests/cluster/shaped-link.sh
#   PATCHES="96x96x48 160x160x96" STEPS=2 BUCKET_MIB="16 4" bash Tests/cluster/shaped-link.sh
# Tests/cluster/run.sh runs it at the end with SHAPED=1 (96x96x48 only: about a minute).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export ATTUNET_BIN=${ATTUNET_BIN:-$ROOT/.build/release/attunet}
BIN=$ATTUNET_BIN
RATE=${RATE:-1gbit}
DELAY=${DELAY:-0.5ms}
PATCHES=${PATCHES:-96x96x48}
STEPS=${STEPS:-3}
WARMUP=${WARMUP:-1}
BUCKET_MIB=${BUCKET_MIB:-16}

for v in $(compgen -v | grep -E '^(SLURM_|OMPI_|PMIX_|ORTE_|OPAL_)' || true); do unset "$v"; done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 ATTUNET_THREADS=1

source "$HERE/emulate.sh"
if ! why=$(netns_usable); then echo "SKIP shaped-link: $why"; exit 0; fi
if [ -n "$(ip netns list)" ]; then
  echo "shaped-link: network namespaces exist ($(ip netns list | awk '{print $1}' | tr '\n' ' ')): another emulated cluster runs; try later" >&2
  exit 1
fi
[ -x "$BIN" ] || { echo "shaped-link: $BIN missing (swift build -c release --product attunet)" >&2; exit 1; }

W=$(mktemp -d /tmp/attunet-shaped.XXXXXX)
chmod 755 "$W"
cleanup() {
  local rc=$?
  cluster_down
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then echo "shaped-link: work folder kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
network_up

# Each node's egress: netem (rate and delay) where the kernel has it, else tbf (rate only).
SHAPE="netem rate $RATE delay $DELAY"
for i in 1 2; do
  if ! ip netns exec "$NS$i" tc qdisc add dev eth0 root $SHAPE 2>/dev/null; then
    SHAPE="tbf rate $RATE burst 256kb latency 50ms"
    ip netns exec "$NS$i" tc qdisc add dev eth0 root $SHAPE
  fi
done
case $SHAPE in tbf*) echo "shaped-link: no netem qdisc in this kernel (sch_netem): shaped with tbf, rate $RATE, no added delay";; esac
echo "shaped-link: node1 eth0: $(ip netns exec "${NS}1" tc qdisc show dev eth0 | head -n 1)"

cd "$W"
printf 'node1 slots=1\nnode2 slots=1\n' > hosts
export RSH_AGENT=$HERE/nsrsh TCP_IF=$NET.0/24
on_nodes() { timeout -s KILL "$1" bash "$ROOT/launch/mpirun-hosts.sh" -f hosts -r 1 "${@:2}"; }
sha() { "$BIN" inspect "$1" | sed -n 's/^weights sha256: //p'; }

# identity
timeout -s KILL 60 "$BIN" synth --cases 4 --resolution 0.5 --seed 3 --out nii >/dev/null
timeout -s KILL 60 "$BIN" prepare --input nii --out store.h5 --spacing 4 >/dev/null
TRAIN=(--feature-scale 16 --patch 32x32x16 --batch 2 --samples-per-case 2 --epochs 2 --val-every 100 --allreduce-bucket-mib 0.01)
on_nodes 120 train --store store.h5 "${TRAIN[@]}" --out overlap > overlap.out 2>&1 || { tail -n 20 overlap.out; exit 1; }
on_nodes 120 train --store store.h5 "${TRAIN[@]}" --no-overlap --out blocking > blocking.out 2>&1 || { tail -n 20 blocking.out; exit 1; }
a=$(sha overlap/checkpoint_latest.h5) b=$(sha blocking/checkpoint_latest.h5)
[ -n "$a" ] && [ "$a" = "$b" ] || { echo "FAIL shaped-link identity: overlapped $a, blocking $b"; exit 1; }
echo "PASS shaped-link identity: 2 nodes over the shaped link, overlapped == --no-overlap: $a"

# figures
for patch in $PATCHES; do
  for mib in $BUCKET_MIB; do
    on_nodes 1200 bench train --patch "$patch" --batch 2 --steps "$STEPS" --warmup "$WARMUP" --overlap both \
      --allreduce-bucket-mib "$mib" --json > "bench-$patch-$mib.json" 2> "bench-$patch-$mib.err" \
      || { tail -n 20 "bench-$patch-$mib.err"; exit 1; }
    sed -n '/^{/,$p' "bench-$patch-$mib.json" | python3 "$HERE/shaped-link-figures.py" "$patch"
  done
done
