//! End to end: the `masse` binary in separate processes, on a real
//! `redis-server` (started by the integration-test harness) or a SQLite file.
//!
//! Without `redis-server` the Redis tests print a loud skip notice and pass,
//! except under `CI=true`, where they fail (the harness's rule).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use masse_integration_tests::redis::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_masse");
/// The longest any one step may take.
const T: Duration = Duration::from_secs(15);

/// A unique namespace per test, so tests sharing nothing but a machine never meet.
fn namespace(test: &str) -> String {
    format!("cli-{test}-{}", std::process::id())
}

/// `masse --registry URL --namespace NS --bind 127.0.0.1:0 ARGS…`, with the
/// environment cleared of what could change it.
fn masse(registry: &str, ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--registry", registry, "--namespace", ns])
        .args(["--bind", "127.0.0.1:0", "--timeout", "5s", "--ttl", "3s"])
        .args(args)
        .env_remove("MASSE_REGISTRY")
        .env_remove("MASSE_NAMESPACE")
        .env_remove("MASSE_SECRET")
        .env_remove("RUST_LOG");
    cmd
}

/// What a finished process left.
#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    /// Asserts the failure was reported as exactly one `masse: …` line.
    fn assert_one_error_line(&self, code: i32, mentions: &str) {
        assert_eq!(self.code, code, "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {self:#?}");
        assert!(lines[0].starts_with("masse: "), "{self:#?}");
        assert!(lines[0].contains(mentions), "{self:#?}");
    }
}

/// A running `masse` process: its output is collected by threads, and it is
/// killed when dropped.
struct Proc {
    child: Child,
    /// Kept open (and silent) while the process lives, when no input was given.
    _stdin: Option<ChildStdin>,
    output: Arc<Collected>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a process wrote so far (stdout, stderr), and a signal at each line.
#[derive(Default)]
struct Collected {
    text: Mutex<[String; 2]>,
    grew: Condvar,
}

/// Appends each line of `pipe` to `output.text[which]`, signalling it.
fn collect(
    pipe: impl Read + Send + 'static,
    output: Arc<Collected>,
    which: usize,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut line = String::new();
        while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            output.text.lock().unwrap()[which].push_str(&line);
            output.grew.notify_all();
            line.clear();
        }
    })
}

