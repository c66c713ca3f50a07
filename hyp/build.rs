//! Links the EL2 image with our linker script (only for the bare-metal target).
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "none" {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../linker/hyp.ld");
        println!("cargo:rustc-link-arg-bins=-T{}", dir.display());
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
