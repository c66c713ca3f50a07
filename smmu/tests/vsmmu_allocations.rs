//! A guest's invalidation and its CMD_SYNC cost the vSMMU engine no heap
//! allocation once its buffers have grown: the hypervisor runs the command
//! loop in the trap of the guest's CMDQ_PROD write, where an allocation is
//! slow (the hypervisor's buddy heap searches its free lists) and shared
//! with every other VM.
//!
//! Its own test binary: the global allocator counts the allocations of the
//! thread that runs the engine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use smmu::addr::{Asid, Iova, Ipa, PhysAddr, StreamId, Vmid};
use smmu::cmd::{Command, CompletionSignal, Sync, TlbiScope};
use smmu::fake::{vm_stage2, FakeGuestMemory};
use smmu::regs::offset as o;
use smmu::ste::{S1Config, StallModel};
use smmu::vsmmu::{PhysicalSmmu, VsmmuEngine, VsmmuPolicy};

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting this thread's allocations.
struct Counting;

// SAFETY: every call is passed on unchanged to the system allocator, which
// upholds GlobalAlloc's contract; the counter is a const-initialised
// thread-local Cell, which neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from System, with
        // this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// A physical SMMU that only counts what it is given (`FakePhysicalSmmu`
/// logs every operation in a growing list, which allocates).
#[derive(Debug, Default)]
struct Counter {
    commands: usize,
    syncs: usize,
}

impl PhysicalSmmu for Counter {
    type Error = &'static str;

    fn stall_model(&mut self) -> StallModel {
        StallModel::TerminateOnly
    }

    fn submit(&mut self, cmds: &[Command]) -> Result<(), Self::Error> {
        self.commands += cmds.len();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.syncs += 1;
        Ok(())
    }

    fn attach_stage2(&mut self, _: StreamId) -> Result<(), Self::Error> {
        Ok(())
    }

    fn attach_nested(&mut self, _: StreamId, _: &S1Config) -> Result<(), Self::Error> {
        Ok(())
    }

    fn block(&mut self, _: StreamId) -> Result<(), Self::Error> {
        Ok(())
    }

    fn refuse(&mut self, _: StreamId) -> Result<(), Self::Error> {
        Ok(())
    }
}

const RAM: u64 = 0x4000_0000;
const CMDQ: u64 = RAM;
const STRTAB: u64 = RAM + 0x1_0000;
const EVTQ: u64 = RAM + 0x2_0000;
/// Where the guest's CMD_SYNCs write their completion MSI.
const POLL: u64 = RAM + 0x3_0000;
const VMID: Vmid = Vmid(5);

#[test]
fn an_invalidation_and_its_sync_allocate_nothing_once_warm() {
    let streams: BTreeMap<StreamId, StreamId> = [(StreamId(8), StreamId(0x10))].into();
    let policy = VsmmuPolicy {
        ril: true,
        msi: true,
        ..VsmmuPolicy::default()
    };
    let mut e = VsmmuEngine::new(
        policy,
        VMID,
        vm_stage2(VMID),
        streams,
        FakeGuestMemory::new(Ipa(RAM), 0x4_0000),
        Counter::default(),
    );
    let write = |e: &mut VsmmuEngine<Counter, FakeGuestMemory>, off: usize, size: u8, v: u64| {
        let (_, irqs) = e.access(off as u64, size, true, v);
        assert!(irqs.is_empty(), "no interrupt from {off:#x}");
    };
    // Linux's reset sequence: stream table, a queue of 256 commands, the
    // event queue, then SMMUEN.
    write(&mut e, o::CR1, 4, 0xD75);
    write(&mut e, o::STRTAB_BASE, 8, (1 << 62) | STRTAB);
    write(&mut e, o::STRTAB_BASE_CFG, 4, 6);
    write(&mut e, o::CMDQ_BASE, 8, (1 << 62) | CMDQ | 8);
    write(&mut e, o::EVENTQ_BASE, 8, (1 << 62) | EVTQ | 8);
    write(&mut e, o::CR0, 4, 0b1101);

    // What an unmap in strict mode sends: a ranged TLBI for the ASID and
    // a CMD_SYNC whose MSI Linux polls.
    let tlbi = Command::TlbiNhVa {
        vmid: Vmid(0),
        asid: Asid(1),
        addr: Iova(0xffff_f000),
        scope: TlbiScope {
            leaf: true,
            range: None,
        },
    };
    let sync = Command::Sync(Sync {
        cs: CompletionSignal::Irq,
        msh: 3,
        msi_attr: 0xF,
        msi_data: 0,
        msi_addr: PhysAddr(POLL),
    });
    let mut prod = 0u32;
    let mut unmap = |e: &mut VsmmuEngine<Counter, FakeGuestMemory>| {
        for c in [tlbi, sync] {
            let [lo, hi] = c.encode();
            let at = CMDQ + u64::from(prod & 0xff) * 16;
            e.memory().write_u64(Ipa(at), lo);
            e.memory().write_u64(Ipa(at + 8), hi);
            prod = (prod + 1) & 0x1ff;
        }
        e.memory().write_u64(Ipa(POLL), u64::MAX);
        let (_, irqs) = e.access(o::CMDQ_PROD as u64, 4, true, u64::from(prod));
        assert!(irqs.is_empty());
        assert_eq!(
            e.memory().read_u64(Ipa(POLL)) & 0xffff_ffff,
            0,
            "the CMD_SYNC completed with its MSI"
        );
    };
    for _ in 0..4 {
        unmap(&mut e);
    }
    let (commands, syncs) = (e.physical().commands, e.physical().syncs);
    let before = allocations();
    // More than a whole queue, so the indices wrap.
    for _ in 0..300 {
        unmap(&mut e);
    }
    assert_eq!(allocations() - before, 0, "heap allocations in 300 unmaps");
    assert_eq!(
        (e.physical().commands - commands, e.physical().syncs - syncs),
        (300, 300),
        "each unmap forwarded its TLBI and a physical CMD_SYNC"
    );
}
