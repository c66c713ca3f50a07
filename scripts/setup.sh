#!/usr/bin/env bash
# Installs what the project needs on a Debian 12 machine, and nothing when it is
# already there. Called by ./hv before every command; safe to run repeatedly.
set -euo pipefail

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo "$@"; else
            echo "setup: need root to run: $*" >&2; exit 1; fi
    else
        "$@"
    fi
}

missing=()
# g++: libfuzzer-sys builds libFuzzer (C++) for scripts/fuzz.sh.
for pkg in rustc-web cargo-web rust-web-src rust-web-clippy rustfmt-web lld \
           device-tree-compiler binutils-aarch64-linux-gnu g++; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done

backports=/etc/apt/sources.list.d/bookworm-backports.list
qemu_ok=0
if command -v qemu-system-aarch64 >/dev/null 2>&1; then
    # The nested SMMUv3 model needs QEMU >= 9.2.
    ver=$(qemu-system-aarch64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    set -- $ver
    if [ "${1:-0}" -gt 9 ] || { [ "${1:-0}" -eq 9 ] && [ "${2:-0}" -ge 2 ]; }; then qemu_ok=1; fi
fi

if [ ${#missing[@]} -gt 0 ] || [ $qemu_ok -eq 0 ]; then
    echo "setup: installing: ${missing[*]} $([ $qemu_ok -eq 0 ] && echo qemu-system-arm/bookworm-backports)"
    if [ $qemu_ok -eq 0 ] && [ ! -f "$backports" ]; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' | need_root tee "$backports" >/dev/null
    fi
    export DEBIAN_FRONTEND=noninteractive
    # apt's output goes to a log; one line per step here, the log on failure.
    mkdir -p target
    log=target/setup-apt.log
    : >"$log"
    apt_quiet() {
        if ! need_root "$@" >>"$log" 2>&1; then
            echo "setup: failed: $*; its output:" >&2
            tail -n 40 "$log" >&2
            exit 1
        fi
    }
    echo "setup: apt-get update"
    apt_quiet apt-get update -q
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: apt-get install ${missing[*]}"
        apt_quiet apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    if [ $qemu_ok -eq 0 ]; then
        echo "setup: apt-get install -t bookworm-backports qemu-system-arm ipxe-qemu"
        apt_quiet apt-get install -y -q --no-install-recommends -t bookworm-backports \
            qemu-system-arm ipxe-qemu
    fi
    echo "setup: done (apt's output: $log)"
fi
