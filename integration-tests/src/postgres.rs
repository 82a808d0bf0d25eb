//! Throwaway PostgreSQL 15 servers for tests.
//!
//! The server runs from `/usr/lib/postgresql/15/bin` (Debian package
//! `postgresql-15`; override the directory with `MASSE_PG_BIN`) in a
//! temporary directory: data directory, Unix socket and log live there. It
//! listens on 127.0.0.1 on a free port with `fsync=off`, trusts every local
//! connection, and is stopped (`pg_ctl stop -m immediate`) and deleted on
//! drop. PostgreSQL refuses to run as root, so under root it runs as the
//! `postgres` user (`runuser -u postgres`) in a directory owned by that user.
#![allow(clippy::print_stderr)]

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::server::{free_port, require_binary, wait_until};

/// Where Debian puts the PostgreSQL 15 server binaries.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How long the server may take to accept connections.
const READY: Duration = Duration::from_secs(30);

/// A PostgreSQL server in a temporary directory, stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    /// Run the server tools as this user (`runuser -u`), if we are root.
    run_as: Option<String>,
    /// TCP clients must use TLS (a self-signed certificate in the directory).
    tls: bool,
    /// The server's default durability (`fsync` on), not `fsync=off`.
    durable: bool,
    running: bool,
}

impl PostgresServer {
    /// Initialises a cluster and starts it. `None` (after a loud notice) if
    /// the binaries are missing and not under CI; panics, with the server's
    /// log, if it cannot start.
    pub fn start() -> Option<PostgresServer> {
        Self::start_with(false, false)
    }

    /// Like [`start`](Self::start), but with PostgreSQL's default
    /// durability: every commit waits for `fsync`, as in production (the
    /// other servers run with `fsync=off`, which only skips flushing to the
    /// disk). For benches that quote write rates.
    pub fn start_durable() -> Option<PostgresServer> {
        Self::start_with(false, true)
    }

    /// Like [`start`](Self::start), but TCP clients must use TLS (the
    /// server has a self-signed certificate for 127.0.0.1; `sslmode=require`
    /// works, `sslmode=disable` is refused). Needs `openssl`.
    pub fn start_tls() -> Option<PostgresServer> {
        require_binary("openssl", "openssl")?;
        Self::start_with(true, false)
    }

