#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds a normal and
# an AddressSanitizer+UndefinedBehaviorSanitizer tree, runs ctest in both.
# Every test starts its own redis-server (and nginx) in a temp directory.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bash "$here/deps.sh" || exit 1

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

total_pass=0; total_fail=0; rc=0
failed_names=()
run_tree() {
  local dir=$1; shift
  echo "== build $dir $*"
  bash "$here/build.sh" "$dir" "$@" || { rc=1; total_fail=$((total_fail+1)); failed_names+=("$dir/(build)"); return; }
  echo "== ctest $dir"
  local log="$root/$dir/ctest.log"
  rm -f "$root/$dir/Testing/Temporary/LastTestsFailed.log"   # ctest leaves an old one when all pass
  (cd "$root/$dir" && ctest --output-on-failure -j2 --timeout 300 ${CTEST_ARGS:-}) 2>&1 | tee "$log"
  local st=${PIPESTATUS[0]}
  [ "$st" -eq 0 ] || rc=1
  # Each failing test's name and the tail of its output, again, in one place.
  local summary
  summary=$(python3 "$here/failures.py" "$root/$dir" "${KEYGATE_FAIL_TAIL:-40}")
  if [ -n "$summary" ]; then
    echo "== failures in $dir"
    echo "$summary"
    while IFS= read -r n; do failed_names+=("$dir/$n"); done \
      < <(echo "$summary" | sed -n -E 's/^FAILED: [^ ]+ ([^ ]+) .*/\1/p')
  fi
  local line
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -1)
  if [ -n "$line" ]; then
    local failed total
    failed=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/')
    total=$(echo "$line" | sed -E 's/.* out of ([0-9]+).*/\1/')
    total_pass=$((total_pass + total - failed)); total_fail=$((total_fail + failed))
  else
    rc=1
  fi
}

run_tree build
run_tree build-asan -DKEYGATE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
# libFuzzer targets (clang): each runs KEYGATE_FUZZ_SECONDS from its seeds.
CC=clang run_tree build-fuzz -DKEYGATE_FUZZ=ON -DKEYGATE_FUZZ_SECONDS=${KEYGATE_FUZZ_SECONDS:-30}

echo "${total_pass} passed, ${total_fail} failed"
[ ${#failed_names[@]} -eq 0 ] || echo "failing: ${failed_names[*]}"
exit $rc
