# Sourced by launch/mpirun-hosts.sh and cluster/lib.sh (not run): run_watched CMD... runs a launcher (mpirun or
# srun, possibly under `timeout`) in the background and copies its output line by line. Once that output says a
# rank failed (attunet's `error:` line, e.g. its --step-timeout watchdog, or the launcher's own abort notice),
# the launcher gets ABORT_GRACE seconds to end and is then killed. Why: after a network partition the ranks end
# by themselves (watchdog), but mpirun and srun keep waiting for the unreachable node for many minutes.
# Sets RC (the launcher's exit status; 137 when killed) and, while it runs, WATCHED_PID (to forward signals to).
# shellcheck shell=bash
ABORT_GRACE=${ABORT_GRACE:-30}
ABORT_PATTERN='^error: |srun: error: .*task|the job has been aborted|mpirun noticed that process|abort is already in progress|lost communication with a remote daemon'
WATCHED_PID=

# The launcher proper: the child of `timeout`, or the process itself.
watched_launcher() {
  local p=$1 kids
  kids=$(ps -o pid=,comm= --ppid "$p" 2>/dev/null || true)
  if [ "$(ps -o comm= -p "$p" 2>/dev/null)" = timeout ] && [ -n "$kids" ]; then awk '{print $1}' <<< "$kids"; else echo "$p"; fi
}

_abort_watch() {   # STATE_DIR; reads the launcher's output on stdin
  local st=$1 line armed=0
  while IFS= read -r line; do
    printf '%s\n' "$line"
    if [ "$armed" = 0 ] && [[ "$line" =~ $ABORT_PATTERN ]]; then
      armed=1
      (
        sleep "$ABORT_GRACE"
        [ -f "$st/pid" ] || exit 0            # the launcher ended in time (run_watched removed the state)
        p=$(cat "$st/pid")
        echo "$(basename "$0"): the launcher still runs ${ABORT_GRACE}s after a rank failed (a node unreachable?); killing it" >&2
        # shellcheck disable=SC2046  # one pid per word
        kill -KILL $(watched_launcher "$p") "$p" 2>/dev/null || true
      ) &
    fi
  done
}

run_watched() {
  local st wpid
  st=$(mktemp -d)
  mkfifo "$st/out"
  _abort_watch "$st" < "$st/out" &
  wpid=$!
  "$@" > "$st/out" 2>&1 &
  WATCHED_PID=$!
  echo "$WATCHED_PID" > "$st/pid"
  # A trapped signal (USR1, TERM) interrupts `wait`; wait again until the launcher itself has ended.
  while :; do
    # shellcheck disable=SC2034  # RC is for the caller
    if wait "$WATCHED_PID"; then RC=0; else RC=$?; fi
    kill -0 "$WATCHED_PID" 2>/dev/null || break
  done
  rm -f "$st/pid"
  # The last lines are still in the pipe; orphaned remote helpers may hold it open, so wait only briefly.
  for _ in $(seq 20); do kill -0 "$wpid" 2>/dev/null || break; sleep 0.1; done
  kill "$wpid" 2>/dev/null || true
  rm -rf "$st"
  WATCHED_PID=
}
