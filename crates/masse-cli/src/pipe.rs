//! Piping a stream to stdout and stdin to the stream, both ways at once.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// How long to keep a stream open for more input once the peer has closed
/// its side and input has stopped coming.
pub(crate) const IDLE_AFTER_PEER_CLOSE: Duration = Duration::from_secs(1);

const CHUNK: usize = 16 * 1024;

/// Chunks of input, read ahead by a task and shared by successive streams:
/// `masse listen --keep-open` hands what is left to the next stream.
#[derive(Debug)]
pub(crate) struct Input {
    rx: mpsc::Receiver<Vec<u8>>,
}

impl Input {
    /// Input read from `reader` (stdin, in the commands) until it ends or fails.
    pub(crate) fn spawn(mut reader: impl AsyncRead + Unpin + Send + 'static) -> Input {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reading stdin failed; treating it as ended");
                        break;
                    }
                }
            }
        });
        Input { rx }
    }

    /// Stdin.
    pub(crate) fn stdin() -> Input {
        Self::spawn(tokio::io::stdin())
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }
}

/// How a piped stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piped {
    /// Bytes from the peer written to the output.
    pub(crate) bytes_in: u64,
    /// Bytes of input written to the peer.
    pub(crate) bytes_out: u64,
}

/// Copies `stream` to `output` and `input` to `stream` at the same time.
///
/// When input ends, the stream's write side is shut down and reading goes on
/// until the peer closes. When the peer closes first, input keeps being sent
/// while it keeps coming, and the stream ends after `idle` without any. A
/// closed output (a broken pipe) ends the stream quietly. Errors reading from
/// the peer are returned; errors writing to it are not (the read side tells
/// whether the peer is gone).
pub(crate) async fn pipe<S, W>(
    stream: S,
    input: &mut Input,
    mut output: W,
    idle: Duration,
) -> io::Result<Piped>
where
    S: AsyncRead + AsyncWrite,
    W: AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (peer_closed_tx, mut peer_closed) = watch::channel(false);

    let down = async move {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        let result = loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) => break Ok(total),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if let Err(e) = output.write_all(&buf[..n]).await {
                tracing::debug!(error = %e, "output closed; dropping the rest of the stream");
                break Ok(total);
            }
            total += n as u64;
            // Interactive use wants bytes to show up as they arrive.
            if output.flush().await.is_err() {
                break Ok(total);
            }
        };
        let _ = output.flush().await;
        let _ = peer_closed_tx.send(true);
        result
    };

    let up = async move {
        let mut total = 0u64;
        loop {
            let closed = *peer_closed.borrow_and_update();
            let chunk = if closed {
                match tokio::time::timeout(idle, input.next()).await {
                    Ok(c) => c,
                    Err(_) => {
                        tracing::debug!("peer closed and no input for {idle:?}; closing");
                        break;
                    }
                }
            } else {
                tokio::select! {
                    c = input.next() => c,
                    _ = peer_closed.changed() => continue,
                }
            };
            match chunk {
                Some(c) => {
                    if let Err(e) = wr.write_all(&c).await {
                        tracing::debug!(error = %e, "writing to the peer failed");
                        break;
                    }
                    total += c.len() as u64;
                }
                None => {
                    if let Err(e) = wr.shutdown().await {
                        tracing::debug!(error = %e, "closing the write side failed");
                    }
                    break;
                }
            }
        }
        total
    };

    let (bytes_in, bytes_out) = tokio::join!(down, up);
    Ok(Piped {
        bytes_in: bytes_in?,
        bytes_out,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn both_ways_then_half_close() {
        rt().block_on(async {
            let (ours, mut theirs) = duplex(64 * 1024);
            let (input_w, input_r) = duplex(1024);
            let mut input = Input::spawn(input_r);
            let mut out = Vec::new();
            let peer = tokio::spawn(async move {
                theirs.write_all(b"from peer").await.unwrap();
                theirs.shutdown().await.unwrap();
                let mut got = Vec::new();
                theirs.read_to_end(&mut got).await.unwrap();
                got
            });
            let mut input_w = input_w;
            input_w.write_all(b"from stdin").await.unwrap();
            drop(input_w);
            let piped = pipe(ours, &mut input, &mut out, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(out, b"from peer");
            assert_eq!(peer.await.unwrap(), b"from stdin");
            assert_eq!(
                piped,
                Piped {
                    bytes_in: 9,
                    bytes_out: 10
                }
            );
        });
    }

    #[test]
    fn input_eof_keeps_reading_until_the_peer_closes() {
        rt().block_on(async {
            let (ours, mut theirs) = duplex(1024);
            let (input_w, input_r) = duplex(1024);
            drop(input_w);
            let mut input = Input::spawn(input_r);
            let peer = tokio::spawn(async move {
                let mut got = Vec::new();
                theirs.read_to_end(&mut got).await.unwrap(); // our write side closes first
                tokio::time::sleep(Duration::from_millis(50)).await;
                theirs.write_all(b"late answer").await.unwrap();
                got
            });
            let mut out = Vec::new();
            pipe(ours, &mut input, &mut out, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(out, b"late answer");
            assert!(peer.await.unwrap().is_empty());
        });
    }

    #[test]
    fn idle_input_after_the_peer_closed_ends_the_stream() {
        rt().block_on(async {
            let (ours, theirs) = duplex(1024);
            let (_input_w, input_r) = duplex(1024); // stdin stays open, silent
            let mut input = Input::spawn(input_r);
            drop(theirs);
            let started = std::time::Instant::now();
            let mut out = Vec::new();
            pipe(ours, &mut input, &mut out, Duration::from_millis(100))
                .await
                .unwrap();
            assert!(started.elapsed() < Duration::from_secs(2));
        });
    }

    #[test]
    fn input_left_over_goes_to_the_next_stream() {
        rt().block_on(async {
            let (mut input_w, input_r) = duplex(1024);
            let mut input = Input::spawn(input_r);
            input_w.write_all(b"queued").await.unwrap();
            drop(input_w);
            tokio::time::sleep(Duration::from_millis(20)).await;
            // First stream: the peer closes at once and reads nothing.
            let (ours, theirs) = duplex(1024);
            let reader = tokio::spawn(async move {
                let mut theirs = theirs;
                let mut got = Vec::new();
                theirs.shutdown().await.unwrap();
                theirs.read_to_end(&mut got).await.unwrap();
                got
            });
            pipe(ours, &mut input, Vec::new(), Duration::from_millis(100))
                .await
                .unwrap();
            assert_eq!(reader.await.unwrap(), b"queued");
            // Second stream: input has ended, so the write side closes at once.
            let (ours, mut theirs) = duplex(1024);
            theirs.shutdown().await.unwrap();
            let piped = pipe(ours, &mut input, Vec::new(), Duration::from_millis(100))
                .await
                .unwrap();
            assert_eq!(piped.bytes_out, 0);
        });
    }
}
