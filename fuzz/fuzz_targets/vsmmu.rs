//! Fuzz target: a guest programming its virtual SMMUv3 (see
//! `smmu_fuzz::harness`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smmu_fuzz::harness::run(data);
});
