//! Shared output: one-line messages, tables, timestamps, durations, and
//! writing lines to stdout without panicking on a closed pipe.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use masse::{InstanceId, Lease};

/// Folds a message onto one line: each line trimmed, empty ones dropped,
/// the rest joined with `"; "`.
pub(crate) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Prints `masse: <message>` on stderr (the one line a failure prints).
#[allow(clippy::print_stderr)]
pub(crate) fn print_error(message: &str) {
    eprintln!("masse: {}", one_line(message));
}

/// Prints a notice on stderr (progress and status lines, never data).
#[allow(clippy::print_stderr)]
pub(crate) fn notice(message: impl AsRef<str>) {
    eprintln!("{}", message.as_ref());
}

/// Writes `line` and a newline to stdout and flushes. `Ok(false)` when stdout
/// is closed (for example `masse watch | head -1`): the caller stops quietly.
pub(crate) fn out_line(line: &str) -> io::Result<bool> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

/// The first 8 hex digits of an instance id, as shown in tables.
pub(crate) fn short_instance(instance: InstanceId) -> String {
    let mut s = instance.to_string();
    s.truncate(8);
    s
}

/// A text table: a header row and data rows, columns padded to their widest
/// cell and separated by two spaces; the last column is not padded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row; an empty cell is shown as `-`.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| if c.is_empty() { "-".to_owned() } else { c })
                .collect(),
        );
    }

    /// The table as lines of text (no trailing newline on the last one).
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let mut line = String::new();
            for (j, cell) in row.iter().enumerate() {
                if j > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if j + 1 < row.len() {
                    let pad = widths[j] - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
        }
        out
    }
}

/// The `masse peers` table row of one lease (a record and its time left),
/// `now_ms` being the current time in milliseconds since the Unix epoch.
pub(crate) fn peer_row(lease: &Lease, now_ms: u64) -> Vec<String> {
    let r = &lease.record;
    let join = |items: Vec<String>| items.join(",");
    vec![
        r.name.to_string(),
        short_instance(r.instance),
        lease.liveness().to_string(),
        lease.expires_in.map(format_ttl_left).unwrap_or_default(),
        join(r.endpoints.iter().map(ToString::to_string).collect()),
        r.identity.map(|f| f.short()).unwrap_or_default(),
        if r.started_at == 0 {
            String::new()
        } else {
            format_age(Duration::from_millis(now_ms.saturating_sub(r.started_at)))
        },
        join(r.services.clone()),
        join(r.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect()),
    ]
}

/// The headers of [`peer_row`].
pub(crate) const PEER_HEADERS: [&str; 9] = [
    "NAME",
    "INSTANCE",
    "STATE",
    "TTL",
    "ENDPOINTS",
    "IDENTITY",
    "AGE",
    "SERVICES",
    "METADATA",
];

/// Time a record has left: tenths of a second under a minute (`8.3s`),
/// else as [`format_age`].
pub(crate) fn format_ttl_left(left: Duration) -> String {
    if left < Duration::from_secs(60) {
        format!("{:.1}s", left.as_secs_f64())
    } else {
        format_age(left)
    }
}

