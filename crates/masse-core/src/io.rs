//! Type-erased byte streams: [`Io`] and [`BoxIo`].

use tokio::io::{AsyncRead, AsyncWrite};

/// A full-duplex byte stream: anything [`AsyncRead`] + [`AsyncWrite`] that can
/// move between tasks. Implemented for every such type.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + ?Sized> Io for T {}

/// A boxed [`Io`]: what interfaces return and wrappers transform.
pub type BoxIo = Box<dyn Io>;
