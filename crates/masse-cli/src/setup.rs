//! What the commands share: the registry, the namespace, targets, joining
//! as a node, deadlines and signals.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use masse::{DynInterface, DynRegistry, InstanceId, Namespace, Node, PeerName};

use crate::cli::{Global, InterfaceKind};
use crate::error::{CliError, Exit};
use crate::output::format_duration;

/// The service `masse ping` asks for when none is given; `masse listen`
/// closes such streams without piping them.
pub(crate) const PING_SERVICE: &str = "masse-ping";

/// The environment variable that gives the namespace secret itself.
const SECRET_ENV: &str = "MASSE_SECRET";

/// How long a node that is shutting down waits for its open streams.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl Global {
    /// The namespace to work in.
    pub(crate) fn namespace(&self) -> Result<Namespace, CliError> {
        Ok(Namespace::new(
            self.namespace.as_deref().unwrap_or("default"),
        )?)
    }

    /// The namespace secret: `--secret-file`, else `MASSE_SECRET`, else none.
    /// Its length is checked when the node starts.
    pub(crate) fn secret(&self) -> Result<Option<Vec<u8>>, CliError> {
        let Some(path) = &self.secret_file else {
            return Ok(std::env::var_os(SECRET_ENV).map(|v| v.into_encoded_bytes()));
        };
        let mut bytes = std::fs::read(path).map_err(|e| {
            CliError::usage(format!(
                "cannot read the secret file {}: {e}",
                path.display()
            ))
        })?;
        // One line ending, as an editor or `echo` leaves it.
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Ok(Some(bytes))
    }

    /// The name to join under when the command has none of its own.
    pub(crate) fn join_name(&self) -> Result<PeerName, CliError> {
        match &self.name {
            Some(n) => Ok(PeerName::new(n)?),
            None => Ok(PeerName::new(&ephemeral_name())?),
        }
    }

    /// Connects to the registry (`--registry`, else `MASSE_REGISTRY`, else the
    /// embedded default), within `--timeout`.
    pub(crate) async fn registry(&self) -> Result<DynRegistry, CliError> {
        let url = self
            .registry
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let label = url.map_or_else(|| "the default registry".to_owned(), redact);
        tracing::debug!(registry = %label, "connecting to the registry");
        if url.is_some_and(|u| u.to_ascii_lowercase().starts_with("memory:")) {
            tracing::warn!(
                "memory:// is a registry inside this one process: no other process sees it"
            );
        }
        let connect = async {
            match url {
                Some(u) => masse::registry_from_url(u).await,
                None => masse::registry_from_env().await,
            }
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CliError::new(
                Exit::Registry,
                format!(
                    "registry {label} did not answer within {}",
                    format_duration(self.timeout)
                ),
            )),
        }
    }

    /// The transport `--interface` and `--bind` name, for a node called `name`.
    pub(crate) fn interface(&self, name: &PeerName) -> Result<DynInterface, CliError> {
        match self.interface {
            InterfaceKind::Tcp => Ok(Arc::new(masse::TcpInterface::try_new(&self.bind)?)),
            InterfaceKind::Tls => tls(&self.bind, name),
            InterfaceKind::Quic => quic(&self.bind, name),
            InterfaceKind::Unix => unix(&self.bind),
        }
    }

    /// Starts a node called `name` in `namespace` on `registry`, within `--timeout`.
    pub(crate) async fn start_node(
        &self,
        name: &PeerName,
        namespace: &Namespace,
        registry: DynRegistry,
        services: &[String],
        metadata: &[(String, String)],
    ) -> Result<Node, CliError> {
        self.start_node_with(name, namespace, registry, services, metadata, false)
            .await
    }

    /// [`start_node`](Self::start_node), answering the reserved service
    /// `masse-stats` if `expose_stats`.
    pub(crate) async fn start_node_with(
        &self,
        name: &PeerName,
        namespace: &Namespace,
        registry: DynRegistry,
        services: &[String],
        metadata: &[(String, String)],
        expose_stats: bool,
    ) -> Result<Node, CliError> {
        let mut builder = Node::builder(name.as_str())
            .expose_stats(expose_stats)
            .namespace(namespace.as_str())
            .registry_dyn(registry)
            .interface_dyn(self.interface(name)?)
            .ttl(self.ttl)
            .connect_timeout(self.timeout)
            .handshake_timeout(self.timeout)
            .shutdown_grace(SHUTDOWN_GRACE);
        if let Some(secret) = self.secret()? {
            builder = builder.secret(secret);
        }
        for s in services {
            builder = builder.service(s.as_str());
        }
        for (k, v) in metadata {
            builder = builder.metadata(k.as_str(), v.as_str());
        }
        deadline(
            self.timeout,
            builder.start(),
            &format!("joining the registry as {name}"),
        )
        .await?
        .map_err(CliError::from)
    }

    /// Shuts `node` down (it leaves the registry), within `--timeout`; a
    /// failure is logged, not returned: the command's own outcome matters more.
    pub(crate) async fn stop_node(&self, node: &Node) {
        match tokio::time::timeout(self.timeout + SHUTDOWN_GRACE, node.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leaving the registry failed; the record expires after the ttl")
            }
            Err(_) => {
                tracing::warn!("leaving the registry timed out; the record expires after the ttl")
            }
        }
    }
}

