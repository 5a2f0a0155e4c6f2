//! Adaptive `Retry-After`: how long a client should wait before polling again, from how long
//! this orchestration type usually takes and how long this instance has been running.

use std::time::Duration;

/// Shortest and longest advice, in seconds.
const MIN_SECONDS: u64 = 1;
const MAX_SECONDS: u64 = 60;
/// Without a better estimate, wait a tenth of the instance's age.
const AGE_FRACTION: f64 = 0.1;

/// Seconds to wait before the next poll.
///
/// With a typical duration known: the time it should still take, or — once the instance is past
/// it — a tenth of its age. Without one: a tenth of its age. Always between 1 and 60 s.
pub fn retry_after_seconds(typical: Option<Duration>, age: Duration) -> u64 {
    let from_age = age.as_secs_f64() * AGE_FRACTION;
    let seconds = match typical {
        Some(typical) if typical > age => (typical - age).as_secs_f64(),
        _ => from_age,
    };
    (seconds.ceil() as u64).clamp(MIN_SECONDS, MAX_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_typical_duration_then_backs_off_with_age() {
        let s = Duration::from_secs;
        assert_eq!(retry_after_seconds(None, s(0)), 1);
        assert_eq!(retry_after_seconds(Some(s(30)), s(10)), 20);
        assert_eq!(retry_after_seconds(Some(s(30)), s(200)), 20);
        assert_eq!(retry_after_seconds(None, s(3_000)), 60);
        assert_eq!(retry_after_seconds(Some(Duration::from_millis(50)), s(0)), 1);
    }
}
