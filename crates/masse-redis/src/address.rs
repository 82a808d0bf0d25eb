//! Registry URLs: which server(s), TLS or not, and a form safe to print.

use masse_core::{Error, Result};

use crate::config::RedisConfig;

/// Where the registry lives, parsed from its URL and configuration. (No
/// `Debug` outside tests: the URLs hold passwords.)
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Debug))]
pub(crate) enum Target {
    /// One server: the URL as the redis crate takes it (`redis://` or `rediss://`).
    Single { url: String, tls: bool },
    /// A Redis Cluster: one `redis://` / `rediss://` URL per seed node, each
    /// carrying the same credentials.
    Cluster { nodes: Vec<String>, tls: bool },
}

impl Target {
    pub(crate) fn tls(&self) -> bool {
        match self {
            Target::Single { tls, .. } | Target::Cluster { tls, .. } => *tls,
        }
    }
}

/// The parts of a URL after its scheme.
struct Parts<'a> {
    /// `user:password` (or `:password`), without the `@`.
    userinfo: Option<&'a str>,
    /// `host[:port]`, or a comma-separated list of them.
    hosts: &'a str,
    /// Everything from the first `/`, `?` or `#` after the hosts.
    rest: &'a str,
}

fn split(after_scheme: &str) -> Parts<'_> {
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(end);
    match authority.rfind('@') {
        Some(at) => Parts {
            userinfo: Some(&authority[..at]),
            hosts: &authority[at + 1..],
            rest,
        },
        None => Parts {
            userinfo: None,
            hosts: authority,
            rest,
        },
    }
}

pub(crate) use masse_core::redact;

fn invalid(url: &str, reason: impl Into<String>) -> Error {
    Error::InvalidAddress {
        kind: "registry url",
        input: redact(url),
        reason: reason.into(),
    }
}

/// Parses a registry URL:
///
/// - `redis://[user:pass@]host[:port][/db]`, `rediss://…` (TLS)
/// - `redis+cluster://[user:pass@]host1:port1,host2:port2`, `rediss+cluster://…`
pub(crate) fn parse(url: &str, config: &RedisConfig) -> Result<Target> {
    let Some(i) = url.find("://") else {
        return Err(invalid(
            url,
            "expected redis://, rediss://, redis+cluster:// or rediss+cluster://",
        ));
    };
    let scheme = url[..i].to_ascii_lowercase();
    let (tls, cluster) = match scheme.as_str() {
        "redis" | "valkey" => (false, false),
        "rediss" | "valkeys" => (true, false),
        "redis+cluster" | "valkey+cluster" => (false, true),
        "rediss+cluster" | "valkeys+cluster" => (true, true),
        other => {
            return Err(invalid(
                url,
                format!(
                    "unknown scheme {other:?}: expected redis://, rediss://, redis+cluster:// or rediss+cluster://"
                ),
            ));
        }
    };
    let parts = split(&url[i + 3..]);
    if parts.hosts.is_empty() {
        return Err(invalid(url, "no host"));
    }
    let node_scheme = if tls { "rediss" } else { "redis" };
    let userinfo = parts.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let node_url = |host: &str| format!("{node_scheme}://{userinfo}{host}");

    if !cluster {
        if parts.hosts.contains(',') {
            return Err(invalid(
                url,
                "several hosts need a redis+cluster:// URL (a single server takes one host)",
            ));
        }
        if config.cluster_nodes.is_empty() {
            // The redis crate parses the rest (port, /db, #insecure) itself.
            let url = format!("{node_scheme}://{}", &url[i + 3..]);
            return Ok(Target::Single { url, tls });
        }
        let mut nodes = vec![node_url(parts.hosts)];
        nodes.extend(config.cluster_nodes.iter().map(|n| node_url(n)));
        check_cluster_rest(url, parts.rest)?;
        return Ok(Target::Cluster { nodes, tls });
    }

    check_cluster_rest(url, parts.rest)?;
    let mut nodes = Vec::new();
    for host in parts.hosts.split(',') {
        let host = host.trim();
        if host.is_empty() {
            return Err(invalid(url, "empty host in the cluster node list"));
        }
        nodes.push(node_url(host));
    }
    nodes.extend(config.cluster_nodes.iter().map(|n| node_url(n)));
    Ok(Target::Cluster { nodes, tls })
}

/// A cluster has only database 0 and takes no options in the URL.
fn check_cluster_rest(url: &str, rest: &str) -> Result<()> {
    match rest {
        "" | "/" | "/0" => Ok(()),
        _ => Err(invalid(
            url,
            "a Redis Cluster URL takes no database, path or options (cluster has only database 0)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(url: &str) -> Result<Target> {
        parse(url, &RedisConfig::new())
    }

    #[test]
    fn single_urls() {
        assert_eq!(
            p("redis://127.0.0.1:6379/2").unwrap(),
            Target::Single {
                url: "redis://127.0.0.1:6379/2".into(),
                tls: false
            }
        );
        assert_eq!(
            p("rediss://u:p@h").unwrap(),
            Target::Single {
                url: "rediss://u:p@h".into(),
                tls: true
            }
        );
        assert!(matches!(
            p("redis://a:1,b:2"),
            Err(Error::InvalidAddress { .. })
        ));
        assert!(matches!(p("redis://"), Err(Error::InvalidAddress { .. })));
    }

    #[test]
    fn cluster_urls() {
        assert_eq!(
            p("redis+cluster://u:secret@a:1,b:2").unwrap(),
            Target::Cluster {
                nodes: vec!["redis://u:secret@a:1".into(), "redis://u:secret@b:2".into()],
                tls: false
            }
        );
        assert_eq!(
            parse(
                "rediss://a:1",
                &RedisConfig::new().with_cluster_nodes(["b:2", "c:3"])
            )
            .unwrap(),
            Target::Cluster {
                nodes: vec![
                    "rediss://a:1".into(),
                    "rediss://b:2".into(),
                    "rediss://c:3".into()
                ],
                tls: true
            }
        );
        for (url, why) in [
            ("redis+cluster://a:1,b:2/3", "takes no database"),
            ("redis+cluster://a:1,,b:2", "empty host"),
        ] {
            assert!(
                matches!(
                    p(url),
                    Err(masse_core::Error::InvalidAddress { ref reason, .. }) if reason.contains(why)
                ),
                "{url}: {:?}",
                p(url)
            );
        }
    }

    #[test]
    fn unknown_scheme_is_invalid_address_without_the_password() {
        match p("http://user:hunter2@host") {
            Err(Error::InvalidAddress {
                kind,
                input,
                reason,
            }) => {
                assert_eq!(kind, "registry url");
                assert!(!input.contains("hunter2"), "{input}");
                assert!(reason.contains("http"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p("no scheme"), Err(Error::InvalidAddress { .. })));
    }
}
