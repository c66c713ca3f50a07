#!/usr/bin/env bash
# Creates target/disks/nvme.img (16 MiB): 4 MiB of deterministic text at the
# start, zeros after (and one such image per scenario that writes one), the
# benchmark's bench.img and the flood attacker's flood.img. The linux-nvme scenario passes the sha256 of those
# 4 MiB to the guest as nvme.expect=; the guest checks what it reads.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p target/disks
# One image per scenario that uses one, so scenarios can run side by side.
for name in nvme nvme-intx nvme-gicv4 nvme-gicv4-reboot nvme-reboot isolation vsmmu-strict vsmmu-lazy vsmmu-gicv4 vsmmu-reboot vsmmu-flood; do
    img=target/disks/$name.img
    head -c 4194304 < <(yes "smmuhyp: data prepared on the host for the passed-through NVMe disk") >"$img.new"
    truncate -s 16M "$img.new"
    mv "$img.new" "$img"
done
# The benchmark's disk: 256 MiB of real data (a sparse file reads
# unrealistically fast), made once and kept: the benchmark only reads it.
bench=target/disks/bench.img
if [ "$(stat -c %s "$bench" 2>/dev/null || echo 0)" != 268435456 ]; then
    head -c 268435456 < <(yes "smmuhyp: NVMe read benchmark data, not sparse, so QEMU really reads it") >"$bench.new"
    mv "$bench.new" "$bench"
fi
# The disk of nvme-fault-neighbour's attacker, whose controller is never
# asked for a block: 1 MiB of zeros.
flood=target/disks/flood.img
[ -e "$flood" ] || truncate -s 1M "$flood"
echo "nvme disks: target/disks/{nvme,nvme-intx,nvme-gicv4,nvme-reboot,isolation,vsmmu-*}.img, first 4 MiB sha256 $(head -c 4194304 "$img" | sha256sum | cut -d' ' -f1)"
