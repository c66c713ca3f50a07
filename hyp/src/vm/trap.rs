//! The synchronous trap handler: what a vCPU's exit means and what the
//! hypervisor does about it. WFI sleeps, HVC/SMC go to PSCI/SMCCC, a
//! trapped system register is emulated (SGIs, ID registers) or undefined, a
//! data abort is
//! routed by the VM's MMIO bus to the device that claims its address (or
//! gets an external abort), anything else an undefined-instruction
//! exception.

use super::bus::{Access, MmioDevice};
use super::exception::{
    inject_data_abort, inject_instruction_abort, inject_undef, skip_instruction,
};
use super::exit::{self, Exit, SysReg, SysRegAccess};
use super::mmio::MmioAccess;
use super::vm::{AccessContext, End, Machine, TrapKind, Vm, VmState};
use crate::arch::{self, TrapFrame};
use crate::vdev::idregs::IdReg;
use crate::vdev::psci::{self, PsciAction, VcpuPower};
use alloc::vec::Vec;
use core::cell::RefCell;
use scenario::guest_layout as layout;

/// What the vCPU does after its trap was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Return to the guest (after its list registers are refilled).
    Resume,
    /// This vCPU is off (CPU_OFF) or its VM stopped: the physical CPU
    /// parks until it is given a vCPU to start.
    Park,
}

/// The current synchronous trap, decoded from the syndrome registers
/// (ESR_EL2, HPFAR_EL2, FAR_EL2): once per exit, for every handler below.
pub fn current_exit() -> Exit {
    exit::decode(arch::guest::esr(), arch::guest::hpfar(), arch::guest::far())
}

/// Handles a synchronous trap of `vm`'s vCPU `vcpu`, whose registers are in
/// `frame`: `exit` ([`current_exit`]). FAR_EL2 is read again only where a
/// fault is injected, off the emulated-access path.
pub fn handle_sync(
    vm: &Vm,
    vcpu: usize,
    frame: &mut TrapFrame,
    exit: Exit,
    m: &dyn Machine,
) -> Flow {
    let flow = match exit {
        Exit::WaitForInterrupt => {
            wait_for_interrupt(vm, vcpu, m);
            skip_instruction(frame);
            Flow::Resume
        }
        Exit::Hvc { .. } => hypercall(vm, vcpu, frame, m),
        Exit::Smc { .. } => {
            // Trapped by TSC: ELR is the SMC itself. SMCCC over SMC is
            // answered like HVC.
            skip_instruction(frame);
            hypercall(vm, vcpu, frame, m)
        }
        Exit::SysReg(access) => {
            if system_register(vm, vcpu, frame, access, m) {
                skip_instruction(frame);
            } else {
                inject_undef(frame);
            }
            Flow::Resume
        }
        Exit::DataAbort(Ok(access)) => {
            data_abort(vm, vcpu, frame, &access, m);
            Flow::Resume
        }
        Exit::DataAbort(Err(why)) => {
            let far = arch::guest::far();
            let ipa = (arch::guest::hpfar() >> 4 << 12) | (far & 0xfff);
            vm.report(
                vcpu,
                frame.elr,
                format_args!(
                    "access ({why:?}) at IPA {ipa:#x} outside its memory and devices: external abort injected"
                ),
            );
            let write = arch::guest::esr() & (1 << 6) != 0;
            inject_data_abort(frame, far, write);
            Flow::Resume
        }
        Exit::InstructionAbort { ipa_page } => {
            vm.report(
                vcpu,
                frame.elr,
                format_args!(
                    "instruction fetch from IPA {ipa_page:#x} outside its memory and devices: external abort injected"
                ),
            );
            inject_instruction_abort(frame, arch::guest::far());
            Flow::Resume
        }
        Exit::Unknown { ec } => {
            vm.report(
                vcpu,
                frame.elr,
                format_args!("unhandled trap EC {ec:#x}: undefined instruction injected"),
            );
            inject_undef(frame);
            Flow::Resume
        }
    };
    if vm.is_running() {
        flow
    } else {
        Flow::Park
    }
}

/// The fast path of a hypercall that only answers ([`psci::is_query`]):
/// answered here, before anything else an exit does (no list registers
/// read or written, no lines sampled, and no lock but the vCPU states'
/// for AFFINITY_INFO), and true; false for every other
/// trap, which takes the full path. The VM must be running (a stopping
/// VM's vCPUs take the full path, which parks them).
pub fn quick_hypercall(vm: &Vm, frame: &mut TrapFrame, exit: &Exit) -> bool {
    if !matches!(exit, Exit::Hvc { .. }) || !psci::is_query(frame.x[0] as u32) {
        return false;
    }
    let x = [frame.x[0], frame.x[1], frame.x[2], frame.x[3]];
    let action = if psci::reads_vcpu_states(x[0] as u32) {
        psci::handle(x, &mut vm.power.lock(), vm.ram.ipa_range())
    } else {
        // A version or a feature: no vCPU's state, no lock.
        psci::handle(x, &mut [], vm.ram.ipa_range())
    };
    match action {
        PsciAction::Return(v) => {
            frame.x[0] = v;
            true
        }
        _ => false,
    }
}

