#!/usr/bin/env bash
# Runs the test suite, on a fresh machine too: launch/setup.sh first (system packages when missing, release
# build; quick when everything is there), then the test environment (launch/test-env.sh: a .venv with h5py,
# nibabel, scipy and CPU torch, made once), then the tests.
#   bash launch/test.sh                   # the whole suite, its test classes spread over parallel processes
#   bash launch/test.sh --filter NNTests  # with arguments: `swift test` with them, as they are
# The whole suite: the tests are built once (`swift build --build-tests`), then each test class runs in a process
# of its own, ATTUNET_TEST_JOBS classes at a time (default: the cores, at most 8; 1 runs plain `swift test`).
# Many tests wait on child processes (mpirun, the release binary, Python), so two processes keep two cores busy
# where one left them half idle. The tests of a class still run one after another in one process, sharing what
# the class builds once. One line per class as it ends; the log of each failed class in full at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/test-env.sh
[ $# -eq 0 ] || exec swift test "$@"

cores=$(nproc 2>/dev/null || echo 1)
jobs=${ATTUNET_TEST_JOBS:-$((cores < 8 ? cores : 8))}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "test: ATTUNET_TEST_JOBS must be a positive integer, not '$jobs'" >&2; exit 2; }
[ "$jobs" -gt 1 ] || exec swift test

echo "test: building the tests (debug)"
source launch/quiet-build.sh
quiet_build test "building the tests" --build-tests || exit 1
bundle="$(swift build --build-tests --show-bin-path)/attunetPackageTests.xctest"
# Elsewhere than Linux the bundle is not an executable: swift test runs it.
[ -f "$bundle" ] && [ -x "$bundle" ] || exec swift test --skip-build

mapfile -t listed < <("$bundle" --list-tests | sed -n 's#^\([A-Za-z0-9_]*\.[A-Za-z0-9_]*\)/.*#\1#p' | sort -u)
[ ${#listed[@]} -gt 0 ] || { echo "test: $bundle lists no tests" >&2; exit 1; }
# The slowest classes first (about a minute each, measured on 2 cores), so that the last ones to end are short.
SLOW=(CrossValidationTests TrainerTests ModelTests FaultInjectionTests DamagedHDF5Tests ExperimentTransferTests
      PredictEvaluateTests ValidationTests PhantomKnobTests CLITests BenchTrainTests TransferTrainingTests)
ordered=()
for s in "${SLOW[@]}"; do
  for c in "${listed[@]}"; do [ "${c#*.}" = "$s" ] && ordered+=("$c"); done
done
for c in "${listed[@]}"; do [[ " ${SLOW[*]} " == *" ${c#*.} "* ]] || ordered+=("$c"); done

results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
echo "test: ${#ordered[@]} test classes, $jobs at a time"
# What a class's log says it ran: "TESTS SKIPPED FAILURES" from XCTest's last summary line (none when it crashed).
counts() {
  awk '/Executed [0-9]+ tests?, with/ { l = $0 }
       END { if (l == "") exit
             n = l; sub(/.*Executed /, "", n); sub(/ .*/, "", n)
             s = 0; if (l ~ /skipped/) { s = l; sub(/ tests? skipped.*/, "", s); sub(/.* /, "", s) }
             f = l; sub(/ failures?.*/, "", f); sub(/.* /, "", f)
             print n, s, f }' "$1"
}
# One class: its log and exit status under $results; one line on the terminal when it ends.
run_class() {
  local class=$1 start=$SECONDS status=0 n s f
  "$bundle" "$class" >"$results/$class.log" 2>&1 || status=$?
  echo "$status" >"$results/$class.status"
  read -r n s f < <(counts "$results/$class.log"; echo)
  local what="${n:-?} tests"
  [ "${s:-0}" = 0 ] || what+=", $s skipped"
  [ "${f:-0}" = 0 ] || what+=", $f failed"
  if [ "$status" = 0 ]; then
    printf 'test: pass  %-48s %4d s  %s\n' "$class" $((SECONDS - start)) "$what"
  else
    printf 'test: FAIL  %-48s %4d s  %s, exit status %d\n' "$class" $((SECONDS - start)) "$what" "$status"
  fi
}
export -f run_class counts
export bundle results
start=$SECONDS
printf '%s\n' "${ordered[@]}" | xargs -P "$jobs" -I{} bash -c 'run_class "$1"' _ {}

tests=0 skipped=0 failed=()
for c in "${ordered[@]}"; do
  status=$(cat "$results/$c.status" 2>/dev/null || echo none)
  read -r n s _ < <(counts "$results/$c.log"; echo)
  tests=$((tests + ${n:-0})) skipped=$((skipped + ${s:-0}))
  [ "$status" = 0 ] || failed+=("$c")
done
for c in "${failed[@]}"; do
  echo
  echo "test: ---- the log of $c ----"
  cat "$results/$c.log"
done
echo "test: $tests tests ($skipped skipped) in ${#ordered[@]} classes, ${#failed[@]} class(es) failed, $((SECONDS - start)) s"
[ ${#failed[@]} -eq 0 ]
