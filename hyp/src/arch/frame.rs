//! The guest's registers as the exception vectors save them.

/// Registers saved by `aarch64/vectors.S` on a trap from a lower EL; the
/// layout is fixed by that file.
#[repr(C)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrapFrame {
    /// x0 to x30.
    pub x: [u64; 31],
    /// ELR_EL2: the return address.
    pub elr: u64,
    /// SPSR_EL2: the saved state.
    pub spsr: u64,
    _pad: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 272);

impl TrapFrame {
    /// All registers zero.
    pub const fn zeroed() -> Self {
        Self {
            x: [0; 31],
            elr: 0,
            spsr: 0,
            _pad: 0,
        }
    }

    /// General-purpose register `r` as an instruction reads it: 31 is XZR.
    pub fn reg(&self, r: u8) -> u64 {
        self.x.get(usize::from(r)).copied().unwrap_or(0)
    }

    /// Writes general-purpose register `r`; writes to XZR (31) vanish.
    pub fn set_reg(&mut self, r: u8, v: u64) {
        if let Some(x) = self.x.get_mut(usize::from(r)) {
            *x = v;
        }
    }
}
