//! `masse dashboard [NAMESPACE]... [--listen ADDR] [--allow-remote] [--token T]`.

use std::net::SocketAddr;
use std::sync::Arc;

use masse::Namespace;
use masse_web::Dashboard;

use crate::cli::{DashboardArgs, Global};
use crate::error::{CliError, Exit};
use crate::output::notice;
use crate::setup::interrupted;

pub(crate) async fn run(g: &Global, args: DashboardArgs) -> Result<Exit, CliError> {
    let addr = check_listen(&args)?;
    let mut namespaces = Vec::new();
    for ns in &args.namespaces {
        namespaces.push(Namespace::new(ns)?);
    }
    if namespaces.is_empty() {
        namespaces.push(g.namespace()?);
    }
    let registry = g.registry().await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::failure(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    let mut builder = Dashboard::builder(registry.clone()).poll_interval(args.poll);
    let mut nodes = Vec::new();
    if args.join {
        let name = g.join_name()?;
        for ns in &namespaces {
            let node = Arc::new(g.start_node(&name, ns, registry.clone(), &[], &[]).await?);
            nodes.push(node.clone());
            builder = builder.stats_node(node);
        }
    }
    for ns in namespaces {
        builder = builder.namespace(ns);
    }
    if let Some(token) = &args.token {
        builder = builder.token(token.as_str());
    }
    let dashboard = builder.start();
    let names: Vec<&str> = dashboard
        .namespaces()
        .iter()
        .map(Namespace::as_str)
        .collect();
    let query = if args.token.is_some() {
        "?token=…"
    } else {
        ""
    };
    notice(format!(
        "dashboard of {} at http://{local}/{query} (JSON: /api/peers, /api/events; Prometheus: /metrics; Ctrl-C to stop)",
        names.join(", ")
    ));
    let served = dashboard
        .serve(listener, interrupted())
        .await
        .map_err(|e| CliError::failure(format!("serving the dashboard: {e}")));
    dashboard.shutdown();
    for node in &nodes {
        g.stop_node(node).await;
    }
    served.map(|()| Exit::Ok)
}

/// The address to serve on: loopback, or anything with `--allow-remote` and
/// a token (a dashboard open to the network without one is refused: it
/// shows every peer's addresses).
fn check_listen(args: &DashboardArgs) -> Result<SocketAddr, CliError> {
    let listen = match args.listen.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => args.listen.clone(),
    };
    let addr: SocketAddr = listen.parse().map_err(|_| {
        CliError::usage(format!(
            "invalid --listen address {:?}: expected IP:PORT, such as 127.0.0.1:7070",
            args.listen
        ))
    })?;
    if addr.ip().is_loopback() {
        return Ok(addr);
    }
    if !args.allow_remote {
        return Err(CliError::usage(format!(
            "--listen {addr} is reachable from other hosts: add --allow-remote and a --token (or MASSE_DASHBOARD_TOKEN), or listen on 127.0.0.1"
        )));
    }
    if args.token.as_deref().is_none_or(str::is_empty) {
        return Err(CliError::usage(
            "--allow-remote needs --token (or MASSE_DASHBOARD_TOKEN): a dashboard shows every peer's addresses",
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> DashboardArgs {
        let mut all = vec!["masse", "dashboard"];
        all.extend_from_slice(extra);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Dashboard(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn remote_binds_need_a_flag_and_a_token() {
        assert_eq!(
            check_listen(&args(&[])).unwrap().to_string(),
            "127.0.0.1:7070"
        );
        assert!(check_listen(&args(&["--listen", "[::1]:0"])).is_ok());
        let e = check_listen(&args(&["--listen", "0.0.0.0:7070"])).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.message.contains("--allow-remote"), "{e}");
        let e = check_listen(&args(&["--listen", "0.0.0.0:7070", "--allow-remote"])).unwrap_err();
        assert!(e.message.contains("--token"), "{e}");
        let ok = args(&["--listen", "0.0.0.0:7070", "--allow-remote", "--token", "t"]);
        assert!(check_listen(&ok).is_ok());
        assert!(check_listen(&args(&["--listen", "localhost:7070"])).is_ok());
        let e = check_listen(&args(&["--listen", "example.com:7070"])).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        let a = args(&["prod", "dev", "--poll", "250ms"]);
        assert_eq!(a.namespaces, ["prod", "dev"]);
        assert_eq!(a.poll, std::time::Duration::from_millis(250));
    }
}
