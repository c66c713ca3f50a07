//! PCI functions passed through to VMs on per-VM SMMU stage 2, and behind
//! the guest's own virtual SMMU.

use scenario_tests::{boot, boot_with_cmdline, host_sha256, Boot, Checks, TIMEOUT};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What a Linux VM running `nvme-check` (through the init) checks: every
/// CPU online; the host's data read back; written data read back (its
/// sha256 is the check's detail); the NVMe interrupted (the detail names
/// how: see [`msix_through_its`]); the command's exit status.
const NVME_CHECKS: [&str; 5] = [
    "all-cpus-online",
    "nvme-host-data",
    "nvme-write-read-back",
    "nvme-interrupts",
    "init-run-exit-status",
];

/// The sha256 of what the guest wrote to its disk (check
/// `nvme-write-read-back`).
fn guest_sha256<'a>(checks: &'a Checks<'_>) -> &'a str {
    let detail = checks.detail("nvme-write-read-back");
    detail
        .strip_prefix("sha256 ")
        .unwrap_or_else(|| panic!("cannot parse {detail:?}"))
}

/// The function behind check `check` (its detail from the guest's
/// `bin/irq-summary`) interrupted by MSI-X through the VM's ITS with
/// `vectors` vectors: its MSIs went through the SMMU to the physical ITS
/// and arrived as the guest's LPIs. Some interrupts may find nothing to do,
/// on bare QEMU too (QEMU's NVMe: 0 to 2 of about 35 in one `nvme-check`;
/// virtio-net: its driver polls its queues and takes work an interrupt
/// was for), but not all of them, and Linux gave up on none
/// ([`interrupts_kept`]).
fn msix_through_its(b: &Boot, checks: &Checks<'_>, check: &str, vectors: u32) {
    let detail = checks.detail(check);
    assert!(
        detail.starts_with(&format!("ITS-MSI, {vectors} vector(s), ")),
        "{check}: {detail}"
    );
    let number = |word: &str| -> u64 {
        detail
            .split(", ")
            .find_map(|part| part.strip_suffix(word)?.parse().ok())
            .unwrap_or_else(|| panic!("{check}: no{word} in {detail:?}"))
    };
    assert!(
        number(" unhandled") < number(" interrupts"),
        "{check}: {detail}"
    );
    interrupts_kept(b);
}

/// What check `nvme-msi-traps` measured (`bin/nvme-msi-traps`): over
/// `reads` 4 KiB reads one at a time, the NVMe's interrupts the guest
/// received, the traps the VM took, and the MSIs the hypervisor took and
/// injected through the list registers.
#[derive(Debug)]
struct MsiCost {
    reads: u64,
    interrupts: u64,
    traps: u64,
    injected: u64,
}

fn msi_cost(checks: &Checks<'_>) -> MsiCost {
    let detail = checks.detail("nvme-msi-traps");
    let number = |word: &str| -> u64 {
        detail
            .split(", ")
            .find_map(|part| part.strip_suffix(word)?.parse().ok())
            .unwrap_or_else(|| panic!("no{word} in {detail:?}"))
    };
    MsiCost {
        reads: number(" reads"),
        interrupts: number(" interrupts"),
        traps: number(" traps"),
        injected: number(" injected"),
    }
}

/// Linux never gave up on an interrupt of the passed-through functions:
/// one raised again and again with nothing to do makes Linux disable it
/// ("nobody cared"), and the device then hangs.
fn interrupts_kept(b: &Boot) {
    // Linux's own words (kernel/irq/spurious.c) when it gives up on one.
    b.reject("nobody cared");
    b.reject("Disabling IRQ #");
}

/// [`NVME_CHECKS`] and `nvme-msi-traps`, with `nvme.msi_reads=N`.
const NVME_CHECKS_AND_COST: [&str; 6] = [
    "all-cpus-online",
    "nvme-host-data",
    "nvme-write-read-back",
    "nvme-interrupts",
    "nvme-msi-traps",
    "init-run-exit-status",
];

#[test]
fn linux_nvme_passthrough() {
    let b = boot_with_cmdline("linux-nvme", &[("linux", "nvme.msi_reads=500")], TIMEOUT);
    b.expect("2 of 2 CPUs take LPIs 8192..=16383;");
    b.expect("VM linux: PCI 00:01.0 (sid 0x8) assigned as 00:01.0, INTx -> guest INTID 40");
    // The guest's own NVMe driver binds the device behind the virtual bridge.
    b.expect("nvme nvme0: pci function 0000:00:01.0");
    // Data the host prepared reads back with the host's checksum, and what
    // the guest wrote reads back...
    let linux = b.checks("linux");
    linux.assert_all_passed(&NVME_CHECKS_AND_COST);
    // ...and is on the host's disk image.
    assert_eq!(
        host_sha256("target/disks/nvme.img", 8, 4),
        guest_sha256(&linux)
    );
    b.expect("VM linux: MSIs granted: PCI 00:01.0 (DeviceID 0x8 -> 0x8): 65 event(s) (MSI-X)");
    // One vector for the admin queue, one per vCPU's I/O queue.
    msix_through_its(&b, &linux, "nvme-interrupts", 3);
    // A GICv3 cannot inject them itself: each MSI is a physical LPI the
    // hypervisor takes (a trap) and injects through the list registers.
    b.expect("MSI delivery: list-registers (this GIC has no direct injection)");
    let cost = msi_cost(&linux);
    assert!(cost.interrupts >= cost.reads / 2, "{cost:?}");
    assert!(cost.injected >= cost.interrupts, "{cost:?}");
    assert!(cost.traps >= cost.injected, "{cost:?}");
    // At power-off the device is stopped before anything else.
    b.expect(
        "VM linux: its devices are stopped: bus mastering off, streams abort, TLBs invalidated",
    );
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.reject("SMMU event");
    b.assert_exit(0);
}

