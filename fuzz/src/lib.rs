//! Coverage-guided fuzzing of everything a guest writes to its virtual
//! SMMUv3 (`smmu::vsmmu`) and its virtual GICv3 ITS (`hyp::vits`), of the
//! decoders behind the vSMMU, and of the hypervisor's trap path.
//!
//! The fuzz targets in `fuzz_targets/` are one line each; the work is here,
//! so that the committed seeds can be built, checked and replayed by plain
//! `cargo test` without libFuzzer:
//! - [`harness`] (target `vsmmu`): the hypervisor's vSMMU engine
//!   (`smmu::vsmmu::VsmmuEngine`) over the fake physical SMMU, driven by a
//!   guest's register accesses, queue and table contents, physical events
//!   and physical failures, decoded by [`ops`] from the fuzzer's bytes
//!   ([`bytes`]), for one VM ([`vm`]);
//! - [`decoders`] (target `decoders`): commands, events, STEs, CDs and
//!   descriptors from arbitrary bits;
//! - [`oracle`]: the rules both check, stated independently of the code
//!   under test;
//! - [`guest`] (target `guest`): every trap a guest's vCPU can cause, run
//!   through the hypervisor's own trap dispatcher and emulated devices
//!   (`hyp::harness`), which check the architecture's rules after each;
//! - [`vits`] (target `vits`): a VM's virtual GICv3 ITS and the LPIs it
//!   maps, driven by its guest's registers, command queue and tables and
//!   by its devices' MSIs, over a recording physical side.
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
pub mod vits;
pub mod vm;
