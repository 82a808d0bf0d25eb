//! Throwaway Redis servers and a three-master Redis Cluster for tests, plus a
//! tiny RESP client to poke at them (readiness, raw writes, fault injection).
//!
//! Servers listen on 127.0.0.1 on free ports, keep nothing on disk
//! (`--save '' --appendonly no`, a temporary `--dir`) and are killed on drop.
#![allow(clippy::print_stderr)]

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::server::{KillOnDrop, free_port, require_binary, wait_until};

/// How long a server may take to answer its first PING.
const READY: Duration = Duration::from_secs(10);

/// What a throwaway server is started with.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    password: Option<String>,
    users: Vec<String>,
    tls: bool,
}

impl RedisOptions {
    /// No password, no TLS.
    pub fn new() -> Self {
        Self::default()
    }

    /// `requirepass`: the default user needs this password.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// An ACL user, as the rest of a `user` config line, e.g.
    /// `acl_user("alice", "on >secret ~* &* +@all")`.
    pub fn acl_user(mut self, name: &str, rules: &str) -> Self {
        self.users.push(format!("{name} {rules}"));
        self
    }

    /// Also listen for TLS (`--tls-port`) with a certificate signed by a
    /// throwaway CA (see [`RedisServer::tls_ca_pem`]). Needs `openssl`.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// A reply read by [`raw_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$…` (`None` for a nil bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*…` (`None` for a nil array)
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text, for simple and bulk strings.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// The reply of a raw command, which must not be an error; panics
/// otherwise (a test fixture).
pub fn ok(reply: io::Result<Resp>) -> Resp {
    match reply {
        Ok(Resp::Error(e)) => panic!("redis error: {e}"),
        Ok(r) => r,
        Err(e) => panic!("raw command failed: {e}"),
    }
}

/// Sends one command to `127.0.0.1:port` (after `AUTH password`, if given)
/// and reads its reply. Arguments are binary-safe.
pub fn raw_command(port: u16, password: Option<&str>, args: &[&[u8]]) -> io::Result<Resp> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    if let Some(pw) = password {
        writer.write_all(&encode(&[b"AUTH", pw.as_bytes()]))?;
        if let Resp::Error(e) = read_reply(&mut reader)? {
            return Ok(Resp::Error(e));
        }
    }
    writer.write_all(&encode(args))?;
    read_reply(&mut reader)
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short RESP line",
        ));
    }
    let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad RESP {what}"));
    match line[0] {
        b'+' => Ok(Resp::Simple(body)),
        b'-' => Ok(Resp::Error(body)),
        b':' => body.parse().map(Resp::Int).map_err(|_| bad("integer")),
        b'$' => {
            let n: i64 = body.parse().map_err(|_| bad("length"))?;
            if n < 0 {
                return Ok(Resp::Bulk(None));
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(Resp::Bulk(Some(buf)))
        }
        b'*' => {
            let n: i64 = body.parse().map_err(|_| bad("length"))?;
            if n < 0 {
                return Ok(Resp::Array(None));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_reply(r)?);
            }
            Ok(Resp::Array(Some(items)))
        }
        _ => Err(bad("type byte")),
    }
}

/// A loopback port that is free, as is `port + 10000` (a cluster node's bus port).
fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Certificate files for a TLS listener.
#[derive(Debug)]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    port: u16,
}

/// Makes a CA and a server certificate for 127.0.0.1/localhost in `dir`.
fn make_certs(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let openssl = require_binary("openssl", "openssl")?;
    let p = |n: &str| dir.join(n);
    let ext = p("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .ok()?;
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut a = vec!["req", "-x509", "-nodes", "-days", "2"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=masse test CA",
    ]);
    run(&a);
    let mut a = vec!["req", "-new", "-nodes"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&a);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ]);
    Some((p("ca.pem"), p("server.pem"), p("server.key")))
}

/// One `redis-server` process on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    dir: TempDir,
    port: u16,
    opts: RedisOptions,
    cluster: bool,
    tls: Option<TlsFiles>,
    /// The cluster bus port, when set explicitly (TLS clusters).
    bus_port: Option<u16>,
    child: Option<KillOnDrop>,
}