/// linux-nvme on a GICv4: the NVMe's MSI-X interrupts reach the guest as
/// virtual LPIs the GIC presents to its vCPUs, with no trap. The guest's
/// reads one at a time raise about one interrupt each, the hypervisor
/// injects none of them, and the VM's traps during them (timer ticks,
/// inter-processor interrupts) are far fewer than the interrupts; through
/// the list registers (`linux_nvme_passthrough`) each interrupt is a trap.
#[test]
fn linux_nvme_gicv4_direct_injection() {
    let b = boot("linux-nvme-gicv4", &[], TIMEOUT);
    let linux = b.checks("linux");
    linux.assert_all_passed(&NVME_CHECKS_AND_COST);
    assert_eq!(
        host_sha256("target/disks/nvme-gicv4.img", 8, 4),
        guest_sha256(&linux)
    );
    msix_through_its(&b, &linux, "nvme-interrupts", 3);
    assert_delivered_directly(&b, &linux);
    b.expect("VM linux: its devices are stopped");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.reject("SMMU event");
    b.assert_exit(0);
}

/// The VM "linux" of a GICv4 machine had its MSIs delivered directly:
/// its vPEs were made resident, its `nvme-msi-traps` reads raised about
/// one interrupt each, and the hypervisor injected none of them.
fn assert_delivered_directly(b: &Boot, linux: &Checks<'_>) {
    b.expect("MSI delivery: direct (GICv4: the fastest this GIC supports)");
    b.expect(
        "VM linux: MSIs delivered directly by the GIC: vPE 0 on CPU 0, vPE 1 on CPU 1; \
         virtual LPI configuration and pending tables in hypervisor memory",
    );
    b.reject("cannot be made resident");
    let cost = msi_cost(linux);
    assert!(cost.interrupts >= cost.reads / 2, "{cost:?}");
    // No MSI went through the hypervisor. The traps left (timer ticks,
    // IPIs, the counter reads) grow with how long the reads take, which
    // depends on the host's load: they are a benchmark figure, not a test.
    assert_eq!(cost.injected, 0, "{cost:?}");
    b.expect("MSIs delivered directly, 0 injected");
}

/// What a Linux VM running `net-check` (through the init) checks: every CPU
/// online; an address from slirp's DHCP server; data sent to the host's
/// echo server came back; the function interrupted (see
/// [`msix_through_its`]); the command's exit status.
const NET_CHECKS: [&str; 5] = [
    "all-cpus-online",
    "net-dhcp",
    "net-tcp-exchange",
    "net-interrupts",
    "init-run-exit-status",
];

/// Bytes `net-check` sends (its `NET_BYTES`).
const NET_BYTES: usize = 1 << 20;

/// A TCP echo server on the host's 127.0.0.1, on a port the system chose
/// (so runs side by side never clash), which the guest reaches through
/// QEMU's user-mode network as 10.0.2.2:PORT. It takes one connection,
/// reads until the guest has closed its sending side, sends it all back
/// and closes.
struct EchoServer {
    port: u16,
    /// Set once QEMU has exited: a connection can no longer come.
    stop: Arc<AtomicBool>,
    /// What the guest sent, or why nothing was.
    thread: JoinHandle<Result<Vec<u8>, String>>,
}

impl EchoServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot listen on 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if stopped.load(Ordering::Relaxed) {
                            return Err("the guest never connected".to_string());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            // The connection ends when the guest closes it or QEMU exits;
            // the timeout only turns a hang into an error.
            let io = |stream: &mut std::net::TcpStream| -> std::io::Result<Vec<u8>> {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.set_write_timeout(Some(TIMEOUT))?;
                let mut data = Vec::new();
                stream.read_to_end(&mut data)?;
                stream.write_all(&data)?;
                stream.shutdown(Shutdown::Both)?;
                Ok(data)
            };
            io(&mut stream).map_err(|e| format!("echo: {e}"))
        });
        Self { port, stop, thread }
    }

    /// What the guest sent; call once QEMU has exited.
    fn received(self) -> Result<Vec<u8>, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("echo server thread")
    }
}

