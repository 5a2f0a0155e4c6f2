//! Timestamps: milliseconds since the Unix epoch, in UTC, and the one wall clock.
//!
//! Replay never reads a clock; the runtime stamps each turn (`OrchestratorStarted`) and the
//! orchestration sees that stamp as its replay-safe "now". Formatting lives here so the HTTP layer
//! and the store agree on one representation.
//!
//! [`now`] is the clock every edge (runtime, stores, HTTP) reads. It lives here, in the lowest
//! crate, so that there is exactly one: the deterministic simulation moves it forward with
//! [`advance_clock`] to fire durable timers and expire leases without waiting.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds added to the system time by [`advance_clock`] (0 outside tests).
static CLOCK_OFFSET_MILLIS: AtomicI64 = AtomicI64::new(0);

/// The wall clock as a [`Timestamp`]: the system time plus whatever tests advanced it by.
/// One relaxed load on top of the system call: it is read on every claim and commit.
pub fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Timestamp(millis.saturating_add(CLOCK_OFFSET_MILLIS.load(Ordering::Relaxed)))
}

/// Moves [`now`] forward by `by` for the whole process (never backward). For tests only: the
/// simulation uses it to fire durable timers and expire leases at once. Every runtime and store
/// in the process sees the jump, so tests that use it must not run beside others.
#[doc(hidden)]
pub fn advance_clock(by: Duration) {
    let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    CLOCK_OFFSET_MILLIS.fetch_add(millis, Ordering::Relaxed);
}

/// A point in time: whole milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This instant plus `millis` milliseconds (saturating).
    pub fn plus_millis(self, millis: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(millis))
    }

    /// Formats as RFC 3339 with millisecond precision, e.g. `2026-11-22T17:05:31.835Z`.
    pub fn to_rfc3339(self) -> String {
        self.format(true)
    }

    /// Formats as RFC 3339 without fractional seconds (Durable Functions' `createdTime` style).
    pub fn to_rfc3339_seconds(self) -> String {
        self.format(false)
    }

    /// One pass, one allocation: status reads format two timestamps per request.
    fn format(self, with_millis: bool) -> String {
        use std::fmt::Write;
        let days = self.0.div_euclid(86_400_000);
        let ms_of_day = self.0.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
        let mut text = String::with_capacity(24);
        // Writing into a String cannot fail.
        let _ = write!(text, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
        if with_millis {
            let _ = write!(text, ".{:03}", ms_of_day % 1000);
        }
        text.push('Z');
        text
    }

    /// Parses an ISO-8601 / RFC 3339 date-time leniently: `2026-11-22`, `2026-11-22T17:05:49Z`,
    /// fractional seconds of any length, `Z` or a `±hh:mm` offset, or no zone (taken as UTC).
    pub fn parse(text: &str) -> Option<Timestamp> {
        let text = text.trim();
        let (date, rest) = match text.find(['T', 't', ' ']) {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, ""),
        };
        let mut parts = date.splitn(3, '-');
        let y: i64 = parts.next()?.parse().ok()?;
        let m: u32 = parts.next()?.parse().ok()?;
        let d: u32 = parts.next()?.parse().ok()?;
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return None;
        }
        let (clock, offset_minutes) = split_zone(rest)?;
        let mut ms_of_day = 0i64;
        if !clock.is_empty() {
            let (hms_part, frac) = match clock.split_once(['.', ',']) {
                Some((a, b)) => (a, b),
                None => (clock, ""),
            };
            let mut fields = hms_part.split(':');
            let h: i64 = fields.next()?.parse().ok()?;
            let mi: i64 = fields.next().unwrap_or("0").parse().ok()?;
            let s: i64 = fields.next().unwrap_or("0").parse().ok()?;
            if h > 23 || mi > 59 || s > 60 || fields.next().is_some() {
                return None;
            }
            let frac_ms = if frac.is_empty() {
                0
            } else {
                if !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let padded = format!("{:0<3}", &frac[..frac.len().min(3)]);
                padded.parse::<i64>().ok()?
            };
            ms_of_day = ((h * 60 + mi) * 60 + s) * 1000 + frac_ms;
        }
        let days = days_from_civil(y, m, d);
        Some(Timestamp(days * 86_400_000 + ms_of_day - offset_minutes * 60_000))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Splits `17:05:49.5+02:00` into the clock part and the zone offset in minutes.
fn split_zone(rest: &str) -> Option<(&str, i64)> {
    if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        return Some((clock, 0));
    }
    match rest.rfind(['+', '-']) {
        Some(i) => {
            let (clock, zone) = (&rest[..i], &rest[i..]);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 {
                return None;
            }
            let h: i64 = digits[..2].parse().ok()?;
            let m: i64 = digits[2..].parse().ok()?;
            Some((clock, sign * (h * 60 + m)))
        }
        None => Some((rest, 0)),
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(1_519_795_129_000).to_rfc3339_seconds(), "2018-02-28T05:18:49Z");
    }

    #[test]
    fn parses_client_formats() {
        let python = Timestamp::parse("2026-11-22T17:05:49.503141Z");
        let node = Timestamp::parse("2026-11-22T17:05:49.503Z");
        assert_eq!(python, node);
        assert_eq!(Timestamp::parse("2026-11-22T19:05:49.503+02:00"), node);
        assert_eq!(Timestamp::parse("1970-01-02"), Some(Timestamp(86_400_000)));
        assert_eq!(Timestamp::parse("not a date"), None);
        assert_eq!(Timestamp::parse("2026-13-01"), None);
    }

    proptest! {
        #[test]
        fn rfc3339_round_trips(ms in -62_135_596_800_000i64..253_402_300_799_000i64) {
            prop_assert_eq!(Timestamp::parse(&Timestamp(ms).to_rfc3339()), Some(Timestamp(ms)));
        }
    }
}