impl Proc {
    /// Spawns `cmd` with `stdin` as its whole standard input (`None`: kept open, empty).
    fn spawn(mut cmd: Command, stdin: Option<&[u8]>) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn masse");
        let mut input = child.stdin.take().unwrap();
        let input = match stdin {
            Some(data) => {
                input.write_all(data).unwrap();
                None
            }
            None => Some(input),
        };
        let output = Arc::new(Collected::default());
        let h1 = collect(child.stdout.take().unwrap(), output.clone(), 0);
        let h2 = collect(child.stderr.take().unwrap(), output.clone(), 1);
        Proc {
            child,
            _stdin: input,
            output,
            readers: vec![h1, h2],
        }
    }

    fn stdout(&self) -> String {
        self.output.text.lock().unwrap()[0].clone()
    }

    fn stderr(&self) -> String {
        self.output.text.lock().unwrap()[1].clone()
    }

    /// Waits until `pred` holds for (stdout, stderr), checking at each line.
    fn wait_for(&self, what: &str, pred: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + T;
        let mut text = self.output.text.lock().unwrap();
        while !pred(&text[0], &text[1]) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out waiting for {what}; stdout:\n{}\nstderr:\n{}",
                    text[0], text[1]
                );
            }
            text = self.output.grew.wait_timeout(text, left).unwrap().0;
        }
    }

    /// True while the process has not exited.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGINT, as Ctrl-C would.
    fn interrupt(&self) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -INT failed");
    }

    /// Waits for the process to exit (killing it after [`T`]) and returns what it left.
    fn finish(mut self) -> Output {
        let deadline = Instant::now() + T;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "masse did not exit in time; stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            // The interval of a bounded poll: std has no wait with a timeout.
            thread::sleep(Duration::from_millis(10));
        };
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        Output {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion with `stdin` as its input.
fn run(cmd: Command, stdin: &[u8]) -> Output {
    Proc::spawn(cmd, Some(stdin)).finish()
}

/// Starts `masse listen NAME ARGS…` and waits for its `listening as` line.
fn listen(registry: &str, ns: &str, name: &str, args: &[&str], stdin: Option<&[u8]>) -> Proc {
    let mut all = vec!["listen", name];
    all.extend_from_slice(args);
    let p = Proc::spawn(masse(registry, ns, &all), stdin);
    p.wait_for("the listener to start", |_, err| {
        err.contains(&format!("listening as {name} at tcp://127.0.0.1:"))
    });
    p
}

/// listen in one process, peers in another, connect in a third: bytes both ways.
fn listen_connect_peers(registry: &str, ns: &str) {
    let server = listen(registry, ns, "srv", &[], Some(b"hello from server\n"));

    let peers = run(masse(registry, ns, &["peers"]), b"");
    assert_eq!(peers.code, 0, "{peers:#?}");
    let mut lines = peers.stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAME ") && header.contains(" STATE ") && header.contains(" TTL "),
        "{peers:#?}"
    );
    let row = lines.next().expect("a row for srv");
    assert!(row.starts_with("srv "), "{peers:#?}");
    assert!(row.contains("tcp://127.0.0.1:"), "{peers:#?}");
    // Both Redis and SQL report the time a record has left: a fresh
    // listener is alive, with at most its 3 s TTL left.
    assert!(row.contains(" alive "), "{peers:#?}");
    assert_eq!(
        lines.next(),
        None,
        "peers lists only the listener: {peers:#?}"
    );

    let json = run(masse(registry, ns, &["peers", "s*", "--json"]), b"");
    assert_eq!(json.code, 0, "{json:#?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("peers --json is JSON");
    let records = v.as_array().expect("a JSON array");
    assert_eq!(records.len(), 1, "{v}");
    assert_eq!(records[0]["name"], "srv");
    assert_eq!(records[0]["namespace"], ns);
    assert_eq!(records[0]["state"], "alive", "{v}");
    let left = records[0]["ttl_left_ms"].as_u64().expect("ttl_left_ms");
    assert!((1000..=3000).contains(&left), "{v}");
    assert_eq!(records[0]["ttl_ms"], 3000, "{v}");
    assert!(
        records[0]["endpoints"][0]
            .as_str()
            .unwrap()
            .starts_with("tcp://127.0.0.1:")
    );

    let none = run(masse(registry, ns, &["peers", "nothing-*", "--json"]), b"");
    assert_eq!((none.code, none.stdout.trim()), (0, "[]"), "{none:#?}");

    let client = run(
        masse(registry, ns, &["connect", "srv"]),
        b"hello from client\n",
    );
    assert_eq!(client.code, 0, "{client:#?}");
    assert_eq!(client.stdout, "hello from server\n");
    assert_eq!(client.stderr, "", "{client:#?}");

    // Without --keep-open the listener exits after its one stream.
    let server = server.finish();
    assert_eq!(server.code, 0, "{server:#?}");
    assert_eq!(server.stdout, "hello from client\n");

    // A stream for a declared service is served like any other.
    let server = listen(registry, ns, "svc", &["-s", "rpc"], Some(b"rpc answer\n"));
    let client = run(
        masse(registry, ns, &["connect", "svc", "--service", "rpc"]),
        b"rpc call\n",
    );
    assert_eq!(client.code, 0, "{client:#?}");
    assert_eq!(client.stdout, "rpc answer\n");
    let server = server.finish();
    assert_eq!(server.code, 0, "{server:#?}");
    assert_eq!(server.stdout, "rpc call\n");
}

#[test]
fn listen_connect_peers_over_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    listen_connect_peers(&redis.url(), &namespace("redis"));
}

#[test]
fn listen_connect_peers_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/reg.db?mode=rwc", dir.path().display());
    listen_connect_peers(&url, &namespace("sqlite"));
}

