//! Index arithmetic of the SMMU's circular queues (IHI 0070 §3.5).
//!
//! A queue of 2^LOG2SIZE entries is described by two index registers, PROD
//! and CONS. Each holds an index of LOG2SIZE bits with a wrap bit just above
//! it; the queue is empty when both (index, wrap) pairs are equal and full
//! when the indices are equal but the wrap bits differ. The same arithmetic
//! serves the physical command and event queues the driver runs and the
//! virtual queues the vSMMU emulates, where every index value comes from a
//! guest: conversions from raw register values therefore mask out everything
//! outside the index and wrap bits (CMDQ_CONS.ERR, EVENTQ_PROD.OVFLG, RES0
//! garbage) instead of trusting it.

use crate::regs::{CMDQ_CONS, EVENTQ_CONS, EVENTQ_PROD};
use core::fmt;
use tock_registers::LocalRegisterCopy;

/// Largest LOG2SIZE of any queue (§6.3.2: IDR1.CMDQS/EVENTQS/PRIQS ≤ 19).
pub const MAX_LOG2SIZE: u8 = 19;

/// Errors of queue construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// LOG2SIZE above [`MAX_LOG2SIZE`].
    Log2SizeTooLarge(u8),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Log2SizeTooLarge(n) => {
                write!(f, "queue LOG2SIZE {n} above the maximum {MAX_LOG2SIZE}")
            }
        }
    }
}

/// One queue index: LOG2SIZE index bits plus the wrap bit (§3.5, e.g.
/// SMMU_CMDQ_PROD.WR / WR_WRAP in §6.3.27).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueIndex {
    log2size: u8,
    /// Index and wrap bit; nothing above bit `log2size` is ever set.
    value: u32,
}

impl QueueIndex {
    /// Index 0, wrap 0, of a queue of 2^`log2size` entries.
    pub fn new(log2size: u8) -> Result<Self, QueueError> {
        if log2size > MAX_LOG2SIZE {
            return Err(QueueError::Log2SizeTooLarge(log2size));
        }
        Ok(Self { log2size, value: 0 })
    }

    /// Takes the index and wrap bits of a raw PROD/CONS value and ignores
    /// every other bit (ERR, OVFLG, RES0 bits a guest may have set).
    pub fn from_raw(log2size: u8, raw: u32) -> Result<Self, QueueError> {
        let mut q = Self::new(log2size)?;
        q.value = raw & q.wrap_index_mask();
        Ok(q)
    }

    /// The index and wrap bits, to be written to (or merged into) a PROD or
    /// CONS register.
    pub fn raw(self) -> u32 {
        self.value
    }

    /// LOG2SIZE of the queue this index belongs to.
    pub fn log2size(self) -> u8 {
        self.log2size
    }

    /// Number of entries of the queue.
    pub fn capacity(self) -> u32 {
        1 << self.log2size
    }

    /// The entry index, `0..capacity()`.
    pub fn index(self) -> u32 {
        self.value & (self.capacity() - 1)
    }

    /// The wrap bit.
    pub fn wrap(self) -> bool {
        self.value & self.capacity() != 0
    }

    /// The next index, toggling the wrap bit when passing the end.
    #[must_use]
    pub fn inc(self) -> Self {
        self.advance(1)
    }

    /// `n` entries further (modulo twice the queue size, as the hardware
    /// counts).
    #[must_use]
    pub fn advance(self, n: u32) -> Self {
        Self {
            log2size: self.log2size,
            value: self.value.wrapping_add(n) & self.wrap_index_mask(),
        }
    }

    /// How many increments lead from `earlier` to `self`, modulo twice the
    /// queue size (`0..2*capacity()`).
    pub fn distance_from(self, earlier: Self) -> u32 {
        self.value.wrapping_sub(earlier.value) & self.wrap_index_mask()
    }

    fn wrap_index_mask(self) -> u32 {
        (2u32 << self.log2size) - 1
    }
}

