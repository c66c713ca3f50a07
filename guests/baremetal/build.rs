//! Links the guest image with its own linker script, as a position-independent
//! executable that relocates itself at boot (only for the bare-metal target).
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "none" {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("linker/guest.ld");
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        // The code is compiled with the target's static relocation model
        // (PC-relative adrp/add); absolute pointers in data become
        // R_AARCH64_RELATIVE entries that entry.S applies, so the image runs
        // wherever it is loaded. `notext` allows them in read-only sections
        // (the MMU stays off: all memory is writable).
        println!("cargo:rustc-link-arg-bins=--pie");
        println!("cargo:rustc-link-arg-bins=-znotext");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
        println!("cargo:rerun-if-changed={}", script.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/entry.S");
    println!("cargo:rerun-if-changed=src/vectors.S");
}
