//! The machine's PL031 real-time clock (ARM DDI 0224), read once at boot
//! for the wall clock the guests' clocks count from (`crate::wallclock`).
//! Only the hypervisor reaches it; guests get a PL031 of their own
//! (`vdev::rtc`).

use super::frame::Frame;
use crate::platform::Region;

/// RTCDR: the counter, in seconds.
const RTCDR: u64 = 0x000;

/// The seconds the PL031 at `regs` has counted (RTCDR).
pub fn seconds(regs: &Region) -> u32 {
    // `regs` is the machine's PL031 as the device tree gives it (at least
    // its 4 KiB of registers, `Platform::rtc`), mapped as a device at EL2
    // by the boot for the hypervisor's lifetime.
    // SAFETY: a PL031's register frame, mapped for good, reached by nothing
    // but this read of RTCDR, which has no side effect.
    let frame = unsafe { Frame::new(regs.base, regs.size as usize) };
    frame.r32(RTCDR)
}
