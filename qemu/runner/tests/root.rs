//! `hv-run` works on the checkout it runs in, not the one it was built in.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn hv_run_uses_the_checkout_it_runs_in() {
    // A checkout of its own (under target/, nothing in /tmp) with one
    // scenario the real repository does not have.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("copied-checkout");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("guests/scenarios")).unwrap();
    fs::write(dir.join("hv"), "").unwrap();
    fs::write(dir.join("guests/scenarios/only-here.toml"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hv-run"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("scenarios: only-here"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}
