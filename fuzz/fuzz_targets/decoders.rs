//! Fuzz target: the SMMU structure decoders on arbitrary bits (see
//! `smmu_fuzz::decoders`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    smmu_fuzz::decoders::run(data);
});