/// sha256 of `data`, by the host's `sha256sum`.
fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Boots `scenario` (a Linux VM running `net-check` with a virtio-net
/// function at 00:01.0) with an echo server for it, and checks what every
/// mode shares: the guest got its address by DHCP, the host received the
/// guest's data and the guest got it back, interrupts came by MSI-X
/// through the ITS, and the VM powered off cleanly.
fn linux_net(scenario: &str) -> Boot {
    let echo = EchoServer::start();
    let port = echo.port;
    let b = boot_with_cmdline(scenario, &[("linux", &format!("net.port={port}"))], TIMEOUT);
    let received = echo.received();
    let linux = b.checks("linux");
    linux.assert_all_passed(&NET_CHECKS);
    assert!(
        linux
            .detail("net-dhcp")
            .starts_with("eth0 10.0.2.15/24 from 10.0.2.2"),
        "{}",
        linux.detail("net-dhcp")
    );
    let received = received.unwrap_or_else(|e| panic!("{e}; console was:\n{}", b.console));
    assert_eq!(received.len(), NET_BYTES);
    assert_eq!(
        linux.detail("net-tcp-exchange"),
        format!(
            "{NET_BYTES} bytes to 10.0.2.2:{port} and back, sha256 {}",
            sha256(&received)
        )
    );
    // One vector for configuration changes, one each for the receive and
    // send queues.
    msix_through_its(&b, &linux, "net-interrupts", 3);
    b.expect("VM linux: MSIs granted: PCI 00:01.0 (DeviceID 0x8 -> 0x8): 4 event(s) (MSI-X)");
    b.reject("SMMU event");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
    b
}

/// A virtio-net function passed through on stage 2 (its DMA through the
/// SMMU), on QEMU's user-mode network: real packets both ways.
#[test]
fn linux_net_passthrough() {
    let b = linux_net("linux-net");
    b.expect("VM linux: PCI 00:01.0 (sid 0x8) assigned as 00:01.0, INTx -> guest INTID 40");
    b.expect(
        "VM linux: its devices are stopped: bus mastering off, streams abort, TLBs invalidated",
    );
}

/// The same behind the guest's own virtual SMMU (strict invalidation):
/// every packet buffer is mapped and unmapped in the guest's stage 1,
/// nested over the VM's stage 2.
#[test]
fn vsmmu_linux_net_strict() {
    let b = linux_net("vsmmu-net-strict");
    b.expect("iommu: DMA domain TLB invalidation policy: strict mode");
    b.expect("virtio-pci 0000:00:01.0: Adding to iommu group");
    b.expect("vSMMU: vsid 0x8 -> sid 0x8: nested (guest CD table at IPA");
    b.reject("vSMMU: installing");
}

/// The same in lazy invalidation mode: the guest batches its unmaps into
/// flush-queue invalidations.
#[test]
fn vsmmu_linux_net_lazy() {
    let b = linux_net("vsmmu-net-lazy");
    b.expect("iommu: DMA domain TLB invalidation policy: lazy mode");
    b.expect("vSMMU: vsid 0x8 -> sid 0x8: nested (guest CD table at IPA");
    b.reject("vSMMU: installing");
}

#[test]
fn linux_nvme_intx() {
    // The guest turns MSI off (`pci=nomsi`): its NVMe falls back to the
    // INTx line the hypervisor forwards, masking it while the guest handles
    // it and unmasking it at the guest's deactivation.
    let b = boot("linux-nvme-intx", &[], TIMEOUT);
    b.expect("VM linux: PCI 00:01.0 (sid 0x8) assigned as 00:01.0, INTx -> guest INTID 40");
    let linux = b.checks("linux");
    linux.assert_all_passed(&NVME_CHECKS);
    assert_eq!(
        host_sha256("target/disks/nvme-intx.img", 8, 4),
        guest_sha256(&linux)
    );
    let detail = linux.detail("nvme-interrupts");
    assert!(detail.starts_with("GICv3, 1 vector(s), "), "{detail}");
    interrupts_kept(&b);
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.reject("SMMU event");
    b.assert_exit(0);
}

#[test]
fn isolation_edu_attacker() {
    let b = boot("isolation", &[], TIMEOUT);
    // Every foreign target: the victim's memory, the victim's NVMe BAR
    // (peer to peer), the hypervisor's memory, the GIC, UART and SMMU
    // registers, unmapped space.
    let targets = [
        "0x60000000",
        "0x8000000000",
        "0x40200000",
        "0x8000000",
        "0x9000000",
        "0x9050000",
        "0xc0000000",
    ];
    // The attacker's own DMA works; its reads of every target are blocked
    // (nothing foreign lands in its buffer), its writes all ran.
    let mut expected = vec!["dma-own-memory".to_string()];
    for target in targets {
        expected.push(format!("dma-read-{target}"));
        expected.push(format!("dma-write-{target}"));
    }
    let attacker = b.checks("attacker");
    attacker.assert_all_passed(&expected.iter().map(String::as_str).collect::<Vec<_>>());
    for target in targets {
        assert_eq!(
            attacker.detail(&format!("dma-write-{target}")),
            "issued 3 times"
        );
        // Reported once per target and direction, decoded and attributed.
        for dir in ["read", "write"] {
            let n = b.count(&format!(
                "SMMU event: F_TRANSLATION sid=0x10 addr={target} {dir} stage=2"
            ));
            assert_eq!(n, 1, "{target} {dir}: {n} reports:\n{}", b.console);
        }
    }
    assert!(b
        .expect("SMMU event: F_TRANSLATION sid=0x10")
        .contains("[PCI 00:02.0 owner attacker]"));
    // The flood is counted, not printed line by line.
    b.expect("VM attacker: PCI 00:02.0 (sid 0x10) made");
    assert!(b.count("SMMU event") <= 16, "{}", b.console);
    // The victim finishes its NVMe work and finds its canary intact.
    let mut victim_checks = NVME_CHECKS.to_vec();
    victim_checks.push("canary-unchanged");
    b.checks("victim").assert_all_passed(&victim_checks);
    interrupts_kept(&b);
    b.expect("VM victim: powered off");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// A function whose BAR is smaller than a page: the page its VM is given
/// holds nothing else (the two watchdogs' 16-byte BARs used to be placed
/// back to back, in one page), and the function decodes nothing until its
/// guest turns memory decode on.
#[test]
fn sub_page_bar_page_holds_nothing_else() {
    let b = boot("sub-page-bar", &[], TIMEOUT);
    b.checks("probe").assert_all_passed(&[
        "bar-off-until-enabled",
        "bar-decodes",
        "bar-page-alone",
    ]);
    // Each BAR was placed at the start of a page of its own.
    assert_eq!(b.count("  BAR0 Mem32 0x10 bytes at 0x10000000"), 1);
    assert_eq!(b.count("  BAR0 Mem32 0x10 bytes at 0x10001000"), 1);
    b.expect("VM probe: PCI 00:01.0 (sid 0x8) assigned as 00:01.0");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

#[test]
fn scenario_conflict_refused() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/line-conflict.toml");
    let b = boot(scenario, &[], TIMEOUT);
    b.expect("VM one: PCI 00:01.0 (sid 0x8) assigned");
    b.expect("VM two: PCI 00:05.0: its INTx line (INTID 36) is already given to another VM");
    b.expect("no guest is started");
    b.assert_silent("one");
    b.assert_silent("two");
    b.assert_exit(1);
}

/// The physical LPIs are as many as the machine's functions can signal,
/// at least 8192: NVMe controllers with 2048 MSI-X vectors each need
/// 10240, so 15 INTID bits; one NVMe with its 65 (`linux-nvme`) leaves the
/// fewest, 14.
#[test]
fn physical_lpis_are_sized_for_the_functions() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/lpi-sizing.toml");
    let b = boot(scenario, &[], TIMEOUT);
    b.expect("1 of 1 CPUs take LPIs 8192..=32767;");
    b.expect("hyp: all done, powering off");
    b.assert_exit(0);
}

/// `lpi_id_bits=16` sizes the LPI tables for 16-bit INTIDs, as bare
/// Linux does (the like-for-like benchmark configurations); a value
/// outside 14 to 16 is ignored, with a warning.
#[test]
fn lpi_id_bits_on_the_command_line() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/");
    let b = boot(&format!("{dir}lpi-bits-16.toml"), &[], TIMEOUT);
    b.expect("LPIs: INTIDs of 16 bits (lpi_id_bits=16)");
    b.expect("1 of 1 CPUs take LPIs 8192..=65535;");
    b.assert_exit(0);
    let b = boot(&format!("{dir}lpi-bits-bad.toml"), &[], TIMEOUT);
    b.expect("lpi_id_bits=24 ignored: 14 to 16 INTID bits");
    b.expect("1 of 1 CPUs take LPIs 8192..=16383;");
    b.assert_exit(0);
}