/// A listener with a namespace secret: a client with the same secret (from
/// a file or from `MASSE_SECRET`) gets through; one without it, or with
/// another, is refused (exit 4); a secret too short is a usage error.
#[test]
fn a_namespace_secret_keeps_out_who_lacks_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/reg.db?mode=rwc", dir.path().display());
    let ns = namespace("secret");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "correct horse battery staple\n").unwrap();
    let other = dir.path().join("other");
    std::fs::write(&other, "another horse, another staple").unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "too short").unwrap();
    let with = |file: &std::path::Path| format!("--secret-file={}", file.display());

    let server = listen(
        &url,
        &ns,
        "vault",
        &["--keep-open", &with(&secret)],
        Some(b"welcome\n"),
    );
    let client = run(
        masse(&url, &ns, &["connect", "vault", &with(&secret)]),
        b"from a friend\n",
    );
    assert_eq!(client.code, 0, "{client:#?}");
    assert_eq!(client.stdout, "welcome\n");
    let mut from_env = masse(&url, &ns, &["connect", "vault"]);
    from_env.env("MASSE_SECRET", "correct horse battery staple");
    let client = run(from_env, b"from the environment\n");
    assert_eq!(client.code, 0, "{client:#?}");

    let client = run(masse(&url, &ns, &["connect", "vault"]), b"let me in\n");
    client.assert_one_error_line(4, "vault");
    let client = run(
        masse(&url, &ns, &["connect", "vault", &with(&other)]),
        b"let me in\n",
    );
    client.assert_one_error_line(4, "vault");
    let client = run(masse(&url, &ns, &["connect", "vault", &with(&short)]), b"");
    client.assert_one_error_line(2, "at least 16 bytes");
    let client = run(
        masse(
            &url,
            &ns,
            &["connect", "vault", "--secret-file=/nonexistent/secret"],
        ),
        b"",
    );
    client.assert_one_error_line(2, "/nonexistent/secret");

    server.interrupt();
    let server = server.finish();
    assert_eq!(server.code, 0, "{server:#?}");
    assert!(server.stdout.contains("from a friend\n"), "{server:#?}");
    assert!(
        server.stdout.contains("from the environment\n"),
        "{server:#?}"
    );
    assert!(!server.stdout.contains("let me in"), "{server:#?}");
}

#[test]
fn watch_prints_joined_and_left() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, ns) = (redis.url(), namespace("watch"));
    let text = Proc::spawn(masse(&url, &ns, &["watch", "w*"]), None);
    let json = Proc::spawn(masse(&url, &ns, &["watch", "--json"]), None);
    for w in [&text, &json] {
        w.wait_for("the watch to start", |_, err| {
            err.contains("watching namespace")
        });
    }

    let listener = listen(&url, &ns, "web-1", &[], None);
    let other = listen(&url, &ns, "db-1", &[], None);
    text.wait_for("a joined line", |out, _| {
        out.lines().any(|l| l.contains(" joined  web-1 "))
    });
    listener.interrupt();
    let l = listener.finish();
    assert_eq!(l.code, 0, "Ctrl-C ends listen cleanly: {l:#?}");
    text.wait_for("a left line", |out, _| {
        out.lines().any(|l| l.contains(" left    web-1 "))
    });
    json.wait_for("JSON for web-1 leaving", |out, _| out.contains("\"left\""));

    let text_out = text.stdout();
    assert!(
        !text_out.contains("db-1"),
        "the pattern filters: {text_out}"
    );
    for line in text_out.lines() {
        // 2025-11-25T13:40:00.123Z joined  web-1 3f2a1b4c tcp://127.0.0.1:4100
        let (time, _) = line.split_once(' ').unwrap();
        assert_eq!(time.len(), 24, "{line}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{line}");
    }
    let mut kinds = Vec::new();
    for line in json.stdout().lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
        if v["name"] == "web-1" {
            kinds.push(v["event"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(kinds, ["joined", "left"]);

    for w in [text, json] {
        w.interrupt();
        let out = w.finish();
        assert_eq!(out.code, 0, "{out:#?}");
    }
    drop(other);
}

/// Redis killed and restarted empty under `masse watch`: a listener that
/// lives re-publishes and is never printed as gone; one SIGKILLed during
/// the outage is printed `expired` exactly once; no `resync` line.
#[test]
fn watch_reconciles_a_registry_restarted_empty() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (url, ns) = (redis.url(), namespace("watch-restart"));
    let watch = Proc::spawn(masse(&url, &ns, &["watch"]), None);
    watch.wait_for("the watch to start", |_, err| {
        err.contains("watching namespace")
    });
    let _alive = listen(&url, &ns, "alive", &[], None);
    let mut doomed = listen(&url, &ns, "doomed", &[], None);
    watch.wait_for("both joined", |out, _| {
        out.contains(" joined  alive ") && out.contains(" joined  doomed ")
    });

    redis.kill();
    doomed.child.kill().expect("SIGKILL the doomed listener");
    let _ = doomed.child.wait();
    // The registry is restarted once the watch has seen it go.
    watch.wait_for("the watch to see the registry go", |_, err| {
        err.contains("redis registry watch lost its connection")
    });
    redis.restart();
    watch.wait_for("doomed reported gone", |out, _| {
        out.contains(" expired doomed ")
    });
    // Long enough for a late or doubled line to show (nothing must happen
    // in this window, so it is real time).
    thread::sleep(Duration::from_secs(2));
    let out = watch.stdout();
    let after: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains(" joined  doomed "))
        .skip(1)
        .collect();
    assert_eq!(
        after
            .iter()
            .filter(|l| l.contains(" expired doomed "))
            .count(),
        1,
        "doomed expired exactly once: {out}"
    );
    assert!(
        after.iter().all(|l| !l.contains(" alive ")),
        "nothing about the live listener: {out}"
    );
    assert!(
        !out.contains("resync"),
        "the registry's loss is reconciled, not shown: {out}"
    );
    watch.interrupt();
    let w = watch.finish();
    assert_eq!(w.code, 0, "{w:#?}");
}