#[cfg(feature = "tls")]
fn tls(bind: &str, name: &PeerName) -> Result<DynInterface, CliError> {
    let identity = Arc::new(masse::Identity::generate(name.as_str())?);
    Ok(Arc::new(
        masse::TlsInterface::try_new(bind)?.identity(identity),
    ))
}

#[cfg(not(feature = "tls"))]
fn tls(_bind: &str, _name: &PeerName) -> Result<DynInterface, CliError> {
    Err(not_in_build("tls"))
}

#[cfg(feature = "quic")]
fn quic(bind: &str, name: &PeerName) -> Result<DynInterface, CliError> {
    let identity = Arc::new(masse::Identity::generate(name.as_str())?);
    Ok(Arc::new(
        masse::QuicInterface::try_new(bind)?.identity(identity),
    ))
}

#[cfg(not(feature = "quic"))]
fn quic(_bind: &str, _name: &PeerName) -> Result<DynInterface, CliError> {
    Err(not_in_build("quic"))
}

/// `--bind` for `--interface unix`: a socket path, or the default address
/// meaning the default path.
#[cfg(unix)]
fn unix(bind: &str) -> Result<DynInterface, CliError> {
    if bind == crate::cli::DEFAULT_BIND {
        return Ok(Arc::new(masse::UnixInterface::new()));
    }
    if bind.starts_with('/') || bind.starts_with('.') {
        return Ok(Arc::new(masse::UnixInterface::at(bind)));
    }
    Err(CliError::usage(format!(
        "--interface unix binds a socket path (such as /run/app/me.sock or ./me.sock), not {bind:?}"
    )))
}

#[cfg(not(unix))]
fn unix(_bind: &str) -> Result<DynInterface, CliError> {
    Err(CliError::usage("--interface unix needs a Unix system"))
}

#[cfg(not(all(feature = "tls", feature = "quic")))]
fn not_in_build(interface: &str) -> CliError {
    CliError::usage(format!(
        "--interface {interface} is not available in this build; rebuild masse-cli with the `{interface}` feature"
    ))
}

/// `cli-` and 8 random hex digits.
pub(crate) fn ephemeral_name() -> String {
    format!(
        "cli-{}",
        crate::output::short_instance(InstanceId::random())
    )
}

/// A peer to dial: a name, or `masse://NAMESPACE/NAME[/SERVICE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The namespace the URL names, if it was a URL.
    pub(crate) namespace: Option<Namespace>,
    /// The peer's name.
    pub(crate) name: PeerName,
    /// The service the URL names, if any.
    pub(crate) service: Option<String>,
}

impl Target {
    /// Parses a target as the user wrote it.
    pub(crate) fn parse(s: &str) -> Result<Target, CliError> {
        let Some(rest) = s.strip_prefix("masse://") else {
            return Ok(Target {
                namespace: None,
                name: PeerName::new(s)?,
                service: None,
            });
        };
        let bad = || {
            CliError::usage(format!(
                "invalid target {s:?}: expected masse://NAMESPACE/NAME[/SERVICE]"
            ))
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (ns, name, service) = match parts.as_slice() {
            [ns, name] => (*ns, *name, None),
            [ns, name, ""] => (*ns, *name, None),
            [ns, name, svc] => (*ns, *name, Some(*svc)),
            _ => return Err(bad()),
        };
        if ns.is_empty() || name.is_empty() {
            return Err(bad());
        }
        if let Some(svc) = service {
            masse::validate_service(svc)?;
        }
        Ok(Target {
            namespace: Some(Namespace::new(ns)?),
            name: PeerName::new(name)?,
            service: service.map(str::to_owned),
        })
    }

    /// The namespace to dial in: the URL's, which must agree with `--namespace` if both are given.
    pub(crate) fn namespace(&self, global: &Global) -> Result<Namespace, CliError> {
        match (&self.namespace, &global.namespace) {
            (Some(url), Some(flag)) if url.as_str() != flag => Err(CliError::usage(format!(
                "the target is in namespace {url} but --namespace says {flag}"
            ))),
            (Some(url), _) => Ok(url.clone()),
            (None, _) => global.namespace(),
        }
    }

    /// The service to ask for: the URL's or `--service` (they must agree).
    pub(crate) fn service(&self, flag: Option<&str>) -> Result<Option<String>, CliError> {
        match (self.service.as_deref(), flag) {
            (Some(url), Some(flag)) if url != flag => Err(CliError::usage(format!(
                "the target names service {url} but --service says {flag}"
            ))),
            (_, Some(flag)) => {
                masse::validate_service(flag)?;
                Ok(Some(flag.to_owned()))
            }
            (url, None) => Ok(url.map(str::to_owned)),
        }
    }
}

/// Runs `fut` with a deadline; running out is an [`Exit::Timeout`] naming `what`.
pub(crate) async fn deadline<T>(
    limit: Duration,
    fut: impl Future<Output = T>,
    what: &str,
) -> Result<T, CliError> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        CliError::new(
            Exit::Timeout,
            format!("{what} timed out after {}", format_duration(limit)),
        )
    })
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM. Never resolves if the
/// signal handlers cannot be installed.
pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

