#!/usr/bin/env bash
# Fuzzes attunet's file readers with libFuzzer, AddressSanitizer on.
#   bash launch/fuzz.sh TARGET SECONDS    # TARGET: nifti, casestore, checkpoint, safetensors, splits, config
#   bash launch/fuzz.sh all SECONDS       # each target in turn, SECONDS each (CI: 30)
#   bash launch/fuzz.sh build             # only build every target (CI builds them early, at low priority)
# The targets are Fuzz/<Name>/main.swift (an LLVMFuzzerTestOneInput each), built here with the toolchain's
# libFuzzer (swiftc -sanitize=fuzzer,address -parse-as-library; clang -fsanitize=address for the C targets) into
# .build-fuzz; Package.swift lists them only under ATTUNET_FUZZ=1, so a plain swift build never sees them.
# The first build takes a few minutes, later ones only what changed. Seeds: Fuzz/corpus/<target> (small real
# files written by attunet, nibabel, h5py and safetensors; read only); what the fuzzer finds goes to
# .build-fuzz/corpus/<target>, kept between runs. A crash, more than 4 GiB in use or a hang (10 s) stops the
# target: libFuzzer's report is printed and the input kept as .build-fuzz/crashes/<target>/<kind>-<sha1>
# (reproduce: .build-fuzz/release/fuzz-<target> FILE). A crash inside Debian's libhdf5 itself (a bug of HDF5
# 1.10.8 on a damaged file, outside attunet's code) is kept and counted apart, and fuzzing goes on (the targets
# read in-process; the attunet commands probe every HDF5 file in a child process first and refuse such a file:
# keep the input under Tests/Fixtures/fuzz-hdf5/<target>/, where DamagedHDF5Tests checks that). Prints
# per target the executions, crashes and seconds run; exit status 1 when attunet's code crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(nifti casestore checkpoint safetensors splits config)
usage() { echo "usage: launch/fuzz.sh {$(IFS=,; echo "${TARGETS[*]}"),all} SECONDS | launch/fuzz.sh build" >&2; exit 2; }
BUILD_ONLY=0
if [ $# -eq 1 ] && [ "$1" = build ]; then BUILD_ONLY=1; set -- all 0; fi
[ $# -eq 2 ] && [[ $2 =~ ^[0-9]+$ ]] || usage
if [ "$1" = all ]; then selected=("${TARGETS[@]}"); else
  [[ " ${TARGETS[*]} " == *" $1 "* ]] || usage
  selected=("$1")
fi
SECONDS_EACH=$2

source launch/quiet-build.sh
build() {  # $1 = target
  # --manifest-cache none: the manifest evaluated with ATTUNET_FUZZ=1 never reaches the shared cache that
  # plain builds read.
  ATTUNET_FUZZ=1 quiet_build fuzz "building fuzz-$1" -c release --scratch-path .build-fuzz --manifest-cache none \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xcc -fsanitize=address \
    --product "fuzz-$1" || exit 1
}

# Where a crash happened: "hdf5" when the first frame of the crashing stack that is either in libhdf5 or in
# attunet's own code is libhdf5's (a bug of Debian's HDF5 1.10.8 on a damaged file, which attunet cannot fix:
# the input is kept and counted, and fuzzing goes on), "attunet" otherwise.
# AddressSanitizer's own heap check failing in its allocator ("CHECK failed: asan_allocator": a chunk header
# overwritten, found when the chunk is freed or recycled, whoever frees it): the heap was corrupted earlier by
# code ASan does not instrument, i.e. libhdf5 or zlib in the HDF5 targets (an out-of-bounds write in attunet's
# code, all instrumented, is reported where it happens); counted with libhdf5's crashes. Its saved input is the
# one running at the check, not the one that corrupted the heap.
crash_site() {
  if grep -q 'AddressSanitizer: CHECK failed: asan_allocator' "$1" && [[ $2 == casestore || $2 == checkpoint ]]; then
    echo hdf5; return
  fi
  awk '/^ *#[0-9]+ / { if ($0 ~ /libhdf5/) { print "hdf5"; exit } if ($0 ~ /\/(Sources|Fuzz)\//) { print "attunet"; exit } }
       END { }' "$1" | grep . || echo attunet
}

if [ $BUILD_ONLY = 1 ]; then
  for t in "${selected[@]}"; do
    echo "fuzz: building fuzz-$t"
    build "$t"
  done
  echo "fuzz: built .build-fuzz/release/fuzz-{$(IFS=,; echo "${selected[*]}")}"
  exit 0
fi

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
  start=$SECONDS execs=0 ours=0 hdf5=0 saved=()
  # The HDF5 targets: libhdf5 allocates what a damaged file declares (a variable-length string of 4 GiB, a read
  # buffer of 3.9 GiB) and fills it, and ASan keeps the pages, so the RSS limit would later blame an innocent
  # input. A malloc limit at half the RSS limit stops at that request instead, with libhdf5's stack (counted as
  # its crash); at the RSS limit itself, a request just under 4 GiB passed and then filled RSS past it.
  rss_limit=4096 malloc_limit=65536
  if [[ $t == casestore || $t == checkpoint ]]; then malloc_limit=$((rss_limit / 2)); fi
  # detect_leaks=0: HDF5 and the Swift runtime keep caches for the process's life, which LeakSanitizer would
  # report. allocator_may_return_null=1 with a high malloc limit: a request too large for the machine fails as
  # glibc's malloc would (HDF5 and nifticlib handle that; Swift stops, which is then a crash to fix), while
  # what the process really uses stays under 4 GiB. Fuzz/asan.supp: HDF5's own overlapping memcpy. The readers
  # write their input files under TMPDIR (the scratch folder, removed below).
  while :; do
    left=$((SECONDS_EACH - (SECONDS - start)))
    [ $left -gt 0 ] || break
    status=0
    TMPDIR=$scratch ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:suppressions=$PWD/Fuzz/asan.supp \
      "$bin" -max_total_time="$left" -timeout=10 -rss_limit_mb="$rss_limit" -malloc_limit_mb="$malloc_limit" \
      -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" "Fuzz/corpus/$t" >"$log" 2>&1 || status=$?
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$n" ] || n=$({ grep -o '^#[0-9]*' "$log" || true; } | tail -1 | tr -dc '0-9')
    execs=$((execs + ${n:-0}))
    [ $status -eq 0 ] && break
    artifact=$(sed -n 's/.*Test unit written to \(.*\)/\1/p' "$log" | tail -1)
    saved+=("${artifact:-no input saved}")
    site=$(crash_site "$log" "$t")
    # An out-of-memory report on the RSS limit has no stack of its own: the input is run again with the malloc
    # limit at half the RSS limit, which stops at the one large request and names who made it (e.g. libhdf5's
    # H5T__conv_vlen allocating a damaged variable-length string's declared 4 GiB).
    if grep -q 'libFuzzer: out-of-memory (used' "$log" && [ -n "$artifact" ]; then
      TMPDIR=$scratch ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:suppressions=$PWD/Fuzz/asan.supp \
        "$bin" -rss_limit_mb="$rss_limit" -malloc_limit_mb=$((rss_limit / 2)) "$artifact" >"$scratch/oom.log" 2>&1 || true
      if grep -q 'out-of-memory (malloc(' "$scratch/oom.log"; then site=$(crash_site "$scratch/oom.log" "$t"); fi
    fi
    if [ "$site" = hdf5 ]; then
      hdf5=$((hdf5 + 1))
      echo "fuzz: $t: a crash inside libhdf5 (not attunet's code), input ${artifact:-not saved}; fuzzing on"
      grep -m1 'SUMMARY:' "$log" || true
    else
      ours=$((ours + 1)) failed=1
      echo "fuzz: $t CRASHED (exit $status); libFuzzer's report:" >&2
      grep -v '^#[0-9]' "$log" | tail -60 >&2
      break
    fi
  done
  line=$(printf '%-12s %10s executions  %d crash(es) in attunet, %d in libhdf5  %4d s' "$t" "$execs" "$ours" "$hdf5" $((SECONDS - start)))
  echo "fuzz: $line"
  [ ${#saved[@]} -eq 0 ] || printf 'fuzz:   kept %s\n' "${saved[@]}"
  summary+=("$line")
  rm -rf "$scratch"
done
echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
exit $failed
