//! The accepting side: a bound Unix socket as a [`Listener`], which removes
//! its socket file when it closes.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use masse_core::{Accepted, Endpoint, Error, Listener, PeerCredentials, Result, async_trait};

use crate::path::{context, file_id};

/// First pause after an accept error that a pending connection did not cause.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between retries of a failing accept.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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
    backoff: Option<Duration>,
}

impl UnixListener {
    /// Binds `path` (absolute; nothing there).
    pub(crate) fn bind(path: PathBuf) -> Result<Self> {
        let endpoint = Endpoint::unix(&path)?;
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| context(e, format!("bind {endpoint}")))?;
        Ok(UnixListener {
            created: file_id(&path),
            listener: Some(listener),
            path,
            endpoint,
            backoff: None,
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

/// What an accept error means for the listener.
#[derive(Debug, PartialEq, Eq)]
enum AcceptFailure {
    /// One pending connection failed before it was accepted: try the next.
    Connection,
    /// The listener is broken: give up.
    Fatal,
    /// Out of file descriptors, buffers or memory: retry after a pause.
    Transient,
}

fn classify(e: &std::io::Error) -> AcceptFailure {
    match e.kind() {
        ErrorKind::ConnectionAborted
        | ErrorKind::ConnectionReset
        | ErrorKind::Interrupted
        | ErrorKind::WouldBlock => AcceptFailure::Connection,
        // EINVAL: the socket is not listening.
        ErrorKind::InvalidInput => AcceptFailure::Fatal,
        _ => AcceptFailure::Transient,
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
                    self.backoff = None;
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
                Err(e) => match classify(&e) {
                    AcceptFailure::Connection => {
                        tracing::debug!(endpoint = %self.endpoint, error = %e, "a connection failed before it was accepted");
                    }
                    AcceptFailure::Transient => {
                        let delay = self
                            .backoff
                            .map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
                        self.backoff = Some(delay);
                        tracing::warn!(endpoint = %self.endpoint, error = %e, retry_in = ?delay, "unix accept failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    AcceptFailure::Fatal => {
                        tracing::error!(endpoint = %self.endpoint, error = %e, "unix listener failed; it accepts no more");
                        let err = context(e, format!("accept on {}", self.endpoint));
                        self.release();
                        return Err(err);
                    }
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_classified() {
        use AcceptFailure::*;
        let of = |k| classify(&std::io::Error::from(k));
        assert_eq!(of(ErrorKind::ConnectionAborted), Connection);
        assert_eq!(of(ErrorKind::Interrupted), Connection);
        assert_eq!(of(ErrorKind::InvalidInput), Fatal);
        assert_eq!(of(ErrorKind::OutOfMemory), Transient);
        assert_eq!(of(ErrorKind::Other), Transient);
    }
}
