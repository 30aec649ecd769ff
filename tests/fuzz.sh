#!/usr/bin/env bash
# Runs every cargo-fuzz (libFuzzer) target of fuzz/ for a bounded time and
# fails on any crash, timeout or out-of-memory. Installs the pinned cargo-fuzz
# into target/test-tools/cargo-fuzz when missing. Each run starts from the
# committed seeds (fuzz/corpus/<target>) copied into a working corpus under
# target/fuzz/ (what the fuzzer adds stays out of git) and prints one summary
# line per target, which target/fuzz-report.json collects.
#
# LEADGER_FUZZ_SECONDS: seconds per target (default 60).
# A crash leaves its input in target/fuzz/artifacts/<target>/; reproduce it
# with `cargo fuzz run --sanitizer none <target> <file>` in fuzz/, and once
# fixed, add it to fuzz/corpus/<target>/ as regression-<what>.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET="${LEADGER_FUZZ_SECONDS:-60}"
ROOT="$PWD"
TOOLS="$ROOT/target/test-tools/cargo-fuzz"
WORK="$ROOT/target/fuzz"
REPORT="$ROOT/target/fuzz-report.json"

if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "tests/fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS" --force
fi
cargo_fuzz() { (cd fuzz && "$TOOLS/bin/cargo-fuzz" fuzz "$@"); }

# Stable Rust, no sanitizer: `--sanitizer none` is what keeps cargo-fuzz off
# nightly-only flags (-Zsanitizer); coverage instrumentation itself is stable
# (-Cpasses=sancov-module). Debug assertions stay on, so an arithmetic
# overflow is a crash.
targets=$(cargo_fuzz list)
build_started=$(date +%s)
cargo_fuzz build --sanitizer none
echo "tests/fuzz.sh: built $(echo $targets) in $(( $(date +%s) - build_started )) s" >&2

failed=0
rows=()
for target in $targets; do
    corpus="$WORK/corpus/$target"
    artifacts="$WORK/artifacts/$target"
    log="$WORK/logs/$target.log"
    rm -rf "$corpus" "$artifacts"
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    cp fuzz/corpus/"$target"/* "$corpus"/
    status=0
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: a leak or a
    # runaway allocation. The working corpus comes first, so it is where new
    # inputs go.
    cargo_fuzz run --sanitizer none "$target" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    executed=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    executed=${executed:-0}
    corpus_size=$(find "$corpus" -type f | wc -l)
    crashes=$(find "$artifacts" -type f | wc -l)
    if [ "$status" != 0 ] || [ "$crashes" != 0 ]; then
        failed=1
        echo "tests/fuzz.sh: $target failed (exit $status); log $log, inputs in $artifacts:" >&2
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" >&2 || tail -20 "$log" >&2
        crashes=$(( crashes > 0 ? crashes : 1 ))
    fi
    echo "fuzz target=$target seconds=$SECONDS_PER_TARGET executed=$executed corpus=$corpus_size crashes=$crashes"
    rows+=("{\"target\":\"$target\",\"seconds\":$SECONDS_PER_TARGET,\"executed_inputs\":$executed,\"corpus_size\":$corpus_size,\"crashes\":$crashes}")
done

{
    echo "["
    for i in "${!rows[@]}"; do
        if [ "$i" -lt $(( ${#rows[@]} - 1 )) ]; then echo "  ${rows[$i]},"; else echo "  ${rows[$i]}"; fi
    done
    echo "]"
} >"$REPORT"
echo "tests/fuzz.sh: report in $REPORT" >&2
exit "$failed"
