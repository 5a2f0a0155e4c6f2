//! The invariants checked after every run, each against what the plan says must happen:
//! - every accepted start reached a terminal status (the driver fails a run that does not
//!   settle: an instance stuck with nothing scheduled);
//! - each sample instance ended as its sample promises (its output, or its failure's type);
//! - outputs equal the pure function of the program (a fault-free run's), the blocker is
//!   Terminated, an instance whose id was reused had its own output before, and each instance
//!   kept the version it was started on;
//! - every raised event was delivered once (the output shows it consumed at its step; history
//!   holds it once, or more only if the driver re-sent it after an injected fault);
//! - no result was applied twice (each step of a history answered at most once, only by a result
//!   of its kind, and only if it was scheduled);
//! - every activity ran, none ran that no program calls, and one ran more than once only in a
//!   run with an injected fault that can cause it (counted by side effect).

use crate::common::faulty_store::Fault;
use crate::plan::Plan;
use crate::program::{Expectations, Program, expected_output};
use crate::samples::{Outcome, SampleStart};
use kiln::{EventKind, HistoryEvent, InstanceRecord, RuntimeStatus};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// An instance as it was before its id was reused.
#[derive(Debug)]
pub struct Snapshot {
    /// Its record.
    pub record: InstanceRecord,
    /// Its history.
    pub history: Vec<HistoryEvent>,
    /// The program it ran.
    pub program: Program,
}

