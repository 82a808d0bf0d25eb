//! Starting throwaway servers for tests: free loopback ports, temporary
//! directories, readiness polling, and the CI rule for missing binaries.
#![allow(clippy::print_stderr)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// True when running under CI (`CI=true`): a missing server binary is then a
/// failure, not a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Finds `name` (a command on `PATH` or an absolute path). If it is missing,
/// panics under CI and otherwise prints a loud skip notice and returns `None`.
pub fn require_binary(name: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = find_binary(name) {
        return Some(p);
    }
    let msg = format!(
        "`{name}` not found: install the Debian package `{package}` (scripts/test does this on a fresh machine)"
    );
    if under_ci() {
        panic!("{msg} — required under CI=true");
    }
    eprintln!("\n!!! SKIPPING: {msg}\n");
    None
}

/// Where `name` is, if it exists.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.exists().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `ready` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        // Polling, not synchronising: `ready` is checked again after each
        // pause, and the deadline bounds the whole wait. (Blocking: this
        // runs while a server starts, outside any runtime.)
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Kills the process now and waits for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `chattr FLAG PATH` (`+i` makes the file or directory immutable, `-i`
/// undoes it); panics with its output if it fails.
pub fn chattr(flag: &str, path: &Path) {
    let out = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .expect("run chattr");
    assert!(
        out.status.success(),
        "chattr {flag} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Can this process make files immutable in `dir` (root, and a filesystem
/// with the attribute: not tmpfs)? If not, panics under CI and otherwise
/// prints a loud skip notice and returns false.
pub fn can_chattr(dir: &Path) -> bool {
    if require_binary("chattr", "e2fsprogs").is_none() {
        return false;
    }
    let probe = dir.join("chattr-probe");
    std::fs::write(&probe, b"x").expect("write a probe file");
    let ok = crate::postgres::is_root()
        && std::process::Command::new("chattr")
            .arg("+i")
            .arg(&probe)
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        chattr("-i", &probe);
    } else {
        let msg = format!(
            "cannot `chattr +i` in {} (needs root and ext4/xfs/btrfs)",
            dir.display()
        );
        if under_ci() {
            panic!("{msg} — required under CI=true");
        }
        eprintln!("\n!!! SKIPPING: {msg}\n");
    }
    let _ = std::fs::remove_file(&probe);
    ok
}
