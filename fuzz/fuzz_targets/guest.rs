//! Fuzz target: every trap a guest's vCPU can cause, through the
//! hypervisor's trap dispatcher (see `smmu_fuzz::guest`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smmu_fuzz::guest::run(data);
});
