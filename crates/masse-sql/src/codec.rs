//! Rows to records and events: pure functions, so that whatever is stored in
//! the tables (hand edits, other versions, garbage) ends as a warning and a
//! skipped row, never as a panic or a failed call.

use std::time::Duration;

use masse_core::{InstanceId, Lease, Namespace, PeerName, PeerRecord, RegistryEvent, WarnOnce};

use crate::store::{EXPIRED, JOINED, LEFT, RawEvent, RawPeer, UPDATED};

/// Longest stored text quoted in a warning.
const QUOTE: usize = 80;

fn quote(s: &str) -> String {
    let mut end = s.len().min(QUOTE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{}…", &s[..end])
    } else {
        s.to_owned()
    }
}

/// True the first time this process meets `key` (a bad row: its table, key
/// and a hash of what it holds), so that a row skipped on every poll is
/// reported once, not four times a second.
pub(crate) fn first_warning(key: &str) -> bool {
    static WARNED: WarnOnce = WarnOnce::new();
    WARNED.first(key)
}

/// FNV-1a: cheap and stable, enough to tell stored values apart.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Parses a stored record, checking it belongs where it was found. A bad
/// record is reported once per process (by namespace, name and content).
pub(crate) fn parse_record(ns: &Namespace, name: &str, json: &str) -> Option<PeerRecord> {
    let first = || first_warning(&format!("record {ns}/{name} {:x}", fnv(json.as_bytes())));
    let record = match PeerRecord::from_json(json.as_bytes()) {
        Ok(r) => r,
        Err(e) => {
            if first() {
                tracing::warn!(namespace = %ns, name, error = %e, stored = %quote(json), "skipping unreadable peer record");
            } else {
                tracing::trace!(namespace = %ns, name, "skipping unreadable peer record");
            }
            return None;
        }
    };
    if record.namespace != *ns || record.name.as_str() != name {
        if !first() {
            return None;
        }
        tracing::warn!(
            namespace = %ns, name,
            record_namespace = %record.namespace, record_name = %record.name,
            "skipping peer record stored under another name"
        );
        return None;
    }
    if record.version > PeerRecord::VERSION && first() {
        tracing::warn!(
            namespace = %ns, name, version = record.version, supported = PeerRecord::VERSION,
            "peer record from a newer writer; reading the fields this build knows"
        );
    }
    Some(record)
}

/// The readable rows of a lookup, sorted by name, each with its time left.
/// A time left at or below zero (the row expired between the statement's
/// filter and its select list, on a clock read per row) is zero.
pub(crate) fn leases(
    ns: &Namespace,
    rows: Vec<RawPeer>,
    keep: impl Fn(&str) -> bool,
) -> Vec<Lease> {
    let mut out: Vec<Lease> = rows
        .into_iter()
        .filter_map(|raw| {
            let RawPeer {
                name,
                record: json,
                left_ms,
            } = raw;
            let Some(name) = name else {
                if first_warning(&format!("name {ns}")) {
                    tracing::warn!(namespace = %ns, "skipping peer row whose name is not text");
                }
                return None;
            };
            if !keep(&name) {
                return None;
            }
            let Some(json) = json else {
                if first_warning(&format!("record {ns}/{name} not text")) {
                    tracing::warn!(namespace = %ns, %name, "skipping peer row whose record is not text");
                }
                return None;
            };
            let left = left_ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            parse_record(ns, &name, &json).map(|record| Lease::new(record, left))
        })
        .collect();
    out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    out
}

/// An event row as a [`RegistryEvent`], or `None` (with a warning) if it cannot be one.
pub(crate) fn event(ns: &Namespace, raw: &RawEvent) -> Option<RegistryEvent> {
    let skip = |why: &str| {
        if first_warning(&format!("event {ns} {}", raw.id)) {
            tracing::warn!(namespace = %ns, id = raw.id, kind = ?raw.kind, name = ?raw.name, "skipping event: {why}");
        }
        None
    };
    let (Some(kind), Some(name)) = (raw.kind.as_deref(), raw.name.as_deref()) else {
        return skip("kind or name is not text");
    };
    match kind {
        JOINED | UPDATED => {
            let Some(json) = raw.record.as_deref() else {
                return skip("no record");
            };
            let record = parse_record(ns, name, json)?;
            Some(if kind == JOINED {
                RegistryEvent::Joined(record)
            } else {
                RegistryEvent::Updated(record)
            })
        }
        LEFT | EXPIRED => {
            let Ok(name) = name.parse::<PeerName>() else {
                return skip("invalid name");
            };
            let Some(Ok(instance)) = raw.instance.as_deref().map(str::parse::<InstanceId>) else {
                return skip("invalid instance");
            };
            Some(if kind == LEFT {
                RegistryEvent::Left { name, instance }
            } else {
                RegistryEvent::Expired { name, instance }
            })
        }
        _ => skip("unknown kind (written by a newer version?)"),
    }
}

