//! Shared helpers for the masse examples, and backends written against
//! masse's public traits the way a third-party crate would: `tenant` (a
//! registry) and `pipe` (a transport with a scheme of its own).

pub mod pipe;
pub mod tenant;

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
