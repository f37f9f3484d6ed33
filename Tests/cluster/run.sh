#!/usr/bin/env bash
# The cluster scripts on an emulated 2-node cluster inside this machine (root): two network namespaces on a
# bridge with their own hostnames (node1, node2), an ssh stand-in for mpirun (nsrsh), munge, slurmctld and one
# slurmd per namespace (emulate.sh). Checks:
#   a  launch/mpirun-hosts.sh, 2 nodes x 1 rank over TCP: checkpoint == a 1-node 2-rank run (launch/train.sh),
#      the btl log shows tcp between node1 and node2; a host seeing another store is named and refused
#   b  sbatch --nodes=2 cluster/train.sbatch (srun --mpi=pmix): completes, outputs, checkpoint == reference
#   c  the time-limit path (mpirun inside the allocation): USR1 -> checkpoint, exit 75 -> self-requeue ->
#      --resume -> completes; final checkpoint == the uninterrupted reference
#   d  cluster/cv.sbatch, and cluster/submit-cv-array.sh (one task per fold + dependent summary), 2 folds
#   c2 the requeue cap: MAX_REQUEUES=0 -> the job stops with exit 75 and says so
#   e  kill -9 of node2's rank mid-run: the job fails within seconds naming node2, not requeued, rank 0's
#      checkpoint intact; resubmitted with RUN_DIR it resumes and ends == reference
#   e2 the same under launch/mpirun-hosts.sh: mpirun ends within seconds naming node2, no rank left running
#   e3 TIME_LIMIT of mpirun-hosts.sh: the ranks checkpoint and it exits 75
#   h  --cpus-per-task=2 (srun --mpi=pmix, task/affinity binding): attunet doctor on each rank reports 2 CPUs
#      in its affinity mask and 2 threads, from the scripts' ATTUNET_THREADS and, without it, from
#      SLURM_CPUS_PER_TASK; no warning of more threads than CPUs. 2 ranks x 1 CPU on a node: each rank bound to
#      its own CPU, 1 thread
#   i  elastic resume: a 2-node train job (3 epochs, --stop-after-epochs 1) requeued onto 1 node (1 rank, the
#      same global batch) after its first epoch finishes; its weights equal an uninterrupted 2-rank run's within
#      the rank-equivalence tolerance (relative L2 difference of the update since the stop <= 1e-3; one step per
#      epoch, as rounding differences between rank counts grow over steps)
#   f  a partition (node2's link down) under mpirun-hosts.sh: the --step-timeout watchdog's message, the run
#      ends within 40 s instead of hanging; g: the same for a Slurm job
#   shaped-link (only with SHAPED=1, last, on a fresh network): Tests/cluster/shaped-link.sh at 96x96x48: links
#      shaped to 1 Gbit/s, overlapped all-reduce == --no-overlap bit for bit, exposed all-reduce time printed
# mpirun-hosts.sh runs here with ATTUNET_THREADS=1: both "nodes" share this machine's CPUs, and each rank would
# otherwise take all of them.
# Every launch runs under `timeout -s KILL`; an EXIT trap removes daemons (by PID), namespaces, bridge and
# /etc/hosts lines. Without root or network namespaces it prints SKIP and exits 0.
#   bash Tests/cluster/run.sh          (ATTUNET_BIN=... to test another binary; KEEP=1 keeps the work folder)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export ATTUNET_BIN=${ATTUNET_BIN:-$ROOT/.build/release/attunet}
BIN=$ATTUNET_BIN
PYTHON=${ATTUNET_PYTHON:-$ROOT/.venv/bin/python}
EPOCHS=30            # long enough to interrupt mid-run (about 0.1-0.3 s per epoch here)
T_START=$(date +%s)

# A clean environment: not inside someone's Slurm job or MPI run.
for v in $(compgen -v | grep -E '^(SLURM_|OMPI_|PMIX_|ORTE_|OPAL_)' || true); do unset "$v"; done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1