/// The half-open range of names `[prefix, upper)` that holds every name
/// starting with `prefix`, or `None` if no valid name can start with it.
pub(crate) fn prefix_range(prefix: &str) -> Option<(String, String)> {
    // Names are ASCII letters, digits, '.', '_' and '-': a prefix with any
    // other byte matches nothing, and bumping the last byte stays ASCII.
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if !prefix.bytes().all(valid) {
        return None;
    }
    let mut upper = prefix.as_bytes().to_vec();
    let last = upper.last_mut()?;
    *last += 1;
    let upper = String::from_utf8(upper).ok()?;
    Some((prefix.to_owned(), upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        "prod".parse().unwrap()
    }

    fn rec(name: &str) -> PeerRecord {
        PeerRecord::new(ns(), name.parse().unwrap(), InstanceId::random())
    }

    #[test]
    fn garbage_rows_are_skipped() {
        let good = rec("a");
        let mut newer: serde_json::Value = serde_json::from_str(&rec("b").to_json()).unwrap();
        newer["version"] = 99.into();
        newer["unknown"] = serde_json::json!({"x": [1, 2]});
        let elsewhere = rec("c");
        let row = |name: Option<&str>, record: Option<String>, left_ms: Option<i64>| RawPeer {
            name: name.map(str::to_owned),
            record,
            left_ms,
        };
        let rows = vec![
            row(Some("z"), Some("not json".into()), Some(5)),
            row(Some("a"), Some(good.to_json()), Some(1500)),
            row(None, Some(good.to_json()), Some(5)),
            row(Some("y"), None, Some(5)),
            row(Some("b"), Some(newer.to_string()), None),
            row(Some("d"), Some(elsewhere.to_json()), Some(5)),
            row(Some("x"), Some("{\"version\":1}".into()), Some(5)),
            row(Some("c"), Some(rec("c").to_json()), Some(-3)),
        ];
        let got = leases(&ns(), rows, |_| true);
        let names: Vec<&str> = got.iter().map(|l| l.record.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(got[0].record, good);
        assert_eq!(got[0].expires_in, Some(Duration::from_millis(1500)));
        assert_eq!(got[1].record.version, 99);
        assert_eq!(
            got[1].expires_in, None,
            "a time left that does not read back"
        );
        assert_eq!(got[2].expires_in, Some(Duration::ZERO), "clamped at zero");
    }

    #[test]
    fn events_decode_or_skip() {
        let r = rec("a");
        let raw = |kind: &str, record: Option<String>| RawEvent {
            id: 1,
            kind: Some(kind.into()),
            name: Some("a".into()),
            instance: Some(r.instance.to_string()),
            record,
        };
        assert_eq!(
            event(&ns(), &raw("joined", Some(r.to_json()))),
            Some(RegistryEvent::Joined(r.clone()))
        );
        assert_eq!(
            event(&ns(), &raw("updated", Some(r.to_json()))),
            Some(RegistryEvent::Updated(r.clone()))
        );
        assert_eq!(
            event(&ns(), &raw("left", None)),
            Some(RegistryEvent::Left {
                name: r.name.clone(),
                instance: r.instance
            })
        );
        assert_eq!(
            event(&ns(), &raw("expired", None)),
            Some(RegistryEvent::Expired {
                name: r.name.clone(),
                instance: r.instance
            })
        );
        assert_eq!(event(&ns(), &raw("joined", None)), None);
        assert_eq!(event(&ns(), &raw("joined", Some("{".into()))), None);
        assert_eq!(event(&ns(), &raw("renamed", None)), None);
        let mut bad = raw("left", None);
        bad.instance = Some("zz".into());
        assert_eq!(event(&ns(), &bad), None);
        bad.kind = None;
        assert_eq!(event(&ns(), &bad), None);
    }

    #[test]
    fn warnings_once_per_key() {
        let key = format!("test {}", InstanceId::random());
        assert!(first_warning(&key));
        assert!(!first_warning(&key));
        assert!(first_warning(&format!("{key}-other")));
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(
            prefix_range("worker-"),
            Some(("worker-".into(), "worker.".into()))
        );
        assert_eq!(prefix_range("db"), Some(("db".into(), "dc".into())));
        assert_eq!(prefix_range("z"), Some(("z".into(), "{".into())));
        assert_eq!(prefix_range(""), None);
        assert_eq!(prefix_range("%"), None);
        assert_eq!(prefix_range("é"), None);
    }

    #[test]
    fn quotes_are_clipped_on_char_boundaries() {
        let s = "é".repeat(100);
        let q = quote(&s);
        assert!(q.ends_with('…'));
        assert!(q.len() <= QUOTE + '…'.len_utf8());
        assert_eq!(quote("short"), "short");
    }
}
