#!/usr/bin/env bash
# Fuzzes attunet's file readers with libFuzzer, AddressSanitizer on.
#   bash launch/fuzz.sh TARGET SECONDS    # TARGET: nifti, casestore, checkpoint, safetensors, splits, config
#   bash launch/fuzz.sh all SECONDS       # each target in turn, SECONDS each (CI: 30)
# The targets are Fuzz/<Name>/main.swift (an LLVMFuzzerTestOneInput each), built here with the toolchain's
# libFuzzer (swiftc -sanitize=fuzzer,address, -parse-as-library so libFuzzer's main is the program's) into
# .build-fuzz; Package.swift lists them only under ATTUNET_FUZZ=1, so a plain swift build never sees them.
# The first build takes a few minutes, later ones only what changed. Seeds: Fuzz/corpus/<target> (small real
# files written by attunet, nibabel, h5py and safetensors; read only); what the fuzzer finds goes to
# .build-fuzz/corpus/<target>, kept between runs. A crash, more than 4 GiB in use or a hang (20 s) stops the
# target: libFuzzer's report is printed and the input kept as .build-fuzz/crashes/<target>/<kind>-<sha1>
# (reproduce: .build-fuzz/release/fuzz-<target> FILE). Prints per target the executions, crashes and seconds
# run; exit status 1 when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(nifti casestore checkpoint safetensors splits config)
usage() { echo "usage: launch/fuzz.sh {$(IFS=,; echo "${TARGETS[*]}"),all} SECONDS" >&2; exit 2; }
[ $# -eq 2 ] && [[ $2 =~ ^[0-9]+$ ]] || usage
if [ "$1" = all ]; then selected=("${TARGETS[@]}"); else
  [[ " ${TARGETS[*]} " == *" $1 "* ]] || usage
  selected=("$1")
fi
SECONDS_EACH=$2

build() {  # $1 = target
  local log
  log=$(mktemp)
  # --manifest-cache none: the manifest evaluated with ATTUNET_FUZZ=1 never reaches the shared cache that
  # plain builds read.
  if ! ATTUNET_FUZZ=1 swift build -c release --scratch-path .build-fuzz --manifest-cache none \
      -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xcc -fsanitize=address \
      --product "fuzz-$1" >"$log" 2>&1; then
    grep -v '^\[[0-9]*/[0-9]*\]' "$log" >&2
    rm -f "$log"
    echo "fuzz: building fuzz-$1 failed (messages above)" >&2
    exit 1
  fi
  rm -f "$log"
}

failed=0
summary=()
for t in "${selected[@]}"; do
  echo "fuzz: building fuzz-$t"
  build "$t"
  bin=.build-fuzz/release/fuzz-$t
  corpus=.build-fuzz/corpus/$t crashes=.build-fuzz/crashes/$t
  mkdir -p "$corpus" "$crashes"
  scratch=$(mktemp -d)
  log=$scratch/libfuzzer.log
  echo "fuzz: $t for $SECONDS_EACH s"
  start=$SECONDS
  # detect_leaks=0: HDF5 and the Swift runtime keep caches for the process's life, which LeakSanitizer would
  # report. allocator_may_return_null=1 with a high malloc limit: a request too large for the machine fails as
  # glibc's malloc would (HDF5 and nifticlib handle that; Swift stops, which is then a crash to fix), while
  # what the process really uses stays under 4 GiB. The readers write their input files under TMPDIR (the
  # scratch folder, removed below).
  status=0
  TMPDIR=$scratch ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 "$bin" -max_total_time="$SECONDS_EACH" \
    -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=65536 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" "Fuzz/corpus/$t" >"$log" 2>&1 || status=$?
  ran=$((SECONDS - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$execs" ]; then execs=$({ grep -o '^#[0-9]*' "$log" || true; } | tail -1 | tr -dc '0-9'); fi
  if [ $status -ne 0 ]; then
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)/\1/p' "$log" | tail -1)
    echo "fuzz: $t CRASHED (exit $status); libFuzzer's report:" >&2
    grep -v '^#[0-9]' "$log" | tail -60 >&2
    line=$(printf '%-12s %10s executions  1 crash   %4d s  %s' "$t" "${execs:-?}" "$ran" "${artifact:-no input saved}")
  else
    line=$(printf '%-12s %10s executions  0 crashes %4d s' "$t" "${execs:-?}" "$ran")
  fi
  echo "fuzz: $line"
  summary+=("$line")
  rm -rf "$scratch"
done
echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
exit $failed