pub(crate) use masse::redact;

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn global(args: &[&str]) -> Global {
        let mut all = vec!["masse"];
        all.extend_from_slice(args);
        all.push("peers");
        Cli::try_parse_from(all).unwrap().global
    }

    #[test]
    fn targets_parse() {
        let t = Target::parse("db-1").unwrap();
        assert_eq!(
            (t.name.as_str(), t.namespace, t.service),
            ("db-1", None, None)
        );
        let t = Target::parse("masse://prod/db-1/rpc").unwrap();
        assert_eq!(t.name.as_str(), "db-1");
        assert_eq!(t.namespace.as_ref().map(Namespace::as_str), Some("prod"));
        assert_eq!(t.service.as_deref(), Some("rpc"));
        let t = Target::parse("masse://prod/db-1/").unwrap();
        assert_eq!(t.service, None);
        for bad in [
            "bad name",
            "masse://",
            "masse://prod",
            "masse://prod/",
            "masse:///db",
            "masse://prod/db/rpc/x",
            "masse://pr od/db",
            "masse://prod/db/r pc",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert_eq!(e.exit, Exit::Usage, "{bad}: {e}");
        }
    }

    #[test]
    fn url_and_flags_must_agree() {
        let t = Target::parse("masse://prod/db-1/rpc").unwrap();
        assert_eq!(t.namespace(&global(&[])).unwrap().as_str(), "prod");
        assert_eq!(
            t.namespace(&global(&["--namespace", "prod"]))
                .unwrap()
                .as_str(),
            "prod"
        );
        assert_eq!(
            t.namespace(&global(&["--namespace", "dev"]))
                .unwrap_err()
                .exit,
            Exit::Usage
        );
        assert_eq!(t.service(None).unwrap().as_deref(), Some("rpc"));
        assert_eq!(t.service(Some("rpc")).unwrap().as_deref(), Some("rpc"));
        assert_eq!(t.service(Some("web")).unwrap_err().exit, Exit::Usage);
        let plain = Target::parse("db-1").unwrap();
        assert_eq!(plain.namespace(&global(&[])).unwrap().as_str(), "default");
        assert_eq!(plain.service(Some("b ad")).unwrap_err().exit, Exit::Usage);
    }

    #[test]
    fn names_and_passwords() {
        let n = ephemeral_name();
        assert!(n.starts_with("cli-") && n.len() == 12, "{n}");
        assert!(PeerName::new(&n).is_ok());
        assert_ne!(ephemeral_name(), ephemeral_name());
        assert_eq!(
            redact("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact("sqlite:///tmp/reg.db"), "sqlite:///tmp/reg.db");
    }

    #[test]
    fn missing_interfaces_are_usage_errors() {
        let name = PeerName::new("x").unwrap();
        let g = global(&["--interface", "tcp", "--bind", "127.0.0.1:0"]);
        assert!(g.interface(&name).is_ok());
        let g = global(&["--bind", "not-an-address"]);
        assert_eq!(g.interface(&name).err().map(|e| e.exit), Some(Exit::Usage));
        #[cfg(not(feature = "tls"))]
        {
            let e = global(&["--interface", "tls"])
                .interface(&name)
                .err()
                .unwrap();
            assert!(e.message.contains("not available in this build"), "{e}");
        }
        #[cfg(not(feature = "quic"))]
        {
            let e = global(&["--interface", "quic"])
                .interface(&name)
                .err()
                .unwrap();
            assert!(e.message.contains("`quic` feature"), "{e}");
        }
    }
}