#[test]
fn ping_and_stats() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, ns) = (redis.url(), namespace("ping"));
    // Pings do not reach the application: the listener keeps waiting for a stream.
    let plain = listen(&url, &ns, "pingable", &[], None);
    let rpc = listen(
        &url,
        &ns,
        "rpc-only",
        &["--service", "rpc", "--keep-open"],
        None,
    );

    let out = run(
        masse(&url, &ns, &["ping", "pingable", "-c", "3", "-i", "50ms"]),
        b"",
    );
    assert_eq!(out.code, 0, "{out:#?}");
    let replies: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("stream to pingable: seq=") && l.ends_with(" ms"))
        .collect();
    assert_eq!(replies.len(), 3, "{out:#?}");
    assert!(
        out.stdout.contains("3 attempts, 3 answered, 0 failed"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("time min/median/max = "), "{out:#?}");

    // A peer with services of its own answers the reserved service the same way.
    let out = run(masse(&url, &ns, &["ping", "rpc-only", "-c", "1"]), b"");
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("1 attempts, 1 answered"), "{out:#?}");
    // A service it offers is a Welcome, and the listener sees a stream.
    let out = run(
        masse(
            &url,
            &ns,
            &["ping", "rpc-only", "-c", "1", "--service", "rpc"],
        ),
        b"",
    );
    assert_eq!(out.code, 0, "{out:#?}");
    // Asking for a service it lacks explicitly is a refusal.
    let out = run(
        masse(
            &url,
            &ns,
            &["ping", "rpc-only", "-c", "1", "--service", "web"],
        ),
        b"",
    );
    out.assert_one_error_line(4, "no such service");

    let stats = run(masse(&url, &ns, &["peers", "--stats"]), b"");
    assert_eq!(stats.code, 0, "{stats:#?}");
    assert!(stats.stdout.contains("pingable"), "{stats:#?}");
    assert!(
        !stats.stdout.lines().any(|l| l.starts_with("cli-")),
        "never lists itself: {stats:#?}"
    );
    assert!(stats.stdout.contains("cold "), "{stats:#?}");
    assert!(stats.stdout.contains("hit rate"), "{stats:#?}");
    let json = run(masse(&url, &ns, &["peers", "--stats", "--json"]), b"");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v["peers"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["stats"]["cache"]["hits"].as_u64().unwrap() >= 1, "{v}");

    for mut p in [plain, rpc] {
        assert!(p.running(), "pings did not end the listener");
        p.interrupt();
        assert_eq!(p.finish().code, 0);
    }
}

