#!/usr/bin/env bash
# Builds disk-bench, the Linux guest's static read-timing program, into
# target/guests/disk-bench (stripped) for guests/linux/fetch.sh to put in
# the initramfs. PROFILE (default release) and CARGO_TARGET_DIR are honoured.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root"
profile=${PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-$root/target}
RUSTC_BOOTSTRAP=1 cargo build -q -p disk-bench --profile "$profile" \
    --target aarch64-unknown-none \
    -Zbuild-std=core,compiler_builtins \
    -Zbuild-std-features=compiler-builtins-mem
mkdir -p "$root/target/guests"
aarch64-linux-gnu-objcopy --strip-all \
    "$target_dir/aarch64-unknown-none/$profile/disk-bench" \
    "$root/target/guests/disk-bench.new"
mv "$root/target/guests/disk-bench.new" "$root/target/guests/disk-bench"
