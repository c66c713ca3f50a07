#!/usr/bin/env bash
# Fetches and caches the Linux guest: the Debian cloud arm64 kernel and a
# busybox initramfs, in target/guests/linux/ (see guests/linux/README.md).
#
#   target/guests/linux/Image               uncompressed arm64 Image
#   target/guests/linux/initramfs.cpio.gz   busybox + guests/linux/init, its
#                                           scripts and the kernel modules
#                                           guests/linux/modules names
#   target/guests/linux/stamp               what the two were built from
#
# The initramfs also holds target/guests/disk-bench, built by
# guests/linux/disk-bench/build.sh (`./hv build` runs it first).
#
# The kernel package is resolved through the metapackage
# `linux-image-cloud-arm64` every time (versioned packages vanish from the
# mirror after security updates); nothing is downloaded or rebuilt when the
# stamp already names the resolved versions and the current init script.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$root/target/guests/linux
init_src=$here/init

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo "$@"; else
            echo "linux guest: need root to run: $*" >&2; exit 1; fi
    else
        "$@"
    fi
}
export DEBIAN_FRONTEND=noninteractive

# Host tools.
missing=()
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v gzip >/dev/null 2>&1 || missing+=(gzip)
if [ ${#missing[@]} -gt 0 ]; then
    echo "linux guest: installing ${missing[*]}"
    install_tools() { need_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }
    install_tools || { need_root apt-get update -q >/dev/null; install_tools; }
fi

# arm64 packages through an apt of our own: its sources, package lists,
# cache and (empty) dpkg status live in target/guests/apt, so the machine's
# package manager never learns of arm64 and its `apt-get update` stays as
# it was. The suite is the host's Debian release (/etc/os-release); the
# archive keys are Debian's, as the host's apt trusts them.
aptdir=$root/target/guests/apt
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/parts" \
    "$aptdir/preferences.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed=
[ -s "$keyring" ] && signed=" signed-by=$keyring"
cat >"$aptdir/sources.list.new" <<SOURCES
deb [arch=arm64$signed] http://deb.debian.org/debian $codename main
deb [arch=arm64$signed] http://deb.debian.org/debian $codename-updates main
deb [arch=arm64$signed] http://deb.debian.org/debian-security $codename-security main
SOURCES
mv "$aptdir/sources.list.new" "$aptdir/sources.list"
: >>"$aptdir/status"
apt_opts=(
    -o "Dir::Etc::SourceList=$aptdir/sources.list"
    -o "Dir::Etc::SourceParts=$aptdir/parts"
    -o "Dir::Etc::Preferences=$aptdir/preferences"
    -o "Dir::Etc::PreferencesParts=$aptdir/preferences.d"
    -o "Dir::State=$aptdir"
    -o "Dir::State::Lists=$aptdir/lists"
    -o "Dir::State::status=$aptdir/status"
    -o "Dir::Cache=$aptdir/cache"
    -o "APT::Architecture=arm64"
    -o "APT::Architectures=arm64"
    -o "Debug::NoLocking=1"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
)
# As root, apt's sandbox user cannot write into our tree: skip the sandbox.
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
updated=0
apt_update() {
    echo "linux guest: apt-get update (arm64 package lists in target/guests/apt)"
    apt-get "${apt_opts[@]}" update -q >/dev/null
    updated=1
}
[ -n "$(ls "$aptdir/lists" 2>/dev/null | grep -v partial)" ] || apt_update
# Resolves, in one apt-cache call (each costs about a second), the versioned
# kernel package the metapackage depends on and the busybox version:
# sets kpkg, kver and bver (empty when apt's lists do not know them).
query() {
    local info dep
    info=$(apt-cache "${apt_opts[@]}" show --no-all-versions linux-image-cloud-arm64:arm64 \
        busybox-static:arm64 2>/dev/null || true)
    # "Depends: linux-image-6.1.0-37-cloud-arm64 (= 6.1.140-1)"
    dep=$(printf '%s\n' "$info" | sed -n 's/^Depends: \(linux-image-[^ ,]*\) (= \([^)]*\)).*/\1 \2/p' \
        | head -n1)
    kpkg=${dep% *}
    kver=${dep#* }
    bver=$(printf '%s\n' "$info" | awk '/^Package: /{p=$2} p=="busybox-static" && /^Version: /{print $2; exit}')
}
resolve() {
    query
    if [ -z "$kpkg" ] || [ -z "$kver" ] || [ -z "$bver" ]; then
        if [ $updated -eq 0 ]; then
            apt_update
            query
        fi
    fi
    if [ -z "$kpkg" ] || [ -z "$kver" ] || [ -z "$bver" ]; then
        echo "linux guest: cannot resolve linux-image-cloud-arm64 / busybox-static for arm64" >&2
        exit 1
    fi
}
resolve
# The init script, the helper scripts in bin/, the list of modules and the
# disk-bench program are part of the initramfs.
disk_bench=$root/target/guests/disk-bench
if [ ! -s "$disk_bench" ]; then
    echo "linux guest: no $disk_bench: build it with guests/linux/disk-bench/build.sh" >&2
    exit 1
fi
init_sum=$(cat "$init_src" "$here"/bin/* "$here/modules" "$disk_bench" 2>/dev/null | sha256sum | cut -d' ' -f1)
want="kernel $kpkg $kver
busybox busybox-static $bver
init $init_sum"

if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$want" ] \
    && [ -s "$out/Image" ] && [ -s "$out/initramfs.cpio.gz" ]; then
    exit 0
fi

echo "linux guest: $kpkg $kver, busybox-static $bver"
mkdir -p "$out/debs"
# Downloads package $1 version $2 into debs/ unless it is there already.
download() {
    local deb="$out/debs/${1}_${2//:/%3a}_arm64.deb"
    if [ ! -s "$deb" ]; then
        (cd "$out/debs" && apt-get "${apt_opts[@]}" download -q "$1:arm64=$2" >/dev/null)
    fi
    [ -s "$deb" ] || { echo "linux guest: download of $1 $2 failed" >&2; return 1; }
    printf '%s\n' "$deb"
}
if ! kdeb=$(download "$kpkg" "$kver") || ! bdeb=$(download busybox-static "$bver"); then
    # Stale package lists: the versions they name are gone from the mirror.
    [ $updated -eq 0 ] || exit 1
    apt_update
    resolve
    want="kernel $kpkg $kver
busybox busybox-static $bver
init $init_sum"
    kdeb=$(download "$kpkg" "$kver")
    bdeb=$(download busybox-static "$bver")
fi

mkdir -p "$root/target/tmp"
work=$(mktemp -d -p "$root/target/tmp")
trap 'rm -rf "$work"' EXIT

# Kernel: /boot/vmlinuz-* is an uncompressed arm64 Image (with an EFI stub).
dpkg-deb -x "$kdeb" "$work/kernel"
vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-* | head -n1)
if [ "$(dd if="$vmlinuz" bs=1 skip=56 count=4 2>/dev/null)" != $'ARM\x64' ]; then
    echo "linux guest: $vmlinuz is not an arm64 Image" >&2
    exit 1
fi
cp "$vmlinuz" "$out/Image.new"

# Initramfs: busybox, the init script and a /dev/console node.
dpkg-deb -x "$bdeb" "$work/busybox"
rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/dev" "$rootfs/proc" "$rootfs/sys"
cp "$work/busybox/bin/busybox" "$rootfs/bin/busybox"
cp "$init_src" "$rootfs/init"
for f in "$here"/bin/*; do
    [ -f "$f" ] || continue
    cp "$f" "$rootfs/bin/$(basename "$f")"
    chmod 755 "$rootfs/bin/$(basename "$f")"
done
cp "$disk_bench" "$rootfs/bin/disk-bench"
chmod 755 "$rootfs/init" "$rootfs/bin/busybox" "$rootfs/bin/disk-bench"
# Kernel modules: those guests/linux/modules names and what they depend on
# (each module's `depends=` in its .modinfo), as /lib/modules/NAME.ko, and
# /lib/modules/order listing them dependencies first for bin/load-modules.
moddir=$(ls -d "$work"/kernel/lib/modules/*/kernel)
mkdir -p "$rootfs/lib/modules"
: >"$work/order"
add_module() {
    local name=${1//-/_} file dep
    grep -qx "$name" "$work/order" && return 0
    file=$(find "$moddir" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)
    if [ -z "$file" ]; then
        echo "linux guest: no module $name in $kpkg" >&2
        exit 1
    fi
    for dep in $(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$dep"
    done
    cp "$file" "$rootfs/lib/modules/$name.ko"
    echo "$name" >>"$work/order"
}
for name in $(sed 's/#.*//' "$here/modules"); do
    add_module "$name"
done
cp "$work/order" "$rootfs/lib/modules/order"
(cd "$rootfs" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio -o -H newc -R 0:0 --quiet) >"$work/rootfs.cpio"
# The kernel opens /dev/console for init's stdio before /init runs, so the
# node must be in the archive. A second newc archive (the kernel unpacks
# concatenated ones) holds it, written by hand so no mknod (root) is needed.
newc() { # name mode rdevmajor rdevminor
    local name=$1 namesize=$((${#1} + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        0 "$2" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0
    printf '%s\0' "$name"
    # Pad header (110 bytes) + name to a multiple of 4.
    local pad=$(((4 - (110 + namesize) % 4) % 4))
    head -c "$pad" /dev/zero
}
{
    newc dev/console $((0020000 | 0600)) 5 1
    newc TRAILER!!! 0 0 0
} >"$work/console.cpio"
cat "$work/rootfs.cpio" "$work/console.cpio" | gzip -9 -n >"$out/initramfs.cpio.gz.new"

mv "$out/Image.new" "$out/Image"
mv "$out/initramfs.cpio.gz.new" "$out/initramfs.cpio.gz"
printf '%s\n' "$want" >"$out/stamp"
# Keep only the debs of the current versions.
for f in "$out"/debs/*.deb; do
    [ "$f" = "$kdeb" ] || [ "$f" = "$bdeb" ] || rm -f "$f"
done
echo "linux guest: target/guests/linux/Image, initramfs.cpio.gz ($(du -h "$out/initramfs.cpio.gz" | cut -f1))"
