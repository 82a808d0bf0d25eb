//! `masse listen NAME [--service S]... [--keep-open] [--exec CMD] [--expose-stats]`.

use std::process::Stdio;

use masse::{Incoming, Namespace, Node, PeerName, PeerStream};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::task::JoinSet;

use crate::cli::{Global, ListenArgs};
use crate::error::{CliError, Exit};
use crate::output::notice;
use crate::pipe::{IDLE_AFTER_PEER_CLOSE, Input, pipe};
use crate::setup::{PING_SERVICE, interrupted};

pub(crate) async fn run(g: &Global, args: ListenArgs) -> Result<Exit, CliError> {
    let name = PeerName::new(&args.name)?;
    let ns = g.namespace()?;
    for s in &args.services {
        masse::validate_service(s)?;
    }
    let registry = g.registry().await?;
    let node = g
        .start_node_with(
            &name,
            &ns,
            registry,
            &args.services,
            &args.metadata,
            args.expose_stats,
        )
        .await?;
    let endpoints: Vec<String> = node
        .record()
        .endpoints
        .iter()
        .map(ToString::to_string)
        .collect();
    notice(format!("listening as {name} at {}", endpoints.join(", ")));

    // Streams without a service, and those for each declared service (which
    // have queues of their own), served alike.
    let mut incoming: Streams = futures::stream::select_all(
        std::iter::once(node.incoming())
            .chain(args.services.iter().map(|s| node.incoming_service(s))),
    );
    let result = tokio::select! {
        r = serve(&node, &mut incoming, &args) => r,
        () = interrupted() => Ok(Exit::Ok),
    };
    g.stop_node(&node).await;
    result
}

async fn serve(node: &Node, incoming: &mut Streams, args: &ListenArgs) -> Result<Exit, CliError> {
    match &args.exec {
        Some(cmd) => serve_exec(node, incoming, cmd, args.keep_open).await,
        None => serve_pipe(incoming, args.keep_open).await,
    }
}

/// Every queue of accepted streams the listener serves.
type Streams = futures::stream::SelectAll<Incoming>;

/// The next stream to serve; streams from `masse ping` are closed unseen.
async fn next_stream(incoming: &mut Streams) -> Option<PeerStream> {
    loop {
        let s = futures::StreamExt::next(incoming).await?;
        if s.service() == Some(PING_SERVICE) {
            tracing::debug!(peer = %s.peer(), "ping");
            continue;
        }
        tracing::info!(peer = %s.peer(), instance = %s.peer_instance(), service = ?s.service(), "stream accepted");
        return Some(s);
    }
}

/// One stream at a time between stdin/stdout and the peer.
async fn serve_pipe(incoming: &mut Streams, keep_open: bool) -> Result<Exit, CliError> {
    let mut input = Input::stdin();
    while let Some(stream) = next_stream(incoming).await {
        let peer = stream.peer().clone();
        match pipe(
            stream,
            &mut input,
            tokio::io::stdout(),
            IDLE_AFTER_PEER_CLOSE,
        )
        .await
        {
            Ok(p) => {
                tracing::info!(%peer, bytes_in = p.bytes_in, bytes_out = p.bytes_out, "stream closed");
            }
            Err(e) if keep_open => {
                tracing::warn!(%peer, error = %e, "stream failed");
            }
            Err(e) => return Err(CliError::from(e).context(format!("stream from {peer}"))),
        }
        if !keep_open {
            break;
        }
    }
    Ok(Exit::Ok)
}

/// `sh -c CMD` per stream: one, or with `keep_open` any number at once.
async fn serve_exec(
    node: &Node,
    incoming: &mut Streams,
    cmd: &str,
    keep_open: bool,
) -> Result<Exit, CliError> {
    let ns = node.namespace().clone();
    if !keep_open {
        return match next_stream(incoming).await {
            Some(s) => exec(s, cmd, &ns).await.map(|()| Exit::Ok),
            None => Ok(Exit::Ok),
        };
    }
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            s = next_stream(incoming) => {
                let Some(s) = s else { break };
                let (cmd, ns) = (cmd.to_owned(), ns.clone());
                running.spawn(async move {
                    let peer = s.peer().clone();
                    if let Err(e) = exec(s, &cmd, &ns).await {
                        tracing::warn!(%peer, error = %e, "--exec failed");
                    }
                });
            }
            Some(_) = running.join_next() => {}
        }
    }
    while running.join_next().await.is_some() {}
    Ok(Exit::Ok)
}

/// Runs `sh -c cmd` with `stream` on its stdin and stdout; the child is
/// killed if this future is dropped (Ctrl-C) or the peer goes away.
async fn exec(stream: PeerStream, cmd: &str, ns: &Namespace) -> Result<(), CliError> {
    let peer = stream.peer().clone();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("MASSE_PEER", peer.as_str())
        .env("MASSE_PEER_INSTANCE", stream.peer_instance().to_string())
        .env("MASSE_SERVICE", stream.service().unwrap_or(""))
        .env("MASSE_NAMESPACE", ns.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::failure(format!("cannot run sh -c {cmd:?}: {e}")))?;
    let (Some(mut child_in), Some(mut child_out)) = (child.stdin.take(), child.stdout.take())
    else {
        return Err(CliError::failure("the child has no stdin or stdout"));
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Peer → child; the child sees EOF when the peer closes its side.
    let to_child = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut rd, &mut child_in).await;
        let _ = child_in.shutdown().await;
    });
    // Child → peer, until the child closes its stdout.
    let from_child = async {
        tokio::io::copy(&mut child_out, &mut wr).await?;
        wr.shutdown().await
    }
    .await;
    to_child.abort();
    if let Err(e) = &from_child {
        tracing::debug!(%peer, error = %e, "the peer went away; stopping the command");
        let _ = child.start_kill();
    }
    let status = child
        .wait()
        .await
        .map_err(|e| CliError::failure(format!("waiting for sh -c {cmd:?}: {e}")))?;
    tracing::info!(%peer, %status, "command finished");
    Ok(())
}
