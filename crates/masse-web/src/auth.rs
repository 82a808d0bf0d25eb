//! The bearer token check.

use axum::extract::Query;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Uri};

/// Whether `given` equals `expected`, in time that depends only on the
/// length of `given` (not on where the first difference is).
pub(crate) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, g) in given.iter().enumerate() {
        let e = expected
            .get(i % expected.len().max(1))
            .copied()
            .unwrap_or(0);
        diff |= usize::from(g ^ e);
    }
    diff == 0
}

/// The token a request carries: `Authorization: Bearer T`, else a `token`
/// query parameter, percent-decoded (a browser cannot put a header on a page
/// load or an `EventSource`).
pub(crate) fn presented(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let mut parts = v.trim().splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim().to_owned());
        }
    }
    #[derive(serde::Deserialize)]
    struct Q {
        token: Option<String>,
    }
    Query::<Q>::try_from_uri(uri).ok()?.0.token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret!", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"x", b""));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn finds_the_token() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let mut h = HeaderMap::new();
        let t = |s: &str| Some(s.to_owned());
        assert_eq!(presented(&h, &uri("/?a=1&token=t%2F1")), t("t/1"));
        assert_eq!(presented(&h, &uri("/?a=1")), None);
        assert_eq!(presented(&h, &uri("/")), None);
        h.insert(AUTHORIZATION, "Bearer  t2 ".parse().unwrap());
        assert_eq!(presented(&h, &uri("/?token=t1")), t("t2"));
        h.insert(AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        assert_eq!(presented(&h, &uri("/?token=t1")), t("t1"));
    }
}
