//! PSCI 1.1 and SMCCC 1.1 for guests, as a pure function of the call and the
//! VM's vCPU states (DEN 0022, DEN 0028). The caller carries the action out.

use core::ops::Range;
use smccc::arch::{SMCCC_ARCH_FEATURES, SMCCC_VERSION};
use smccc::psci::error::{
    ALREADY_ON, INVALID_ADDRESS, INVALID_PARAMETERS, NOT_SUPPORTED, ON_PENDING, SUCCESS,
};
use smccc::psci::{
    PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_32, PSCI_CPU_ON_64,
    PSCI_CPU_SUSPEND_32, PSCI_CPU_SUSPEND_64, PSCI_FEATURES, PSCI_MIGRATE_INFO_TYPE,
    PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_SYSTEM_RESET2_32, PSCI_SYSTEM_RESET2_64, PSCI_VERSION,
};
use smmu::addr::Ipa;

/// PSCI 1.1 / SMCCC 1.1 version words.
const VERSION_1_1: u64 = 0x0001_0001;
/// MIGRATE_INFO_TYPE: no Trusted OS, migration not required.
const NO_TRUSTED_OS: u64 = 2;
/// SYSTEM_RESET2 reset type SYSTEM_WARM_RESET (DEN 0022 §5.10.2): the
/// only architectural type; bit 31 set would name a vendor-specific one.
const SYSTEM_WARM_RESET: u64 = 0;

/// CPU_SUSPEND power_state bits a core-level request may set: StateID
/// [15:0] and StateType [16].
const POWER_STATE_CORE: u64 = 0x1_ffff;

/// Power state of a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuPower {
    /// Not running.
    Off,
    /// CPU_ON accepted, not yet running.
    OnPending,
    /// Running.
    On,
}

/// What the hypervisor must do for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciAction {
    /// Return this value in x0 and resume.
    Return(u64),
    /// Start vCPU `vcpu` at `entry` with x0 = `context`, then return SUCCESS.
    CpuOn {
        /// Target vCPU index.
        vcpu: usize,
        /// Entry point (IPA).
        entry: Ipa,
        /// Value for the target's x0.
        context: u64,
    },
    /// Stop the calling vCPU.
    CpuOff,
    /// Power the VM off.
    SystemOff,
    /// Reset the VM.
    SystemReset,
    /// CPU_SUSPEND: wait for an interrupt, then return SUCCESS.
    Suspend,
}

fn r(code: i32) -> PsciAction {
    PsciAction::Return(i64::from(code) as u64)
}

/// Handles a call with function ID `x[0]` and arguments `x[1..4]` from a VM
/// whose vCPUs are in `vcpus`; `ram` is the VM's RAM (entry points must lie
/// there). A CPU_ON that succeeds marks its target on-pending here, in the
/// same call that found it off: a caller that holds the states' lock for
/// the call gets exactly one success among CPU_ON calls racing for a vCPU,
/// and never marks a vCPU that started meanwhile on-pending again.
pub fn handle(x: [u64; 4], vcpus: &mut [VcpuPower], ram: Range<Ipa>) -> PsciAction {
    let fid = x[0] as u32;
    let is32 = fid & 0x4000_0000 == 0;
    let arg = |i: usize| if is32 { x[i] & 0xffff_ffff } else { x[i] };
    match fid {
        SMCCC_VERSION | PSCI_VERSION => PsciAction::Return(VERSION_1_1),
        SMCCC_ARCH_FEATURES => r(NOT_SUPPORTED),
        PSCI_FEATURES => match arg(1) as u32 {
            PSCI_VERSION
            | PSCI_CPU_SUSPEND_32
            | PSCI_CPU_SUSPEND_64
            | PSCI_CPU_OFF
            | PSCI_CPU_ON_32
            | PSCI_CPU_ON_64
            | PSCI_AFFINITY_INFO_32
            | PSCI_AFFINITY_INFO_64
            | PSCI_MIGRATE_INFO_TYPE
            | PSCI_SYSTEM_OFF
            | PSCI_SYSTEM_RESET
            | PSCI_SYSTEM_RESET2_32
            | PSCI_SYSTEM_RESET2_64
            | PSCI_FEATURES
            | SMCCC_VERSION => r(SUCCESS),
            _ => r(NOT_SUPPORTED),
        },
        // power_state in the original format (PSCI_FEATURES says so):
        // StateID [15:0] and StateType [16] (standby or powerdown; both
        // wait for an interrupt and return, as a powerdown may when a
        // wake-up is pending, so no context is lost); PowerLevel [25:24]
        // above the core and the reserved bits are invalid here, as on
        // QEMU's own PSCI.
        PSCI_CPU_SUSPEND_32 | PSCI_CPU_SUSPEND_64 => {
            if arg(1) & !POWER_STATE_CORE != 0 {
                r(INVALID_PARAMETERS)
            } else {
                PsciAction::Suspend
            }
        }
        PSCI_CPU_OFF => PsciAction::CpuOff,
        PSCI_CPU_ON_32 | PSCI_CPU_ON_64 => {
            let Some(vcpu) = vcpu_of(arg(1), vcpus.len()) else {
                return r(INVALID_PARAMETERS);
            };
            let entry = Ipa(arg(2));
            if !ram.contains(&entry) || !entry.is_aligned(4) {
                return r(INVALID_ADDRESS);
            }
            match vcpus[vcpu] {
                VcpuPower::Off => {
                    vcpus[vcpu] = VcpuPower::OnPending;
                    PsciAction::CpuOn {
                        vcpu,
                        entry,
                        context: arg(3),
                    }
                }
                VcpuPower::On => r(ALREADY_ON),
                VcpuPower::OnPending => r(ON_PENDING),
            }
        }
        PSCI_AFFINITY_INFO_32 | PSCI_AFFINITY_INFO_64 => {
            if arg(2) != 0 {
                return r(INVALID_PARAMETERS);
            }
            match vcpu_of(arg(1), vcpus.len()) {
                None => r(INVALID_PARAMETERS),
                Some(v) => PsciAction::Return(match vcpus[v] {
                    VcpuPower::On => 0,
                    VcpuPower::Off => 1,
                    VcpuPower::OnPending => 2,
                }),
            }
        }
        PSCI_MIGRATE_INFO_TYPE => PsciAction::Return(NO_TRUSTED_OS),
        PSCI_SYSTEM_OFF => PsciAction::SystemOff,
        PSCI_SYSTEM_RESET => PsciAction::SystemReset,
        // A warm reset restarts the VM as a cold one does (its memory is
        // scrubbed either way); no vendor-specific reset type exists.
        PSCI_SYSTEM_RESET2_32 | PSCI_SYSTEM_RESET2_64 => match arg(1) {
            SYSTEM_WARM_RESET => PsciAction::SystemReset,
            _ => r(INVALID_PARAMETERS),
        },
        _ => r(NOT_SUPPORTED),
    }
}

