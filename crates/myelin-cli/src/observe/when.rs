//! `--since` / `--until` values: a duration before now (`30s`, `5m`, `2h`,
//! `1h30m`, `1.5h`, `2d`) or a point in time (RFC 3339 such as
//! `2024-05-01T12:00:00Z` or with an offset and fractional seconds, or a UTC
//! date `2024-05-01`, or `2024-05-01T12:00` in UTC).

use anyhow::{bail, Result};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use myelin_observe::proto::Timestamp;

/// A Go-style duration (`1h30m`, `250ms`, `1.5h`), plus days (`2d`).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// The time a `--since`/`--until` value names, relative to `now`.
pub fn parse_time(flag: &str, value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Some(d) = parse_duration(value) {
        let d = chrono::Duration::from_std(d).map_err(|e| anyhow::anyhow!("--{flag} {value}: {e}"))?;
        return match now.checked_sub_signed(d) {
            Some(t) => Ok(t),
            None => bail!("--{flag} {value}: that is before any representable time"),
        };
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    for f in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(value, f) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    bail!(
        "--{flag} {value:?}: not a time; use a duration before now (30s, 5m, 2h, 1h30m, 2d) or a time \
         (2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00, 2024-05-01, 2024-05-01T12:00 in UTC)"
    )
}

/// A time as the protobuf Timestamp.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// Unix nanoseconds of a Timestamp (0 when absent).
pub fn ts_nanos(t: Option<&Timestamp>) -> i128 {
    t.map_or(0, |t| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
}

/// Hubble's time column: `Jan  2 15:04:05.000`, in UTC; `N/A` when absent.
pub fn stamp_milli(t: Option<&Timestamp>) -> String {
    let Some(t) = t else { return "N/A".into() };
    match Utc.timestamp_opt(t.seconds, u32::try_from(t.nanos).unwrap_or(0)).single() {
        Some(dt) => dt.format("%b %e %H:%M:%S%.3f").to_string(),
        None => "N/A".into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        for bad in ["", "5", "m", "5x", "1h-2m", "2024-05-01"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_relative_and_absolute() {
        let now = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        assert_eq!(parse_time("since", "5m", now).unwrap(), Utc.with_ymd_and_hms(2024, 5, 1, 11, 55, 0).unwrap());
        assert_eq!(
            parse_time("since", "2024-05-01T10:00:00.5Z", now).unwrap(),
            Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap() + chrono::Duration::milliseconds(500)
        );
        assert_eq!(
            parse_time("since", "2024-05-01T12:00:00+02:00", now).unwrap(),
            Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("until", "2024-04-30", now).unwrap(),
            Utc.with_ymd_and_hms(2024, 4, 30, 0, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("until", "2024-04-30T08:15", now).unwrap(),
            Utc.with_ymd_and_hms(2024, 4, 30, 8, 15, 0).unwrap()
        );
        let e = parse_time("since", "yesterday", now).unwrap_err().to_string();
        assert!(e.starts_with("--since \"yesterday\": not a time"), "{e}");
    }

    #[test]
    fn hubbles_time_column() {
        let t = Timestamp { seconds: 1234, nanos: 567_800_000 };
        assert_eq!(stamp_milli(Some(&t)), "Jan  1 00:20:34.567");
        let t = timestamp(Utc.with_ymd_and_hms(2024, 11, 23, 9, 5, 7).unwrap());
        assert_eq!(stamp_milli(Some(&t)), "Nov 23 09:05:07.000");
        assert_eq!(stamp_milli(None), "N/A");
    }
}