/// `peers --stats` reads the peers' own counters from those that expose
/// them, and shows a per-peer error for one that does not answer.
#[test]
fn peers_stats_reads_the_peers_counters() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/reg.db?mode=rwc", dir.path().display());
    let ns = namespace("remote-stats");
    let exposed = listen(
        &url,
        &ns,
        "exposed",
        &["--expose-stats", "--keep-open"],
        None,
    );
    // Claims the service, but it is a plain `listen` with nothing to say:
    // the stats request goes unanswered.
    let mute = listen(
        &url,
        &ns,
        "mute",
        &["--service", "masse-stats", "--keep-open"],
        None,
    );
    let plain = listen(&url, &ns, "plain", &["--keep-open"], None);

    // Some traffic to the exposed node first: one stream, 6 bytes in.
    let client = run(masse(&url, &ns, &["connect", "exposed"]), b"hello\n");
    assert_eq!(client.code, 0, "{client:#?}");
    exposed.wait_for("the bytes", |out, _| out.contains("hello"));

    // A short --timeout, for the peer that never answers.
    let stats_cmd = |json: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--registry", &url, "--namespace", &ns])
            .args(["--bind", "127.0.0.1:0", "--timeout", "1s", "--ttl", "3s"])
            .args(["peers", "--stats"])
            .args(json.then_some("--json"))
            .env_remove("MASSE_REGISTRY")
            .env_remove("MASSE_NAMESPACE")
            .env_remove("RUST_LOG");
        cmd
    };
    let out = run(stats_cmd(false), b"");
    assert_eq!(out.code, 0, "{out:#?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let table = lines
        .iter()
        .position(|l| l.starts_with("PEER "))
        .unwrap_or_else(|| panic!("a table of the peers' stats: {out:#?}"));
    assert!(
        lines[table].contains("P50 LOOKUP/CONNECT/HANDSHAKE"),
        "{out:#?}"
    );
    let row = |name: &str| {
        lines[table + 1..]
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    // exposed: open, in (the connect and this stats stream), out, received, sent.
    let e = row("exposed").unwrap_or_else(|| panic!("a row for exposed: {out:#?}"));
    assert_eq!(e[1..6], ["1", "2", "0", "6", "0"], "{out:#?}");
    let m = row("mute").unwrap_or_else(|| panic!("a row for mute: {out:#?}"));
    assert_eq!(m[1..8], ["-"; 7], "{out:#?}");
    assert!(m.join(" ").contains("timed out after 1s"), "{out:#?}");
    assert!(
        row("plain").is_none(),
        "plain does not offer its stats: {out:#?}"
    );

    let json = run(stats_cmd(true), b"");
    assert_eq!(json.code, 0, "{json:#?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    let peers = v["peers"].as_array().expect("peers");
    let by_name = |n: &str| {
        peers
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("{n} in {v}"))
    };
    assert_eq!(by_name("exposed")["stats"]["bytes_in"], 6, "{v}");
    assert_eq!(by_name("exposed")["stats"]["streams_inbound"], 3, "{v}");
    assert!(by_name("mute")["stats_error"].as_str().is_some(), "{v}");
    assert!(by_name("plain").get("stats").is_none(), "{v}");
    assert!(by_name("plain").get("stats_error").is_none(), "{v}");
    assert_eq!(by_name("plain")["state"], "alive", "{v}");

    for mut p in [exposed, mute, plain] {
        assert!(p.running(), "the stats streams did not end the listener");
        p.interrupt();
        assert_eq!(p.finish().code, 0);
    }
}

#[test]
fn exec_runs_a_command_per_stream() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, ns) = (redis.url(), namespace("exec"));
    let server = listen(
        &url,
        &ns,
        "upper",
        &[
            "--keep-open",
            "--exec",
            "echo \"hi $MASSE_PEER\"; tr a-z A-Z",
        ],
        None,
    );
    for i in 0..2 {
        let name = format!("client-{i}");
        let out = run(
            masse(&url, &ns, &["--name", &name, "connect", "upper"]),
            b"shout\n",
        );
        assert_eq!(out.code, 0, "{out:#?}");
        assert_eq!(out.stdout, format!("hi {name}\nSHOUT\n"));
    }
    server.interrupt();
    assert_eq!(server.finish().code, 0);
}

#[test]
fn failures_are_one_line_with_their_exit_code() {
    // No server needed: nothing listens on port 1, and usage errors come first.
    let out = run(masse("redis://127.0.0.1:1", "x", &["peers"]), b"");
    out.assert_one_error_line(5, "registry redis unavailable");
    let out = run(masse("redis://127.0.0.1:1", "x", &["watch"]), b"");
    out.assert_one_error_line(5, "unavailable");
    let out = run(
        masse("redis://127.0.0.1:1", "x", &["connect", "bad name"]),
        b"",
    );
    out.assert_one_error_line(2, "invalid peer name");
    let out = run(masse("redis://127.0.0.1:1", "x", &["listen", "a/b"]), b"");
    out.assert_one_error_line(2, "invalid peer name");
    let out = run(masse("redis://127.0.0.1:1", "x", &["peers", "[a"]), b"");
    out.assert_one_error_line(2, "invalid pattern");
    let out = run(masse("gopher://x", "x", &["peers"]), b"");
    out.assert_one_error_line(2, "unknown scheme");
    let out = run(masse("memory://", "x", &["peers", "--bogus"]), b"");
    out.assert_one_error_line(2, "--bogus");
    let out = run(masse("memory://", "x", &["ping", "x", "-c", "0"]), b"");
    out.assert_one_error_line(2, "0");
    let out = run(masse("memory://", "bad ns", &["peers"]), b"");
    out.assert_one_error_line(2, "invalid namespace");

    let help = run(masse("memory://", "x", &["--help"]), b"");
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Exit codes:"), "{help:#?}");
}

#[test]
fn nobody_is_not_found() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, ns) = (redis.url(), namespace("nobody"));
    let out = run(masse(&url, &ns, &["connect", "nobody"]), b"");
    out.assert_one_error_line(3, "no peer named \"nobody\"");
    let out = run(masse(&url, &ns, &["ping", "nobody", "-c", "1"]), b"");
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(
        out.stdout.contains("1 attempts, 0 answered, 1 failed"),
        "{out:#?}"
    );
    out.assert_one_error_line(3, "no answer from nobody");
    let out = run(masse(&url, &ns, &["connect", "masse://other/db"]), b"");
    out.assert_one_error_line(2, "namespace other");
}

