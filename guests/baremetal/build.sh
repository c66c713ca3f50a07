#!/usr/bin/env bash
# Builds the bare-metal test guest into target/guests/baremetal.bin (a flat
# arm64 Image). PROFILE (default release) and CARGO_TARGET_DIR are honoured.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
profile=${PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-$root/target}
RUSTC_BOOTSTRAP=1 cargo build -q -p baremetal-guest --profile "$profile" \
    --target aarch64-unknown-none \
    -Zbuild-std=core,alloc,compiler_builtins \
    -Zbuild-std-features=compiler-builtins-mem
mkdir -p "$root/target/guests"
aarch64-linux-gnu-objcopy -O binary \
    "$target_dir/aarch64-unknown-none/$profile/baremetal-guest" \
    "$root/target/guests/baremetal.bin"