impl fmt::Debug for QueueIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QueueIndex({}{}/{})",
            self.index(),
            if self.wrap() { "w" } else { "" },
            self.capacity()
        )
    }
}

/// The producer and consumer indices of one queue.
///
/// Which side this code owns depends on the queue: the driver produces
/// commands and consumes events; the vSMMU consumes a guest's commands and
/// produces into its event queue. Both indices can be set from raw register
/// values; nothing assumes they are consistent (a guest can write any PROD):
/// see [`Queue::is_consistent`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Queue {
    prod: QueueIndex,
    cons: QueueIndex,
}

impl Queue {
    /// An empty queue of 2^`log2size` entries (PROD = CONS = 0).
    pub fn new(log2size: u8) -> Result<Self, QueueError> {
        let zero = QueueIndex::new(log2size)?;
        Ok(Self {
            prod: zero,
            cons: zero,
        })
    }

    /// LOG2SIZE of the queue.
    pub fn log2size(&self) -> u8 {
        self.prod.log2size
    }

    /// Number of entries.
    pub fn capacity(&self) -> u32 {
        self.prod.capacity()
    }

    /// The producer index.
    pub fn prod(&self) -> QueueIndex {
        self.prod
    }

    /// The consumer index.
    pub fn cons(&self) -> QueueIndex {
        self.cons
    }

    /// Sets PROD from a raw register value (only index and wrap bits kept).
    pub fn set_prod_raw(&mut self, raw: u32) {
        self.prod.value = raw & self.prod.wrap_index_mask();
    }

    /// Sets CONS from a raw register value (only index and wrap bits kept).
    pub fn set_cons_raw(&mut self, raw: u32) {
        self.cons.value = raw & self.cons.wrap_index_mask();
    }

    /// Empty: both indices and wrap bits equal.
    pub fn is_empty(&self) -> bool {
        self.prod == self.cons
    }

    /// Full: indices equal, wrap bits different.
    pub fn is_full(&self) -> bool {
        self.prod.index() == self.cons.index() && self.prod.wrap() != self.cons.wrap()
    }

    /// Whether PROD is at most one lap ahead of CONS, as it always is when
    /// both sides follow the protocol. A guest that writes a PROD further
    /// ahead makes the queue inconsistent; [`pending`](Self::pending) then
    /// exceeds the capacity and [`space`](Self::space) is 0.
    pub fn is_consistent(&self) -> bool {
        self.prod.distance_from(self.cons) <= self.capacity()
    }

    /// Entries produced and not yet consumed (`0..=capacity()` for a
    /// consistent queue, up to `2*capacity()-1` otherwise).
    pub fn pending(&self) -> u32 {
        self.prod.distance_from(self.cons)
    }

    /// Free entries the producer may still write.
    pub fn space(&self) -> u32 {
        self.capacity().saturating_sub(self.pending())
    }

    /// Advances PROD by one entry. The caller checks [`is_full`](Self::is_full) first.
    pub fn inc_prod(&mut self) {
        self.prod = self.prod.inc();
    }

    /// Advances CONS by one entry. The caller checks [`is_empty`](Self::is_empty) first.
    pub fn inc_cons(&mut self) {
        self.cons = self.cons.inc();
    }
}

/// The value of SMMU_CMDQ_CONS (§6.3.28): the read index and the error code
/// of the command at that index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdqCons {
    /// RD: index and wrap, bits [19:0].
    pub rd: QueueIndex,
    /// ERR, bits [30:24]: raw CERROR code (0 = CERROR_NONE, 1 = CERROR_ILL,
    /// 2 = CERROR_ABT, 3 = CERROR_ATC_INV_SYNC).
    pub err: u8,
}

impl CmdqCons {
    /// Decodes a register value of a queue of 2^`log2size` entries.
    pub fn from_raw(log2size: u8, raw: u32) -> Result<Self, QueueError> {
        let reg = LocalRegisterCopy::<u32, CMDQ_CONS::Register>::new(raw);
        Ok(Self {
            rd: QueueIndex::from_raw(log2size, reg.read(CMDQ_CONS::RD))?,
            err: reg.read(CMDQ_CONS::ERR) as u8,
        })
    }