/// A function with an I/O BAR (QEMU's pci-testdev) is not assigned at
/// all: guests get no port I/O, and a half-working device is worse than
/// none. One line says why, and no guest starts.
#[test]
fn a_function_with_an_io_bar_is_refused() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/io-bar.toml");
    let b = boot(scenario, &[], TIMEOUT);
    b.expect(
        "VM porty: PCI 00:01.0: BAR1 is an I/O BAR (256 bytes), and guests get no port I/O: \
         not assigned",
    );
    b.expect("no guest is started");
    b.assert_silent("porty");
    b.assert_exit(1);
}

/// Linux's own arm-smmu-v3 driver on the virtual SMMUv3: the NVMe sits in a
/// translated IOMMU group, its stream is nested (guest stage 1 over the
/// VM's stage 2), and checksummed I/O passes with invalidation mode `mode`
/// (scenario `vsmmu-nvme-{mode}`, disk `vsmmu-{mode}.img`).
fn vsmmu_linux_nvme(mode: &str) {
    let b = boot(&format!("vsmmu-nvme-{mode}"), &[], TIMEOUT);
    nested_nvme_checked(&b, mode == "strict", &format!("vsmmu-{mode}"), &NVME_CHECKS);
    b.assert_exit(0);
}

/// What every nested NVMe scenario shows: the guest's `arm-smmu-v3` in
/// strict or lazy mode, the NVMe nested, `checks` passed, the data written
/// to disk `target/disks/{disk}.img` the host reads back, MSI-X through the
/// ITS whose doorbell the guest's own driver mapped in its stage 1 (the
/// nested walk reaches the physical ITS), no SMMU event, a clean power-off.
/// Returns the Linux VM's checks.
fn nested_nvme_checked<'a>(b: &'a Boot, strict: bool, disk: &str, checks: &[&str]) -> Checks<'a> {
    b.expect("arm-smmu-v3 9050000.iommu: ias 40-bit, oas 40-bit");
    b.expect("iommu: Default domain type: Translated");
    let policy = if strict { "strict mode" } else { "lazy mode" };
    b.expect(&format!(
        "iommu: DMA domain TLB invalidation policy: {policy}"
    ));
    b.expect("nvme 0000:00:01.0: Adding to iommu group");
    b.expect("vSMMU: vsid 0x8 -> sid 0x8: nested (guest CD table at IPA");
    let linux = b.checks("linux");
    linux.assert_all_passed(checks);
    assert_eq!(
        host_sha256(&format!("target/disks/{disk}.img"), 8, 4),
        guest_sha256(&linux)
    );
    // One vector for the admin queue, one per vCPU's I/O queue.
    msix_through_its(b, &linux, "nvme-interrupts", 3);
    b.reject("SMMU event");
    b.reject("vSMMU: installing");
    b.expect("all VMs have stopped (all powered off cleanly)");
    // The vSMMU offers MSIs (IDR0.MSI) and is coherent, so the guest's
    // driver asks each CMD_SYNC to signal its completion by writing to
    // memory it polls, rather than reading CMDQ_CONS (a trap each time).
    b.expect(" MSIs written");
    b.reject("physical commands, 0 MSIs written");
    linux
}

