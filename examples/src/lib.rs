//! Shared helpers for the masse examples, and backends written against
//! masse's public traits the way a third-party crate would:
//!
//! - [`tenant`]: `TenantRegistry`, several tenants on one shared backend
//!   (example `custom_registry`, test `tests/tenant.rs`);
//! - [`json_registry`]: `JsonFileRegistry`, a registry in one JSON file,
//!   which cannot watch (masse polls it) and is registered under the
//!   `json://` URL scheme (example `json_registry`, test
//!   `tests/json_registry.rs`);
//! - [`pipe`]: `PipeInterface`, a transport with a scheme of its own
//!   (`pipe://name`, in-memory streams between the nodes of one process;
//!   example `custom_transport`, test `tests/pipe.rs`).

pub mod json_registry;
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
