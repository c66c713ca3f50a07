//! `hv-run` on a terminal: the Linux guest runs its checks, prints its
//! verdict and gives the console a shell; `poweroff` typed there ends the
//! run cleanly. Boots the real `linux` scenario (needs `./hv build` and the
//! Linux guest, as the QEMU scenario tests do), on a terminal that
//! util-linux's `script` provides.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the guest may take to reach each prompt: boot under TCG on a
/// loaded host takes well under a minute; this bounds a hang, not speed.
const WAIT: Duration = Duration::from_secs(600);

/// Waits until `out` holds `text`; panics with the console after [`WAIT`].
fn wait_for(out: &Mutex<Vec<u8>>, text: &str) {
    let start = Instant::now();
    loop {
        let console = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        if console.contains(text) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "no {text:?} on the console:\n{console}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the run if the test ends early (QEMU gets SIGHUP when the
/// terminal goes).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn on_a_terminal_the_guest_ends_in_a_shell_that_poweroff_ends() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let hv_run = env!("CARGO_BIN_EXE_hv-run");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &format!("{hv_run} linux"), "/dev/null"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("util-linux `script` gives hv-run a terminal");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    let out = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let out = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    wait_for(&out, "init: verdict: all 1 checks passed");
    wait_for(&out, "'poweroff' ends the run");
    // The shell runs commands typed on the console...
    stdin.write_all(b"echo shell-$((6 * 7))\r").unwrap();
    wait_for(&out, "shell-42");
    // ... and poweroff ends the run.
    stdin.write_all(b"poweroff\r").unwrap();
    let status = child.0.wait().unwrap();
    reader.join().unwrap();
    let console = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    assert_eq!(status.code(), Some(0), "{console}");
    assert!(
        console.contains("all VMs have stopped (all powered off cleanly)"),
        "{console}"
    );
}
