//! The accepting side: a bound Unix socket as a [`Listener`], which removes
//! its socket file when it closes.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

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
    /// When to look whether the socket file is still there.
    check: tokio::time::Interval,
    /// The listener whose file was deleted: what it had queued before is
    /// accepted still, then it goes.
    orphan: Option<tokio::net::UnixListener>,
    /// The path is taken by a file that is not ours (said once).
    displaced: bool,
    /// The socket is in the default directory, private to this user id:
    /// made again if it goes (`$XDG_RUNTIME_DIR` is removed at logout).
    private_dir: Option<u32>,
}

/// How often a listener looks whether its socket file is still at its path.
const CHECK_EVERY: Duration = Duration::from_millis(500);

impl UnixListener {
    /// Binds `path` (absolute; nothing there).
    pub(crate) fn bind(path: PathBuf) -> Result<Self> {
        let endpoint = Endpoint::unix(&path)?;
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::io_context(e, format!("bind {endpoint}")))?;
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(UnixListener {
            created: file_id(&path),
            listener: Some(listener),
            path,
            endpoint,
            backoff: AcceptBackoff::new(),
            check,
            orphan: None,
            displaced: false,
            private_dir: None,
        })
    }

    /// The socket is in the default directory of user `uid`: if the
    /// directory goes with the file, it is made again (mode 0700).
    pub(crate) fn in_private_dir(mut self, uid: u32) -> Self {
        self.private_dir = Some(uid);
        self
    }

    /// Is the socket file still at the path? If it was deleted (a cleanup
    /// script, an operator), binds the path again: the endpoint in the
    /// registry stays right and dialers reach this node again. A path taken
    /// by another file is left alone.
    fn check_file(&mut self) {
        let now = file_id(&self.path);
        if now == self.created {
            return;
        }
        if now.is_some() {
            if !self.displaced {
                self.displaced = true;
                tracing::warn!(path = %self.path.display(), "another file took this node's unix socket path; not taking it back, dials to it do not reach this node");
            }
            return;
        }
        if let (Some(uid), Some(dir)) = (self.private_dir, self.path.parent())
            && !dir.exists()
        {
            match crate::path::private_dir(dir, uid) {
                Ok(()) => {
                    tracing::warn!(dir = %dir.display(), "the unix socket directory was deleted; made it again")
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot make the unix socket directory again; next check")
                }
            }
        }
        match tokio::net::UnixListener::bind(&self.path) {
            Ok(fresh) => {
                tracing::warn!(path = %self.path.display(), "this node's unix socket file was deleted; bound again");
                self.created = file_id(&self.path);
                self.displaced = false;
                self.orphan = self.listener.replace(fresh);
            }
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "cannot bind the deleted unix socket path again; next check");
            }
        }
    }

    /// A connection the deleted file's listener had queued, if any left.
    fn drain_orphan(&mut self) -> Option<std::io::Result<tokio::net::UnixStream>> {
        let orphan = self.orphan.as_ref()?;
        match orphan.poll_accept(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => Some(r.map(|(stream, _)| stream)),
            Poll::Pending => {
                self.orphan = None;
                None
            }
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops listening and removes the socket file if it is still ours.
    fn release(&mut self) {
        self.orphan = None;
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
            let accepted = match self.drain_orphan() {
                Some(r) => r,
                None => {
                    let Some(listener) = self.listener.as_ref() else {
                        return Err(Error::Closed("unix listener"));
                    };
                    let check = &mut self.check;
                    // Cancel-safe: a connection is taken only when returned.
                    let next = std::future::poll_fn(|cx| {
                        if check.poll_tick(cx).is_ready() {
                            return Poll::Ready(Ok(None));
                        }
                        listener
                            .poll_accept(cx)
                            .map(|r| r.map(|(stream, _)| Some(stream)))
                    })
                    .await;
                    match next {
                        Ok(Some(stream)) => Ok(stream),
                        Ok(None) => {
                            self.check_file();
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match accepted {
                Ok(stream) => {
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
