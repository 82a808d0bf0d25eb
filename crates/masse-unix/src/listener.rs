//! The accepting side: a bound Unix socket as a [`Listener`], which removes
//! its socket file when it closes.

use std::io::ErrorKind;
use std::path::PathBuf;

use masse_core::{
    AcceptBackoff, Accepted, Endpoint, Error, Listener, PeerCredentials, Result, async_trait,
};

use crate::path::file_id;

/// A bound Unix listener and the socket file it owns.
#[derive(Debug)]
pub(crate) struct UnixListener {
    /// `None` once closed.
    listener: Option<tokio::net::UnixListener>,
    path: PathBuf,
    endpoint: Endpoint,
    /// The socket file this listener created: removed only if the path
    /// still names it (another process may have bound the path since).
    created: Option<(u64, u64)>,
    backoff: AcceptBackoff,
}

impl UnixListener {
    /// Binds `path` (absolute; nothing there).
    pub(crate) fn bind(path: PathBuf) -> Result<Self> {
        let endpoint = Endpoint::unix(&path)?;
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::io_context(e, format!("bind {endpoint}")))?;
        Ok(UnixListener {
            created: file_id(&path),
            listener: Some(listener),
            path,
            endpoint,
            backoff: AcceptBackoff::new(),
        })
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops listening and removes the socket file if it is still ours.
    fn release(&mut self) {
        if self.listener.take().is_none() {
            return;
        }
        if self.created.is_some() && file_id(&self.path) == self.created {
            match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::debug!(path = %self.path.display(), "unix socket removed"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the unix socket file")
                }
            }
        }
    }
}

#[async_trait]
impl Listener for UnixListener {
    fn endpoints(&self) -> Vec<Endpoint> {
        vec![self.endpoint.clone()]
    }

    async fn accept(&mut self) -> Result<Accepted> {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return Err(Error::Closed("unix listener"));
            };
            // Cancel-safe: tokio's accept loses no connection when dropped.
            match listener.accept().await {
                Ok((stream, _)) => {
                    self.backoff.reset();
                    let credentials = match stream.peer_cred() {
                        Ok(c) => Some(PeerCredentials::new(c.uid(), c.gid(), c.pid())),
                        Err(e) => {
                            tracing::debug!(error = %e, "no peer credentials for an accepted unix socket");
                            None
                        }
                    };
                    let accepted = Accepted::new(Box::new(stream), None);
                    return Ok(match credentials {
                        Some(c) => accepted.with_peer_credentials(c),
                        None => accepted,
                    });
                }
                Err(e) => {
                    if let Err(fatal) = self.backoff.handle(e, &self.endpoint).await {
                        self.release();
                        return Err(fatal);
                    }
                }
            }
        }
    }

    async fn close(&mut self) {
        self.release();
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        self.release();
    }
}