#[test]
fn vsmmu_linux_nvme_strict() {
    vsmmu_linux_nvme("strict");
}

#[test]
fn vsmmu_linux_nvme_lazy() {
    vsmmu_linux_nvme("lazy");
}

/// Nested (strict) on a GICv4: the NVMe's MSI-X writes go through the
/// guest's stage 1 and the VM's stage 2 to the physical ITS, which turns
/// them into virtual LPIs the GIC presents to the vCPUs: the hypervisor
/// injects none of the interrupts of 1000 reads.
#[test]
fn vsmmu_linux_nvme_gicv4_direct_injection() {
    let b = boot("vsmmu-nvme-gicv4", &[], TIMEOUT);
    let linux = nested_nvme_checked(&b, true, "vsmmu-gicv4", &NVME_CHECKS_AND_COST);
    assert_delivered_directly(&b, &linux);
    b.assert_exit(0);
}

/// A bare-metal guest programs its own vSMMU (stream table, CD, stage-1
/// tables, queues) for its `edu`: nested translation, precise TLBI_NH_VA,
/// stage-1 faults in its event queue with its virtual StreamID and its
/// interrupt, nothing reachable through memory outside the VM, and an
/// illegal command reported as hardware would, then recovered from.
#[test]
fn vsmmu_edu_nested() {
    let b = boot("vsmmu-edu", &[], TIMEOUT);
    // Physical 00:02.0 (StreamID 0x10) is the guest's 00:01.0 (vSID 0x8).
    b.expect("VM nested: PCI 00:02.0 (sid 0x10) assigned as 00:01.0");
    b.expect("[nested] guest: edu at 00:01.0: vsid 0x8");
    b.expect("vSMMU: vsid 0x8 -> sid 0x10: nested (guest CD table at IPA 0x80");
    let nested = b.checks("nested");
    nested.assert_all_passed(&[
        // Translation through the guest's stage 1.
        "dma-through-iova",
        // With stage 1 on, the bare IPA is not a valid IOVA: the fault is
        // the guest's, with its own StreamID, and raises its eventq
        // interrupt.
        "dma-by-ipa-with-stage-1-on",
        "event-for-dma-by-ipa",
        // The SMMU keeps translations cached: without invalidation the
        // unmapped page still works (so the next checks can fail)...
        "unmapped-page-still-cached",
        // ...TLBI_NH_VA + CMD_SYNC removes exactly that page...
        "unmap-tlbi-nh-va-cmd-sync",
        "event-after-tlbi-nh-va",
        // ...and nothing more: the other page's stale entry survives.
        "other-page-after-tlbi-nh-va",
        "second-tlbi-nh-va",
        "event-after-second-tlbi-nh-va",
        // Outside the VM: a stage-1 mapping to it, a CD table there, a
        // TTB0 there; nothing leaks, and restored, DMA works again.
        "iova-to-ipa-outside-vm",
        "cd-table-outside-vm",
        "dma-after-cd-table-restored",
        "ttb0-outside-vm",
        "dma-after-ttb0-restored",
        // An STE the vSMMU cannot honour (stage 2): the stream's
        // transactions abort with C_BAD_STE in the guest's event queue;
        // a valid STE again and DMA works.
        "illegal-ste-event",
        "dma-after-valid-ste",
        // An illegal (stage-2) command stops the queue at it with
        // CERROR_ILL and the gerror interrupt; the guest recovers as Linux
        // would.
        "illegal-command",
        "command-queue-after-gerrorn",
        "dma-after-recovery",
        // Every event record carried the guest's StreamID, never the
        // physical one.
        "events-for-own-stream",
    ]);
    // The guest's RAM is at 0x80000000 (16 MiB): its IPAs are 0x80xxxxxx.
    let ev = nested.detail("event-for-dma-by-ipa");
    assert!(ev.starts_with("F_TRANSLATION for vsid 0x8 at 0x80"), "{ev}");
    for (check, at) in [
        ("event-after-tlbi-nh-va", "0x420001000"),
        ("event-after-second-tlbi-nh-va", "0x420000000"),
    ] {
        assert_eq!(
            nested.detail(check),
            format!("F_TRANSLATION for vsid 0x8 at {at}: yes; eventq irq: yes")
        );
    }
    assert_eq!(
        nested.detail("other-page-after-tlbi-nh-va"),
        "still cached (not widened)"
    );
    assert_eq!(
        nested.detail("illegal-ste-event"),
        "C_BAD_STE for vsid 0x8: yes; eventq irq: yes"
    );
    // Stage-1 faults are the guest's only: the hypervisor reports none.
    b.reject("stage=1");
    // Outside the VM, the stage-2 faults are the hypervisor's, attributed
    // to the VM, each (page, direction, class) once.
    for (dir, class) in [
        ("read", "IN"),
        ("write", "IN"),
        ("read", "CD"),
        ("read", "TT"),
    ] {
        let n = b.count(&format!(
            "{dir} stage=2 class={class} ipa=0x40200000 [PCI 00:02.0 owner nested]"
        ));
        assert_eq!(n, 1, "{dir} {class}: {n} reports:\n{}", b.console);
    }
    // The illegal STE is refused by the vSMMU and reported to the guest
    // only.
    b.expect("vSMMU: guest STE of vsid 0x8 refused (illegal guest STE: stage 2");
    b.reject("SMMU event: C_BAD_STE");
    b.reject(" ERROR ");
    b.expect("VM nested: its devices are stopped");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// A bare-metal guest programs its vGIC and vITS as Linux does and maps its
/// `edu`'s MSI event (granted from the edu's MSI capability) to LPI 8192:
/// an INT raises it; the CPU's write of the EventID to GITS_TRANSLATER traps
/// to the vITS, raises nothing and does not fault; the edu's DMA of the
/// EventID to the same IPA goes through the SMMU, whose stage 2 alone maps
/// the doorbell, to the physical GITS_TRANSLATER, where QEMU traces it.
fn edu_msi(scenario: &str) -> Boot {
    let b = boot(scenario, &[], TIMEOUT);
    // Physical 00:02.0 (DeviceID 0x10) is the guest's 00:01.0 (0x8), with
    // the one event of its single MSI vector.
    b.expect("VM msi: MSIs granted: PCI 00:02.0 (DeviceID 0x10 -> 0x8): 1 event(s) (MSI)");
    b.expect(
        "VM msi: MSI doorbell: IPA 0x8090000 -> PA 0x8090000 (GITS_TRANSLATER) in its devices' stage 2 only",
    );
    b.expect("[msi] guest: edu at 00:01.0, DeviceID 0x8: event 0 -> LPI 8192");
    let checks = b.checks("msi");
    checks.assert_all_passed(&[
        "its-int-lpi-8192",
        "cpu-translater-write-ignored",
        "dma-to-translater",
    ]);
    // Exactly one write reached the physical GITS_TRANSLATER, the edu's
    // 4-byte EventID: the CPU's never left the vITS.
    let writes: Vec<&str> = b
        .console
        .lines()
        .filter(|l| l.contains("GICv3 ITS TRANSLATER write"))
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}; console was:\n{}", b.console);
    assert!(
        writes[0].contains("offset 0x40 data 0x0 size 4"),
        "{}",
        writes[0]
    );
    // The physical ITS translates by who wrote. A write with the edu's
    // requester ID (0x10) is its MSI, and the guest's LPI follows. QEMU 10.0
    // gives a device's DMA no requester ID (only its MSI messages carry
    // one): its ITS then sees DeviceID 0, which no VM is granted, and the
    // guest must get nothing.
    let lpi = checks.detail("dma-to-translater");
    if writes[0].ends_with("requester_id 0x0") {
        assert_eq!(lpi, "issued; LPI 8192: no", "{}", b.console);
    } else {
        assert!(writes[0].ends_with("requester_id 0x10"), "{}", writes[0]);
        assert_eq!(lpi, "issued; LPI 8192: yes", "{}", b.console);
    }
    // The doorbell write did not fault at the SMMU; nothing went wrong.
    b.reject("stage=2");
    b.reject(" WARN ");
    b.reject(" ERROR ");
    b.expect("VM msi: its devices are stopped: bus mastering off, streams abort, TLBs invalidated, 1 MSI route(s) and its devices unmapped from the ITS");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
    b
}

