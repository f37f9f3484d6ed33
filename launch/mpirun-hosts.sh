#!/usr/bin/env bash
# Runs an attunet subcommand over several machines with mpirun and a hostfile (no Slurm; under Slurm use
# cluster/*.sbatch). Before starting it checks that every host sees the same binary (size + SHA-256) and, for
# --store, the same case store (size + SHA-256 of its `fingerprint` attribute), and names a host that differs.
#   launch/mpirun-hosts.sh -f hosts.txt -r 2 train --store data/ct.h5 --batch 4 --out runs/x
#   hosts.txt: one host per line, e.g. "node1 slots=2"
# Options: -f HOSTFILE (or HOSTFILE=), -r RANKS_PER_NODE (or RANKS_PER_NODE=); the rest is attunet's command line.
# Paths are the caller's: relative ones are resolved against the folder this is started from, on every host
# (the ranks start there: the folder must exist on every host, as on a shared filesystem).
# Exit status is attunet's (0; 75 stopped with a checkpoint, also at TIME_LIMIT: rerun with --resume; 4 the
# watchdog; ...), 137 when mpirun hung and was killed (TIME_LIMIT + 30 s, or ABORT_GRACE after a failure),
# 2 when a host differs.
set -euo pipefail

# ---- edit these (or set them in the environment) ----------------------------------------------------------
HOSTFILE=${HOSTFILE:-}                  # one host per line ("node1 slots=2"); -f overrides
RANKS_PER_NODE=${RANKS_PER_NODE:-1}     # -r overrides; total ranks = hosts x this
TCP_IF=${TCP_IF:-}                      # network for MPI traffic: interface (eth1) or CIDR (10.1.0.0/16); empty = all
PML=${PML:-ob1}                         # ob1 = the btl transports below; ucx would pick /dev/shm or IB by itself
BTL=${BTL:-self,vader,tcp}              # shared memory on a node, TCP between nodes
RSH_AGENT=${RSH_AGENT:-}                # how mpirun reaches the hosts; empty = ssh (needs passwordless ssh)
TIME_LIMIT=${TIME_LIMIT:-0}             # seconds until the run is stopped (USR1: checkpoint, exit 75; KILL 30 s later); 0 = none
ABORT_GRACE=${ABORT_GRACE:-30}          # seconds mpirun may take to end once a rank failed, then it is killed
CHECK_HOSTS=${CHECK_HOSTS:-1}           # 0 skips the same-binary/same-store check
# shellcheck disable=SC2206  # a list of options
MPIRUN_OPTS=(${MPIRUN_OPTS:-})          # anything else for mpirun
# ATTUNET_THREADS=N                     # threads per rank (attunet's --threads), passed to every rank when set;
                                        # unset: each rank takes its host's CPUs (affinity mask) / RANKS_PER_NODE
export OPENBLAS_NUM_THREADS=1           # OpenBLAS runs single-threaded inside attunet's own loops
# -----------------------------------------------------------------------------------------------------------

