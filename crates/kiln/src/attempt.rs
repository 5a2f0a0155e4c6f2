//! One attempt of an activity on this worker: the activity runs in a task of its own while this
//! side renews its lease (saving its heartbeat details), enforces its timeouts and watches for
//! its cancellation. An activity that never yields (blocking code) holds only its own thread:
//! while the runtime has another, its lease is still renewed, its timeouts still fire and its
//! failure is still reported.

use crate::activity::{ActivityContext, Heartbeats};
use crate::panic::CatchPanic;
use crate::registry::RegisteredActivity;
use crate::runtime::Runtime;
use kiln_core::{ActivityTimeouts, FailureDetails, Payload, error_types};
use kiln_store::{ActivityWorkItem, Lease, NewActivity, StoreError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The shortest lease an activity with a heartbeat timeout is held under (see [`lease_for`]):
/// a very short heartbeat timeout does not turn into a storm of renewals, and leases compare
/// the wall clocks of different nodes, which may be a second or two apart.
const MIN_HEARTBEAT_LEASE: Duration = Duration::from_secs(5);

/// How an attempt ended on this worker.
pub(crate) enum Ended {
    /// It returned (or panicked, or ran past a timeout): its result, to report.
    Finished(Result<Payload, FailureDetails>),
    /// Its instance was terminated by a turn this process committed.
    Terminated,
    /// Its lease renewal found the lease gone: withdrawn (its instance was terminated
    /// elsewhere) or lapsed and taken over by another worker.
    LeaseGone,
}

/// Runs one attempt of `registered` for `item` until it ends. `item.lease` follows the
/// renewals. A failure carries the attempt's last heartbeat details, for the next attempt.
pub(crate) async fn run_attempt(
    rt: &Runtime,
    item: &mut ActivityWorkItem,
    registered: RegisteredActivity,
    cancel: &Notify,
    heartbeats: &Arc<Heartbeats>,
) -> Ended {
    let started = Instant::now();
    let activity = &item.activity;
    // Limits the call left out come from this worker's registration.
    let limits = AttemptLimits::new(&activity.timeouts.or(&registered.timeouts.unwrap_or_default()), started);
    // A call already over (its schedule-to-close deadline passed while the attempt waited) does
    // not run at all.
    if let Some(timeout) = limits.expired(started, started) {
        timed_out(rt, activity, timeout);
        return Ended::Finished(Err(timeout.failure(activity)));
    }
    let ctx = ActivityContext {
        instance_id: activity.instance_id.clone(),
        execution: activity.execution,
        task_id: activity.step,
        name: activity.name.clone(),
        attempt: activity.attempt,
        delivery: item.dequeue_count,
        heartbeat_details: activity.heartbeat.clone(),
        heartbeats: Arc::clone(heartbeats),
    };
    let mut run = AbortOnDrop(tokio::spawn(CatchPanic::new((registered.function)(ctx, activity.input.clone()))));
    let lease = lease_for(rt, &limits);
    let renew_every = lease / 3;
    let mut renew_at = started + renew_every;
    let result = loop {
        let wake = limits.next_check(renew_at, heartbeats.last_beat());
        tokio::select! {
            // A result that is in wins over a timeout that is due.
            biased;
            joined = &mut run.0 => break match joined {
                Ok(result) => result.and_then(|r| r),
                // Panics are caught inside the task; it is aborted only when this side drops it.
                Err(err) => Err(FailureDetails::new(error_types::PANIC, format!("the activity's task ended: {err}"))),
            },
            () = cancel.notified() => return Ended::Terminated,
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if let Some(timeout) = limits.expired(now, heartbeats.last_beat()) {
                    if run.0.is_finished() {
                        continue;
                    }
                    timed_out(rt, &item.activity, timeout);
                    break Err(timeout.failure(&item.activity));
                }
                if now < renew_at {
                    continue;
                }
                renew_at = now + renew_every;
                match renew_lease(rt, item, heartbeats, lease).await {
                    Ok(renewed) => item.lease = renewed,
                    // Its result could not be stored.
                    Err(StoreError::LeaseLost(_)) => return Ended::LeaseGone,
                    Err(err) => tracing::warn!(instance_id = item.activity.instance_id, error = %err, "activity lease renewal failed"),
                }
            }
        }
    };
    // Dropping the task's handle aborts it: a timed-out activity stops at its next await.
    drop(run);
    // A lease shortened to the heartbeat timeout would leave little time to report the result
    // (the report may run the instance's next turn): back to the full lease first.
    if lease < rt.config.lease_duration
        && let Ok(renewed) = rt.store.renew_activity_lease(item, rt.config.lease_duration, None).await
    {
        item.lease = renewed;
    }
    Ended::Finished(result.map_err(|mut failure| {
        failure.last_heartbeat_details = heartbeats.details();
        failure
    }))
}

