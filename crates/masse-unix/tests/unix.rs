//! `UnixInterface` against real Unix domain sockets: the interface
//! conformance suite, and what it does with the socket file.
#![cfg(unix)]
#![allow(clippy::print_stderr)]

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use masse_core::testkit::InterfaceConformance;
use masse_core::testkit::fixtures::{plain_bind_ctx, plain_connect_ctx, record};
use masse_core::{BindContext, DynInterface, Endpoint, Error, InstanceId, Interface, Protocol};
use masse_unix::UnixInterface;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_interface_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_owned();
    let n = Arc::new(AtomicUsize::new(0));
    // 1000 concurrent streams need 2000 descriptors: scripts/test raises the limit.
    InterfaceConformance::new(move || {
        let path = base.join(format!("c{}.sock", n.fetch_add(1, Ordering::Relaxed)));
        async move { Arc::new(UnixInterface::at(path)) as DynInterface }
    })
    .run()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_the_peers_credentials_and_the_file_goes_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.sock");
    let unix = UnixInterface::at(&path);
    let mut listener = unix.bind(&plain_bind_ctx()).await.unwrap();
    let ep = listener.endpoints()[0].clone();
    assert_eq!(ep.protocol(), &Protocol::UNIX);
    assert_eq!(ep.unix_path(), Some(path.as_path()));
    assert_eq!(ep.to_string(), format!("unix://{}", path.display()));
    assert!(is_socket(&path));

    let mut dialed = unix
        .connect(&ep, &record(&ep, None), &plain_connect_ctx())
        .await
        .unwrap();
    let accepted = timeout(T, listener.accept()).await.unwrap().unwrap();
    assert_eq!(accepted.remote_addr, None);
    let creds = accepted.peer_credentials.expect("SO_PEERCRED");
    let own = std::fs::metadata(dir.path()).unwrap();
    assert_eq!(creds.uid, std::os::unix::fs::MetadataExt::uid(&own));
    assert_eq!(creds.pid, Some(std::process::id() as i32));
    let mut io = accepted.io;
    dialed.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    io.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hi");

    listener.close().await;
    assert!(!path.exists(), "the socket file is removed on close");
    // Dropped without close: removed too.
    let listener = unix.bind(&plain_bind_ctx()).await.unwrap();
    assert!(is_socket(&path));
    drop(listener);
    assert!(!path.exists(), "the socket file is removed on drop");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // A leftover of a process that died: a socket file nobody accepts on.
    let std_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(std_listener);
    assert!(is_socket(&path));
    let unix = UnixInterface::at(&path);
    let live = unix
        .bind(&plain_bind_ctx())
        .await
        .expect("stale socket replaced");

    // Someone accepts there now: a second bind must not take it.
    match unix.bind(&plain_bind_ctx()).await {
        Err(Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        Err(e) => panic!("expected AddrInUse, got {e:?}"),
        Ok(_) => panic!("stole a live socket"),
    }
    assert!(is_socket(&path), "the live socket is still there");
    drop(live);

    // Not a socket: refused, and left alone.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    match UnixInterface::at(&file).bind(&plain_bind_ctx()).await {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}"),
        Err(e) => panic!("expected AlreadyExists, got {e:?}"),
        Ok(_) => panic!("bound over a regular file"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test]
async fn a_vanished_or_dead_socket_is_a_stale_address() {
    let dir = tempfile::tempdir().unwrap();
    let unix = UnixInterface::new();
    let gone = Endpoint::unix(dir.path().join("gone.sock")).unwrap();
    let err = match unix
        .connect(&gone, &record(&gone, None), &plain_connect_ctx())
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    assert!(err.is_stale_address(), "{err:?}");
    assert!(err.to_string().contains("gone.sock"), "{err}");

    let dead_path = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead_path).unwrap());
    let dead = Endpoint::unix(&dead_path).unwrap();
    let err = match unix
        .connect(&dead, &record(&dead, None), &plain_connect_ctx())
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("connected to a dead socket"),
    };
    assert!(err.is_stale_address(), "{err:?}");

    let tcp: Endpoint = "tcp://127.0.0.1:1".parse().unwrap();
    assert!(matches!(
        unix.connect(&tcp, &record(&tcp, None), &plain_connect_ctx())
            .await,
        Err(Error::Unsupported(_))
    ));
}