while getopts "f:r:" o; do
  case $o in f) HOSTFILE=$OPTARG ;; r) RANKS_PER_NODE=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ -n "$HOSTFILE" ] && [ -f "$HOSTFILE" ] || { echo "mpirun-hosts: hostfile '${HOSTFILE}' not found (-f HOSTFILE)" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: mpirun-hosts.sh -f HOSTFILE [-r RANKS_PER_NODE] SUBCOMMAND [attunet options]" >&2; exit 1; }
source "$(dirname "$0")/env.sh"
source "$(dirname "$0")/run-watched.sh"
HOSTFILE=$(realpath "$HOSTFILE")
mapfile -t HOSTS < <(sed 's/#.*//' "$HOSTFILE" | awk 'NF {print $1}' | awk '!seen[$0]++')
[ ${#HOSTS[@]} -gt 0 ] || { echo "mpirun-hosts: no hosts in $HOSTFILE" >&2; exit 1; }
NP=$(( ${#HOSTS[@]} * RANKS_PER_NODE ))

# Paths given to attunet become absolute (the caller's folder), so the check below and every rank see the same file.
ARGS=() STORE='' prev=''
for a in "$@"; do
  case "$prev" in
    --store|--out|--splits|--group-by|--input|--checkpoint) [[ "$a" = /* ]] || a=$PWD/$a ;;
  esac
  [ "$prev" = --store ] && STORE=$a
  ARGS+=("$a"); prev=$a
done

MPI=(mpirun --hostfile "$HOSTFILE"
  # none: with one BLAS thread per rank the kernel places ranks well; binding to cores halved intra-node
  # all-reduce bandwidth on small nodes and pins BLAS threads of a rank with OPENBLAS_NUM_THREADS>1 to one core.
  --bind-to none
  --wdir "$PWD"
  --mca pml "$PML" --mca btl "$BTL"
  "${MPIRUN_ENV[@]}")
[ -n "$RSH_AGENT" ] && MPI+=(--mca plm_rsh_agent "$RSH_AGENT")
# The same network for MPI messages (btl) and mpirun's own wire-up (oob): a host with several interfaces
# (management, docker, IB) otherwise may try one the others cannot reach and hang.
[ -n "$TCP_IF" ] && MPI+=(--mca btl_tcp_if_include "$TCP_IF" --mca oob_tcp_if_include "$TCP_IF")

if [ "$CHECK_HOSTS" = 1 ]; then
  # One process per host prints what it sees; compared with this machine's view.
  probe='b=$1 s=$2
    if [ -f "$b" ]; then bi="$(stat -c %s "$b") $(sha256sum < "$b" | cut -c1-64)"; else bi=missing; fi
    si=-
    if [ -n "$s" ]; then
      if [ ! -f "$s" ]; then si=missing
      elif ! command -v h5dump >/dev/null; then si="no-h5dump"
      else si="$(stat -c %s "$s") $(h5dump -a /fingerprint "$s" 2>/dev/null | tail -n +2 | sha256sum | cut -c1-64)"; fi
    fi
    echo "HOSTCHECK $(hostname)|$bi|$si"'
  mine=$(bash -c "$probe" probe "$BIN" "$STORE" | cut -d'|' -f2-)
  [ "${mine#*|}" = missing ] && { echo "mpirun-hosts: store $STORE not found here" >&2; exit 1; }
  seen=$(timeout -s KILL 60 "${MPI[@]}" --map-by ppr:1:node -np "${#HOSTS[@]}" bash -c "$probe" probe "$BIN" "$STORE" 2>&1) \
    || { echo "mpirun-hosts: could not run the host check: $(tail -n 3 <<< "$seen")" >&2; exit 1; }
  bad=0 n=0
  while IFS='|' read -r host bi si; do
    n=$((n + 1))
    [ "$bi" = "${mine%%|*}" ] || { echo "mpirun-hosts: $host: binary $BIN differs from this machine's (size sha256 there: $bi; here: ${mine%%|*})" >&2; bad=1; }
    [ "$si" = "${mine#*|}" ] || { echo "mpirun-hosts: $host: store $STORE differs from this machine's (size and fingerprint sha256 there: $si; here: ${mine#*|})" >&2; bad=1; }
  done < <(sed -n 's/^.*HOSTCHECK //p' <<< "$seen")
  [ "$n" = "${#HOSTS[@]}" ] || { echo "mpirun-hosts: $n of ${#HOSTS[@]} hosts answered the check" >&2; exit 1; }
  [ "$bad" = 0 ] || exit 2
  echo "mpirun-hosts: ${#HOSTS[@]} host(s) see the same binary${STORE:+ and store}"
fi

THREADS_SAID=${ATTUNET_THREADS:-"each host's CPUs / $RANKS_PER_NODE"}
echo "mpirun-hosts: $NP rank(s) on ${HOSTS[*]} ($RANKS_PER_NODE per host) x $THREADS_SAID thread(s)"
# USR1 first: mpirun passes it to the ranks, which checkpoint and exit 75 (mpirun then exits 75 too; on TERM
# it would exit 1); KILL 30 s later if it hangs (a partition).
# Always under timeout (0 = no limit): it puts mpirun in a process group of its own, so each signal below
# reaches mpirun exactly once.
TO=(timeout --preserve-status -k 30 -s USR1 "$TIME_LIMIT")
# Signals to this script go to mpirun, which passes them on to the ranks; TERM goes as USR1, so that the ranks
# checkpoint and mpirun exits 75 (resumable) rather than 1.
pass_on() {
  # shellcheck disable=SC2046  # one pid per word
  [ -z "$WATCHED_PID" ] || kill -s "$1" $(watched_launcher "$WATCHED_PID") 2>/dev/null || true
}
# shellcheck disable=SC2064  # $sig expands now, on purpose
for sig in USR1 USR2 HUP INT; do trap "pass_on $sig" "$sig"; done
trap "pass_on USR1" TERM
# ppr:R:node puts exactly R ranks on each host (hostfile order = rank order), whatever its slot count says.
# run_watched: once a rank failed, mpirun gets ABORT_GRACE seconds to end; after a network partition the ranks
# end by themselves (attunet's --step-timeout) but mpirun would wait for the lost host for many minutes.
run_watched "${TO[@]}" "${MPI[@]}" --map-by "ppr:$RANKS_PER_NODE:node" -np "$NP" "${MPIRUN_OPTS[@]}" "$BIN" "${ARGS[@]}"
exit "$RC"