source "$HERE/emulate.sh"
[ "$(id -u)" = 0 ] && cluster_down   # namespaces, bridge or hosts lines left by a run that was killed
if ! why=$(netns_usable); then echo "SKIP cluster tests: $why"; exit 0; fi
[ -x "$BIN" ] || { echo "cluster tests: $BIN missing (launch/setup.sh builds it)" >&2; exit 1; }

W=$(mktemp -d /tmp/attunet-cluster.XXXXXX)
chmod 755 "$W"
cleanup() {
  local rc=$?
  cluster_down
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then echo "cluster tests: work folder kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

network_up
SLURM=1
if ! why=$(slurm_usable); then echo "SKIP Slurm checks (b-e): $why"; SLURM=0
else slurm_up "$W/slurm" || { echo "cluster tests: Slurm did not start" >&2; exit 1; }; fi
echo "cluster tests: 2 nodes up in $(( $(date +%s) - T_START )) s; work folder $W"

cd "$W"   # the jobs' relative paths (store, runs) are relative to here, as a user's would be
tmo() { local s=$1; shift; timeout -s KILL "$s" "$@"; }
tmo 60 "$BIN" synth --cases 4 --resolution 0.5 --seed 3 --out nii >/dev/null
tmo 60 "$BIN" prepare --input nii --out store.h5 --spacing 4 >/dev/null
BASE=(--feature-scale 16 --patch 32x32x16 --batch 2 --samples-per-case 2 --sync-bn --optimizer sgd --lr 3e-3 --val-every 100)
TRAIN=("${BASE[@]}" --epochs "$EPOCHS")
LONG=("${BASE[@]}" --epochs 1000)   # runs that are stopped or broken on purpose
export STORE=store.h5 OUT_BASE=runs TRAIN_OPTS="${TRAIN[*]}"

WATCHDOG=0
# grep reads the whole help (-q would stop at the match and pipefail then sees attunet's SIGPIPE).
"$BIN" help train 2>&1 | grep -- --step-timeout >/dev/null && WATCHDOG=1
sha() { "$BIN" inspect "$1" | sed -n 's/^weights sha256: //p'; }
fail() { echo "FAIL: $*"; exit 1; }
# Job state from scontrol: JobState, Restarts, ExitCode. Slurm holds a requeued job for about 2 minutes
# (BeginTime); the wait releases it at once.
job() { scontrol show job -o "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
wait_job() {   # JOBID SECONDS -> prints the final state
  local j=$1 end=$(( $(date +%s) + $2 )) st
  while [ "$(date +%s)" -lt "$end" ]; do
    st=$(job "$j" JobState)
    case $st in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED) echo "$st"; return ;;
      PENDING) [ "$(job "$j" Reason)" = BeginTime ] && scontrol update JobId="$j" StartTime=now 2>/dev/null || true ;;
    esac
    sleep 0.3
  done
  scancel "$j" 2>/dev/null || true
  echo "TIMEOUT-IN-TEST"
}
wait_epochs() {   # RUNDIR N: until log.csv has N epochs (header + N lines)
  local end=$(( $(date +%s) + 60 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    [ -f "$1/log.csv" ] && [ "$(wc -l < "$1/log.csv")" -gt "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
submit() { sbatch --parsable --time=5 --signal=B:USR1@20 "$@" | cut -d';' -f1; }

PASSED=() FAILED=()
check() {   # NAME FUNCTION: runs it in a subshell (errexit on), its output in NAME.log
  local t0 rc
  t0=$(date +%s)
  ( "$2" ) > "$W/$1.log" 2>&1 & 
  wait $! && rc=0 || rc=$?
  if [ "$rc" = 0 ]; then PASSED+=("$1"); echo "PASS $1 ($(( $(date +%s) - t0 )) s)"
  else FAILED+=("$1"); echo "FAIL $1 ($(( $(date +%s) - t0 )) s); last lines of $W/$1.log:"; tail -n 15 "$W/$1.log" | sed 's/^/    /'; fi
}

reference() {   # one node, 2 ranks, same global batch: what every multi-node run must equal
  tmo 120 bash "$ROOT/launch/train.sh" -n 2 --store store.h5 "${TRAIN[@]}" --out ref
  sha ref/checkpoint_latest.h5 > ref.sha
  [ -s ref.sha ] || fail "no reference checkpoint"
}

a_mpirun_hosts() {
  printf 'node1 slots=1\nnode2 slots=1\n' > hosts
  export ATTUNET_THREADS=1   # the reference's
  export RSH_AGENT=$HERE/nsrsh TCP_IF=$NET.0/24 MPIRUN_OPTS="--mca btl_base_verbose 10"
  tmo 120 bash "$ROOT/launch/mpirun-hosts.sh" -f hosts -r 1 train --store store.h5 "${TRAIN[@]}" --out hosts-run > a.out 2>&1 \
    || { tail -n 20 a.out; fail "mpirun-hosts.sh failed"; }
  grep -q 'Using tcp btl for send to .* on node node2' a.out || fail "no 'Using tcp btl ... on node node2' in the btl log"
  grep -q 'Using tcp btl for send to .* on node node1' a.out || fail "no 'Using tcp btl ... on node node1' in the btl log"
  grep -q '^\[node1:' a.out && grep -q '^\[node2:' a.out || fail "ranks did not run on node1 and node2"
  [ "$(sha hosts-run/checkpoint_latest.h5)" = "$(cat ref.sha)" ] || fail "2-node checkpoint differs from the 1-node 2-rank one"
  echo "2 nodes x 1 rank == 1 node x 2 ranks: $(cat ref.sha)"
  # node2 sees another file at the store's path (a private mount in its namespace): refused, naming node2.
  "$BIN" prepare --input nii --out other.h5 --spacing 5 >/dev/null
  export NSRSH_BIND_node2="$W/other.h5:$W/store.h5" MPIRUN_OPTS=
  local rc=0
  tmo 60 bash "$ROOT/launch/mpirun-hosts.sh" -f hosts -r 1 train --store store.h5 "${TRAIN[@]}" --out never > a2.out 2>&1 || rc=$?
  cat a2.out
  [ "$rc" = 2 ] || fail "a differing store on node2 gave exit $rc, not 2"
  grep -q '^mpirun-hosts: node2: store .* differs' a2.out || fail "node2 not named"
  ! grep -q '^mpirun-hosts: node1:' a2.out || fail "node1 named though it matches"
  [ ! -e never ] || fail "training started despite the mismatch"
}

b_sbatch_train() {
  local j st
  j=$(submit --nodes=2 --ntasks-per-node=1 --output=b-%j.out "$ROOT/cluster/train.sbatch")
  st=$(wait_job "$j" 90)
  cat "b-$j.out"
  [ "$st" = COMPLETED ] || fail "job $j ended $st"
  [ "$(job "$j" ExitCode)" = 0:0 ] || fail "job $j exit code $(job "$j" ExitCode)"
  for f in checkpoint_latest.h5 checkpoint_best.h5 log.csv progress.svg; do
    [ -s "runs/train-$j/$f" ] || fail "runs/train-$j/$f missing"
  done
  [ "$(( $(wc -l < "runs/train-$j/log.csv") - 1 ))" = "$EPOCHS" ] || fail "log.csv has not $EPOCHS epochs"
  grep -q "job $j: srun on 2 node(s)" "b-$j.out" || fail "not launched with srun on 2 nodes"
  [ "$(sha "runs/train-$j/checkpoint_latest.h5")" = "$(cat ref.sha)" ] || fail "checkpoint differs from the reference"
}

c_time_limit_requeue() {
  local j st
  # mpirun inside the allocation this time (srun was b's launcher); USR1 as Slurm's --signal=B:USR1 sends it.
  j=$(LAUNCHER=mpirun MPIRUN_OPTS="--mca pml ob1 --mca btl self,vader,tcp --mca btl_tcp_if_include $NET.0/24 --mca oob_tcp_if_include $NET.0/24" \
      submit --nodes=2 --ntasks-per-node=1 --output=c-%j.out "$ROOT/cluster/train.sbatch")
  wait_epochs "runs/train-$j" 1 || fail "job $j: no epochs"
  scancel --signal=USR1 --batch "$j"
  st=$(wait_job "$j" 120)
  cat "c-$j.out"
  [ "$st" = COMPLETED ] || fail "job $j ended $st"
  [ "$(job "$j" Restarts)" = 1 ] || fail "job $j restarts: $(job "$j" Restarts), not 1"
  grep -q 'train: stop requested' "c-$j.out" || fail "the ranks did not stop on USR1"
  grep -q "requeue 1 of at most" "c-$j.out" || fail "no self-requeue"
  grep -q "resuming from runs/train-$j/checkpoint_latest.h5" "c-$j.out" || fail "the requeued job did not resume"
  [ "$(sha "runs/train-$j/checkpoint_latest.h5")" = "$(cat ref.sha)" ] || fail "interrupted+requeued checkpoint differs from the uninterrupted one"
}

c2_requeue_cap() {
  local j st
  j=$(MAX_REQUEUES=0 submit --nodes=2 --ntasks-per-node=1 --output=c2-%j.out "$ROOT/cluster/train.sbatch")
  wait_epochs "runs/train-$j" 1 || fail "job $j: no epochs"
  scancel --signal=USR1 --batch "$j"
  st=$(wait_job "$j" 60)
  cat "c2-$j.out"
  [ "$st" = FAILED ] || fail "job $j ended $st, not FAILED (exit 75 at the requeue cap)"
  [ "$(job "$j" ExitCode)" = 75:0 ] || fail "job $j exit code $(job "$j" ExitCode), not 75:0"
  [ "$(job "$j" Restarts)" = 0 ] || fail "job $j was requeued past the cap"
  grep -q 'the cap (MAX_REQUEUES); resubmit with RUN_DIR=runs/train-' "c2-$j.out" || fail "no message about the cap"
  "$BIN" inspect "runs/train-$j/checkpoint_latest.h5" | grep '^training state' || fail "no checkpoint"
}

d_cv() {
  local j st out arr sum
  export CV_OPTS="--folds 2 --models attention-unet --feature-scale 16 --patch 32x32x16 --batch 2 --epochs 2 --samples-per-case 2 --sync-bn --optimizer sgd --lr 3e-3 --val-every 100"
  j=$(submit --nodes=2 --ntasks-per-node=1 --output=d-%j.out "$ROOT/cluster/cv.sbatch")
  st=$(wait_job "$j" 90)
  tail -n 3 "d-$j.out"
  [ "$st" = COMPLETED ] || { cat "d-$j.out"; fail "cv job $j ended $st"; }
  for f in summary.md summary.json splits_final.json fold_0/attention-unet/results.json fold_1/attention-unet/results.json; do
    [ -s "runs/cv-$j/$f" ] || fail "runs/cv-$j/$f missing"
  done
  # The array: one task per fold on a node of its own, then the summary after both.
  export CV_OPTS="--models attention-unet --feature-scale 16 --patch 32x32x16 --batch 2 --epochs 2 --samples-per-case 2 --sync-bn --optimizer sgd --lr 3e-3 --val-every 100"
  out=$(FOLDS=2 SUMMARY_TIME=5 tmo 30 bash "$ROOT/cluster/submit-cv-array.sh" --time=5 --nodes=1 --ntasks-per-node=2)
  echo "$out"
  arr=$(sed -n 's/.*job array \([0-9]*\).*/\1/p' <<< "$out")
  sum=$(sed -n 's/.*summary: job \([0-9]*\).*/\1/p' <<< "$out")
  [ -n "$arr" ] && [ -n "$sum" ] || fail "submit-cv-array.sh printed no job ids"
  st=$(wait_job "$sum" 120)
  cat attunet-cv-"$arr"_*.out "attunet-cv-$arr-summary.out"
  [ "$st" = COMPLETED ] || fail "summary job $sum ended $st"
  grep -q "job ${arr}_0: .* --fold 0" "attunet-cv-${arr}_0.out" || fail "task 0 did not run --fold 0"
  grep -q "job ${arr}_1: .* --fold 1" "attunet-cv-${arr}_1.out" || fail "task 1 did not run --fold 1"
  grep -q -- "--summarize" "attunet-cv-$arr-summary.out" || fail "the summary job did not run --summarize"
  for f in summary.md summary.json splits_final.json fold_0/attention-unet/results.json fold_1/attention-unet/results.json; do
    [ -s "runs/cv-$arr/$f" ] || fail "runs/cv-$arr/$f missing"
  done
  # The array's folds are the one job's folds.
  cmp "runs/cv-$j/splits.json" "runs/cv-$arr/splits.json" || fail "array and one-job CV split differently"
}

e_kill_node() {
  local j j2 st t0 dt p killed=0 exe
  exe=$(realpath "$BIN")
  j=$(submit --nodes=2 --ntasks-per-node=1 --output=e-%j.out "$ROOT/cluster/train.sbatch")
  wait_epochs "runs/train-$j" 3 || fail "job $j: no epochs"
  for p in $(ip netns pids "${NS}2"); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$exe" ] && kill -9 "$p" && killed=$((killed + 1))
  done
  [ "$killed" -gt 0 ] || fail "no rank found on node2"
  t0=$(date +%s)
  st=$(wait_job "$j" 60)
  dt=$(( $(date +%s) - t0 ))
  cat "e-$j.out"
  [ "$st" = FAILED ] || fail "job $j ended $st, not FAILED"
  [ "$dt" -le 20 ] || fail "job $j took $dt s to fail"
  grep -q 'node2: task 1: Killed' "e-$j.out" || fail "the output does not name node2's killed rank"
  grep -q 'not requeued' "e-$j.out" || fail "no 'not requeued'"
  [ "$(job "$j" Restarts)" = 0 ] || fail "a failed job was requeued"
  "$BIN" inspect "runs/train-$j/checkpoint_latest.h5" | grep -E '^training state|^weights' || fail "rank 0's checkpoint is not readable"
  echo "failed $dt s after the kill"
  j2=$(RUN_DIR=runs/train-$j submit --nodes=2 --ntasks-per-node=1 --output=e-%j.out "$ROOT/cluster/train.sbatch")
  st=$(wait_job "$j2" 90)
  cat "e-$j2.out"
  [ "$st" = COMPLETED ] || fail "resubmitted job $j2 ended $st"
  grep -q "resuming from runs/train-$j/checkpoint_latest.h5" "e-$j2.out" || fail "the resubmission did not resume"
  [ "$(sha "runs/train-$j/checkpoint_latest.h5")" = "$(cat ref.sha)" ] || fail "killed+resumed checkpoint differs from the uninterrupted one"
}

e2_kill_node_hostfile() {
  local pid rc=0 p killed=0 t0 dt exe left
  exe=$(realpath "$BIN")
  printf 'node1 slots=1\nnode2 slots=1\n' > hosts
  ATTUNET_THREADS=1 RSH_AGENT=$HERE/nsrsh TCP_IF=$NET.0/24 TIME_LIMIT=90 \
    tmo 120 bash "$ROOT/launch/mpirun-hosts.sh" -f hosts -r 1 train --store store.h5 "${TRAIN[@]}" --out e2-run > e2.out 2>&1 &
  pid=$!
  wait_epochs e2-run 3 || fail "no epochs"
  for p in $(ip netns pids "${NS}2"); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$exe" ] && kill -9 "$p" && killed=$((killed + 1))
  done
  [ "$killed" -gt 0 ] || fail "no rank found on node2"
  t0=$(date +%s)
  wait "$pid" || rc=$?
  dt=$(( $(date +%s) - t0 ))
  grep -v '^[0-9TZ:-]* epoch ' e2.out
  [ "$rc" != 0 ] || fail "mpirun-hosts.sh exited 0 after a rank was killed"
  [ "$dt" -le 15 ] || fail "took $dt s to end"
  grep -q 'node2' e2.out || fail "node2 not named"
  sleep 1
  left=$(for p in $(ip netns pids "${NS}1") $(ip netns pids "${NS}2"); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$exe" ] && echo "$p"; done; true)
  [ -z "$left" ] || fail "ranks left running: $left"
  "$BIN" inspect e2-run/checkpoint_latest.h5 | grep '^training state' || fail "no checkpoint"
  echo "mpirun-hosts.sh exited $rc $dt s after the kill; no rank left"
}

e3_time_limit_hostfile() {
  local rc=0
  printf 'node1 slots=1\nnode2 slots=1\n' > hosts
  ATTUNET_THREADS=1 RSH_AGENT=$HERE/nsrsh TCP_IF=$NET.0/24 TIME_LIMIT=8 \
    tmo 60 bash "$ROOT/launch/mpirun-hosts.sh" -f hosts -r 1 train --store store.h5 "${LONG[@]}" --out e3-run > e3.out 2>&1 || rc=$?
  grep -v '^[0-9TZ:-]* epoch ' e3.out
  [ "$rc" = 75 ] || fail "TIME_LIMIT gave exit $rc, not 75"
  grep -q 'train: stop requested' e3.out || fail "the ranks did not checkpoint"
  "$BIN" inspect e3-run/checkpoint_latest.h5 | grep '^training state' || fail "no checkpoint"
}

# A silent partition: node2's link goes down mid-run. attunet's watchdog (--step-timeout) ends the ranks, and
# the launcher, which would wait for the lost node for many minutes, is ended ABORT_GRACE s after that.
f_partition_hostfile() {
  local pid rc=0 t0 dt
  printf 'node1 slots=1\nnode2 slots=1\n' > hosts
  ATTUNET_THREADS=1 RSH_AGENT=$HERE/nsrsh TCP_IF=$NET.0/24 TIME_LIMIT=100 ABORT_GRACE=10 \
    tmo 120 bash "$ROOT/launch/mpirun-hosts.sh" -f hosts -r 1 train --store store.h5 "${LONG[@]}" --step-timeout 8 --out f-run > f.out 2>&1 &
  pid=$!
  wait_epochs f-run 3 || fail "no epochs"
  ip link set "${NS}v2" down
  t0=$(date +%s)
  wait "$pid" || rc=$?
  dt=$(( $(date +%s) - t0 ))
  ip link set "${NS}v2" up
  grep -v '^[0-9TZ:-]* epoch ' f.out
  [ "$rc" != 0 ] || fail "exit 0 after a partition"
  grep -q 'did not finish within 8 s at global step .*(--step-timeout)' f.out || fail "no watchdog message"
  [ "$dt" -le 40 ] || fail "took $dt s to end after the partition"
  echo "ended $dt s after the partition, exit $rc"
}

g_partition_slurm() {
  local j t0 dt
  j=$(TRAIN_OPTS="${LONG[*]} --step-timeout 8" ABORT_GRACE=10 \
      submit --nodes=2 --ntasks-per-node=1 --output=g-%j.out "$ROOT/cluster/train.sbatch")
  wait_epochs "runs/train-$j" 3 || fail "job $j: no epochs"
  ip link set "${NS}v2" down
  t0=$(date +%s)
  while [ $(( $(date +%s) - t0 )) -lt 60 ] && ! grep -q 'not requeued' "g-$j.out"; do sleep 0.5; done
  dt=$(( $(date +%s) - t0 ))
  ip link set "${NS}v2" up
  grep -v '^[0-9TZ:-]* epoch ' "g-$j.out"
  grep -q 'did not finish within 8 s at global step .*(--step-timeout)' "g-$j.out" || fail "no watchdog message"
  grep -q 'failed with exit status .*; not requeued' "g-$j.out" || fail "the job script did not end within 60 s"
  [ "$dt" -le 40 ] || fail "took $dt s to end after the partition"
  echo "job script ended $dt s after the partition"
}

h_cpus_per_task() {
  local j st r
  cat > doctor.sbatch <<EOF
#!/usr/bin/env bash
set -euo pipefail
ATTUNET_ROOT=$ROOT MAX_REQUEUES=0 LAUNCHER=srun
source "\$ATTUNET_ROOT/cluster/lib.sh"
run_ranks "\$BIN" doctor --gemm-size 64
[ "\$RC" = 0 ] && run_ranks env -u ATTUNET_THREADS "\$BIN" doctor --gemm-size 64
finish
EOF
  j=$(submit --nodes=2 --ntasks-per-node=1 --cpus-per-task=2 --output=h-%j.out doctor.sbatch)
  st=$(wait_job "$j" 60)
  cat "h-$j.out"
  [ "$st" = COMPLETED ] || fail "doctor job $j ended $st"
  grep -q "srun on 2 node(s) x 1 rank(s) (2 in all), 2 thread(s) per rank" "h-$j.out" || fail "the job script does not say 2 threads per rank"
  for r in 0 1; do
    for src in ATTUNET_THREADS SLURM_CPUS_PER_TASK; do
      grep -Eq "^rank $r/2 .* CPUs [0-9,-]+ \(2\)  threads 2 \($src\)" "h-$j.out" || fail "rank $r: not 2 CPUs in its affinity mask and 2 threads from $src"
    done
  done
  ! grep -q 'threads .* but it may run on' "h-$j.out" || fail "doctor warns of more threads than CPUs"
  j=$(submit --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --output=h-%j.out doctor.sbatch)
  st=$(wait_job "$j" 60)
  cat "h-$j.out"
  [ "$st" = COMPLETED ] || fail "doctor job $j ended $st"
  [ "$(grep -Ec '^rank [01]/2 .* CPUs [0-9]+ \(1\)  threads 1 ' "h-$j.out")" = 4 ] || fail "2 ranks x 1 CPU: not 1 CPU and 1 thread per rank"
  [ "$(grep -E '^rank [01]/2 ' "h-$j.out" | head -n 2 | sed -E 's/.* CPUs ([0-9]+) .*/\1/' | sort -u | wc -l)" = 2 ] || fail "the 2 ranks of a node share a CPU"
}

# ||A - B|| / ||B - S|| over the parameters in /state_dict (not the BN running statistics): the difference of
# two runs' updates since S.
update_difference() {
  "$PYTHON" - "$@" <<'PY'
import sys, h5py, numpy as np
def load(p):
    with h5py.File(p, 'r') as f:
        g = f['state_dict']
        return {k: np.asarray(g[k][()], dtype=np.float64) for k in g
                if g[k].dtype.kind == 'f' and not k.endswith(('running_mean', 'running_var'))}
a, b, s = (load(p) for p in sys.argv[1:4])
diff = sum(((a[k] - b[k]) ** 2).sum() for k in b)
norm = sum(((b[k] - s[k]) ** 2).sum() for k in b)
print(f"{(diff / norm) ** 0.5:.3g}")
PY
}

i_elastic_requeue() {
  local j st end c
  # One step per epoch (the later --samples-per-case wins): the update since the stop is 2 steps. Rounding
  # differences between 2 ranks and 1 grow over steps as ReLU masks and max-pool winners flip: with 3 steps per
  # epoch (6 since the stop) this check measured 0.035 on seed 0, with 1 step per epoch at most 1.1e-5 over 6 seeds.
  local opts=("${BASE[@]}" --samples-per-case 1 --epochs 3)
  tmo 120 bash "$ROOT/launch/train.sh" -n 2 --store store.h5 "${opts[@]}" --out ref3 >/dev/null
  # One epoch per attempt: the job requeues itself after epochs 1 and 2.
  j=$(TRAIN_OPTS="${opts[*]} --stop-after-epochs 1" submit --nodes=2 --ntasks-per-node=1 --output=i-%j.out "$ROOT/cluster/train.sbatch")
  # Requeued after its first epoch, it waits (BeginTime): while it does, the job shrinks to 1 node x 1 rank.
  end=$(( $(date +%s) + 60 ))
  while [ "$(job "$j" Restarts)" != 1 ] || [ "$(job "$j" JobState)" != PENDING ]; do
    [ "$(date +%s)" -lt "$end" ] || fail "job $j was not requeued: $(job "$j" JobState)"
    sleep 0.2
  done
  cp "runs/train-$j/checkpoint_latest.h5" i-stop.h5
  scontrol update JobId="$j" NumNodes=1 NumTasks=1 || fail "scontrol could not shrink job $j to 1 node"
  st=$(wait_job "$j" 120)
  cat "i-$j.out"
  [ "$st" = COMPLETED ] || fail "job $j ended $st"
  grep -q "srun on 1 node(s) x 1 rank(s) (1 in all)" "i-$j.out" || fail "the requeued job did not run 1 rank on 1 node"
  grep -q "was written on 2 rank(s); continuing on 1" "i-$j.out" || fail "no note of the rank count change"
  "$BIN" inspect "runs/train-$j/checkpoint_latest.h5" | grep '^training state'
  [ "$(job "$j" Restarts)" = 2 ] || fail "job $j restarts: $(job "$j" Restarts), not 2"
  c=$(update_difference "runs/train-$j/checkpoint_latest.h5" ref3/checkpoint_latest.h5 i-stop.h5)
  echo "2 nodes -> requeued onto 1 node: relative difference of the update since the stop $c (bound 1e-3)"
  "$PYTHON" -c "import sys; sys.exit(0 if float('$c') <= 1e-3 else 1)" || fail "elastic resume differs from the reference by $c"
}

check reference reference
if [ ${#FAILED[@]} = 0 ]; then
  check a-mpirun-hosts a_mpirun_hosts
  check e2-kill-node-hostfile e2_kill_node_hostfile
  check e3-time-limit-hostfile e3_time_limit_hostfile
  if [ "$WATCHDOG" = 1 ]; then check f-partition-hostfile f_partition_hostfile
  else echo "SKIP f-partition-hostfile, g-partition-slurm: $BIN has no --step-timeout"; fi
  if [ "$SLURM" = 1 ]; then
    check b-sbatch-train b_sbatch_train
    check c-time-limit-requeue c_time_limit_requeue
    check c2-requeue-cap c2_requeue_cap
    check d-cv-array d_cv
    check e-kill-node e_kill_node
    check h-cpus-per-task h_cpus_per_task
    if [ -x "$PYTHON" ] && "$PYTHON" -c "import h5py" 2>/dev/null; then check i-elastic-requeue i_elastic_requeue
    else echo "SKIP i-elastic-requeue: no h5py in $PYTHON (launch/test-env.sh makes .venv)"; fi
    # Last: Slurm may need a while to hear from node2 again.
    [ "$WATCHDOG" = 1 ] && check g-partition-slurm g_partition_slurm
    echo "job records (Slurm's jobcomp log; sacct needs slurmdbd):"
    sed -E 's/^(JobId=[^ ]+) .*(Name=[^ ]+) (JobState=[^ ]+) .*(StartTime=[^ ]+) (EndTime=[^ ]+) (NodeList=[^ ]+) .*(ExitCode=[^ ]+).*/  \1 \2 \3 \4 \5 \6 \7/' "$W/slurm/log/jobcomp.log" || true
  fi
fi
# Optional (SHAPED=1, about a minute): the overlapped all-reduce over a shaped link, on a cluster of its own.
shaped_link() { cluster_down; PATCHES=96x96x48 STEPS=2 bash "$HERE/shaped-link.sh"; }
if [ "${SHAPED:-0}" = 1 ]; then check shaped-link shaped_link; sed -n '/^shaped-link\|^PASS\|^  /p' "$W/shaped-link.log"; fi
echo "cluster tests: ${#PASSED[@]} passed, ${#FAILED[@]} failed${FAILED:+ (${FAILED[*]})} in $(( $(date +%s) - T_START )) s"
[ ${#FAILED[@]} = 0 ]
