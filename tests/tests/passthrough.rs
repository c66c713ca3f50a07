//! Step 3: PCI functions passed through to VMs on per-VM SMMU stage 2.

use scenario_tests::{boot, TIMEOUT};
use std::process::Command;

/// sha256 of `len` MiB at `offset` MiB of a disk image, by the host.
fn host_sha256(image: &str, offset_mib: u32, len_mib: u32) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/..").to_string() + "/" + image;
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if={path} bs=1M skip={offset_mib} count={len_mib} 2>/dev/null | sha256sum"
        ))
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

#[test]
fn linux_nvme_passthrough() {
    let b = boot("linux-nvme", &[], TIMEOUT);
    b.expect("VM linux: PCI 00:01.0 (sid 0x8) assigned as 00:01.0, INTx -> guest INTID 40");
    // The guest's own NVMe driver binds the device behind the virtual bridge.
    b.expect("nvme nvme0: pci function 0000:00:01.0");
    // Data the host prepared reads back with the host's checksum...
    b.expect("[linux] nvme-check: host data: ok");
    // ...and what the guest wrote is on the host's disk image.
    let line = b.expect("[linux] nvme-check: wrote sha256 ");
    let guest_sha = line.rsplit(' ').next().unwrap();
    b.expect("[linux] nvme-check: write and read back: ok");
    assert_eq!(host_sha256("target/disks/nvme.img", 8, 4), guest_sha);
    // At power-off the device is stopped before anything else.
    b.expect("VM linux: its devices are stopped: bus mastering off, streams abort");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.reject("SMMU event");
    assert_eq!(b.status, Some(0));
}
