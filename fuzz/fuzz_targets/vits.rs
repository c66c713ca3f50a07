//! Fuzz target: a guest and its devices driving the virtual GICv3 ITS (see
//! `smmu_fuzz::vits`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smmu_fuzz::vits::run(data);
});
