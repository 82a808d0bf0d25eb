//! What a Redis reply holds: a stored record checked against its key, the
//! server's `TIME`, and the time a record has left.

use std::time::Duration;

use masse_core::{Namespace, PeerRecord};
use redis::Value;

/// Parses a stored record, checking that it is the one the key says; the
/// error says what is wrong with an unreadable or misplaced one.
pub(crate) fn decode_record(
    ns: &Namespace,
    name: &str,
    json: &[u8],
) -> std::result::Result<PeerRecord, String> {
    match PeerRecord::from_json(json) {
        Ok(r) if &r.namespace == ns && r.name.as_str() == name => Ok(r),
        Ok(r) => Err(format!(
            "the record of {}/{} is stored under this key",
            r.namespace, r.name
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The time left before `expires` (ms, as stored), `now` being the server's
/// time (ms): `None` if that is no finite number of milliseconds.
pub(crate) fn time_left(expires: f64, now: u64) -> Option<Duration> {
    let left = (expires - now as f64).floor();
    (left.is_finite() && left >= 0.0).then(|| Duration::from_millis(left as u64))
}

/// Milliseconds from a `TIME` reply (`[seconds, microseconds]`).
pub(crate) fn server_time_ms(time: Value) -> Option<u64> {
    let Value::Array(parts) = time else {
        return None;
    };
    let num = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<u64>().ok(),
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    match parts.as_slice() {
        [s, us] => Some(num(s)?.checked_mul(1000)? + num(us)? / 1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use masse_core::InstanceId;

    use super::*;

    #[test]
    fn time_left_is_expiry_minus_server_now() {
        assert_eq!(time_left(1_500.0, 1_000), Some(Duration::from_millis(500)));
        assert_eq!(time_left(1_000.0, 1_000), Some(Duration::ZERO));
        assert_eq!(time_left(1_000.9, 1_000), Some(Duration::ZERO));
        assert_eq!(time_left(999.0, 1_000), None);
        assert_eq!(time_left(f64::INFINITY, 1_000), None);
        assert_eq!(time_left(f64::NAN, 1_000), None);
    }

    #[test]
    fn records_are_checked_against_their_key() {
        let ns: Namespace = "prod".parse().unwrap();
        let r = PeerRecord::new(ns.clone(), "a".parse().unwrap(), InstanceId::random());
        let json = r.to_json();
        assert_eq!(decode_record(&ns, "a", json.as_bytes()), Ok(r));
        let why = decode_record(&ns, "b", json.as_bytes()).unwrap_err();
        assert!(why.contains("prod/a"), "{why}");
        let why = decode_record(&"other".parse().unwrap(), "a", json.as_bytes()).unwrap_err();
        assert!(why.contains("prod/a"), "{why}");
        let garbage = decode_record(&ns, "a", b"\xff\x00garbage").unwrap_err();
        assert!(garbage.contains("malformed peer record"), "{garbage}");
    }
}