#[test]
fn edu_msi_doorbell() {
    let b = edu_msi("edu-msi");
    b.expect("MSI delivery: list-registers (this GIC has no direct injection)");
}

/// The same on a GICv4, which delivers the guest's MSIs directly: the INT
/// of the guest's mapped event is a physical INT of a virtual LPI, which
/// the GIC presents to the vCPU.
#[test]
fn edu_msi_gicv4_direct() {
    let b = edu_msi(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/edu-msi-gicv4.toml"
    ));
    b.expect("MSI delivery: direct (GICv4: the fastest this GIC supports)");
    b.expect("VM msi: MSIs delivered directly by the GIC: vPE 0 on CPU 0");
    b.expect("VM msi: ");
    b.expect("traps; MSIs delivered directly, 0 injected");
}

/// On a GICv4 the scenario may still ask for the list registers.
#[test]
fn edu_msi_gicv4_list_registers() {
    let b = edu_msi(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/edu-msi-gicv4-list-registers.toml"
    ));
    b.expect("MSI delivery: list-registers (as the scenario asks)");
    b.reject("MSIs delivered directly");
}

/// Direct delivery asked of a GICv3: one line says why not, and no guest
/// starts.
#[test]
fn direct_msi_delivery_needs_gicv4() {
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/direct-msi-on-gicv3.toml"
    );
    let b = boot(scenario, &[], TIMEOUT);
    b.expect(
        "the machine cannot run the scenario: msi_delivery = \"direct\" needs a GIC that \
         injects virtual LPIs directly (GICv4, e.g. gic_version = 4), but \
         the ITS has no virtual LPIs (GITS_TYPER.Virtual = 0: not a GICv4): no guest is started",
    );
    b.assert_silent("msi");
    b.assert_exit(1);
}