    /// The register value.
    pub fn raw(&self) -> u32 {
        (CMDQ_CONS::RD.val(self.rd.raw()) + CMDQ_CONS::ERR.val(u32::from(self.err))).value
    }
}

/// The value of SMMU_EVENTQ_PROD / SMMU_PRIQ_PROD (§6.3.95, §6.3.97).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvtqProd {
    /// WR: index and wrap, bits [19:0].
    pub wr: QueueIndex,
    /// OVFLG, bit [31]: toggled by the producer when records were lost.
    pub ovflg: bool,
}

impl EvtqProd {
    /// Decodes a register value of a queue of 2^`log2size` entries.
    pub fn from_raw(log2size: u8, raw: u32) -> Result<Self, QueueError> {
        let reg = LocalRegisterCopy::<u32, EVENTQ_PROD::Register>::new(raw);
        Ok(Self {
            wr: QueueIndex::from_raw(log2size, reg.read(EVENTQ_PROD::WR))?,
            ovflg: reg.is_set(EVENTQ_PROD::OVFLG),
        })
    }

    /// The register value.
    pub fn raw(&self) -> u32 {
        (EVENTQ_PROD::WR.val(self.wr.raw()) + EVENTQ_PROD::OVFLG.val(u32::from(self.ovflg))).value
    }
}

/// The value of SMMU_EVENTQ_CONS / SMMU_PRIQ_CONS (§6.3.96, §6.3.98).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvtqCons {
    /// RD: index and wrap, bits [19:0].
    pub rd: QueueIndex,
    /// OVACKFLG, bit [31]: the consumer's copy of OVFLG once it has seen
    /// the overflow.
    pub ovackflg: bool,
}

impl EvtqCons {
    /// Decodes a register value of a queue of 2^`log2size` entries.
    pub fn from_raw(log2size: u8, raw: u32) -> Result<Self, QueueError> {
        let reg = LocalRegisterCopy::<u32, EVENTQ_CONS::Register>::new(raw);
        Ok(Self {
            rd: QueueIndex::from_raw(log2size, reg.read(EVENTQ_CONS::RD))?,
            ovackflg: reg.is_set(EVENTQ_CONS::OVACKFLG),
        })
    }