/// An SError taken from the guest (an asynchronous external abort: the
/// system may have lost state on the VM's behalf). Nothing says which
/// access caused it or that the guest can recover, so the VM stops as
/// crashed, its devices first, and its memory is not reused; the other
/// VMs run on.
pub fn handle_serror(vm: &Vm, vcpu: usize, m: &dyn Machine) -> Flow {
    log::error!(
        "VM {}: vCPU {vcpu}: SError (ESR {:#x}): stopping the VM",
        vm.name,
        arch::guest::esr()
    );
    vm.stop(VmState::Crashed, Some(vcpu), m);
    Flow::Park
}

/// What kind of trap a synchronous exception is, for the VM's figures.
pub fn kind(exit: &Exit) -> TrapKind {
    match exit {
        Exit::DataAbort(_) => TrapKind::Mmio,
        Exit::SysReg(_) => TrapKind::SystemRegister,
        Exit::Hvc { .. } | Exit::Smc { .. } => TrapKind::Hypercall,
        _ => TrapKind::Other,
    }
}

/// A trapped access to the VM's vUART (a booting guest's console output
/// is most of its exits), carried out and its instruction completed
/// without the vGIC: returns whether the UART's interrupt level changed,
/// which the caller hands the vGIC ([`Vm::update_uart_irq`]) once it has
/// folded in the vCPU's list registers. `None`, with nothing done, for
/// any other exit.
pub fn console_access(
    vm: &Vm,
    frame: &mut TrapFrame,
    exit: &Exit,
    m: &dyn Machine,
) -> Option<bool> {
    let Exit::DataAbort(Ok(a)) = exit else {
        return None;
    };
    let end = a.ipa.checked_add(u64::from(a.size))?;
    if a.ipa.raw() < layout::UART.base || end.raw() > layout::UART.end() {
        return None;
    }
    let access = Access {
        offset: a.ipa.raw() - layout::UART.base,
        size: a.size,
    };
    let write = a.write.then(|| a.store_value(frame.reg(a.reg)));
    let (value, changed) =
        super::devices::uart_access(&vm.uart, access, write, |line| m.console_line(vm, line));
    if !a.write {
        frame.set_reg(a.reg, a.load_value(value));
    }
    skip_instruction(frame);
    Some(changed)
}

/// A trapped access to a device that leaves the vGIC alone
/// ([`MmioDevice::leaves_vgic_alone`]: the vSMMU's registers, whose
/// CMDQ_PROD write runs the guest's command queue here, and the counters
/// page), carried out without the vGIC. Returns the edges the access
/// raised, which the caller raises once it has folded in the vCPU's list
/// registers: most accesses raise none, and then the exit needs neither
/// the fold nor the refill. `None`, with nothing done, for any other exit.
pub fn quick_mmio(
    vm: &Vm,
    vcpu: usize,
    frame: &mut TrapFrame,
    exit: &Exit,
    m: &dyn Machine,
) -> Option<Vec<u32>> {
    let Exit::DataAbort(Ok(a)) = exit else {
        return None;
    };
    let (device, offset) = vm.bus.find(a.ipa, a.size)?;
    if !device.leaves_vgic_alone() {
        return None;
    }
    let ctx = AccessContext {
        vm,
        vcpu,
        machine: m,
        deferred: Some(RefCell::new(Vec::new())),
    };
    access_device(device, &ctx, offset, a, frame);
    ctx.deferred.map(RefCell::into_inner)
}

/// WFI (HCR_EL2.TWI is never set, so only if a CPU traps it anyway): sleep
/// until a physical interrupt (the vtimer, a kick), unless the guest
/// already has an interrupt to take: one the model holds, or one already
/// in a list register (a physical WFI at EL2 does not wake for those).
fn wait_for_interrupt(vm: &Vm, vcpu: usize, m: &dyn Machine) {
    let fx = crate::vdev::vgic::hw::flush(&mut vm.vgic.lock(), vcpu);
    vm.apply(fx, m);
    if !crate::vdev::vgic::hw::lr_pending() && !vm.vgic.lock().has_pending(vcpu) {
        arch::wait_for_interrupt();
    }
}