/// Saves a handed-back activity's unsaved heartbeat details with its claim, so that its next
/// delivery resumes from them.
pub(crate) async fn save_heartbeat(rt: &Runtime, item: &ActivityWorkItem, heartbeats: &Heartbeats) {
    if heartbeats.unsaved().is_some() {
        let _ = renew_lease(rt, item, heartbeats, rt.config.lease_duration).await;
    }
}

/// Extends an activity's lease, saving its heartbeat details if it recorded new ones since the
/// last save.
async fn renew_lease(
    rt: &Runtime,
    item: &ActivityWorkItem,
    heartbeats: &Heartbeats,
    lease: Duration,
) -> Result<Lease, StoreError> {
    let unsaved = heartbeats.unsaved();
    let renewed = rt.store.renew_activity_lease(item, lease, unsaved.as_ref().map(|(_, details)| details)).await?;
    if let Some((version, _)) = unsaved {
        heartbeats.saved(version);
    }
    Ok(renewed)
}

/// The lease an attempt is held under: the configured one, shortened to the heartbeat timeout
/// (at least [`MIN_HEARTBEAT_LEASE`]) so that a lost worker's attempt is taken over about when
/// its heartbeats would have been missed, not a whole lease later.
fn lease_for(rt: &Runtime, limits: &AttemptLimits) -> Duration {
    match limits.heartbeat {
        Some(heartbeat) => rt.config.lease_duration.min(heartbeat.max(MIN_HEARTBEAT_LEASE)),
        None => rt.config.lease_duration,
    }
}

fn timed_out(rt: &Runtime, activity: &NewActivity, timeout: Timeout) {
    rt.metrics.timed_out.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        instance_id = activity.instance_id,
        activity = activity.name,
        attempt = activity.attempt,
        timeout = timeout.kind(),
        "activity timed out"
    );
}

/// A task handle that aborts its task when dropped (when the attempt ends, or the task running
/// it is aborted at shutdown).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The limits one delivery of an attempt runs under, as instants on this worker's clock.
struct AttemptLimits {
    /// When the attempt must end, and by which limit.
    end: Option<(Instant, Timeout)>,
    /// How long it may go without a heartbeat.
    heartbeat: Option<Duration>,
}

/// Which limit an attempt ran past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// Its start-to-close limit (in ms).
    StartToClose(u64),
    /// Its call's schedule-to-close limit (in ms).
    ScheduleToClose(u64),
    /// Its heartbeat timeout (in ms).
    Heartbeat(u64),
}

impl AttemptLimits {
    fn new(timeouts: &ActivityTimeouts, started: Instant) -> AttemptLimits {
        AttemptLimits::at(timeouts, started, crate::runtime::wall_clock().millis())
    }

    /// The limits of an attempt started at `started`, when the wall clock read `now_millis`.
    fn at(timeouts: &ActivityTimeouts, started: Instant, now_millis: i64) -> AttemptLimits {
        let start_to_close =
            timeouts.start_to_close_ms.map(|ms| (started + Duration::from_millis(ms), Timeout::StartToClose(ms)));
        // The call's deadline is a wall-clock time (its first attempt's turn); it may have passed.
        let schedule_to_close = timeouts.deadline().zip(timeouts.schedule_to_close_ms).map(|(deadline, ms)| {
            let left = u64::try_from(deadline.millis().saturating_sub(now_millis)).unwrap_or(0);
            (started + Duration::from_millis(left), Timeout::ScheduleToClose(ms))
        });
        let end = match (start_to_close, schedule_to_close) {
            (Some(attempt), Some(call)) => Some(if call.0 <= attempt.0 { call } else { attempt }),
            (attempt, call) => attempt.or(call),
        };
        AttemptLimits { end, heartbeat: timeouts.heartbeat_ms.map(Duration::from_millis) }
    }