/// Whether function `fid` only answers (versions, features, AFFINITY_INFO,
/// MIGRATE_INFO_TYPE, anything unknown): [`handle`] returns
/// [`PsciAction::Return`] for it and changes no vCPU state, so it needs
/// nothing of the hypervisor but the answer.
pub fn is_query(fid: u32) -> bool {
    !matches!(
        fid,
        PSCI_CPU_ON_32
            | PSCI_CPU_ON_64
            | PSCI_CPU_OFF
            | PSCI_CPU_SUSPEND_32
            | PSCI_CPU_SUSPEND_64
            | PSCI_SYSTEM_OFF
            | PSCI_SYSTEM_RESET
            | PSCI_SYSTEM_RESET2_32
            | PSCI_SYSTEM_RESET2_64
    )
}

/// Whether [`handle`] reads the vCPUs' states for function `fid`
/// (AFFINITY_INFO, and the calls that change a vCPU's state); for every
/// other function it answers from the arguments alone, so the caller
/// needs no lock on the states and may pass none.
pub fn reads_vcpu_states(fid: u32) -> bool {
    matches!(fid, PSCI_AFFINITY_INFO_32 | PSCI_AFFINITY_INFO_64) || !is_query(fid)
}

/// vCPU index of a guest MPIDR (the hypervisor gives vCPU n affinity n in
/// Aff0); None for anything else.
pub fn vcpu_of(mpidr: u64, count: usize) -> Option<usize> {
    let aff = mpidr & 0xff_00ff_ffff;
    (aff < count as u64).then_some(aff as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use VcpuPower::*;

    const RAM: Range<Ipa> = Ipa(0x4000_0000)..Ipa(0x6000_0000);

    #[test]
    fn versions_and_features() {
        assert_eq!(
            handle([0x8400_0000, 0, 0, 0], &mut [On], RAM),
            PsciAction::Return(0x10001)
        );
        assert_eq!(
            handle([0x8000_0000, 0, 0, 0], &mut [On], RAM),
            PsciAction::Return(0x10001)
        );
        assert_eq!(
            handle([0x8400_000a, 0xc400_0003, 0, 0], &mut [On], RAM),
            r(0)
        );
        assert_eq!(
            handle([0x8400_000a, 0x8400_0012, 0, 0], &mut [On], RAM),
            r(0)
        );
        assert_eq!(
            handle([0x8400_000a, 0x8400_000e, 0, 0], &mut [On], RAM),
            r(-1)
        );
        assert_eq!(handle([0xdead, 0, 0, 0], &mut [On], RAM), r(-1));
    }

    #[test]
    fn cpu_on_checks_target_state_and_entry() {
        let mut v = [On, Off];
        assert_eq!(
            handle([0xc400_0003, 1, 0x4008_0000, 7], &mut v, RAM),
            PsciAction::CpuOn {
                vcpu: 1,
                entry: Ipa(0x4008_0000),
                context: 7
            }
        );
        // Marked on-pending by the call that started it: a second CPU_ON,
        // racing or not, gets ON_PENDING and starts nothing.
        assert_eq!(v, [On, OnPending]);
        assert_eq!(handle([0xc400_0003, 1, 0x4008_0000, 7], &mut v, RAM), r(-5));
        assert_eq!(v, [On, OnPending]);
        assert_eq!(handle([0xc400_0003, 0, 0x4008_0000, 0], &mut v, RAM), r(-4));
        assert_eq!(handle([0xc400_0003, 2, 0x4008_0000, 0], &mut v, RAM), r(-2));
        assert_eq!(handle([0xc400_0003, 1, 0x1000, 0], &mut v, RAM), r(-9));
        assert_eq!(
            handle([0xc400_0003, 1 << 8, 0x4008_0000, 0], &mut v, RAM),
            r(-2)
        );
    }

    #[test]
    fn affinity_info_reports_states() {
        let mut v = [On, Off, OnPending];
        let mut q = |c| handle([0xc400_0004, c, 0, 0], &mut v, RAM);
        assert_eq!(
            (q(0), q(1), q(2)),
            (
                PsciAction::Return(0),
                PsciAction::Return(1),
                PsciAction::Return(2)
            )
        );
        assert_eq!(q(3), r(-2));
    }

    #[test]
    fn cpu_suspend_takes_core_level_states_only() {
        for fid in [0x8400_0001, 0xc400_0001] {
            for state in [0, 0x1, 0x1_0000, 0x1_ffff] {
                let a = handle([fid, state, 0x4008_0000, 0], &mut [On], RAM);
                assert_eq!(a, PsciAction::Suspend, "{state:#x}");
            }
            // A cluster or system PowerLevel, reserved bits.
            for state in [0x100_0000, 0x300_0000, 0x2_0000, 0x8000_0000] {
                let a = handle([fid, state, 0x4008_0000, 0], &mut [On], RAM);
                assert_eq!(a, r(-2), "{state:#x}");
            }
        }
        // The 32-bit call sees only the low word.
        assert_eq!(
            handle([0x8400_0001, 1 << 32, 0, 0], &mut [On], RAM),
            PsciAction::Suspend
        );
    }

    #[test]
    fn queries_only_answer() {
        let mut v = [On, Off];
        for fid in [
            0x8400_0000u32,
            0x8000_0000,
            0x8000_0001,
            0x8400_000a,
            0xc400_0004,
            0x8400_0006,
            0xdead,
        ] {
            assert!(is_query(fid), "{fid:#x}");
            let a = handle([u64::from(fid), 1, 0, 0], &mut v, RAM);
            assert!(matches!(a, PsciAction::Return(_)), "{fid:#x}: {a:?}");
            assert_eq!(v, [On, Off], "{fid:#x}");
        }
        // Every query but AFFINITY_INFO answers the same without the
        // vCPUs' states.
        for fid in [
            0x8400_0000u32,
            0x8000_0000,
            0x8000_0001,
            0x8400_000a,
            0x8400_0006,
            0xdead,
        ] {
            assert!(!reads_vcpu_states(fid), "{fid:#x}");
            for arg in [0, 1, 0x8400_0003, 0xc400_0003, 0x8400_0000] {
                let x = [u64::from(fid), arg, 0, 0];
                let with = handle(x, &mut [On, OnPending], RAM);
                assert_eq!(handle(x, &mut [], RAM), with, "{fid:#x} {arg:#x}");
            }
        }
        assert!(reads_vcpu_states(0xc400_0004) && reads_vcpu_states(0x8400_0004));
        for fid in [
            0xc400_0003u32,
            0x8400_0002,
            0x8400_0001,
            0x8400_0008,
            0x8400_0009,
            0xc400_0012,
        ] {
            assert!(!is_query(fid), "{fid:#x}");
        }
    }

    #[test]
    fn power_calls() {
        assert_eq!(
            handle([0x8400_0008, 0, 0, 0], &mut [On], RAM),
            PsciAction::SystemOff
        );
        assert_eq!(
            handle([0x8400_0009, 0, 0, 0], &mut [On], RAM),
            PsciAction::SystemReset
        );
        assert_eq!(
            handle([0x8400_0002, 0, 0, 0], &mut [On], RAM),
            PsciAction::CpuOff
        );
        // SYSTEM_RESET2: a warm reset, 32- and 64-bit; any other type
        // (reserved architectural, or vendor-specific with bit 31) is an
        // invalid parameter and nothing happens.
        for fid in [0x8400_0012, 0xc400_0012] {
            assert_eq!(
                handle([fid, 0, 0, 0], &mut [On], RAM),
                PsciAction::SystemReset
            );
            assert_eq!(handle([fid, 1, 0, 0], &mut [On], RAM), r(-2));
            assert_eq!(handle([fid, 1 << 31, 0, 0], &mut [On], RAM), r(-2));
        }
    }
}
