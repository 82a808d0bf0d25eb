//! Socket addresses for interfaces: parsing bind addresses with helpful
//! errors, and which addresses a listener advertises (DESIGN §4) — a pure
//! function plus the impure part that reads the host's interface addresses.
//! Shared by every interface crate (TCP, TLS, QUIC).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::endpoint::{Endpoint, Protocol};
use crate::error::{Error, Result, clip};

/// The addresses a listener bound to `bound` advertises, in order of preference.
///
/// - `overrides` non-empty: those addresses, in order, duplicates removed; a
///   port 0 in one of them is replaced by `bound`'s port.
/// - `bound` on a specific IP: that address.
/// - `bound` on a wildcard (`0.0.0.0`, `::`): the addresses in `host_ips` of the
///   same family, except loopback, IPv6 link-local (unusable without a scope),
///   unspecified and multicast ones, with `bound`'s port. Loopback addresses of
///   that family follow only if nothing else is left or `include_loopback` is
///   set; when `host_ips` has none, `127.0.0.1` or `::1` stands in, so the
///   result of a wildcard bind is never empty.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use masse_core::addr::advertised_addrs;
///
/// let bound: SocketAddr = "0.0.0.0:4100".parse().unwrap();
/// let host: Vec<IpAddr> = ["127.0.0.1", "10.0.0.7", "fd00::7"]
///     .iter().map(|s| s.parse().unwrap()).collect();
/// let expected: SocketAddr = "10.0.0.7:4100".parse().unwrap();
/// assert_eq!(advertised_addrs(bound, &[], &host, false), vec![expected]);
/// ```
pub fn advertised_addrs(
    bound: SocketAddr,
    overrides: &[SocketAddr],
    host_ips: &[IpAddr],
    include_loopback: bool,
) -> Vec<SocketAddr> {
    let port = bound.port();
    let mut out: Vec<SocketAddr> = Vec::new();
    if !overrides.is_empty() {
        for &o in overrides {
            let mut addr = o;
            if addr.port() == 0 {
                addr.set_port(port);
            }
            push(&mut out, addr);
        }
        return out;
    }
    if !bound.ip().is_unspecified() {
        push(&mut out, bound);
        return out;
    }
    let same_family: Vec<IpAddr> = host_ips
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv4() == bound.is_ipv4())
        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    for ip in same_family.iter().filter(|ip| !ip.is_loopback()) {
        push(&mut out, SocketAddr::new(*ip, port));
    }
    if out.is_empty() || include_loopback {
        let mut any_loopback = false;
        for ip in same_family.iter().filter(|ip| ip.is_loopback()) {
            any_loopback = true;
            push(&mut out, SocketAddr::new(*ip, port));
        }
        if !any_loopback {
            let lo = if bound.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            };
            push(&mut out, SocketAddr::new(lo, port));
        }
    }
    out
}

/// Appends `addr` unless it is already there.
fn push(out: &mut Vec<SocketAddr>, addr: SocketAddr) {
    if !out.contains(&addr) {
        out.push(addr);
    }
}

/// The endpoints a `protocol` listener bound to `bound` advertises now:
/// [`advertised_addrs`] applied to the host's current interface addresses
/// ([`host_ips`], read only for a wildcard bind without overrides). For
/// transports over IP other than TCP (QUIC).
pub fn advertised_endpoints(
    protocol: Protocol,
    bound: SocketAddr,
    overrides: &[SocketAddr],
    include_loopback: bool,
) -> Vec<Endpoint> {
    let host = if overrides.is_empty() && bound.ip().is_unspecified() {
        host_ips()
    } else {
        Vec::new()
    };
    advertised_addrs(bound, overrides, &host, include_loopback)
        .into_iter()
        .map(|addr| Endpoint::new(protocol.clone(), addr))
        .collect()
}

/// Checks the addresses a listener is told to advertise instead of its own
/// (the `overrides` of [`advertised_addrs`]) before it binds: a peer must be
/// able to dial each, so an unspecified IP (`0.0.0.0`, `::`) is an
/// [`Error::InvalidAddress`] of kind `"advertised address"`. Port 0 is
/// fine: it stands for the port bound.
///
/// ```
/// use masse_core::addr::check_advertised;
///
/// assert!(check_advertised(&["10.0.0.7:0".parse().unwrap()]).is_ok());
/// assert!(check_advertised(&["0.0.0.0:4100".parse().unwrap()]).is_err());
/// ```
pub fn check_advertised(overrides: &[SocketAddr]) -> Result<()> {
    match overrides.iter().find(|a| a.ip().is_unspecified()) {
        Some(bad) => Err(Error::InvalidAddress {
            kind: "advertised address",
            input: bad.to_string(),
            reason: "a peer cannot dial an unspecified address; advertise a concrete IP".into(),
        }),
        None => Ok(()),
    }
}

/// The IP addresses of the host's interfaces that are not administratively or
/// physically down. An empty list (and a warning) if they cannot be read.
pub fn host_ips() -> Vec<IpAddr> {
    use if_addrs::IfOperStatus;
    match if_addrs::get_if_addrs() {
        Ok(ifaces) => ifaces
            .into_iter()
            .filter(|i| {
                !matches!(
                    i.oper_status,
                    IfOperStatus::Down | IfOperStatus::NotPresent | IfOperStatus::LowerLayerDown
                )
            })
            .map(|i| i.ip())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the host's interface addresses; advertising loopback");
            Vec::new()
        }
    }
}