    fn start_with(tls: bool, durable: bool) -> Option<PostgresServer> {
        let bin = std::env::var_os("MASSE_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
        require_binary(&bin.join("pg_ctl").to_string_lossy(), "postgresql-15")?;
        require_binary(&bin.join("initdb").to_string_lossy(), "postgresql-15")?;
        let run_as = is_root().then(|| "postgres".to_owned());
        if run_as.is_some() {
            require_binary("runuser", "util-linux")?;
        }
        let dir = tempfile::Builder::new()
            .prefix("masse-pg-")
            .tempdir()
            .expect("create a temporary directory");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .expect("chmod 700 the server directory");
        if let Some(user) = &run_as {
            let (uid, gid) = user_ids(user).unwrap_or_else(|| {
                panic!("no `{user}` user in /etc/passwd: install postgresql-15")
            });
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the server directory to postgres");
        }
        let mut server = PostgresServer {
            bin,
            dir,
            port: 0,
            run_as,
            tls,
            durable,
            running: false,
        };
        server.init_data();
        if tls {
            server.make_certificate();
        }
        // A port that was free can be taken before the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            server.port = free_port();
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// A new, empty cluster in the data directory (`initdb`).
    fn init_data(&self) {
        let data = self.data_dir();
        let out = self.tool(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory (data in `data/`, log in `log`, socket here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`: every
    /// connection drops, as in a crash); [`restart`](Self::restart) recovers.
    pub fn kill(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        let out = self.tool(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        if !out.status.success() {
            eprintln!(
                "pg_ctl stop failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = false;
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.try_start() {
            panic!("PostgreSQL did not restart: {e}");
        }
    }

    /// Starts the server again on the same port with an empty data
    /// directory, as a server whose storage was lost comes back: the
    /// `postgres` database is there, none of its tables.
    pub fn restart_empty(&mut self) {
        self.kill();
        fs::remove_dir_all(self.data_dir()).expect("remove the data directory");
        self.init_data();
        if let Err(e) = self.try_start() {
            panic!("PostgreSQL did not restart empty: {e}");
        }
    }

    /// Runs `sql` with `psql` as the superuser over TCP and returns its
    /// unaligned, tuples-only output; panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let out = self.tool(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        );
        if !out.status.success() {
            panic!(
                "psql {sql:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates login role `role` with `password`, and makes the server ask
    /// it for that password over TCP (SCRAM-SHA-256; every other user stays
    /// trusted). For tests of refused credentials.
    pub fn require_password(&self, role: &str, password: &str) {
        self.psql(&format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
             GRANT CREATE ON SCHEMA public TO {role}"
        ));
        let hba = self.data_dir().join("pg_hba.conf");
        let old = fs::read_to_string(&hba).expect("read pg_hba.conf");
        // The first matching line wins: ours go first. An unknown user
        // must give a password too (and is refused), not be trusted.
        let new = format!(
            "host all {role} 127.0.0.1/32 scram-sha-256\n\
             host all nobody 127.0.0.1/32 scram-sha-256\n{old}"
        );
        fs::write(&hba, new).expect("write pg_hba.conf");
        let reloaded = self.psql("SELECT pg_reload_conf()");
        assert_eq!(reloaded, "t", "pg_reload_conf");
        // The reload is asynchronous: wait until the role is asked for a password.
        let port = self.port.to_string();
        let asks = || {
            let out = self.tool(
                "psql",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    role,
                    "-d",
                    "postgres",
                    "-X",
                    "-w",
                    "-c",
                    "SELECT 1",
                ],
            );
            !out.status.success()
        };
        assert!(wait_until(READY, asks), "pg_hba.conf not reloaded");
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("log"), 40)
    }

    /// A self-signed certificate for the server, and TLS-only TCP access.
    fn make_certificate(&self) {
        let d = self.dir.path();
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.crt",
            ])
            .current_dir(d)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::set_permissions(d.join("server.key"), fs::Permissions::from_mode(0o600))
            .expect("chmod the key");
        fs::write(
            self.data_dir().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
        if let Some((uid, gid)) = self.run_as.as_deref().and_then(user_ids) {
            for f in ["server.key", "server.crt"] {
                std::os::unix::fs::chown(d.join(f), Some(uid), Some(gid))
                    .expect("chown the certificate");
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn try_start(&mut self) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.dir.path().join("log");
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        if !self.durable {
            // fsync=off only skips flushing to the disk: a killed server
            // (kill, restart) still finds every commit in the OS page cache.
            options.push_str(" -c fsync=off");
        }
        if self.tls {
            let d = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key"
            ));
        }
        let out = self.tool(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                "start",
            ],
        );
        if !out.status.success() {
            // It may have half-started; make sure nothing is left running.
            let _ = self.tool(
                "pg_ctl",
                &["-D", &data.to_string_lossy(), "-m", "immediate", "stop"],
            );
            return Err(format!(
                "pg_ctl start on port {} failed: {}{}\n--- server log ---\n{}",
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            ));
        }
        self.running = true;
        let port = self.port;
        if !wait_until(READY, || TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            return Err(format!(
                "PostgreSQL started but does not accept TCP on port {port}\n--- server log ---\n{}",
                self.log_tail()
            ));
        }
        Ok(())
    }

    /// Runs one of the server's tools, as `postgres` when we are root.
    fn tool(&self, name: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(name);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Is this process running as root?
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The uid and gid of `user`, from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The last `n` lines of a file (or a note that it cannot be read).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
