//! Injection of event records into a guest's event queue (IHI 0070 §7.1,
//! §7.4): stage-1 faults of the VM's nested streams, already carrying the
//! virtual StreamID.

use super::regs::{qidx, VSmmu, EVT_BYTES};
use super::GuestMemory;
use crate::addr::Ipa;
use crate::event::Event;
use crate::regs::GERROR;

/// EVENTQ_PROD.OVFLG (§6.3.95).
const OVFLG: u32 = 1 << 31;

/// The result of [`VSmmu::inject`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectOutcome {
    /// The record was written and EVENTQ_PROD advanced.
    pub written: bool,
    /// The queue was full: the record was lost and the overflow signalled
    /// (EVENTQ_PROD.OVFLG toggled unless an overflow was still
    /// unacknowledged).
    pub overflowed: bool,
    /// Assert the guest's event-queue interrupt (IRQ_CTRL.EVENTQ_IRQEN and
    /// a record was written).
    pub raise_event_irq: bool,
    /// Assert the guest's global-error interrupt (the write to guest memory
    /// aborted: GERROR.EVENTQ_ABT_ERR, §7.5).
    pub raise_gerror_irq: bool,
}

impl VSmmu {
    /// Records `event` in the guest's event queue: does nothing unless
    /// CR0.EVENTQEN (§6.3.9); when the queue is full the event is lost and
    /// OVFLG is toggled if PROD.OVFLG == CONS.OVACKFLG (§7.4); otherwise
    /// the 32-byte record is written at PROD and PROD advances (§7.1). A
    /// record that cannot be encoded is dropped; one that cannot be written
    /// to guest memory activates GERROR.EVENTQ_ABT_ERR.
    pub fn inject(&mut self, mem: &dyn GuestMemory, event: &Event) -> InjectOutcome {
        let mut out = InjectOutcome::default();
        if !self.evtq_enabled() {
            return out;
        }
        let (log2, base) = self.evtq_geometry();
        let prod_raw = self.evtq_prod;
        let cons_raw = self.evtq_cons_raw();
        let prod = qidx(log2, prod_raw);
        let cons = qidx(log2, cons_raw);
        if prod.distance_from(cons) >= prod.capacity() {
            out.overflowed = true;
            if (prod_raw & OVFLG) == (cons_raw & OVFLG) {
                self.evtq_prod ^= OVFLG;
            }
            return out;
        }
        let Ok(words) = event.encode() else {
            return out;
        };
        let mut bytes = [0u8; EVT_BYTES as usize];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        let addr = base.0 + u64::from(prod.index()) * EVT_BYTES;
        if mem.write(Ipa(addr), &bytes).is_err() {
            out.raise_gerror_irq = self
                .raise_gerror(GERROR::EVENTQ_ABT_ERR.mask << GERROR::EVENTQ_ABT_ERR.shift)
                .is_some();
            return out;
        }
        self.evtq_prod = (prod_raw & OVFLG) | prod.inc().raw();
        out.written = true;
        out.raise_event_irq = self.evtq_irq_enabled();
        out
    }
}