/// What a run left behind.
#[derive(Debug, Default)]
pub struct Observed {
    /// Every instance at the end: record and history.
    pub finals: BTreeMap<String, (InstanceRecord, Vec<HistoryEvent>)>,
    /// Instances whose id was reused, as they were before.
    pub replaced: Vec<Snapshot>,
    /// Side effects: activity runs by key.
    pub effects: BTreeMap<String, u32>,
    /// What the programs must have done.
    pub expectations: Expectations,
    /// Store faults injected, by call point and kind.
    pub injected: BTreeMap<(&'static str, Fault), u32>,
    /// The version each top-level program (by tag) must be pinned to.
    pub versions: BTreeMap<String, String>,
    /// Node crashes.
    pub crashes: u32,
    /// Clock jumps past the lease while work ran.
    pub lease_expiries: u32,
}

impl Observed {
    /// Adds one node's injected faults.
    pub fn add_injected(&mut self, injected: BTreeMap<(&'static str, Fault), u32>) {
        for (key, n) in injected {
            *self.injected.entry(key).or_default() += n;
        }
    }

    /// True if a fault was injected that can make an activity run again: a crash, a lease
    /// expiry, a claim of activities or a report of a result whose success went unheard, or a
    /// lease renewal or release that failed.
    pub fn faulted(&self) -> bool {
        let rerun_points = ["fetch_activity_work", "complete_activity", "claim_with_activity_result"];
        let can_rerun = |(point, fault): &(&str, Fault)| match *point {
            "renew_activity_lease" | "abandon_activity_work" => true,
            point => *fault == Fault::FailAfter && rerun_points.contains(&point),
        };
        self.crashes > 0 || self.lease_expiries > 0 || self.injected.iter().any(|(key, &n)| n > 0 && can_rerun(key))
    }

    /// One line on what happened.
    pub fn summary(&self) -> String {
        let count = |lost: bool| -> u32 {
            self.injected.iter().filter(|((_, f), _)| (*f == Fault::LostNotification) == lost).map(|(_, n)| n).sum()
        };
        let (store, lost) = (count(false), count(true));
        let reruns: u32 = self.effects.values().map(|n| n - 1).sum();
        format!(
            "{} instances, {} activity runs ({reruns} reruns); faults: {store} store, {lost} lost wake-ups, {} crashes, {} lease expiries",
            self.finals.len(),
            self.effects.values().sum::<u32>(),
            self.crashes,
            self.lease_expiries
        )
    }
}

/// Every invariant violated by `observed` under `plan`, described.
pub fn check(plan: &Plan, observed: &Observed) -> Vec<String> {
    let mut errors = Vec::new();
    for (id, (record, _)) in &observed.finals {
        if !record.status.is_terminal() {
            errors.push(format!("{id}: ended the run {} (waiting on {:?})", record.status, record.waiting_on));
        }
        if record.name == "nudge" && record.status != RuntimeStatus::Completed {
            errors.push(format!("{id}: a no-op instance is {}: {:?}", record.status, record.failure));
        }
    }
    for (index, start) in plan.starts.iter().enumerate() {
        let program = match &plan.reuse {
            Some(reuse) if reuse.of == index => &reuse.program,
            _ => &start.program,
        };
        match observed.finals.get(&start.id) {
            Some((record, history)) => {
                check_output(&start.id, record, history, program, &mut errors);
                check_version(record, program, observed, &mut errors);
            }
            None => errors.push(format!("{}: accepted but missing at the end", start.id)),
        }
    }
    for snapshot in &observed.replaced {
        let id = &snapshot.record.instance_id;
        check_output(id, &snapshot.record, &snapshot.history, &snapshot.program, &mut errors);
        check_version(&snapshot.record, &snapshot.program, observed, &mut errors);
        check_history(&snapshot.record.instance_id, &snapshot.history, observed, &mut errors);
    }
    for sample in &plan.samples {
        match observed.finals.get(&sample.id) {
            Some((record, history)) => check_sample(sample, record, history, &mut errors),
            None => errors.push(format!("{}: accepted but missing at the end", sample.id)),
        }
    }
    if let Some((blocker, _)) = &plan.blocker {
        let status = observed.finals.get(&blocker.id).map(|(r, _)| r.status);
        if status != Some(RuntimeStatus::Terminated) {
            errors.push(format!("{}: terminated while blocked, but ended {status:?}", blocker.id));
        }
    }
    for (id, (_, history)) in &observed.finals {
        check_history(id, history, observed, &mut errors);
    }
    check_effects(observed, &mut errors);
    errors
}

fn check_output(
    id: &str,
    record: &InstanceRecord,
    history: &[HistoryEvent],
    program: &Program,
    errors: &mut Vec<String>,
) {
    let Some(expected) = expected_output(program) else { return };
    let output: Option<Value> = record.output.as_ref().and_then(|p| serde_json::from_str(p.as_str()).ok());
    if record.status != RuntimeStatus::Completed || output.as_ref() != Some(&expected) {
        errors.push(format!(
            "{id}: ended {} with output {output:?} (failure {:?}), expected {expected}; history: {}",
            record.status,
            record.failure,
            describe(history)
        ));
    }
}

/// A sample instance ends as its sample promises.
fn check_sample(sample: &SampleStart, record: &InstanceRecord, history: &[HistoryEvent], errors: &mut Vec<String>) {
    let output: Option<Value> = record.output.as_ref().and_then(|p| serde_json::from_str(p.as_str()).ok());
    let ended_as_expected = match &sample.expected {
        Outcome::Output(expected) => record.status == RuntimeStatus::Completed && output.as_ref() == Some(expected),
        Outcome::Failure(error_type) => {
            record.status == RuntimeStatus::Failed
                && record.failure.as_ref().is_some_and(|f| f.error_type == *error_type)
        }
    };
    if !ended_as_expected {
        errors.push(format!(
            "{} ({}): ended {} with output {output:?} (failure {:?}), expected {:?}; history: {}",
            sample.id,
            sample.name,
            record.status,
            record.failure,
            sample.expected,
            describe(history)
        ));
    }
}

/// An instance keeps the version it started on, whichever node ran it.
fn check_version(record: &InstanceRecord, program: &Program, observed: &Observed, errors: &mut Vec<String>) {
    if let Some(expected) = observed.versions.get(&program.tag)
        && *expected != record.version
    {
        errors.push(format!("{}: runs version '{}', started on '{expected}'", record.instance_id, record.version));
    }
}

/// One start per history; each scheduled step answered at most once; events held once.
fn check_history(id: &str, history: &[HistoryEvent], observed: &Observed, errors: &mut Vec<String>) {
    let starts = history.iter().filter(|e| matches!(e.kind, EventKind::ExecutionStarted { .. })).count();
    if starts != 1 {
        errors.push(format!("{id}: {starts} ExecutionStarted events"));
    }
    // Step → what kind of step it is ("task", "timer", "child").
    let mut scheduled = BTreeMap::new();
    let mut answered = BTreeSet::new();
    let mut events: BTreeMap<&str, u32> = BTreeMap::new();
    for event in history {
        let answer = match &event.kind {
            EventKind::TaskScheduled { .. } => {
                scheduled.insert(event.event_id, "task");
                None
            }
            EventKind::TimerCreated { .. } => {
                scheduled.insert(event.event_id, "timer");
                None
            }
            EventKind::SubOrchestrationInstanceCreated { .. } => {
                scheduled.insert(event.event_id, "child");
                None
            }
            EventKind::TaskCompleted { task_scheduled_id: step, .. }
            | EventKind::TaskFailed { task_scheduled_id: step, .. } => Some((*step as i64, "task")),
            EventKind::TimerFired { timer_id: step, .. } => Some((*step as i64, "timer")),
            EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id: step, .. }
            | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id: step, .. } => {
                Some((*step as i64, "child"))
            }
            EventKind::EventRaised { name, .. } => {
                *events.entry(name).or_default() += 1;
                None
            }
            _ => None,
        };
        if let Some((step, kind)) = answer {
            if !answered.insert(step) {
                errors.push(format!("{id}: step {step} answered twice (a result applied twice)"));
            }
            match scheduled.get(&step) {
                None => errors.push(format!("{id}: step {step} answered by a {kind} result but never scheduled")),
                Some(&what) if what != kind => {
                    errors.push(format!("{id}: step {step} is a {what} but was answered by a {kind} result"));
                }
                Some(_) => {}
            }
        }
    }
    let resent = observed.injected.get(&("send_message", Fault::FailAfter)).is_some_and(|&n| n > 0);
    for (name, count) in events {
        if count > 1 && !resent {
            errors.push(format!("{id}: event {name} raised once but held {count} times"));
        }
    }
}