/// Parses an IP address and port such as `0.0.0.0:4100`, `127.0.0.1:0` or
/// `[::1]:0`, as `TcpInterface::new` (masse-tcp) does: host names are not resolved, and
/// an [`Error::InvalidAddress`] of kind `kind` explains the usual mistakes
/// (a missing port, an IPv6 address without brackets, a host name). For
/// transports over IP other than TCP (QUIC).
pub fn parse_socket_addr(kind: &'static str, input: &str) -> Result<SocketAddr> {
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let reason = if input.parse::<std::net::Ipv6Addr>().is_ok() {
        "missing port; an IPv6 address goes in brackets before the port (e.g. [::1]:4100, [::]:0)"
    } else if input.parse::<IpAddr>().is_ok() {
        "missing port; add one, or :0 for any free port (e.g. 0.0.0.0:0)"
    } else if input.trim() != input {
        "remove the surrounding white space"
    } else if input
        .rsplit_once(':')
        .is_some_and(|(host, port)| port.parse::<u16>().is_ok() && !host.contains(':'))
    {
        "host names are not resolved; give an IP address (e.g. 127.0.0.1:4100, [::1]:4100)"
    } else {
        "expected an IP address and port such as 0.0.0.0:4100, 127.0.0.1:0 or [::1]:0"
    };
    Err(Error::InvalidAddress {
        kind,
        input: clip(input),
        reason: reason.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const HOST: &[&str] = &[
        "127.0.0.1",
        "::1",
        "10.0.0.7",
        "fe80::1",
        "192.168.1.5",
        "fd00::7",
        "2001:db8::7",
        "169.254.3.4",
    ];

    #[test]
    fn specific_ip_advertises_itself() {
        let host = ips(HOST);
        for b in ["10.0.0.7:4100", "127.0.0.1:5000", "[::1]:7", "[fd00::7]:1"] {
            assert_eq!(advertised_addrs(sa(b), &[], &host, false), vec![sa(b)]);
            assert_eq!(advertised_addrs(sa(b), &[], &host, true), vec![sa(b)]);
        }
    }

    #[test]
    fn wildcard_v4_advertises_non_loopback_v4() {
        let got = advertised_addrs(sa("0.0.0.0:4100"), &[], &ips(HOST), false);
        assert_eq!(
            got,
            vec![
                sa("10.0.0.7:4100"),
                sa("192.168.1.5:4100"),
                sa("169.254.3.4:4100")
            ]
        );
    }

    #[test]
    fn wildcard_v6_skips_link_local_and_v4() {
        let got = advertised_addrs(sa("[::]:4100"), &[], &ips(HOST), false);
        assert_eq!(got, vec![sa("[fd00::7]:4100"), sa("[2001:db8::7]:4100")]);
    }

    #[test]
    fn loopback_on_request_comes_last() {
        let got = advertised_addrs(sa("0.0.0.0:4100"), &[], &ips(HOST), true);
        assert_eq!(got.last(), Some(&sa("127.0.0.1:4100")));
        assert_eq!(got.len(), 4);
        let got = advertised_addrs(sa("[::]:9"), &[], &ips(HOST), true);
        assert_eq!(got.last(), Some(&sa("[::1]:9")));
    }

    #[test]
    fn loopback_when_nothing_else() {
        let host = ips(&["127.0.0.1", "::1", "fe80::1", "10.0.0.7"]);
        assert_eq!(
            advertised_addrs(sa("[::]:80"), &[], &host, false),
            vec![sa("[::1]:80")]
        );
        let host = ips(&["127.0.0.1", "127.0.1.1", "fd00::1"]);
        assert_eq!(
            advertised_addrs(sa("0.0.0.0:80"), &[], &host, false),
            vec![sa("127.0.0.1:80"), sa("127.0.1.1:80")]
        );
    }

    #[test]
    fn never_empty_for_a_wildcard() {
        assert_eq!(
            advertised_addrs(sa("0.0.0.0:80"), &[], &[], false),
            vec![sa("127.0.0.1:80")]
        );
        assert_eq!(
            advertised_addrs(sa("[::]:80"), &[], &ips(&["10.0.0.1", "fe80::2"]), false),
            vec![sa("[::1]:80")]
        );
    }

    #[test]
    fn skips_unspecified_multicast_and_duplicates() {
        let host = ips(&["0.0.0.0", "224.0.0.1", "10.0.0.7", "10.0.0.7", "ff02::1"]);
        assert_eq!(
            advertised_addrs(sa("0.0.0.0:80"), &[], &host, false),
            vec![sa("10.0.0.7:80")]
        );
    }

    #[test]
    fn overrides_win_and_fill_port() {
        let o = [
            sa("203.0.113.9:0"),
            sa("[2001:db8::1]:443"),
            sa("203.0.113.9:0"),
        ];
        for bound in ["0.0.0.0:4100", "10.0.0.7:4100"] {
            assert_eq!(
                advertised_addrs(sa(bound), &o, &ips(HOST), true),
                vec![sa("203.0.113.9:4100"), sa("[2001:db8::1]:443")]
            );
        }
    }

    #[test]
    fn host_ips_does_not_panic() {
        // Whatever the machine has; loopback is normally among them.
        let _ = host_ips();
    }

    #[test]
    fn advertised_overrides_must_be_dialable() {
        assert!(check_advertised(&[]).is_ok());
        assert!(check_advertised(&[sa("203.0.113.9:0"), sa("[2001:db8::1]:443")]).is_ok());
        for bad in ["0.0.0.0:0", "[::]:4100"] {
            match check_advertised(&[sa("10.0.0.7:1"), sa(bad)]) {
                Err(Error::InvalidAddress {
                    kind: "advertised address",
                    input,
                    ..
                }) => assert_eq!(input, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