impl RedisServer {
    /// A plain server without password. `None` (after a loud notice) when
    /// `redis-server` is not installed and not under CI.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(RedisOptions::new())
    }

    /// A server with `opts`.
    pub fn start_with(opts: RedisOptions) -> Option<RedisServer> {
        Self::start_inner(opts, false, None)
    }

    /// `certs`: `(ca, cert, key)` files to use instead of making new ones
    /// (the nodes of a TLS cluster share one CA).
    fn start_inner(
        opts: RedisOptions,
        cluster: bool,
        certs: Option<(PathBuf, PathBuf, PathBuf)>,
    ) -> Option<RedisServer> {
        crate::init_tracing();
        let binary = require_binary("redis-server", "redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("masse-redis-")
            .tempdir()
            .expect("temp dir");
        let tls = if opts.tls {
            let (ca, cert, key) = match certs {
                Some(c) => c,
                None => make_certs(dir.path())?,
            };
            Some(TlsFiles {
                ca,
                cert,
                key,
                port: free_port(),
            })
        } else {
            None
        };
        // A TLS cluster names its bus port; a plain one uses port + 10000.
        let bus_port = (cluster && tls.is_some()).then(free_port);
        let port = if cluster && bus_port.is_none() {
            free_port_pair()
        } else {
            free_port()
        };
        let mut server = RedisServer {
            binary,
            dir,
            port,
            opts,
            cluster,
            tls,
            bus_port,
            child: None,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .arg("--daemonize")
            .arg("no");
        if let Some(pw) = &self.opts.password {
            cmd.arg("--requirepass").arg(pw);
        }
        for user in &self.opts.users {
            cmd.arg("--user");
            cmd.args(user.split(' '));
        }
        if self.cluster {
            cmd.arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-config-file")
                .arg(dir.join("nodes.conf"))
                .arg("--cluster-node-timeout")
                .arg("2000");
            if let Some(bus) = self.bus_port {
                cmd.arg("--cluster-port").arg(bus.to_string());
            }
            if self.tls.is_some() {
                // Clients, the cluster bus and replication all over TLS;
                // TLS clients are told the nodes' TLS ports.
                cmd.arg("--tls-cluster")
                    .arg("yes")
                    .arg("--tls-replication")
                    .arg("yes");
            }
        }
        if let Some(t) = &self.tls {
            cmd.arg("--tls-port")
                .arg(t.port.to_string())
                .arg("--tls-cert-file")
                .arg(&t.cert)
                .arg("--tls-key-file")
                .arg(&t.key)
                .arg("--tls-ca-cert-file")
                .arg(&t.ca)
                .arg("--tls-auth-clients")
                .arg("no");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn redis-server");
        self.child = Some(KillOnDrop(child));
        let port = self.port;
        let pw = self.opts.password.clone();
        let ready = wait_until(
            READY,
            || matches!(raw_command(port, pw.as_deref(), &[b"PING"]), Ok(Resp::Simple(s)) if s == "PONG"),
        );
        if !ready {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            panic!("redis-server on port {port} did not come up; its log:\n{log}");
        }
    }

    /// The server's directory (`--dir`: where it would save, and its log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The plain TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:port`, with the `requirepass` password if one was set.
    pub fn url(&self) -> String {
        match &self.opts.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `redis://{userinfo}@127.0.0.1:port`, e.g. `url_with("alice:secret")`.
    pub fn url_with(&self, userinfo: &str) -> String {
        format!("redis://{userinfo}@127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:tls-port`, if started with [`RedisOptions::tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|t| format!("rediss://127.0.0.1:{}", t.port))
    }

    /// The PEM of the CA that signed the TLS certificate.
    pub fn tls_ca_pem(&self) -> Option<Vec<u8>> {
        self.tls.as_ref().and_then(|t| std::fs::read(&t.ca).ok())
    }

    /// Kills the server (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.0.try_wait(), Ok(None)))
    }

    /// Kills the server if it runs and starts it again, empty, on the same
    /// port; returns once it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends one command (authenticated with the `requirepass` password).
    pub fn command(&self, args: &[&[u8]]) -> io::Result<Resp> {
        raw_command(self.port, self.opts.password.as_deref(), args)
    }

    /// The connections of watch readers: those whose last command was
    /// `XREAD`, by client id.
    pub fn watch_readers(&self) -> Vec<String> {
        let list = match self.command(&[b"CLIENT", b"LIST"]) {
            Ok(r) => r.text().unwrap_or_default(),
            Err(e) => panic!("CLIENT LIST: {e}"),
        };
        list.lines()
            .filter(|l| l.split(' ').any(|f| f == "cmd=xread"))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_owned)
            .collect()
    }

    /// Stops every watch reader where it is: the default user may no
    /// longer `XREAD`, and the readers' connections are closed, so events
    /// pile up (and may be trimmed or deleted) until
    /// [`resume_watch_readers`](Self::resume_watch_readers).
    pub fn stall_watch_readers(&self) {
        let acl = self.command(&[b"ACL", b"SETUSER", b"default", b"-xread"]);
        assert!(matches!(acl, Ok(Resp::Simple(_))), "ACL SETUSER: {acl:?}");
        for id in self.watch_readers() {
            let _ = self.command(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]);
        }
    }

    /// Lets the watch readers read again.
    pub fn resume_watch_readers(&self) {
        let acl = self.command(&[b"ACL", b"SETUSER", b"default", b"+xread"]);
        assert!(matches!(acl, Ok(Resp::Simple(_))), "ACL SETUSER: {acl:?}");
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

/// Three `--cluster-enabled` masters joined into one cluster (no replicas).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the three nodes and creates the cluster; returns once every
    /// node reports `cluster_state:ok`. `None` (loud skip) when `redis-server`
    /// or `redis-cli` is missing and not under CI.
    pub fn start() -> Option<RedisCluster> {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start), with every node also listening for TLS
    /// (one throwaway CA for all, see [`tls_ca_pem`](Self::tls_ca_pem)) and
    /// the cluster bus and replication over TLS (`--tls-cluster yes`,
    /// `--tls-replication yes`). The plain ports stay open for the harness's
    /// raw commands; clients connected over TLS are told the TLS ports.
    pub fn start_tls() -> Option<RedisCluster> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<RedisCluster> {
        let cli = require_binary("redis-cli", "redis-tools")?;
        let opts = if tls {
            RedisOptions::new().tls()
        } else {
            RedisOptions::new()
        };
        let mut nodes: Vec<RedisServer> = Vec::new();
        for _ in 0..3 {
            let certs = nodes
                .first()
                .and_then(|n| n.tls.as_ref())
                .map(|t| (t.ca.clone(), t.cert.clone(), t.key.clone()));
            nodes.push(RedisServer::start_inner(opts.clone(), true, certs)?);
        }
        let mut cmd = Command::new(cli);
        if let Some(t) = nodes[0].tls.as_ref() {
            cmd.arg("--tls").arg("--cacert").arg(&t.ca);
        }
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            let port = n.tls.as_ref().map_or(n.port, |t| t.port);
            cmd.arg(format!("127.0.0.1:{port}"));
        }
        let out = cmd
            .arg("--cluster-replicas")
            .arg("0")
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        assert!(
            cluster.wait_ok(Duration::from_secs(20)),
            "cluster did not reach cluster_state:ok"
        );
        Some(cluster)
    }

    /// `rediss+cluster://127.0.0.1:t1,127.0.0.1:t2,127.0.0.1:t3` (the TLS
    /// ports), if started with [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> Option<String> {
        let ports: Option<Vec<String>> = self
            .nodes
            .iter()
            .map(|n| n.tls.as_ref().map(|t| format!("127.0.0.1:{}", t.port)))
            .collect();
        ports.map(|p| format!("rediss+cluster://{}", p.join(",")))
    }

    /// The PEM of the CA that signed every node's TLS certificate.
    pub fn tls_ca_pem(&self) -> Option<Vec<u8>> {
        self.nodes[0].tls_ca_pem()
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, to kill or restart it (its `nodes.conf` survives a restart,
    /// so it rejoins the cluster, empty).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Waits until every node reports `cluster_state:ok`; false on timeout.
    pub fn wait_ok(&self, within: Duration) -> bool {
        wait_until(within, || {
            self.nodes.iter().all(|n| {
                n.command(&[b"CLUSTER", b"INFO"])
                    .ok()
                    .and_then(|r| r.text())
                    .is_some_and(|t| t.contains("cluster_state:ok"))
            })
        })
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Sends one command to the node that owns its key (following `MOVED`).
    pub fn command(&self, args: &[&[u8]]) -> io::Result<Resp> {
        cluster_command(self.nodes[0].port, args)
    }
}

/// Sends one command to a cluster through the node on `port`, following
/// `MOVED` to the node that owns the key.
pub fn cluster_command(port: u16, args: &[&[u8]]) -> io::Result<Resp> {
    let mut port = port;
    for _ in 0..5 {
        match raw_command(port, None, args)? {
            Resp::Error(e) if e.starts_with("MOVED ") => {
                port = e
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| io::Error::other(format!("bad redirect {e}")))?;
            }
            other => return Ok(other),
        }
    }
    Err(io::Error::other("too many redirects"))
}
