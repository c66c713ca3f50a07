//! Coverage-guided fuzzing of everything a guest writes to its virtual
//! SMMUv3 (`smmu::vsmmu`), and of the decoders behind it.
//!
//! The fuzz targets in `fuzz_targets/` are one line each; the work is here,
//! so that the committed seeds can be built, checked and replayed by plain
//! `cargo test` without libFuzzer:
//! - [`harness`] (target `vsmmu`): a guest's register accesses, queue and
//!   table contents, and the hypervisor's command rounds, SYNC completions,
//!   STE reinstalls and event injections, decoded by [`ops`] from the
//!   fuzzer's bytes ([`bytes`]) and run against one vSMMU in a VM ([`vm`]);
//! - [`decoders`] (target `decoders`): commands, events, STEs, CDs and
//!   descriptors from arbitrary bits;
//! - [`oracle`]: the invariants both check;
//! - [`guest`] (target `guest`): every trap a guest's vCPU can cause, run
//!   through the hypervisor's own trap dispatcher and emulated devices
//!   (`hyp::harness`), which check the architecture's rules after each.
//!
//! `scripts/fuzz.sh` builds and runs the targets; `fuzz/README.md` says
//! how to run them longer and how to replay a crash.

pub mod bytes;
pub mod decoders;
pub mod guest;
pub mod harness;
pub mod ops;
pub mod oracle;
pub mod seeds;
pub mod vm;