/// A data access to an address the VM's stage 2 does not map: the device
/// on its bus that claims the whole access emulates it, else the guest gets
/// a synchronous external abort.
fn data_abort(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, a: &MmioAccess, m: &dyn Machine) {
    let Some((device, offset)) = vm.bus.find(a.ipa, a.size) else {
        let rw = if a.write { "write" } else { "read" };
        vm.report(
            vcpu,
            frame.elr,
            format_args!(
                "{}-byte {rw} at IPA {:#x} outside its memory and devices: external abort injected",
                a.size, a.ipa
            ),
        );
        inject_data_abort(frame, arch::guest::far(), a.write);
        return;
    };
    let ctx = AccessContext {
        vm,
        vcpu,
        machine: m,
        deferred: None,
    };
    access_device(device, &ctx, offset, a, frame);
}

/// Carries out data access `a` on `device` at `offset` and completes the
/// instruction: a write stores the register's value, a read loads the
/// device's answer into it.
fn access_device(
    device: &dyn MmioDevice,
    ctx: &AccessContext<'_>,
    offset: u64,
    a: &MmioAccess,
    frame: &mut TrapFrame,
) {
    let access = Access {
        offset,
        size: a.size,
    };
    if a.write {
        device.write(ctx, access, a.store_value(frame.reg(a.reg)));
    } else {
        let raw = device.read(ctx, access);
        frame.set_reg(a.reg, a.load_value(raw));
    }
    skip_instruction(frame);
}

/// A trapped MSR/MRS; returns whether it was emulated. ICC_SGI1R_EL1 and
/// ICC_SGI0R_EL1 writes send SGIs through the vGIC, ICC_ASGI1R_EL1 writes
/// are ignored (a VM has no Secure state to send them to), the ID
/// registers read as `vdev::idregs` says. Anything else is a register the
/// VM does not have (the PMU's, trace, RAS, MTE, ...: their features are
/// hidden) or a write to a read-only one: reported, and the caller injects
/// an undefined-instruction exception, as a CPU without the register would
/// take.
fn system_register(
    vm: &Vm,
    vcpu: usize,
    frame: &mut TrapFrame,
    access: SysRegAccess,
    m: &dyn Machine,
) -> bool {
    let SysReg {
        op0,
        op1,
        crn,
        crm,
        op2,
    } = access.reg;
    if !access.read {
        let sgi = match access.reg {
            SysReg::ICC_SGI1R_EL1 => Some(true),
            SysReg::ICC_SGI0R_EL1 => Some(false),
            SysReg::ICC_ASGI1R_EL1 => return true,
            _ => None,
        };
        if let Some(group1) = sgi {
            let value = frame.reg(access.rt);
            let fx = if group1 {
                vm.vgic.lock().send_sgi(vcpu, value)
            } else {
                vm.vgic.lock().send_sgi0(vcpu, value)
            };
            vm.apply(fx, m);
            return true;
        }
    }
    if let Some(id) = IdReg::of(op0, op1, crn, crm, op2).filter(|_| access.read) {
        let value = id.guest_view(arch::guest::id_register(crm, op2));
        frame.set_reg(access.rt, value);
        return true;
    }
    let rw = if access.read { "read" } else { "write" };
    vm.report(
        vcpu,
        frame.elr,
        format_args!(
            "{rw} of system register S{op0}_{op1}_C{crn}_C{crm}_{op2}, which it does not have: \
             undefined instruction injected"
        ),
    );
    false
}

/// An HVC (or trapped SMC): PSCI and SMCCC, the only hypercalls there are.
fn hypercall(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, m: &dyn Machine) -> Flow {
    let x = [frame.x[0], frame.x[1], frame.x[2], frame.x[3]];
    // One lock for the decision and the state it records (a CPU_ON marks
    // its target on-pending in `psci::handle`).
    let action = psci::handle(x, &mut vm.power.lock(), vm.ram.ipa_range());
    match action {
        PsciAction::Return(v) => frame.x[0] = v,
        PsciAction::CpuOn {
            vcpu: target,
            entry,
            context,
        } => {
            m.start_vcpu(vm, target, entry, context);
            frame.x[0] = 0;
        }
        PsciAction::CpuOff => {
            vm.power.lock()[vcpu] = VcpuPower::Off;
            return Flow::Park;
        }
        PsciAction::Suspend => {
            arch::wait_for_interrupt();
            frame.x[0] = 0;
        }
        // The VM stops or restarts; either way this vCPU's run ends here
        // (a restart starts vCPU 0 of the new incarnation afresh).
        PsciAction::SystemOff => {
            vm.end(vcpu, End::PowerOff, m);
            return Flow::Park;
        }
        PsciAction::SystemReset => {
            vm.end(vcpu, End::Reset, m);
            return Flow::Park;
        }
    }
    Flow::Resume
}
