#!/usr/bin/env bash
# Proves the tests catch the bugs that matter: applies deliberate bugs (mutants), one at a time, to a scratch
# copy of the sources, runs the tests that should catch each, and reports caught or MISSED.
#   bash launch/mutants.sh              # every mutant (about 20-30 minutes on 2 cores)
#   bash launch/mutants.sh adam lr      # only the mutants whose name contains one of these words
# The scratch copy lives in ${MUTANTS_DIR:-/tmp/attunet-mutants} (kept between runs: its builds are reused).
# Every filter first runs on the unmutated copy and must pass there, else the run stops: a mutant "caught" by
# a test that fails anyway proves nothing. Mutants marked release=yes are caught by tests that run the
# attunet binary, so the copy's release build is rebuilt for them. Not part of CI (too slow). Exit status 0
# when every mutant is caught, 1 otherwise.
# The whole script is one function, parsed before it runs, so editing this file during a run is safe.
main() {
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SCRATCH=${MUTANTS_DIR:-/tmp/attunet-mutants}
bash launch/setup.sh >/dev/null
source launch/test-env.sh          # the repository's .venv; the binary is the scratch copy's, below

# The mutants: launch/mutants.txt (name, file, find, replace, filter, release), one record per line here,
# fields separated by the unit separator (find and replace may hold any other character).
MUTANTS=$(python3 - launch/mutants.txt <<'PY'
import sys
blocks, cur = [], {}
for line in open(sys.argv[1]).read().split("\n") + [""]:
    if line.startswith("#"):
        continue
    if not line.strip():
        if cur: blocks.append(cur); cur = {}
        continue
    key, _, value = line.partition(":")
    cur[key.strip()] = value.strip()
for b in blocks:
    missing = [k for k in ("name", "file", "find", "replace", "filter", "release") if k not in b]
    if missing: sys.exit(f"launch/mutants.txt: mutant {b.get('name', '?')} lacks {', '.join(missing)}")
    print("\x1f".join(b[k] for k in ("name", "file", "find", "replace", "filter", "release")))
PY
)

WORDS=("$@")
selected() {  # is mutant $1 asked for (its name contains one of the words given on the command line)?
  [ ${#WORDS[@]} -eq 0 ] && return 0
  for w in "${WORDS[@]}"; do [[ $1 == *"$w"* ]] && return 0; done
  return 1
}

echo "mutants: scratch copy in $SCRATCH"
mkdir -p "$SCRATCH"
# The sources as they are in the working tree (tracked and untracked, not ignored), times kept so the copy's
# .build only rebuilds what changed since the last run.
(cd "$SCRATCH" && find . -mindepth 1 -maxdepth 1 ! -name .build -exec rm -rf {} +)
git ls-files -co --exclude-standard -z | xargs -0 cp -p --parents -t "$SCRATCH"
cd "$SCRATCH"
export ATTUNET_BIN="$SCRATCH/.build/release/attunet"

build() {  # $1 = yes|no: also the release binary
  swift build --build-tests >"$SCRATCH/build.log" 2>&1 || return 1
  if [ "$1" = yes ]; then swift build -c release --product attunet >>"$SCRATCH/build.log" 2>&1 || return 1; fi
}
run_filter() { swift test --skip-build --filter "$1" >"$SCRATCH/test.log" 2>&1; }

rows=()
while IFS= read -r line; do
  [ -n "${line// /}" ] || continue
  IFS=$'\x1f' read -r name file find replace filter release <<<"$line"
  selected "$name" || continue
  rows+=("$line")
done <<<"$MUTANTS"
[ ${#rows[@]} -gt 0 ] || { echo "mutants: no mutant matches: $*" >&2; exit 1; }

echo "mutants: building the unmutated copy (debug tests + release binary)"
build yes || { cat "$SCRATCH/build.log" >&2; echo "mutants: the unmutated copy does not build" >&2; exit 1; }
echo "mutants: checking that every filter passes without a mutant"
declare -A checked
for line in "${rows[@]}"; do
  IFS=$'\x1f' read -r _ _ _ _ filter _ <<<"$line"
  [ -n "${checked[$filter]:-}" ] && continue
  checked[$filter]=1
  if ! run_filter "$filter"; then
    grep -E "error:|failed" "$SCRATCH/test.log" | head -20 >&2
    echo "mutants: '$filter' fails without any mutant; fix that first" >&2
    exit 1
  fi
done

caught=0; total=0; report=()
for line in "${rows[@]}"; do
  IFS=$'\x1f' read -r name file find replace filter release <<<"$line"
  total=$((total + 1))
  cp "$REPO/$file" "$SCRATCH/$file"
  if ! python3 - "$SCRATCH/$file" "$find" "$replace" <<'PY'
import sys
path, find, replace = sys.argv[1:4]
text = open(path).read()
if text.count(find) != 1:
    sys.exit(f"{path}: the mutant's text occurs {text.count(find)} times, not once")
open(path, "w").write(text.replace(find, replace))
PY
  then
    report+=("$(printf '%-40s %s' "$name" "NOT APPLIED (the source changed: update the table)")")
    continue
  fi
  started=$SECONDS
  if ! build "$release"; then
    verdict="BUILD FAILED (see $SCRATCH/build.log)"
  elif run_filter "$filter"; then
    verdict="MISSED"
  else
    verdict="caught"; caught=$((caught + 1))
  fi
  cp "$REPO/$file" "$SCRATCH/$file"
  # The next mutants' tests may run the binary: it must not keep this mutant.
  [ "$release" = yes ] && { swift build -c release --product attunet >>"$SCRATCH/build.log" 2>&1 || true; }
  line=$(printf '%-40s %-7s by %s (%ds)' "$name" "$verdict" "$filter" $((SECONDS - started)))
  echo "$line"
  report+=("$line")
done
build yes >/dev/null 2>&1 || true   # leave the copy unmutated and built for the next run
echo
echo "mutants: $caught of $total caught"
[ "$caught" -eq "$total" ]
}
main "$@"; exit
