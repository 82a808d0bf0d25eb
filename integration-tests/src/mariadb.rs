//! Throwaway MariaDB servers for tests.
//!
//! `mariadb-install-db` makes a data directory in a temporary directory, then
//! `mariadbd` (Debian package `mariadb-server`, `/usr/sbin/mariadbd`) runs
//! from it as the current user, listening on 127.0.0.1 on a free port with
//! its socket, pid file and error log in the same directory. A database
//! `masse` and a user `masse` (password `masse-pw`) that owns it are created.
//! The server is killed and its directory deleted on drop.
#![allow(clippy::print_stderr)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::postgres::{is_root, tail};
use crate::server::{KillOnDrop, find_binary, free_port, require_binary, wait_until};

/// How long the server may take to accept connections.
const READY: Duration = Duration::from_secs(30);

/// The database the tests use.
pub const DATABASE: &str = "masse";
/// The user the tests connect as.
pub const USER: &str = "masse";
/// That user's password.
pub const PASSWORD: &str = "masse-pw";

/// A MariaDB server in a temporary directory, killed and deleted on drop.
#[derive(Debug)]
pub struct MariaDbServer {
    mariadbd: PathBuf,
    client: PathBuf,
    dir: TempDir,
    port: u16,
    process: Option<KillOnDrop>,
    /// MariaDB's default durability (the redo log flushed at every commit).
    durable: bool,
}

impl MariaDbServer {
    /// Installs a data directory, starts the server and creates the `masse`
    /// database and user. `None` (after a loud notice) if the binaries are
    /// missing and not under CI; panics, with the server's log, if it cannot start.
    pub fn start() -> Option<MariaDbServer> {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start), but with MariaDB's defaults for
    /// durability (`innodb_flush_log_at_trx_commit=1`: every commit flushed
    /// to the disk) and memory (a 128 MiB buffer pool, where the tests use
    /// 64 MiB), as in production. For benches that quote rates.
    pub fn start_durable() -> Option<MariaDbServer> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Option<MariaDbServer> {
        let mariadbd = binary("mariadbd")?;
        binary("mariadb-install-db")?;
        let client = binary("mariadb")?;
        let dir = tempfile::Builder::new()
            .prefix("masse-mariadb-")
            .tempdir()
            .expect("create a temporary directory");
        // A temporary directory of its own: concurrent installs sharing /tmp
        // trip over each other's temporary tables.
        std::fs::create_dir(dir.path().join("tmp")).expect("create the server's tmpdir");
        let mut server = MariaDbServer {
            mariadbd,
            client,
            dir,
            port: 0,
            process: None,
            durable,
        };
        server.install();
        let mut last = String::new();
        for _ in 0..3 {
            server.port = free_port();
            match server.try_start() {
                Ok(()) => {
                    server.provision();
                    return Some(server);
                }
                Err(e) => last = e,
            }
        }
        panic!("MariaDB did not start: {last}");
    }

    /// A new data directory with only the system tables (`mariadb-install-db`).
    fn install(&self) {
        let install = binary("mariadb-install-db").expect("mariadb-install-db is installed");
        let data = self.dir.path().join("data");
        let tmp = self.dir.path().join("tmp");
        let mut cmd = Command::new(&install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if is_root() {
            // mariadbd refuses root unless told so.
            cmd.arg("--user=root");
        }
        let out = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", install.display()));
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates the `masse` database and user, as a deployment provisions them.
    fn provision(&self) {
        self.admin(&format!(
            "CREATE DATABASE {DATABASE}; \
             CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON {DATABASE}.* TO '{USER}'@'%';"
        ));
    }

    /// `mysql://masse:masse-pw@127.0.0.1:<port>/masse`.
    pub fn url(&self) -> String {
        format!(
            "mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: every connection drops, as in a crash);
    /// [`restart`](Self::restart) recovers.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.try_start() {
            panic!("MariaDB did not restart: {e}");
        }
    }

    /// Starts the server again on the same port with an empty data
    /// directory, as a server whose storage was lost comes back after its
    /// deployment provisioned it again: the `masse` database and user are
    /// there, none of the tables.
    pub fn restart_empty(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.dir.path().join("data")).expect("remove the data directory");
        self.install();
        if let Err(e) = self.try_start() {
            panic!("MariaDB did not restart empty: {e}");
        }
        self.provision();
    }

    /// Runs SQL as root over the Unix socket; panics if it fails.
    pub fn admin(&self, sql: &str) {
        let out = self.client_command(sql);
        assert!(
            out.status.success(),
            "mariadb -e {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs SQL as root in the `masse` database and returns its output
    /// (tab-separated, no column names); panics if it fails.
    pub fn query(&self, sql: &str) -> String {
        let out = self.client_command(&format!("USE {DATABASE}; {sql}"));
        assert!(
            out.status.success(),
            "mariadb -e {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A `mariadb` client command connected as root over the Unix socket,
    /// to which the caller adds arguments (`-e SQL`) and runs (perhaps in
    /// the background, to hold a lock for a while).
    pub fn client(&self) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-N", "-B"])
            .stdin(Stdio::null());
        cmd
    }

    /// The last lines of the server's error log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("log"), 40)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn client_command(&self, sql: &str) -> std::process::Output {
        Command::new(&self.client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.client.display()))
    }

    fn try_start(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.mariadbd);
        // --no-defaults must come first.
        cmd.arg("--no-defaults");
        if is_root() {
            cmd.arg("--user=root");
        }
        if !self.durable {
            // The redo log is written at each commit, flushed once a second;
            // a small buffer pool, for several servers at once in CI.
            cmd.args([
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=64M",
            ]);
        }
        let child = cmd
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("log").display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--skip-name-resolve",
            ])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.mariadbd.display()))?;
        let mut process = KillOnDrop(child);
        let port = self.port;
        let mut exited = None;
        let ready = wait_until(READY, || {
            if let Ok(Some(status)) = process.0.try_wait() {
                exited = Some(status);
                return true;
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && self.client_command("SELECT 1").status.success()
        });
        if let Some(status) = exited {
            return Err(format!(
                "mariadbd on port {port} exited ({status})\n--- server log ---\n{}",
                self.log_tail()
            ));
        }
        if !ready {
            process.kill();
            return Err(format!(
                "mariadbd on port {port} not ready within {READY:?}\n--- server log ---\n{}",
                self.log_tail()
            ));
        }
        self.process = Some(process);
        Ok(())
    }
}

/// A MariaDB binary on `PATH` or in /usr/sbin, or the CI rule for a missing one.
fn binary(name: &str) -> Option<PathBuf> {
    find_binary(name)
        .or_else(|| find_binary(&Path::new("/usr/sbin").join(name).to_string_lossy()))
        .or_else(|| require_binary(name, "mariadb-server"))
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        // Before the directory goes.
        self.kill();
    }
}
