#!/usr/bin/env bash
# Faults injected at random into a 2-rank `attunet train`, each run then resumed to its end and compared with
# an uninterrupted run, bit for bit.
#   bash launch/fault-inject.sh [TRIALS]      # default 20; the test suite runs 5 (about a minute)
# Every trial starts a small training (feature scale 16, 32x32x16 patches, 3 epochs of a 4-case phantom
# store) under mpirun, waits a random moment and kills with SIGKILL one of: rank 0, rank 1, mpirun itself, or
# every process of the run at once (a node lost). Trials take turns at where the kill lands: anywhere in a
# step, inside the gradient all-reduce (rank 0 waiting there for rank 1), or inside a checkpoint write (the
# temporary file filled, not yet renamed into place). Test hooks, active only under the variables below
# (Support's FaultHooks), record each process's phase and widen the last two windows (30 ms before rank 1's
# all-reduce, 400 ms in every checkpoint write); they change nothing that is computed or written.
# After a kill, every checkpoint present must pass `attunet inspect` (checksums and digests verified); then the
# run resumes with --resume, or starts afresh when the kill came before the first checkpoint. The finished run's
# weights digest must equal the uninterrupted run's. Prints one line per trial (what was killed, when, in
# which phase, the outcome) and a summary; exit status 0 only when every trial ends bit-identical with no
# checkpoint ever unreadable.
# Environment: ATTUNET_BIN (default .build/release/attunet), FAULT_SEED (random seed, default: from the
# clock, printed), FAULT_DIR (work folder, default a temporary one, removed unless KEEP=1).
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-20}
BIN=${ATTUNET_BIN:-$PWD/.build/release/attunet}
test -x "$BIN" || { echo "fault-inject: $BIN missing; run launch/setup.sh first" >&2; exit 1; }
SEED=${FAULT_SEED:-$(( $(date +%s) % 32768 ))}
RANDOM=$SEED
export OPENBLAS_NUM_THREADS=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
W=${FAULT_DIR:-$(mktemp -d /tmp/attunet-fault-XXXXXX)}
mkdir -p "$W"
cleanup() {
  # Only this script's own runs: the processes listed in $W/pids.
  if [ -f "$W/pids" ]; then while read -r p; do kill -KILL "$p" 2>/dev/null || true; done <"$W/pids"; fi
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
echo "fault-inject: $TRIALS trial(s), seed $SEED, work folder $W"
# bash reports each killed background job ("Killed ... mpirun ..."); those notices go to a file, not the
# report; the script's own errors go to the original stderr (3).
exec 3>&2 2>>"$W/notices.log"

# The phantom store: 4 cases at 4 mm.
if [ ! -f "$W/store.h5" ]; then
  "$BIN" synth --cases 4 --seed 3 --resolution 0.5 --threads 2 --out "$W/nii" >/dev/null
  "$BIN" prepare --input "$W/nii" --out "$W/store.h5" --spacing 4 --threads 2 >/dev/null
fi

HOOKS="$W/hooks"
TRAIN=(--store "$W/store.h5" --feature-scale 16 --patch 32x32x16 --batch 2 --epochs 3 --samples-per-case 4
       --lr 1e-3 --seed 5)
# Runs `attunet train` under mpirun in the background with the hooks on; sets JOB (mpirun's pid).
start() {  # $1 = run folder, $2 = log, then extra options
  local out=$1 log=$2; shift 2
  mkdir -p "$HOOKS"
  ATTUNET_FAULT_HOOKS=$HOOKS ATTUNET_FAULT_CHECKPOINT_MS=400 ATTUNET_FAULT_ALLREDUCE_MS=30 \
    mpirun -np 2 --bind-to none --oversubscribe -x ATTUNET_FAULT_HOOKS -x ATTUNET_FAULT_CHECKPOINT_MS \
    -x ATTUNET_FAULT_ALLREDUCE_MS -x OPENBLAS_NUM_THREADS "$BIN" train "${TRAIN[@]}" --out "$out" "$@" >"$log" 2>&1 &
  JOB=$!
  echo "$JOB" >>"$W/pids"
}
digest() { { "$BIN" inspect "$1" 2>/dev/null || true; } | sed -n 's/.*weights sha256: \([0-9a-f]*\).*/\1/p'; }
ranks() { pgrep -P "$JOB" -x attunet || true; }          # the ranks of the run started last
rank_of() { { tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" || true; } | sed -n 's/^OMPI_COMM_WORLD_RANK=//p'; }
phase() { tr -d ' \n' 2>/dev/null <"$HOOKS/phase.$1" || echo "-"; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }

# The uninterrupted run: its digest and duration.
t0=$(now)
start "$W/reference" "$W/reference.log"
wait "$JOB" || { cat "$W/reference.log" >&3; echo "fault-inject: the uninterrupted run failed" >&3; exit 1; }
DURATION=$(calc "$(now) - $t0")
REFERENCE=$(digest "$W/reference/checkpoint_latest.h5")
[ -n "$REFERENCE" ] || { echo "fault-inject: no digest from the uninterrupted run" >&3; exit 1; }
printf 'fault-inject: uninterrupted run %.1f s, weights sha256 %s\n' "$DURATION" "${REFERENCE:0:16}"

# Every checkpoint of run folder $1 must pass inspect (checksums and stored digests); counts failures.
UNREADABLE=0
check_checkpoints() {
  local f
  for f in "$1"/checkpoint_latest.h5 "$1"/checkpoint_best.h5; do
    [ -f "$f" ] || continue
    if ! "$BIN" inspect "$f" >/dev/null 2>"$W/inspect.err"; then
      UNREADABLE=$((UNREADABLE + 1))
      echo "fault-inject: UNREADABLE $(basename "$f"): $(cat "$W/inspect.err")"
    fi
  done
}

IDENTICAL=0 KILLED=0
MOMENTS=(step allreduce checkpoint)
VICTIMS=(rank0 rank1 mpirun all)
for trial in $(seq 1 "$TRIALS"); do
  run="$W/trial$trial"
  rm -rf "$run" "$HOOKS"
  moment=${MOMENTS[$(( (trial - 1) % 3 ))]}
  victim=${VICTIMS[$(( RANDOM % 4 ))]}
  # A random delay between 20% and 80% of an uninterrupted run, then the first moment rank 0 is in the chosen
  # phase.
  delay=$(calc "$DURATION * (0.2 + 0.6 * $(( RANDOM % 100 )) / 100)")
  t0=$(now)
  start "$run" "$run.log"
  sleep "$delay"
  declare -A pid_of=()
  landed=""; deadline=$(calc "$(now) + $DURATION * 2")
  while kill -0 "$JOB" 2>/dev/null && awk "BEGIN { exit !($(now) < $deadline) }"; do
    for p in $(ranks); do r=$(rank_of "$p"); [ -n "$r" ] && pid_of[rank$r]=$p; done
    if [ -n "${pid_of[rank0]:-}" ] && [ -n "${pid_of[rank1]:-}" ]; then
      p0=$(phase "${pid_of[rank0]}")
      case $moment in
        step) [ "$p0" = step ] && landed=yes ;;
        allreduce) [ "$p0" = allreduce ] && landed=yes ;;
        checkpoint) [ "$p0" = checkpoint ] && compgen -G "$run/.tmp-*checkpoint_*.h5" >/dev/null && landed=yes ;;
      esac
    fi
    [ -n "$landed" ] && break
    sleep 0.005
  done
  at=$(calc "$(now) - $t0")
  if [ -z "$landed" ]; then
    wait "$JOB" 2>/dev/null || true
    what="nothing (the run ended first)"
  else
    phases="rank0 $(phase "${pid_of[rank0]}"), rank1 $(phase "${pid_of[rank1]}")"
    case $victim in
      rank0) kill -KILL "${pid_of[rank0]}" ;;
      rank1) kill -KILL "${pid_of[rank1]}" ;;
      mpirun) kill -KILL "$JOB" ;;
      all) kill -KILL "$JOB" "${pid_of[rank0]}" "${pid_of[rank1]}" 2>/dev/null || true ;;
    esac
    what="$victim at $(printf '%.2f' "$at") s ($phases)"
    KILLED=$((KILLED + 1))
    # mpirun ends a job whose rank died; ranks whose mpirun died end by themselves or are ended here
    # (a resumed run must never share the folder with a survivor).
    for _ in $(seq 1 100); do
      alive=0
      for p in "$JOB" "${pid_of[rank0]}" "${pid_of[rank1]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ $alive = 0 ] && break
      sleep 0.1
    done
    if [ $alive = 1 ]; then
      what+=", survivors killed after 10 s"
      kill -KILL "$JOB" "${pid_of[rank0]}" "${pid_of[rank1]}" 2>/dev/null || true
    fi
    wait "$JOB" 2>/dev/null || true
  fi
  check_checkpoints "$run"
  leftovers=$({ find "$run" -maxdepth 1 -name '.tmp-*' 2>/dev/null || true; } | wc -l)
  # Resume (or start afresh when no checkpoint was written yet) and run to the end.
  if [ -f "$run/checkpoint_latest.h5" ]; then how="resumed"; extra=(--resume); else how="started afresh"; extra=(); fi
  [ -n "$landed" ] || { how="not resumed"; extra=(); }
  if [ -n "$landed" ]; then
    start "$run" "$run.resume.log" "${extra[@]}"
    wait "$JOB" || { echo "fault-inject: trial $trial: the resumed run failed:"; tail -5 "$run.resume.log"; }
  fi
  check_checkpoints "$run"
  final=$(digest "$run/checkpoint_latest.h5")
  if [ "$final" = "$REFERENCE" ]; then outcome="bit-identical"; IDENTICAL=$((IDENTICAL + 1)); else outcome="DIFFERENT (${final:0:16})"; fi
  if [ "$leftovers" -gt 0 ]; then
    outcome+=", $leftovers temporary file(s) of the killed write left"
    # The restart (--resume, or a fresh start into the same folder) removes those of dead processes.
    after=$({ find "$run" -maxdepth 1 -name '.tmp-*' 2>/dev/null || true; } | wc -l)
    [ "$how" != "not resumed" ] && { [ "$after" -eq 0 ] && outcome+=" (removed by the restart)" || outcome+=" ($after still there after the restart)"; }
  fi
  printf 'trial %2d: %-10s killed %s; %s: %s\n' "$trial" "$moment" "$what" "$how" "$outcome"
done
echo "fault-inject: $IDENTICAL/$TRIALS bit-identical ($KILLED killed, the others ended before their moment came), $UNREADABLE unreadable checkpoint(s) (seed $SEED)"
[ "$IDENTICAL" -eq "$TRIALS" ] && [ "$UNREADABLE" -eq 0 ]