/// The default path: in a private directory, named after the node.
#[tokio::test]
async fn the_default_path_is_private_and_named_after_the_node() {
    let ctx = plain_bind_ctx();
    let mut listener = UnixInterface::new().bind(&ctx).await.unwrap();
    let path: PathBuf = listener.endpoints()[0].unix_path().unwrap().to_owned();
    let dir = path.parent().unwrap().to_owned();
    let expected = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(r) if r.is_absolute() && r.is_dir() => r.join("masse"),
        _ => std::env::temp_dir().join(format!(
            "masse-{}",
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir).unwrap())
        )),
    };
    assert_eq!(dir, expected);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{}: {mode:o}", dir.display());
    let file = path.file_name().unwrap().to_str().unwrap();
    let instance = ctx.instance.to_string();
    assert_eq!(file, format!("test.acceptor.{}.sock", &instance[..16]));
    listener.close().await;
    assert!(!path.exists());

    // The same name in a directory of one's choice; a name too long for a
    // socket address there gets a hashed file name.
    let chosen = tempfile::tempdir().unwrap();
    let listener = UnixInterface::in_dir(chosen.path())
        .bind(&ctx)
        .await
        .unwrap();
    assert_eq!(
        listener.endpoints()[0].unix_path().unwrap(),
        chosen.path().join(file)
    );
    drop(listener);
    let long = BindContext::new(
        "test".parse().unwrap(),
        "n".repeat(120).parse().unwrap(),
        InstanceId::random(),
    );
    let listener = UnixInterface::in_dir(chosen.path())
        .bind(&long)
        .await
        .unwrap();
    let long_path = listener.endpoints()[0].unix_path().unwrap().to_owned();
    assert!(
        long_path.as_os_str().len() <= 107,
        "{}",
        long_path.display()
    );
    assert_eq!(long_path.parent().unwrap(), chosen.path());
    assert!(is_socket(&long_path));
}

/// A path too long for a socket address is a clear error, not a truncation.
#[tokio::test]
async fn an_explicit_path_too_long_is_an_error() {
    let long = PathBuf::from(format!("/tmp/{}.sock", "x".repeat(200)));
    assert!(matches!(
        UnixInterface::at(long).bind(&plain_bind_ctx()).await,
        Err(Error::InvalidAddress { .. })
    ));
}

/// The context of a run of node `name` in namespace `test`.
fn run_of(name: &str) -> BindContext {
    BindContext::new(
        "test".parse().unwrap(),
        name.parse().unwrap(),
        InstanceId::random(),
    )
}

