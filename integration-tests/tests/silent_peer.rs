//! A peer whose network goes silent under an open stream (its link down:
//! no RST, no FIN, nothing comes back) fails the stream within the
//! dead-peer timeout (TCP) or the idle timeout (QUIC) instead of leaving a
//! read waiting for ever.
//!
//! Real sockets on a real link: two network namespaces made for the test,
//! joined by a veth pair (10.77.0.1 and 10.77.0.2), each running a node in
//! a process of its own (this test binary again), sharing a SQLite
//! registry file. Needs root and `ip` (iproute2); without them the test
//! prints a loud notice and passes, except under `CI=true`.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use masse::{DynInterface, Node, QuicInterface, TcpInterface};
use masse_integration_tests::{connect_sql, echo_forever, init_tracing};
use masse_sql::SqlConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROLE: &str = "MASSE_SILENT_PEER_ROLE";
const DB: &str = "MASSE_SILENT_PEER_DB";
/// The dialer's dead-peer timeout (TCP) or idle timeout (QUIC).
const SILENCE: Duration = Duration::from_secs(3);
const NS: &str = "silent-peer";

/// Runs `ip ARGS`; panics with its output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair, deleted on drop.
struct Link {
    a: String,
    b: String,
    tag: String,
}

impl Link {
    /// `None` (after a notice; a panic under CI) where namespaces cannot be made.
    /// `kind` (one letter) keeps the links of tests running at once apart.
    fn new(kind: char) -> Option<Link> {
        masse_integration_tests::server::require_binary("ip", "iproute2")?;
        let tag = format!("{kind}{}", std::process::id());
        let link = Link {
            a: format!("masse-sp-a-{tag}"),
            b: format!("masse-sp-b-{tag}"),
            tag: tag.clone(),
        };
        let made = Command::new("ip")
            .args(["netns", "add", &link.a])
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            let msg = "cannot create a network namespace (needs root)";
            if masse_integration_tests::server::under_ci() {
                panic!("{msg} — required under CI=true");
            }
            eprintln!("\n!!! SKIPPING: {msg}\n");
            return None;
        }
        ip(&["netns", "add", &link.b]);
        let (va, vb) = (format!("msa{}", link.tag), format!("msb{}", link.tag));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &link.a]);
        ip(&["link", "set", &vb, "netns", &link.b]);
        for (ns, dev, addr) in [
            (&link.a, &va, "10.77.0.1/30"),
            (&link.b, &vb, "10.77.0.2/30"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Some(link)
    }

    /// Takes `b`'s end of the link down: from `a`, silence.
    fn silence_b(&self) {
        let dev = format!("msb{}", self.tag);
        ip(&["-n", &self.b, "link", "set", &dev, "down"]);
    }

    /// Test `test` of this binary, in role `role`, in namespace `ns`.
    fn spawn(&self, test: &str, ns: &str, role: &str, db: &std::path::Path) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(DB, db)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a child in a namespace")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Kills the child on drop (a failing test leaves no process behind).
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout until it says `word` (after `@`: the test
/// harness may have printed on the same line before it); returns what
/// follows it on that line.
fn said(lines: &mut impl Iterator<Item = std::io::Result<String>>, word: &str) -> String {
    let marker = format!("@{word}");
    for line in lines {
        let line = line.expect("read the child's output");
        if let Some(at) = line.find(&marker) {
            return line[at + marker.len()..].to_owned();
        }
    }
    panic!("the child ended before saying {word:?}");
}

/// The transport a scenario runs on.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Tcp,
    Quic,
}

impl Kind {
    /// The interface: the dialer's gives up on a peer silent for
    /// [`SILENCE`]; the peer's keeps the defaults.
    fn interface(self, bind: &str, dialer: bool) -> DynInterface {
        match (self, dialer) {
            (Kind::Tcp, true) => {
                std::sync::Arc::new(TcpInterface::new(bind).dead_peer_timeout(Some(SILENCE)))
            }
            (Kind::Tcp, false) => std::sync::Arc::new(TcpInterface::new(bind)),
            (Kind::Quic, true) => std::sync::Arc::new(
                QuicInterface::new(bind)
                    .idle_timeout(SILENCE)
                    .keep_alive_interval(Some(SILENCE / 3)),
            ),
            (Kind::Quic, false) => std::sync::Arc::new(QuicInterface::new(bind)),
        }
    }
}

async fn node(kind: Kind, name: &str, db: &str, bind: &str, dialer: bool) -> Node {
    init_tracing();
    let url = format!("sqlite://{db}");
    Node::builder(name)
        .namespace(NS)
        .registry(connect_sql(&url, SqlConfig::default()).await)
        .interface_dyn(kind.interface(bind, dialer))
        .ttl(Duration::from_secs(60))
        .start()
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// The peer, in namespace b: echoes until killed.
async fn peer(kind: Kind, db: &str) {
    let n = node(kind, "peer", db, "10.77.0.2:0", false).await;
    echo_forever(&n).await;
    println!("@ready");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// The dialer, in namespace a: opens a stream to the peer, says so, and
/// reads (the peer sends nothing more) until the stream fails; prints how
/// long that took and the error.
async fn dialer(kind: Kind, db: &str) {
    let n = node(kind, "dialer", db, "10.77.0.1:0", true).await;
    let mut s = n.connect("peer").await.expect("connect to the peer");
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.expect("the echo");
    println!("@connected");
    let idle = Instant::now();
    let read = s.read(&mut b).await;
    println!("@ended after {:?}: {read:?}", idle.elapsed());
}

/// The scenario of test `test` on `kind`: in a child, its role; in the
/// test itself, the link, both children, the silence and the bound.
async fn silent_peer(kind: Kind, test: &str, error: &str) {
    match (std::env::var(ROLE).ok().as_deref(), std::env::var(DB)) {
        (Some("peer"), Ok(db)) => return peer(kind, &db).await,
        (Some("dialer"), Ok(db)) => return dialer(kind, &db).await,
        _ => {}
    }
    let letter = match kind {
        Kind::Tcp => 't',
        Kind::Quic => 'q',
    };
    let Some(link) = Link::new(letter) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reg.db");
    let mut peer = Kill(link.spawn(test, &link.b, "peer", &db));
    let mut peer_out = BufReader::new(peer.0.stdout.take().unwrap()).lines();
    said(&mut peer_out, "ready");

    let mut dialer = Kill(link.spawn(test, &link.a, "dialer", &db));
    let mut out = BufReader::new(dialer.0.stdout.take().unwrap()).lines();
    said(&mut out, "connected");

    link.silence_b();
    let silenced = Instant::now();
    // A stream that never fails would leave the test waiting: bounded
    // (the children are killed on the way out, which ends the read).
    let ended = tokio::time::timeout(
        SILENCE + Duration::from_secs(20),
        tokio::task::spawn_blocking(move || said(&mut out, "ended after")),
    )
    .await
    .unwrap_or_else(|_| panic!("{kind:?}: the stream still waits 20 s past the timeout"))
    .unwrap();
    let took = silenced.elapsed();
    eprintln!(
        "RECOVERY silent peer ({kind:?}): the stream failed {took:?} after the link went down ({ended})"
    );
    assert!(ended.contains(error), "{ended}");
    assert!(
        took >= SILENCE / 2,
        "failed before the peer was silent long: {took:?}"
    );
    assert!(took < SILENCE + Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_peer_whose_link_goes_silent_fails_the_stream_in_time() {
    silent_peer(
        Kind::Tcp,
        "a_tcp_peer_whose_link_goes_silent_fails_the_stream_in_time",
        "TimedOut",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_peer_whose_link_goes_silent_fails_the_stream_in_time() {
    silent_peer(
        Kind::Quic,
        "a_quic_peer_whose_link_goes_silent_fails_the_stream_in_time",
        "TimedOut",
    )
    .await;
}
