# Sourced by the cluster/*.sbatch scripts (not run): what they share.
#   LAUNCH                 the rank launcher: srun --mpi=pmix where Slurm has PMIx, else mpirun inside the allocation
#   run_ranks CMD...       starts CMD on every rank under `timeout -s KILL` (the job's time left), forwards USR1/TERM
#                          to the ranks, ends a launcher that hangs after a rank failed, and sets RC
#   finish                 requeues the job after a stop with a checkpoint (exit 75), otherwise exits with RC
# Needs: ATTUNET_ROOT (the repository), MAX_REQUEUES, LAUNCHER (auto|srun|mpirun), MPIRUN_OPTS (array, may be empty).
# shellcheck shell=bash

JOB_LABEL=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
JOB_LABEL=${JOB_LABEL:-${SLURM_JOB_ID:-}}
log() { echo "$(date +%H:%M:%S) ${JOB_LABEL:+job $JOB_LABEL: }$*"; }
die() { echo "error: $*" >&2; exit 1; }

[ -n "${SLURM_JOB_ID:-}" ] || die "$(basename "$0") is a batch script: submit it with sbatch"

# One attunet thread per CPU Slurm gave each rank (--cpus-per-task): ATTUNET_THREADS is the default of every
# subcommand's --threads (without it attunet reads SLURM_CPUS_PER_TASK, then its affinity mask, itself; set
# here so that both launchers and the log line agree). OpenBLAS runs single-threaded inside attunet's own
# loops: a rank's BLAS calls are items of its ATTUNET_THREADS-wide loops.
CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
export ATTUNET_THREADS=${ATTUNET_THREADS:-$CPUS_PER_TASK}
export OPENBLAS_NUM_THREADS=1
# shellcheck source=../launch/env.sh
source "$ATTUNET_ROOT/launch/env.sh"
# shellcheck source=../launch/run-watched.sh
source "$ATTUNET_ROOT/launch/run-watched.sh"

# srun starts the ranks itself when Slurm was built with PMIx (`srun --mpi=list` names it): no orted, and Slurm
# tracks and cleans up every rank. Otherwise mpirun reads the allocation from Slurm's variables and starts its
# daemons through srun; -x passes the BLAS/OpenMPI variables.
case "${LAUNCHER:-auto}" in
  auto) if srun --mpi=list 2>&1 | grep -q pmix; then LAUNCH=srun; else LAUNCH=mpirun; fi ;;
  srun|mpirun) LAUNCH=$LAUNCHER ;;
  *) die "LAUNCHER=$LAUNCHER: use auto, srun or mpirun" ;;
esac
# Ranks: with --ntasks-per-node, the nodes this attempt was given times that, so that a job requeued onto fewer
# nodes (submitted with --nodes=MIN-MAX, or shrunk with scontrol update NumNodes=) runs fewer ranks and resumes
# its checkpoint there (any rank count that divides the global batch); SLURM_NTASKS keeps the submitted count.
RANKS=${SLURM_NTASKS:-1}
if [[ "${SLURM_NTASKS_PER_NODE:-}" =~ ^[0-9]+$ ]]; then RANKS=$(( ${SLURM_JOB_NUM_NODES:-1} * SLURM_NTASKS_PER_NODE )); fi
if [ "$LAUNCH" = srun ]; then
  # --kill-on-bad-exit: one rank dying ends the step at once instead of leaving the others in a collective.
  # --cpus-per-task: srun of Slurm 22.05-23.02 does not take it from the allocation, and would bind each rank
  # to one CPU whatever its thread count.
  LAUNCH_CMD=(srun --mpi=pmix --kill-on-bad-exit=1 --ntasks="$RANKS" --cpus-per-task="$CPUS_PER_TASK")
else
  # --bind-to none: Slurm already confines the ranks to their CPUs; binding inside that halves all-reduce
  # bandwidth on small nodes.
  LAUNCH_CMD=(mpirun -np "$RANKS" --bind-to none "${MPIRUN_ENV[@]}" "${MPIRUN_OPTS[@]}")
fi

# Seconds until Slurm ends the job (squeue's %L: [D-]HH:MM:SS, MM:SS, or UNLIMITED), 0 when unknown.
time_left() {
  local l d=0 h=0 m=0 s=0
  l=$(squeue -h -j "$SLURM_JOB_ID" -o %L 2>/dev/null | head -n 1)
  case "$l" in *-*) d=${l%%-*}; l=${l#*-} ;; esac
  IFS=: read -r -a p <<< "$l"
  case ${#p[@]} in
    3) h=${p[0]}; m=${p[1]}; s=${p[2]} ;;
    2) m=${p[0]}; s=${p[1]} ;;
    *) echo 0; return ;;
  esac
  [[ "$d$h$m$s" =~ ^[0-9]+$ ]] || { echo 0; return; }
  echo $(( 10#$d * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s ))
}

STOP_REQUESTED=0 CANCELLED=0
# The launcher is a child of `timeout`, which would die of USR1 itself and leave it running: signal the child.
forward() {
  [ -n "$WATCHED_PID" ] || return 0
  # shellcheck disable=SC2046  # one pid per word
  kill -s "$1" $(watched_launcher "$WATCHED_PID") 2>/dev/null || true
}
on_usr1() { STOP_REQUESTED=1; log "USR1 (time limit near): asking the ranks to checkpoint and stop"; forward USR1; }
on_term() { CANCELLED=1; log "TERM (cancelled or out of time): forwarding to the ranks"; forward TERM; }
trap on_usr1 USR1
trap on_term TERM

run_ranks() {
  local left limit=0
  left=$(time_left)
  # Ends a hung launch (a silent partition leaves mpirun waiting for minutes) 20 s before Slurm's own kill,
  # so this script still reports it; 0 = no limit known.
  [ "$left" -gt 60 ] && limit=$(( left - 20 ))
  log "$LAUNCH on $SLURM_JOB_NUM_NODES node(s) x ${SLURM_NTASKS_PER_NODE:-?} rank(s) ($RANKS in all), $ATTUNET_THREADS thread(s) per rank, kill after ${limit}s (0 = none): $*"
  # run_watched: once a rank has failed, the launcher gets ABORT_GRACE seconds to end (a partitioned node
  # would keep srun or mpirun waiting).
  run_watched timeout -s KILL "$limit" "${LAUNCH_CMD[@]}" "$@"
  [ "$RC" = 137 ] && [ "$limit" -gt 0 ] && log "the ranks were killed (exit 137): hung, killed by hand, or out of time"
  return 0
}

finish() {
  local n=${SLURM_RESTART_COUNT:-0} why="--stop-after-epochs or a signal to a rank"
  [ "$STOP_REQUESTED" = 1 ] && why="USR1 before the time limit"
  if [ "$RC" = 75 ] && [ "$CANCELLED" = 0 ]; then
    log "the ranks stopped with a checkpoint, exit 75 ($why)"
    if [ "$n" -lt "$MAX_REQUEUES" ]; then
      log "requeue $((n + 1)) of at most $MAX_REQUEUES: the job continues from the checkpoint"
      trap '' TERM   # Slurm now ends this attempt: nothing left to forward
      scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed; resubmit${RUN_DIR:+ with RUN_DIR=$RUN_DIR} to continue"; exit 75; }
      exit 0
    fi
    log "not requeued: $n requeue(s) already, the cap (MAX_REQUEUES); resubmit${RUN_DIR:+ with RUN_DIR=$RUN_DIR} to continue"
  elif [ "$RC" != 0 ]; then
    log "failed with exit status $RC; not requeued"
  else
    log "done"
  fi
  exit "$RC"
}
