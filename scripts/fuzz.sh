#!/usr/bin/env bash
# Coverage-guided fuzzing of the virtual SMMUv3, virtual ITS and trap path
# (fuzz/README.md).
#
#   scripts/fuzz.sh [seconds] [target...]
#
# (0 seconds: only replay the seeds and the corpus, without fuzzing.)
#
# Builds the fuzz targets of fuzz/ with libFuzzer's instrumentation (the
# flags cargo-fuzz uses, with plain cargo: no cargo-fuzz, no nightly), checks
# the committed seeds with the crate's own tests, then runs each target for
# `seconds` (default 20) on its corpus in target/fuzz/corpus/<target>/,
# seeded from fuzz/seeds/<target>/. Fails if any target crashes, hangs or
# breaks an invariant; the input is then in target/fuzz/artifacts/<target>/
# and the last lines of its log are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(vsmmu decoders guest vits)
case $secs in '' | *[!0-9]*) echo "fuzz: seconds must be a number: $secs" >&2; exit 2 ;; esac

out=$root/target/fuzz
export CARGO_TARGET_DIR=$out
host=$(rustc -vV | sed -n 's/^host: //p')
manifest=(--manifest-path "$root/fuzz/Cargo.toml" --locked)

# The seeds are what fuzz/src/seeds.rs builds and reach their states
# (plain build, without libFuzzer).
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
cargo test -q "${manifest[@]}" --no-default-features --lib

# SanitizerCoverage for libFuzzer, as cargo-fuzz sets it up. An explicit
# --target keeps these flags off build scripts and proc macros. No address
# sanitizer: Debian's toolchain ships no ASan runtime, and the code under
# test is safe Rust (overflow checks and debug assertions are on instead).
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
cargo build -q --release "${manifest[@]}" --target "$host" --bins

failed=()
for t in "${targets[@]}"; do
    bin=$out/$host/release/$t
    corpus=$out/corpus/$t
    artifacts=$out/artifacts/$t
    log=$out/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    # -max_total_time=0 would mean forever: 0 runs the inputs once instead.
    if [ "$secs" -eq 0 ]; then limit=-runs=0; else limit=-max_total_time=$secs; fi
    echo "fuzz: $t ${limit#-} (corpus $corpus)"
    status=0
    # -timeout: an input running 10 s is a hang (a guest must never make the
    # vSMMU loop); -rss_limit_mb bounds memory per input.
    "$bin" "$limit" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 \
        "$corpus" "$root/fuzz/seeds/$t" >"$log" 2>&1 || status=$?
    if [ $status -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz: $t FAILED (status $status); input in $artifacts/, full log $log" >&2
        failed+=("$t")
        continue
    fi
    # The last status line (#runs, cov, ft, corp, exec/s) and the totals.
    grep -E '^#[0-9]+' "$log" | tail -n 1
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" |
        tr '\n' ' '
    echo
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${targets[*]}: no crash"