/// A guest aims its edu's MSI (the capability the hypervisor shows it) at
/// hostile places: only its own mapped event raises its LPI; messages aimed
/// outside its RAM, at GICD_SETSPI_NSR or at the ITS's command registers
/// are aborted by the SMMU and reported; events it was not granted or
/// discarded raise nothing; the victim next to it keeps its LPI path.
#[test]
fn msi_aimed_at_hostile_places_is_contained() {
    let b = boot("edu-msi-attack", &[], TIMEOUT);
    b.expect("VM attacker: MSIs granted: PCI 00:01.0 (DeviceID 0x8 -> 0x8): 1 event(s) (MSI)");
    b.checks("attacker").assert_all_passed(&[
        "msi-capability-shown",
        "msi-mme-clamped",
        "msi-raises-lpi",
        "msi-into-own-ram",
        "msi-outside-ram",
        "msi-to-gicd-setspi",
        "msi-to-its-control-frame",
        "msi-event-beyond-grant",
        "msi-after-discard",
        "msi-remapped-raises-lpi",
    ]);
    b.checks("victim").assert_all_passed(&[
        "its-int-lpi-8192",
        "cpu-translater-write-ignored",
        "dma-to-translater",
    ]);
    // The messages that reached the physical ITS: its raise, the event
    // beyond its grant, the discarded event and the remapped one.
    hostile_messages_contained(&b, 4);
}

