//! The EL2 image: everything lives in the `hyp` library (its entry point is
//! `_start` in `arch/aarch64/entry.S`); this binary only links it with
//! `linker/hyp.ld`.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
use hyp as _;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hyp is an EL2 binary: build and run it with ./hv run");
}