fn check_effects(observed: &Observed, errors: &mut Vec<String>) {
    for key in observed.expectations.effects.keys() {
        if !observed.effects.contains_key(key) {
            errors.push(format!("activity {key} never ran"));
        }
    }
    for (key, &runs) in &observed.effects {
        match observed.expectations.effects.get(key) {
            None if observed.expectations.optional.contains(key) => {}
            None => errors.push(format!("activity {key} ran {runs} times but no program calls it")),
            Some(&expected) if runs > expected && !observed.faulted() => {
                errors.push(format!("activity {key} ran {runs} times (expected {expected}) in a run without faults"));
            }
            Some(_) => {}
        }
    }
}

/// A history in one line: each event's id, kind and the step it answers.
pub fn describe(history: &[HistoryEvent]) -> String {
    let line = |e: &HistoryEvent| match &e.kind {
        EventKind::TaskScheduled { name, .. } => format!("{} TaskScheduled({name})", e.event_id),
        EventKind::TaskCompleted { task_scheduled_id: s, .. } => format!("TaskCompleted({s})"),
        EventKind::TaskFailed { task_scheduled_id: s, .. } => format!("TaskFailed({s})"),
        EventKind::TimerFired { timer_id: s, .. } => format!("TimerFired({s})"),
        EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id: s, .. } => format!("SubCompleted({s})"),
        EventKind::SubOrchestrationInstanceFailed { task_scheduled_id: s, .. } => format!("SubFailed({s})"),
        EventKind::EventRaised { name, .. } => format!("EventRaised({name})"),
        kind if e.event_id >= 0 => format!("{} {}", e.event_id, kind.name()),
        kind => kind.name().to_owned(),
    };
    history.iter().map(line).collect::<Vec<_>>().join(", ")
}