    /// The register value.
    pub fn raw(&self) -> u32 {
        (EVENTQ_CONS::RD.val(self.rd.raw()) + EVENTQ_CONS::OVACKFLG.val(u32::from(self.ovackflg)))
            .value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn four_entry_queue_fills_and_drains() {
        let mut q = Queue::new(2).unwrap();
        assert!(q.is_empty() && !q.is_full());
        assert_eq!(q.space(), 4);
        for _ in 0..4 {
            q.inc_prod();
        }
        assert!(q.is_full() && !q.is_empty());
        assert_eq!(q.prod().index(), 0);
        assert!(q.prod().wrap());
        assert_eq!(q.space(), 0);
        q.inc_cons();
        assert!(!q.is_full());
        assert_eq!(q.pending(), 3);
    }

    #[test]
    fn one_entry_queue_only_toggles_wrap() {
        let mut q = Queue::new(0).unwrap();
        q.inc_prod();
        assert_eq!(q.prod().raw(), 1);
        assert_eq!(q.prod().index(), 0);
        assert!(q.is_full());
        q.inc_prod();
        assert_eq!(q.prod().raw(), 0);
    }

    #[test]
    fn raw_values_drop_err_ovflg_and_garbage() {
        // CMDQ_CONS with ERR = CERROR_ILL, index 5 of a 16-entry queue, and
        // RES0 bits set by a guest.
        let c = CmdqCons::from_raw(4, 0x8100_0000 | 0x00F0_0000 | 0x15).unwrap();
        assert_eq!(c.err, 1);
        assert_eq!(c.rd.index(), 5);
        assert!(c.rd.wrap());
        assert_eq!(c.raw(), 0x0100_0015);
        let p = EvtqProd::from_raw(3, 0x8000_0009).unwrap();
        assert!(p.ovflg);
        assert_eq!((p.wr.index(), p.wr.wrap()), (1, true));
        assert_eq!(p.raw(), 0x8000_0009);
        let c = EvtqCons::from_raw(3, 0xFFFF_FFFF).unwrap();
        assert!(c.ovackflg);
        assert_eq!(c.rd.raw(), 0xF);
        assert_eq!(QueueIndex::new(20), Err(QueueError::Log2SizeTooLarge(20)));
    }

    #[test]
    fn inconsistent_guest_prod_is_detected() {
        let mut q = Queue::new(3).unwrap();
        q.set_prod_raw(9 | 0xFFFF_0000); // 9 ahead of 0 in an 8-entry queue
        assert_eq!(q.prod().raw(), 9);
        assert!(!q.is_consistent());
        assert_eq!(q.space(), 0);
        assert!(!q.is_full() && !q.is_empty());
    }

    /// Operations applied both to a [`Queue`] and to the model: two free
    /// counters taken modulo 2 * size.
    #[derive(Clone, Debug)]
    enum Op {
        Produce(u32),
        Consume(u32),
        SetProdRaw(u32),
        SetConsRaw(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..40).prop_map(Op::Produce),
            (0u32..40).prop_map(Op::Consume),
            any::<u32>().prop_map(Op::SetProdRaw),
            any::<u32>().prop_map(Op::SetConsRaw),
        ]
    }

    proptest! {
        #[test]
        fn matches_counter_model(log2size in 0u8..=MAX_LOG2SIZE, ops in prop::collection::vec(op(), 0..64)) {
            let size = 1u64 << log2size;
            let modulus = 2 * size;
            let (mut p, mut c) = (0u64, 0u64);
            let mut q = Queue::new(log2size).unwrap();
            for op in ops {
                match op {
                    Op::Produce(n) => {
                        // Produce only into free space, as a well-behaved producer.
                        for _ in 0..n {
                            if q.is_full() { break; }
                            q.inc_prod();
                            p = (p + 1) % modulus;
                        }
                    }
                    Op::Consume(n) => {
                        for _ in 0..n {
                            if q.is_empty() { break; }
                            q.inc_cons();
                            c = (c + 1) % modulus;
                        }
                    }
                    Op::SetProdRaw(raw) => {
                        q.set_prod_raw(raw);
                        p = u64::from(raw) % modulus;
                    }
                    Op::SetConsRaw(raw) => {
                        q.set_cons_raw(raw);
                        c = u64::from(raw) % modulus;
                    }
                }
                let pending = (p + modulus - c) % modulus;
                prop_assert_eq!(u64::from(q.pending()), pending);
                prop_assert_eq!(q.is_empty(), pending == 0);
                prop_assert_eq!(q.is_full(), pending == size);
                prop_assert_eq!(q.is_consistent(), pending <= size);
                prop_assert_eq!(u64::from(q.space()), size.saturating_sub(pending));
                prop_assert_eq!(u64::from(q.prod().index()), p % size);
                prop_assert_eq!(q.prod().wrap(), p >= size);
                prop_assert_eq!(u64::from(q.cons().raw()), c);
            }
        }

        #[test]
        fn index_advance_is_modular(log2size in 0u8..=MAX_LOG2SIZE, start in any::<u32>(), n in any::<u32>()) {
            let i = QueueIndex::from_raw(log2size, start).unwrap();
            let modulus = 2u64 << log2size;
            let j = i.advance(n);
            prop_assert_eq!(u64::from(j.raw()), (u64::from(start) + u64::from(n)) % modulus);
            prop_assert_eq!(u64::from(j.distance_from(i)), u64::from(n) % modulus);
        }
    }
}
