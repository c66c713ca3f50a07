//! Why a guest's vCPU trapped to EL2: ESR_EL2 decoded into an [`Exit`]
//! (Arm ARM D24.2.40, "ESR_EL2": EC in bits [31:26], ISS in [24:0]).

use super::mmio::{self, DecodeError, MmioAccess};
use smmu::addr::Ipa;

/// Exception classes the hypervisor handles (ESR_EL2.EC).
pub mod ec {
    pub const WFX: u8 = 0x01;
    pub const HVC64: u8 = 0x16;
    pub const SMC64: u8 = 0x17;
    pub const SYSREG: u8 = 0x18;
    pub const IABT_LOWER: u8 = 0x20;
    pub const DABT_LOWER: u8 = 0x24;
}

/// A system register by its encoding (Op0, Op1, CRn, CRm, Op2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysReg {
    /// Op0.
    pub op0: u8,
    /// Op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// Op2.
    pub op2: u8,
}

impl SysReg {
    /// ICC_SGI1R_EL1: a guest sends an SGI (trapped: the virtual CPU
    /// interface cannot reach other vCPUs).
    pub const ICC_SGI1R_EL1: Self = Self::new(3, 0, 12, 11, 5);
    /// ICC_SGI0R_EL1: a Group 0 SGI (trapped likewise).
    pub const ICC_SGI0R_EL1: Self = Self::new(3, 0, 12, 11, 7);
    /// ICC_ASGI1R_EL1: a Group 1 SGI for the other Security state (trapped
    /// likewise).
    pub const ICC_ASGI1R_EL1: Self = Self::new(3, 0, 12, 11, 6);

    /// The register `S<op0>_<op1>_C<crn>_C<crm>_<op2>`.
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        Self {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }
}

/// A trapped MSR/MRS (EC 0x18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    /// Which register.
    pub reg: SysReg,
    /// The general-purpose register transferred (31: XZR).
    pub rt: u8,
    /// MRS (a read) rather than MSR.
    pub read: bool,
}

/// What a trap asks of the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// WFI or WFE (EC 0x01); neither is trapped (HCR_EL2.TWI = TWE = 0).
    WaitForInterrupt,
    /// HVC from AArch64 (EC 0x16): a hypercall; the return address is
    /// already past the instruction.
    Hvc {
        /// The instruction's immediate.
        imm: u16,
    },
    /// SMC from AArch64 (EC 0x17, trapped by HCR_EL2.TSC): ELR points at
    /// the instruction itself.
    Smc {
        /// The instruction's immediate.
        imm: u16,
    },
    /// A trapped system register access (EC 0x18).
    SysReg(SysRegAccess),
    /// An instruction fetch from an IPA the VM has no memory at (EC 0x20).
    InstructionAbort {
        /// The faulting IPA's page (HPFAR_EL2).
        ipa_page: Ipa,
    },
    /// A data access the stage 2 did not map (EC 0x24): an emulatable
    /// access, or why it is not one.
    DataAbort(Result<MmioAccess, DecodeError>),
    /// Anything else: the hypervisor does not emulate it.
    Unknown {
        /// ESR_EL2.EC.
        ec: u8,
    },
}

/// Decodes a trap from ESR_EL2, HPFAR_EL2 and FAR_EL2.
pub fn decode(esr: u64, hpfar: u64, far: u64) -> Exit {
    let class = ((esr >> 26) & 0x3f) as u8;
    let iss = esr & 0x1ff_ffff;
    match class {
        ec::WFX => Exit::WaitForInterrupt,
        ec::HVC64 => Exit::Hvc { imm: iss as u16 },
        ec::SMC64 => Exit::Smc { imm: iss as u16 },
        ec::SYSREG => Exit::SysReg(SysRegAccess {
            reg: SysReg::new(
                ((iss >> 20) & 0x3) as u8,
                ((iss >> 14) & 0x7) as u8,
                ((iss >> 10) & 0xf) as u8,
                ((iss >> 1) & 0xf) as u8,
                ((iss >> 17) & 0x7) as u8,
            ),
            rt: ((iss >> 5) & 0x1f) as u8,
            read: iss & 1 == 1,
        }),
        ec::IABT_LOWER => Exit::InstructionAbort {
            ipa_page: Ipa(((hpfar >> 4) & 0xff_ffff_ffff) << 12),
        },
        ec::DABT_LOWER => Exit::DataAbort(mmio::decode(esr, hpfar, far)),
        ec => Exit::Unknown { ec },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_icc_sgi1r_el1_x3() {
        // MSR ICC_SGI1R_EL1, x3: Op0=3 Op2=5 Op1=0 CRn=12 Rt=3 CRm=11 write.
        let iss = (3 << 20) | (5 << 17) | (12 << 10) | (3 << 5) | (11 << 1);
        let exit = decode((0x18 << 26) | (1 << 25) | iss, 0, 0);
        assert_eq!(
            exit,
            Exit::SysReg(SysRegAccess {
                reg: SysReg::ICC_SGI1R_EL1,
                rt: 3,
                read: false
            })
        );
    }

    #[test]
    fn hypercalls_keep_their_immediate() {
        assert_eq!(decode((0x16 << 26) | 0x42, 0, 0), Exit::Hvc { imm: 0x42 });
        assert_eq!(decode(0x17 << 26, 0, 0), Exit::Smc { imm: 0 });
        assert_eq!(decode(0x01 << 26, 0, 0), Exit::WaitForInterrupt);
    }

    #[test]
    fn aborts_carry_the_ipa() {
        let hpfar = (0x5100_0000u64 >> 12) << 4;
        assert_eq!(
            decode(0x20 << 26, hpfar, 0xdead),
            Exit::InstructionAbort {
                ipa_page: Ipa(0x5100_0000)
            }
        );
        let Exit::DataAbort(Ok(a)) = decode((0x24 << 26) | (1 << 24) | (2 << 22), hpfar, 0x44)
        else {
            panic!("not an emulatable data abort");
        };
        assert_eq!((a.ipa, a.size), (Ipa(0x5100_0044), 4));
        assert_eq!(decode(0x07 << 26, 0, 0), Exit::Unknown { ec: 0x07 });
    }
}
