# Sourced by setup.sh, test.sh and fuzz.sh (from the repository root): one way to build quietly.
#
# quiet_build WHO WHAT [swift build arguments ...]
#   Runs `swift build` with the arguments, its output in a temporary log. On success it prints the compiler's
#   warnings and the closing line ("Build complete! ..."). On failure it prints the compiler's messages without the
#   "[n/m]" progress lines, then "WHO: WHAT failed (messages above)", and returns 1: a failed build must never leave
#   an older binary standing in for the sources unnoticed. Variables set before the call (VAR=x quiet_build ...)
#   reach swift build.
quiet_build() {
  local who=$1 what=$2 log status=0
  shift 2
  log=$(mktemp)
  swift build "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    grep -v '^\[[0-9]*/[0-9]*\]' "$log" >&2 || true
    rm -f "$log"
    echo "$who: $what failed (messages above)" >&2
    return 1
  fi
  grep "warning:" "$log" || true
  tail -n 1 "$log"
  rm -f "$log"
}
