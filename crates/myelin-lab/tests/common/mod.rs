//! What every lab test needs: a unique lab name, root, and a teardown guard.
#![allow(dead_code)] // each test file uses its own subset

use myelin_lab::Lab;

/// A lab name unique to this test process and test.
pub fn lab_name(tag: &str) -> String {
    format!("{tag}{:x}", std::process::id() & 0xff_ffff)
}

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests build network namespaces and need root (run them as root, as CI does)"
    );
}

/// Tears the lab down even when the test panics.
pub struct Teardown(pub String);

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Err(e) = Lab::down_by_name(&self.0) {
            eprintln!("teardown of lab {}: {e}", self.0);
        }
    }
}

/// Poll `f` until it holds, or panic after `timeout` saying what did not happen.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