/// The socket files in `dir`.
fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_socket(p))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn the_socket_of_a_killed_run_goes_when_the_node_runs_again() {
    // In the child: bind node `killed` in the directory given, then wait to
    // be killed.
    const CHILD: &str = "MASSE_UNIX_KILLED_RUN_DIR";
    if let Some(dir) = std::env::var_os(CHILD) {
        let _listener = UnixInterface::in_dir(PathBuf::from(dir))
            .bind(&run_of("killed"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        panic!("not killed within a minute");
    }
    let dir = tempfile::tempdir().unwrap();
    // A run of the same node that stays alive.
    let unix = UnixInterface::in_dir(dir.path());
    let live = unix.bind(&run_of("killed")).await.unwrap();
    let live_path = live.endpoints()[0].unix_path().unwrap().to_owned();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "the_socket_of_a_killed_run_goes_when_the_node_runs_again",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    while sockets_in(dir.path()).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never bound"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SIGKILL: nothing runs to remove the file.
    child.kill().unwrap();
    child.wait().unwrap();
    let killed: Vec<PathBuf> = sockets_in(dir.path())
        .into_iter()
        .filter(|p| *p != live_path)
        .collect();
    assert_eq!(killed.len(), 1, "{killed:?}");

    // Beside it: a dead socket of another node, and a file in the name's
    // pattern that is not a socket.
    let other = dir.path().join("test.other.0123456789abcdef.sock");
    drop(std::os::unix::net::UnixListener::bind(&other).unwrap());
    let not_a_socket = dir.path().join("test.killed.fedcba9876543210.sock");
    std::fs::write(&not_a_socket, b"keep me").unwrap();
    assert!(is_socket(&killed[0]), "SIGKILL left the socket file");

    let next = unix.bind(&run_of("killed")).await.unwrap();
    let next_path = next.endpoints()[0].unix_path().unwrap().to_owned();
    assert!(
        !killed[0].exists(),
        "the killed run's socket is still there"
    );
    let mut left = vec![live_path.clone(), next_path, other];
    left.sort();
    assert_eq!(sockets_in(dir.path()), left);
    assert_eq!(std::fs::read(&not_a_socket).unwrap(), b"keep me");
    // The live run still accepts.
    tokio::net::UnixStream::connect(&live_path)
        .await
        .expect("the live run's socket accepts");
}

#[tokio::test]
async fn a_socket_file_deleted_under_a_listener_is_bound_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.sock");
    let mut listener = UnixInterface::at(&path)
        .bind(&plain_bind_ctx())
        .await
        .unwrap();
    // Queued before the file goes: still accepted afterwards.
    let mut early = tokio::net::UnixStream::connect(&path).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let deleted = std::time::Instant::now();
    // Past the listener's first look at its file: the next accept finds it
    // gone before it takes the queued connection.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let accepting = tokio::spawn(async move {
        let mut ios = Vec::new();
        for _ in 0..2 {
            ios.push(timeout(T, listener.accept()).await.unwrap().unwrap().io);
        }
        (listener, ios)
    });
    while !is_socket(&path) {
        assert!(deleted.elapsed() < T, "the socket file never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("socket file bound again after {:?}", deleted.elapsed());
    let mut late = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut listener, mut ios) = accepting.await.unwrap();
    for (i, dialed) in [&mut early, &mut late].into_iter().enumerate() {
        dialed.write_all(&[i as u8]).await.unwrap();
    }
    let mut seen = Vec::new();
    for io in &mut ios {
        let mut b = [0u8; 1];
        timeout(T, io.read_exact(&mut b)).await.unwrap().unwrap();
        seen.push(b[0]);
    }
    seen.sort();
    assert_eq!(
        seen,
        [0, 1],
        "both the queued and the new connection were accepted"
    );

    // A path another file took is left alone.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not yours").unwrap();
    assert!(
        timeout(Duration::from_millis(1200), listener.accept())
            .await
            .is_err(),
        "nothing to accept"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"not yours");
    listener.close().await;
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"not yours",
        "close leaves the other file"
    );
}

#[tokio::test]
async fn the_default_directory_deleted_under_a_listener_is_made_again() {
    // In a child with a runtime directory of its own: the default
    // directory goes with the socket in it, as at logout.
    const CHILD: &str = "MASSE_UNIX_RUNTIME_DIR_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let runtime = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "the_default_directory_deleted_under_a_listener_is_made_again",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("XDG_RUNTIME_DIR", runtime.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "the child failed: {status}");
        return;
    }
    let mut listener = UnixInterface::new().bind(&plain_bind_ctx()).await.unwrap();
    let path = listener.endpoints()[0].unix_path().unwrap().to_owned();
    let dir = path.parent().unwrap().to_owned();
    std::fs::remove_dir_all(&dir).unwrap();
    let deleted = std::time::Instant::now();
    let accepting = tokio::spawn(async move {
        let io = timeout(T, listener.accept()).await.unwrap().unwrap().io;
        (listener, io)
    });
    while !is_socket(&path) {
        assert!(deleted.elapsed() < T, "the socket never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{}: {mode:o}", dir.display());
    let mut dialed = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (_listener, mut io) = accepting.await.unwrap();
    dialed.write_all(b"back").await.unwrap();
    let mut b = [0u8; 4];
    timeout(T, io.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"back");
}
