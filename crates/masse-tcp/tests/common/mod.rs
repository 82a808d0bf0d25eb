//! What masse-tcp's test files share.

/// True, with a loud skip notice for `test`, where this host has no IPv6
/// loopback to bind.
pub(crate) fn without_ipv6_loopback(test: &str) -> bool {
    match std::net::TcpListener::bind("[::1]:0") {
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "SKIPPED {test}: this host cannot bind [::1]:0 (no IPv6 loopback)"
            );
            true
        }
    }
}