    /// The limit the attempt has run past at `now`, if any.
    fn expired(&self, now: Instant, last_beat: Instant) -> Option<Timeout> {
        match (self.end, self.heartbeat) {
            (Some((end, timeout)), _) if now >= end => Some(timeout),
            (_, Some(heartbeat)) if now >= last_beat + heartbeat => {
                Some(Timeout::Heartbeat(heartbeat.as_millis() as u64))
            }
            _ => None,
        }
    }

    /// When to look again: the lease renewal, or a limit that may pass first.
    fn next_check(&self, renew_at: Instant, last_beat: Instant) -> Instant {
        let mut next = renew_at;
        if let Some((end, _)) = self.end {
            next = next.min(end);
        }
        if let Some(heartbeat) = self.heartbeat {
            next = next.min(last_beat + heartbeat);
        }
        next
    }
}

impl Timeout {
    /// The name logs use.
    fn kind(self) -> &'static str {
        match self {
            Timeout::StartToClose(_) => "start-to-close",
            Timeout::ScheduleToClose(_) => "schedule-to-close",
            Timeout::Heartbeat(_) => "heartbeat",
        }
    }

    /// The failure an attempt of `activity` ends with.
    pub(crate) fn failure(self, activity: &NewActivity) -> FailureDetails {
        let (name, attempt) = (&activity.name, activity.attempt);
        match self {
            Timeout::StartToClose(ms) => FailureDetails::new(
                error_types::TIMEOUT,
                format!("activity '{name}' attempt {attempt} ran past its start-to-close timeout of {}", seconds(ms)),
            ),
            Timeout::Heartbeat(ms) => FailureDetails::new(
                error_types::TIMEOUT,
                format!(
                    "activity '{name}' attempt {attempt} sent no heartbeat within its heartbeat timeout of {}",
                    seconds(ms)
                ),
            ),
            Timeout::ScheduleToClose(ms) => FailureDetails::new(
                error_types::SCHEDULE_TO_CLOSE_TIMEOUT,
                format!(
                    "activity '{name}' ran past its call's schedule-to-close timeout of {} (attempt {attempt})",
                    seconds(ms)
                ),
            ),
        }
    }
}

/// A duration in milliseconds as seconds for messages, e.g. `2.5 s`.
fn seconds(millis: u64) -> String {
    format!("{} s", millis as f64 / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::Timestamp;

    const START_TO_CLOSE: ActivityTimeouts = ActivityTimeouts {
        start_to_close_ms: Some(1_000),
        schedule_to_close_ms: None,
        heartbeat_ms: None,
        first_scheduled_at: None,
    };

    #[test]
    fn the_earlier_of_the_attempt_s_and_the_call_s_limit_ends_the_attempt() {
        let started = Instant::now();
        let call = ActivityTimeouts {
            schedule_to_close_ms: Some(10_000),
            first_scheduled_at: Some(Timestamp(50_000)),
            ..START_TO_CLOSE
        };
        // 9.5 s into the call: its deadline (0.5 s away) comes before the attempt's (1 s).
        let limits = AttemptLimits::at(&call, started, 59_500);
        assert_eq!(limits.end, Some((started + Duration::from_millis(500), Timeout::ScheduleToClose(10_000))));
        // Early in the call: the attempt's own limit.
        let limits = AttemptLimits::at(&call, started, 50_100);
        assert_eq!(limits.end, Some((started + Duration::from_secs(1), Timeout::StartToClose(1_000))));
        // Past the deadline already: at once.
        let limits = AttemptLimits::at(&call, started, 70_000);
        assert_eq!(limits.expired(started, started), Some(Timeout::ScheduleToClose(10_000)));
    }

    #[test]
    fn a_heartbeat_resets_the_heartbeat_timeout_only() {
        let started = Instant::now();
        let timeouts = ActivityTimeouts { heartbeat_ms: Some(200), ..START_TO_CLOSE };
        let limits = AttemptLimits::at(&timeouts, started, 0);
        let later = |ms| started + Duration::from_millis(ms);
        assert_eq!(limits.expired(later(150), started), None);
        assert_eq!(limits.expired(later(250), started), Some(Timeout::Heartbeat(200)));
        assert_eq!(limits.expired(later(250), later(100)), None, "a beat at 100 ms");
        assert_eq!(limits.expired(later(1_000), later(900)), Some(Timeout::StartToClose(1_000)), "beats or not");
        assert_eq!(limits.next_check(later(10_000), later(100)), later(300));
    }
}