/// `masse peers` on a SQLite file that also holds rows it cannot read (a
/// name stored as a blob, bad JSON, a record under another name, an expired
/// blob key): it lists the good peer, in text and JSON, and exits 0.
#[test]
fn peers_skips_malformed_sqlite_rows() {
    if masse_integration_tests::server::require_binary("sqlite3", "sqlite3").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reg.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let ns = namespace("bad-rows");
    let server = listen(&url, &ns, "srv", &["--keep-open"], None);
    let inst = "0123456789abcdef0123456789abcdef";
    let sql = format!(
        "INSERT INTO masse_peers (namespace, name, instance, record, expires_at) VALUES \
         ('{ns}', X'ff00', '{inst}', '{{}}', 4102444800000), \
         ('{ns}', 'bad-json', '{inst}', '{{\"name\":', 4102444800000), \
         ('{ns}', 'blob-record', '{inst}', X'fffe00', 4102444800000), \
         ('{ns}', 'expired-blob', X'00', 'x', 1); \
         INSERT INTO masse_peers (namespace, name, instance, record, expires_at) \
         SELECT namespace, 'wrong-name', instance, record, expires_at FROM masse_peers \
         WHERE namespace = '{ns}' AND name = 'srv';"
    );
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(&db)
        .arg(&sql)
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let peers = run(masse(&url, &ns, &["peers"]), b"");
    assert_eq!(peers.code, 0, "{peers:#?}");
    let names: Vec<&str> = peers
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["srv"], "{peers:#?}");

    let json = run(masse(&url, &ns, &["peers", "--json"]), b"");
    assert_eq!(json.code, 0, "{json:#?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("peers --json is JSON");
    let records = v.as_array().expect("a JSON array");
    assert_eq!(records.len(), 1, "{v}");
    assert_eq!(records[0]["name"], "srv");
    drop(server);
}

/// `--interface unix`: a listener at a socket path of its own, a connect
/// that reaches it by name through its `unix://` endpoint.
#[cfg(unix)]
#[test]
fn listen_and_connect_over_unix_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/reg.db?mode=rwc", dir.path().display());
    let ns = namespace("unix");
    let socket = dir.path().join("srv.sock");
    let over_unix = |bind: &str, args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--registry", &url, "--namespace", &ns])
            .args(["--interface", "unix", "--bind", bind])
            .args(["--timeout", "5s", "--ttl", "3s"])
            .args(args)
            .env_remove("MASSE_REGISTRY")
            .env_remove("MASSE_NAMESPACE")
            .env_remove("RUST_LOG");
        cmd
    };
    let server = Proc::spawn(
        over_unix(socket.to_str().unwrap(), &["listen", "srv"]),
        Some(b"hello over unix\n"),
    );
    let endpoint = format!("unix://{}", socket.display());
    server.wait_for("the listener to start", |_, err| {
        err.contains(&format!("listening as srv at {endpoint}"))
    });
    // The dialer takes the default path for its own socket.
    let client = run(
        over_unix("0.0.0.0:0", &["connect", "srv"]),
        b"hello from client\n",
    );
    assert_eq!(client.code, 0, "{client:#?}");
    assert_eq!(client.stdout, "hello over unix\n");
    let server = server.finish();
    assert_eq!(server.code, 0, "{server:#?}");
    assert_eq!(server.stdout, "hello from client\n");
    assert!(!socket.exists(), "the listener removed its socket file");

    let bad = run(over_unix("127.0.0.1:0", &["connect", "srv"]), b"");
    bad.assert_one_error_line(2, "socket path");
}