/// A coarse age with its two largest units: `42s`, `5m07s`, `3h05m`, `2d04h`.
pub(crate) fn format_age(age: Duration) -> String {
    let s = age.as_secs();
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// Milliseconds with three decimals, as `ping` prints them: `0.523`.
pub(crate) fn format_ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// A duration the way a person writes it back to `--timeout`: `250ms`, `2s`, `1.5s`, `3m`.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// A UTC timestamp in RFC 3339 form with milliseconds: `2025-11-25T13:40:00.123Z`.
/// Times before 1970 are shown as the epoch.
pub(crate) fn format_rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month (1–12) and day (1–31) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Minimum, median and maximum of `samples` (`None` if empty). The median of
/// an even count is the mean of the two middle samples.
pub(crate) fn min_median_max(samples: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut s = samples.to_vec();
    s.sort_unstable();
    let (first, last) = (*s.first()?, *s.last()?);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2
    };
    Some((first, median, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use masse::PeerRecord;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_rfc3339(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(at(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339(at(1_764_078_000_123)),
            "2025-11-25T13:40:00.123Z"
        );
        assert_eq!(
            format_rfc3339(at(1_709_210_096_500)),
            "2024-02-29T12:34:56.500Z"
        );
        assert_eq!(
            format_rfc3339(at(4_102_444_799_999)),
            "2099-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn every_day_of_a_leap_cycle_is_consecutive() {
        // Walk 401 years day by day and check the calendar never skips.
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for day in 0..(401 * 366) {
            assert_eq!(civil_from_days(day), (y, m, d), "day {day}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn ages_and_durations() {
        let s = Duration::from_secs;
        assert_eq!(format_age(s(0)), "0s");
        assert_eq!(format_age(s(59)), "59s");
        assert_eq!(format_age(s(60)), "1m00s");
        assert_eq!(format_age(s(307)), "5m07s");
        assert_eq!(format_age(s(3 * 3600 + 5 * 60 + 9)), "3h05m");
        assert_eq!(format_age(s(2 * 86_400 + 4 * 3600)), "2d04h");
        assert_eq!(format_ms(Duration::from_micros(523)), "0.523");
        assert_eq!(format_ms(Duration::from_millis(12)), "12.000");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(s(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(s(180)), "3m");
    }

    #[test]
    fn stats_of_samples() {
        let ms = Duration::from_millis;
        assert_eq!(min_median_max(&[]), None);
        assert_eq!(min_median_max(&[ms(3)]), Some((ms(3), ms(3), ms(3))));
        assert_eq!(
            min_median_max(&[ms(9), ms(1), ms(5)]),
            Some((ms(1), ms(5), ms(9)))
        );
        assert_eq!(
            min_median_max(&[ms(4), ms(1), ms(2), ms(10)]),
            Some((ms(1), ms(3), ms(10)))
        );
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["NAME", "AGE", "METADATA"]);
        t.row(vec!["billing-7".into(), "5s".into(), "zone=b".into()]);
        t.row(vec!["db".into(), "12m03s".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME       AGE     METADATA\n\
             billing-7  5s      zone=b\n\
             db         12m03s  -"
        );
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B");
    }

    #[test]
    fn peer_rows_show_every_field() {
        let mut r = PeerRecord::new(
            "prod".parse().unwrap(),
            "billing-7".parse().unwrap(),
            InstanceId::from_u128(0x3f2a_1b4c_0000_0000_0000_0000_0000_0001),
        )
        .with_endpoint("tcp://10.0.0.7:4100".parse().unwrap())
        .with_endpoint("tcp://10.0.0.8:4100".parse().unwrap())
        .with_service("rpc")
        .with_metadata("zone", "b")
        .with_metadata("az", "1")
        .with_identity(masse::Fingerprint([0xab; 32]));
        r.started_at = 1_000_000;
        r.ttl_ms = Some(10_000);
        let lease = Lease::new(r.clone(), Some(Duration::from_millis(8_340)));
        let row = peer_row(&lease, 1_000_000 + 65_000);
        assert_eq!(
            row,
            vec![
                "billing-7",
                "3f2a1b4c",
                "alive",
                "8.3s",
                "tcp://10.0.0.7:4100,tcp://10.0.0.8:4100",
                "abababababababab",
                "1m05s",
                "rpc",
                "az=1,zone=b",
            ]
        );
        // Less than half the ttl left: a missed heartbeat.
        let evasive = Lease::new(r.clone(), Some(Duration::from_millis(4_000)));
        assert_eq!(peer_row(&evasive, 1_000_000)[2..4], ["evasive", "4.0s"]);
        r.identity = None;
        r.metadata.clear();
        // A backend that cannot tell the time left.
        let unknown = Lease::new(r, None);
        let mut t = Table::new(&PEER_HEADERS);
        t.row(peer_row(&unknown, 1_000_000));
        let text = t.render();
        let last = text.lines().last().unwrap();
        assert!(last.ends_with("  0s   rpc       -"), "{text}");
        assert!(last.contains("  unknown  -  "), "{text}");
    }

    #[test]
    fn ttl_left_is_in_tenths_under_a_minute() {
        assert_eq!(format_ttl_left(Duration::from_millis(0)), "0.0s");
        assert_eq!(format_ttl_left(Duration::from_millis(59_940)), "59.9s");
        assert_eq!(format_ttl_left(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn one_line_folds_lines() {
        assert_eq!(one_line("a\nb"), "a; b");
        assert_eq!(one_line("  only  "), "only");
        assert_eq!(one_line("x\n\n  \ny\r\n"), "x; y");
        assert_eq!(short_instance(InstanceId::from_u128(u128::MAX)), "ffffffff");
    }
}
