//! [`UnixInterface`]: binding and dialing `unix://` endpoints.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use masse_core::{
    BindContext, BoxIo, ConnectContext, Endpoint, Error, Interface, Listener, PeerRecord, Protocol,
    Result, async_trait, dial_within,
};
use tokio::net::UnixStream;

use crate::listener::UnixListener;
use crate::path::{Existing, MAX_PATH, default_dir, default_path, inspect, sweep_earlier};

/// Streams over Unix domain sockets, at `unix:///path` endpoints: peers on
/// one host, with their operating-system credentials (see the crate docs).
#[derive(Debug, Clone, Default)]
pub struct UnixInterface {
    place: Place,
}

#[derive(Debug, Clone, Default)]
enum Place {
    /// The default name in the default directory.
    #[default]
    Default,
    /// The default name in this directory.
    Dir(PathBuf),
    /// This path.
    At(PathBuf),
}

/// First pause when a listener's backlog is full.
const BACKLOG_RETRY_MIN: Duration = Duration::from_millis(1);
/// Longest pause between dials into a full backlog.
const BACKLOG_RETRY_MAX: Duration = Duration::from_millis(50);

impl UnixInterface {
    /// Listens at the default path: `$XDG_RUNTIME_DIR/masse/`, else
    /// `<temp dir>/masse-<uid>/` (mode 0700), file
    /// `<namespace>.<name>.<instance>.sock` (see the crate docs).
    pub fn new() -> Self {
        UnixInterface::default()
    }

    /// Listens at `path`. A relative path is taken from the current
    /// directory when the node starts (endpoints carry absolute paths).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        UnixInterface {
            place: Place::At(path.into()),
        }
    }

    /// Listens in `dir` (which must exist), under the default file name.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        UnixInterface {
            place: Place::Dir(dir.into()),
        }
    }

    /// The socket path a node with this context binds.
    async fn path_for(&self, ctx: &BindContext) -> Result<PathBuf> {
        let path = match &self.place {
            Place::At(p) => absolute(p)?,
            Place::Dir(d) => default_path(&absolute(d)?, ctx),
            Place::Default => default_path(&default_dir(own_uid().await?)?, ctx),
        };
        if path.as_os_str().len() > MAX_PATH {
            return Err(Error::InvalidAddress {
                kind: "unix socket path",
                input: path.display().to_string(),
                reason: format!("longer than the {MAX_PATH} bytes a socket address holds"),
            });
        }
        Ok(path)
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io_context(e, format!("resolve {}", p.display())))
}

/// This process's user id, as the kernel reports it for a socket pair.
async fn own_uid() -> Result<u32> {
    let (a, _b) = UnixStream::pair().map_err(|e| Error::io_context(e, "socketpair"))?;
    a.peer_cred()
        .map(|c| c.uid())
        .map_err(|e| Error::io_context(e, "SO_PEERCRED"))
}

#[async_trait]
impl Interface for UnixInterface {
    fn protocol(&self) -> Protocol {
        Protocol::UNIX
    }

    async fn bind(&self, ctx: &BindContext) -> Result<Box<dyn Listener>> {
        let path = self.path_for(ctx).await?;
        if !matches!(self.place, Place::At(_))
            && let Some(dir) = path.parent()
        {
            sweep_earlier(dir, ctx, &path).await;
        }
        if inspect(&path).await? == Existing::Stale {
            tracing::info!(path = %path.display(), "removing a stale unix socket nobody accepts on");
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io_context(e, format!("remove {}", path.display()))),
            }
        }
        let listener = match &self.place {
            Place::Default => UnixListener::bind(path)?.in_private_dir(own_uid().await?),
            _ => UnixListener::bind(path)?,
        };
        tracing::debug!(endpoint = %listener.endpoint(), "unix listening");
        Ok(Box::new(listener))
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        peer: &PeerRecord,
        ctx: &ConnectContext,
    ) -> Result<BoxIo> {
        let path = endpoint.unix_path().ok_or_else(|| {
            Error::Unsupported(format!("the unix interface cannot dial {endpoint}"))
        })?;
        let dial = async {
            let mut pause = BACKLOG_RETRY_MIN;
            loop {
                match UnixStream::connect(path).await {
                    // The listener's backlog is full: it is there, only busy.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(BACKLOG_RETRY_MAX);
                    }
                    other => return other,
                }
            }
        };
        let stream = dial_within(ctx.connect_timeout, endpoint, dial).await?;
        tracing::debug!(peer = %peer.name, %endpoint, "unix connected");
        Ok(Box::new(stream))
    }
}
