//! [`redact`]: a URL safe to print.

/// `url` with its secrets masked, for logs, errors and `Debug`: the password
/// of the user info (`scheme://user:***@host`, also with an `@` inside the
/// password and with several hosts), the values of query parameters whose
/// name says they are secret (`password`, `passwd`, `pwd`, anything with
/// `secret` or `token` in it, `sslkey`), and the result is clipped to 200
/// bytes. A string that is not a URL at all (no `:`) may be a secret pasted
/// in the wrong place: only its first 24 characters are shown.
///
/// ```
/// use masse_core::redact;
/// assert_eq!(redact("redis://u:hunter2@h:6379/0"), "redis://u:***@h:6379/0");
/// assert_eq!(redact("postgres://u@h/db?password=x&sslmode=require"), "postgres://u@h/db?password=***&sslmode=require");
/// assert_eq!(redact("sqlite:./reg.db"), "sqlite:./reg.db");
/// ```
pub fn redact(url: &str) -> String {
    if !url.contains(':') {
        let shown: String = url.chars().take(24).collect();
        return if shown.len() < url.len() {
            format!("{shown}…")
        } else {
            shown
        };
    }
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let auth_len = if head.is_empty() {
        0
    } else {
        rest.find(['/', '?', '#']).unwrap_or(rest.len())
    };
    let (auth, tail) = rest.split_at(auth_len);
    let auth = match auth.rfind('@') {
        Some(at) => {
            let (user_info, host) = auth.split_at(at);
            match user_info.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => auth.to_owned(),
            }
        }
        None => auth.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret(k) => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            let mut t = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                t.push('#');
                t.push_str(f);
            }
            t
        }
        None => tail.to_owned(),
    };
    clip(&format!("{head}{auth}{tail}"))
}

fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("token")
        || matches!(k.as_str(), "pass" | "passwd" | "pwd" | "sslkey" | "ssl-key")
}

fn clip(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "postgres://masse:s3cret@db:5432/reg",
                "postgres://masse:***@db:5432/reg",
            ),
            (
                "mysql://root:p@ss:w@rd@127.0.0.1/m?ssl-mode=required",
                "mysql://root:***@127.0.0.1/m?ssl-mode=required",
            ),
            (
                "postgresql://u@h/db?password=hunter2&sslmode=require",
                "postgresql://u@h/db?password=***&sslmode=require",
            ),
            (
                "mysql://h/db?user=a&PWD=x&auth_token=y#f",
                "mysql://h/db?user=a&PWD=***&auth_token=***#f",
            ),
            ("redis://user:hunter2@h:1/0", "redis://user:***@h:1/0"),
            ("redis://:hunter2@h", "redis://:***@h"),
            ("redis://h:1", "redis://h:1"),
            (
                "redis+cluster://u:p@a:1,b:2",
                "redis+cluster://u:***@a:1,b:2",
            ),
            ("redis://u:p@ss@h/1", "redis://u:***@h/1"),
            (
                "sqlite://./data/reg.db?mode=rwc",
                "sqlite://./data/reg.db?mode=rwc",
            ),
            ("sqlite::memory:", "sqlite::memory:"),
            ("sqlite:/var/lib/masse.db", "sqlite:/var/lib/masse.db"),
            ("postgres://h/db#frag", "postgres://h/db#frag"),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
        }
    }

    #[test]
    fn long_and_odd_input_is_clipped() {
        assert!(redact(&"x:".repeat(500)).len() < 210);
        assert!(redact(&format!("redis://h/{}", "é".repeat(300))).len() < 210);
        assert!(!redact("password-without-scheme-and-very-long").contains("long"));
        assert_eq!(redact("short"), "short");
    }
}