/// What the hypervisor reports of an attacker at 00:01.0 (StreamID and
/// DeviceID 0x8) that aimed its device's messages outside RAM, at
/// GICD_SETSPI_NSR and at GITS_CWRITER: each is one aborted write, decoded
/// and attributed to it, and nothing else faulted. `reached_its` messages
/// reached the physical ITS, all with the attacker's requester ID (the
/// victim's edu sends none: QEMU gives its DMA requester ID 0). The
/// machine stops cleanly.
fn hostile_messages_contained(b: &Boot, reached_its: usize) {
    for addr in ["0x82000000", "0x8000040", "0x8080088"] {
        let n = b.count(&format!(
            "SMMU event: F_TRANSLATION sid=0x8 addr={addr} write stage=2"
        ));
        assert_eq!(n, 1, "{addr}: {n} reports:\n{}", b.console);
    }
    assert_eq!(b.count("SMMU event"), 3, "{}", b.console);
    let messages: Vec<&str> = b
        .console
        .lines()
        .filter(|l| l.contains("GICv3 ITS TRANSLATER write") && !l.ends_with("requester_id 0x0"))
        .collect();
    assert_eq!(messages.len(), reached_its, "{messages:?}");
    assert!(
        messages.iter().all(|l| l.ends_with("requester_id 0x8")),
        "{messages:?}"
    );
    b.expect("VM attacker: PCI 00:01.0 (sid 0x8) made 3 faulting DMA accesses in all");
    b.reject(" ERROR ");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// The same attacks through MSI-X table entry 0 of a real MSI-X device (an
/// NVMe controller whose admin completions signal vector 0), through the
/// table the hypervisor emulates: only the attacker's own mapped event
/// raises its LPI; a masked entry holds its message pending until
/// unmasked; every other message is a write the SMMU aborts or one into
/// its own RAM; the event beyond its grant is refused by its vITS and
/// raises nothing; with memory decoding off the table answers as nothing
/// decodes it. A victim VM's MSI path works next to it.
#[test]
fn msix_entries_aimed_at_hostile_places_are_contained() {
    let b = boot("nvme-msix-attack", &[], TIMEOUT);
    b.expect("VM attacker: MSIs granted: PCI 00:01.0 (DeviceID 0x8 -> 0x8): 65 event(s) (MSI-X)");
    b.checks("attacker").assert_all_passed(&[
        "msix-capability-shown",
        "msix-raises-lpi",
        "msix-masked-entry-pends",
        "msix-unmask-delivers",
        "msix-into-own-ram",
        "msix-outside-ram",
        "msix-to-gicd-setspi",
        "msix-to-its-control-frame",
        "msix-event-beyond-grant",
        "msix-after-discard",
        "msix-table-with-decode-off",
        "msix-remapped-raises-lpi",
    ]);
    b.checks("victim").assert_all_passed(&[
        "its-int-lpi-8192",
        "cpu-translater-write-ignored",
        "dma-to-translater",
    ]);
    b.expect("vITS ignored Mapti { device: 8, event: 65, intid: 8193, icid: 0 }");
    // The messages that reached the physical ITS: the first raise, the
    // one held while masked and sent on unmask, the event beyond the
    // grant, the discarded event and the remapped one.
    hostile_messages_contained(&b, 5);
}

/// One VM floods its vSMMU's command queue with valid invalidations while
/// another does checked NVMe I/O through its own vSMMU (strict, so every
/// unmap is a guest invalidation + CMD_SYNC): the hypervisor's bounded
/// work per trap keeps the second VM going; its I/O runs while the flood
/// does, completes and checks out.
#[test]
fn vsmmu_flood_does_not_stall_another_vm() {
    // The flood goes on until the Linux VM has finished its checks: then
    // a key typed to the flooder (Ctrl-] 1, then any key) ends it.
    let b = scenario_tests::boot_typing(
        "vsmmu-flood",
        &[],
        TIMEOUT,
        &[
            ("[linux] checks: ", b"\x1d1"),
            ("[hyp] console input goes to VM flooder", b"x"),
        ],
    );
    let linux = b.checks("linux");
    linux.assert_all_passed(&NVME_CHECKS);
    assert_eq!(
        host_sha256("target/disks/vsmmu-flood.img", 8, 4),
        guest_sha256(&linux)
    );
    interrupts_kept(&b);
    let flooder = b.checks("flooder");
    flooder.assert_all_passed(&["vsmmu-flood"]);
    // "N commands in B batches, T ms"
    let flood = flooder.detail("vsmmu-flood");
    let commands: u64 = flood
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {flood:?}"));
    assert!(commands > 100_000, "hardly a flood: {flood}");
    // The Linux VM's nested I/O ran while the flood did (the flood only
    // ends once the test saw Linux finish).
    assert!(
        linux.get("nvme-host-data").line < flooder.get("vsmmu-flood").line,
        "{}",
        b.console
    );
    // Every flooded command was consumed (plus the 3 of the guest's
    // reset: CFGI_ALL, TLBI_NH_ALL, CMD_SYNC).
    let stats = b
        .console
        .lines()
        .find(|l| l.contains("VM flooder: ") && l.contains(" traps"))
        .unwrap_or_else(|| panic!("no stats:\n{}", b.console));
    assert!(
        stats.contains(&format!("vSMMU: {} guest commands", commands + 3)),
        "{stats}"
    );
    b.reject("SMMU event");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// The number just before `word` in `text`, which must be there.
#[track_caller]
fn number_before(text: &str, word: &str) -> u64 {
    text.find(word)
        .and_then(|i| text[..i].split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no number before {word:?} in {text:?}"))
}

/// A VM whose NVMe faults continuously, next to a Linux VM running the NVMe
/// benchmark: the attacker keeps its admin queue full of Get Log Page
/// commands whose 4-byte data buffer lies outside its RAM (each one DMA
/// write the SMMU aborts) until the Linux VM has finished. The faults are
/// reported attributed and rate-limited and counted in all; the Linux VM's
/// benchmark runs during the flood and completes; both VMs end cleanly.
/// What the flood costs the neighbour is the benchmark's to measure
/// (`tests/benches/nvme_read.rs`), not this test's.
#[test]
fn nvme_fault_flood_next_to_linux_benchmark() {
    let b = scenario_tests::boot_with_cmdline_typing(
        "nvme-fault-neighbour",
        &[("linux", "nvme.bench_ios=256 nvme.bench_mib=32")],
        TIMEOUT,
        &[
            ("[linux] checks: ", b"\x1d1"),
            ("[hyp] console input goes to VM attacker", b"x"),
        ],
    );
    b.expect("VM linux: PCI 00:01.0 (sid 0x8) assigned as 00:01.0");
    b.expect("VM attacker: PCI 00:02.0 (sid 0x10) assigned as 00:01.0");
    // The benchmark ran both workloads, whole, and Linux lost no interrupt.
    let linux = b.checks("linux");
    linux.assert_all_passed(&["all-cpus-online", "init-run-exit-status"]);
    b.expect("nvme-bench: disk-bench: 256 reads of 4096 B (random)");
    let last_result = b.expect("nvme-bench: disk-bench: 32 reads of 1048576 B (seq)");
    interrupts_kept(&b);

    // The attacker's data buffer: 256 MiB past its RAM (16 MiB at
    // 0x80000000).
    let attacker = b.checks("attacker");
    attacker.assert_all_passed(&["nvme-flood-ran"]);
    let flood = attacker.detail("nvme-flood-ran");
    assert!(flood.contains(", PRP1 0x91000000; status: "), "{flood}");
    let submitted = number_before(flood, " commands submitted");
    assert_eq!(
        number_before(flood, " completions reaped"),
        submitted,
        "{flood}"
    );
    assert!(submitted >= 10_000, "hardly a flood: {flood}");
    // The flood lasted as long as the benchmark: it ended after the Linux
    // VM's last result.
    let result_line = b.console.lines().position(|l| l == last_result).unwrap();
    assert!(
        result_line < attacker.get("nvme-flood-ran").line,
        "the flood ended before the benchmark did:\n{}",
        b.console
    );

    // Every fault is at that one page, written: reported once, decoded and
    // attributed to the attacker's function; nothing else faulted.
    let report = b.expect("SMMU event: F_TRANSLATION sid=0x10 addr=0x91000000 write stage=2");
    assert!(report.contains("[PCI 00:02.0 owner attacker]"), "{report}");
    assert_eq!(b.count("SMMU event"), 1, "{}", b.console);
    // ...and counted in all. Each command is one faulting access, but
    // QEMU's SMMU drops the events that find its event queue full, so the
    // hypervisor sees at most one per command.
    let made = b.expect("VM attacker: PCI 00:02.0 (sid 0x10) made");
    let faults = number_before(made, " faulting DMA accesses in all");
    assert!(
        (1000..=submitted).contains(&faults),
        "{faults} faults for {submitted} commands: {made}"
    );
    b.reject(" ERROR ");
    b.expect("VM linux: powered off");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}
