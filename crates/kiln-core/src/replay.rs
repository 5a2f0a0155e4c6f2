//! The deterministic replay state machine.
//!
//! A turn feeds history events, in order, into a [`ReplayState`]. The orchestration code (driven by
//! the runtime, which polls it after every event that may unblock it) asks the state to schedule
//! steps and to hand over results. While old history is replayed, each scheduling call must match
//! the recorded scheduling event with the same sequence number, or replay stops with a
//! [`ReplayError::NonDeterminism`]. Past the end of the old history, scheduling calls become new
//! [`Action`]s. Every result carries the position of the event that produced it, so combinators
//! can resolve in history order rather than poll order.

use crate::{Action, ActivityTimeouts, EventKind, FailureDetails, HistoryEvent, Payload, Timestamp, WaitingOn};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A place a result lands in: a scheduled step, or a wait for an external event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// A scheduled activity, timer or sub-orchestration, by sequence number.
    Step(u64),
    /// The n-th `wait_for_event` call of this execution.
    Event(u64),
}

/// The result of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The step succeeded with this output (`null` for timers).
    Completed(Payload),
    /// The step failed.
    Failed(FailureDetails),
}

/// A result together with the history position of the event that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The result.
    pub outcome: Outcome,
    /// Position of the producing event in this execution's history, for history-ordered combinators.
    pub position: u64,
}

/// What the driver must do after an event was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing changed for the code.
    Nothing,
    /// The execution started: create the orchestration future with this input, then poll it.
    Start {
        /// The execution's input.
        input: Payload,
    },
    /// A result became available: poll the orchestration.
    Poll,
    /// The event was a duplicate delivery (e.g. an activity that ran twice) and must not be recorded.
    Duplicate,
}

/// Replay could not go on: the code and the history disagree, or the history is inconsistent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The code took a different step than the history records.
    #[error("non-determinism at step {step}: history has {recorded} but the orchestration called {actual}")]
    NonDeterminism {
        /// Sequence number of the step.
        step: u64,
        /// What history records.
        recorded: String,
        /// What the code did.
        actual: String,
    },
    /// The history cannot have been produced by any run of the engine.
    #[error("corrupted history: {0}")]
    Corrupted(String),
}

/// What one replay saw of the code's decisions, to plan a rewind: when the code took each step
/// and when it took each failure (see [`crate::plan_rewind`]). Recorded only when asked for
/// ([`ReplayState::trace_decisions`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionTrace {
    /// Every step the code took, in sequence order.
    pub steps: Vec<TracedStep>,
    /// When the code took the failure of a step (the tick), by step.
    pub failures_taken: BTreeMap<u64, u64>,
    /// When the code dropped a step without taking its result (the tick), by step: e.g. the
    /// loser of a `select2`, or any step still open when the code returned.
    pub dropped_steps: BTreeMap<u64, u64>,
}

/// When the code took a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracedStep {
    /// The decision's tick: decisions (steps and failures taken) count up from 1 in the order the
    /// code made them, within one poll too.
    pub tick: u64,
    /// History position (1-based) of the event being applied when the code took it.
    pub position: u64,
}

impl DecisionTrace {
    /// The next decision's tick (a step is taken, and its result taken or dropped, only once,
    /// so this only grows).
    fn tick(&self) -> u64 {
        (self.steps.len() + self.failures_taken.len() + self.dropped_steps.len()) as u64 + 1
    }
}

#[derive(Clone, Debug)]
enum OpenStep {
    Activity { name: String, attempt: u32, timeouts: ActivityTimeouts },
    Timer { fire_at: Timestamp },
    SubOrchestration { name: String, instance_id: String },
}

/// The replay state of one execution.
#[derive(Debug)]
pub struct ReplayState {
    instance_id: String,
    execution: u64,
    next_step: u64,
    next_event_wait: u64,
    replaying: bool,
    started: bool,
    current_time: Timestamp,
    position: u64,
    /// Steps the code took during replay that history has not confirmed yet.
    unconfirmed: BTreeMap<u64, Action>,
    /// Steps the code took past the end of history: this turn's new actions.
    new_actions: Vec<Action>,
    open: BTreeMap<u64, OpenStep>,
    results: HashMap<Slot, Completion>,
    event_waiters: HashMap<String, VecDeque<u64>>,
    /// Names of the events delivered to waits whose results were not taken yet.
    delivered_events: HashMap<u64, String>,
    /// An abandoned wait handed its event to another wait (see `take_handed_over`).
    handed_over: bool,
    buffered_events: HashMap<String, VecDeque<(Payload, u64)>>,
    custom_status: Option<Payload>,
    custom_status_changed: bool,
    continue_as_new: Option<(Payload, bool)>,
    uuid_counter: u64,
    code_error: Option<ReplayError>,
    trace: Option<Box<DecisionTrace>>,
    /// The replay behaviours of this execution ([`crate::features`]), from its `ExecutionStarted`.
    features: u32,
    /// The patches the stored history records, with the step each was asked for before.
    recorded_patches: HashMap<String, u64>,
    /// The answer [`ReplayState::patched`] gave for each patch, for the rest of the execution.
    patches: HashMap<String, bool>,
    /// Patches taken for the first time this turn, to record.
    new_patches: Vec<(String, u64)>,
    /// Activity steps a rewind ran again, with the rewind's time: their calls' limits run from
    /// then on.
    restarted: HashMap<u64, Timestamp>,
}

impl ReplayState {
    /// A fresh state for one execution of an instance, positioned before its first event.
    pub fn new(instance_id: impl Into<String>, execution: u64) -> ReplayState {
        ReplayState {
            instance_id: instance_id.into(),
            execution,
            next_step: 0,
            next_event_wait: 0,
            replaying: false,
            started: false,
            current_time: Timestamp(0),
            position: 0,
            unconfirmed: BTreeMap::new(),
            new_actions: Vec::new(),
            open: BTreeMap::new(),
            results: HashMap::new(),
            event_waiters: HashMap::new(),
            delivered_events: HashMap::new(),
            handed_over: false,
            buffered_events: HashMap::new(),
            custom_status: None,
            custom_status_changed: false,
            continue_as_new: None,
            uuid_counter: 0,
            code_error: None,
            trace: None,
            features: 0,
            recorded_patches: HashMap::new(),
            patches: HashMap::new(),
            new_patches: Vec::new(),
            restarted: HashMap::new(),
        }
    }

    /// When a rewind ran the activity `step` again (as far as replay has got): its call gets
    /// its schedule-to-close and total retry time again from then.
    pub fn limits_restarted_at(&self, step: u64) -> Option<Timestamp> {
        self.restarted.get(&step).copied()
    }

    /// Whether this execution runs with a replay behaviour ([`crate::features`]).
    pub fn has_feature(&self, feature: u32) -> bool {
        self.features & feature != 0
    }

    /// Records the code's decisions from now on (see [`DecisionTrace`]); a rewind asks for it.
    pub fn trace_decisions(&mut self) {
        self.trace = Some(Box::default());
    }

    /// The decisions recorded since [`ReplayState::trace_decisions`].
    pub fn take_trace(&mut self) -> Option<DecisionTrace> {
        self.trace.take().map(|trace| *trace)
    }

    /// Marks the start of old history: scheduling calls must now match recorded events.
    pub fn begin_replay(&mut self) {
        self.replaying = true;
    }

    /// Notes the patches `history` (the stored history about to be replayed) records, so that
    /// [`ReplayState::patched`] can answer before replay reaches them.
    pub fn note_recorded_patches(&mut self, history: &[HistoryEvent]) {
        for event in history {
            if let EventKind::Patched { patch_id, before_step } = &event.kind {
                self.recorded_patches.entry(patch_id.clone()).or_insert(*before_step);
            }
        }
    }

    /// Whether the execution takes the new branch of the patch `patch_id` (as Temporal's
    /// `patched`): true for an execution that recorded the patch, or that reaches it live (not
    /// replaying; it is recorded then); false for one whose stored history reaches this point
    /// without it (it ran on the code from before the patch). The answer holds for the rest of
    /// the execution. A patch the history records before another step than the code asks for it
    /// (its id reused for another change, or the code around it moved) is a non-determinism
    /// that names the patch.
    pub fn patched(&mut self, patch_id: &str) -> bool {
        if let Some(&answer) = self.patches.get(patch_id) {
            return answer;
        }
        let step = self.next_step;
        let answer = match self.recorded_patches.get(patch_id) {
            Some(&recorded) if recorded == step => true,
            Some(&recorded) => {
                self.code_error.get_or_insert(ReplayError::NonDeterminism {
                    step,
                    recorded: format!("patch '{patch_id}' taken before step {recorded}"),
                    actual: format!("patched('{patch_id}') before step {step} (is the patch id reused?)"),
                });
                true
            }
            None if self.replaying => false,
            None => {
                self.new_patches.push((patch_id.to_owned(), step));
                true
            }
        };
        self.patches.insert(patch_id.to_owned(), answer);
        answer
    }

    /// Takes the `Patched` events of the patches taken for the first time this turn.
    pub fn take_new_patches(&mut self) -> Vec<EventKind> {
        self.new_patches.drain(..).map(|(patch_id, before_step)| EventKind::Patched { patch_id, before_step }).collect()
    }

    /// Marks the end of old history. Every step the code took must have been confirmed.
    pub fn end_replay(&mut self) -> Result<(), ReplayError> {
        self.replaying = false;
        if let Some((step, action)) = self.unconfirmed.pop_first() {
            return Err(ReplayError::NonDeterminism {
                step,
                recorded: "no further step".to_owned(),
                actual: action.describe(),
            });
        }
        Ok(())
    }

    /// Applies one history event. `is_new` is false for events replayed from stored history.
    pub fn apply(&mut self, event: &HistoryEvent, is_new: bool) -> Result<Applied, ReplayError> {
        if let Some(err) = self.code_error.take() {
            return Err(err);
        }
        self.position += 1;
        let position = self.position;
        match &event.kind {
            EventKind::OrchestratorStarted => {
                self.current_time = event.timestamp;
                Ok(Applied::Nothing)
            }
            EventKind::ExecutionStarted { input, features, .. } => {
                if self.started {
                    return Err(ReplayError::Corrupted("a second ExecutionStarted in one execution".into()));
                }
                self.started = true;
                self.features = *features;
                if self.current_time == Timestamp(0) {
                    self.current_time = event.timestamp;
                }
                Ok(Applied::Start { input: input.clone() })
            }
            EventKind::TaskScheduled { .. }
            | EventKind::TimerCreated { .. }
            | EventKind::SubOrchestrationInstanceCreated { .. }
            | EventKind::EventSent { .. } => {
                if is_new {
                    return Err(ReplayError::Corrupted(format!("{} arrived as a message", event.kind.name())));
                }
                self.confirm(event)
            }
            EventKind::TaskCompleted { task_scheduled_id, result }
            | EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id, result } => {
                self.resolve(*task_scheduled_id, Outcome::Completed(result.clone()), position, is_new, event)
            }
            EventKind::TaskFailed { task_scheduled_id, failure_details }
            | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id, failure_details } => {
                self.resolve(*task_scheduled_id, Outcome::Failed(failure_details.clone()), position, is_new, event)
            }
            EventKind::TimerFired { timer_id, .. } => {
                self.resolve(*timer_id, Outcome::Completed(Payload::null()), position, is_new, event)
            }
            EventKind::EventRaised { name, input } => {
                match self.event_waiters.get_mut(name).and_then(VecDeque::pop_front) {
                    Some(wait) => {
                        let completion = Completion { outcome: Outcome::Completed(input.clone()), position };
                        self.results.insert(Slot::Event(wait), completion);
                        self.delivered_events.insert(wait, name.clone());
                        Ok(Applied::Poll)
                    }
                    None => {
                        self.buffered_events.entry(name.clone()).or_default().push_back((input.clone(), position));
                        Ok(Applied::Nothing)
                    }
                }
            }
            EventKind::Patched { .. } if is_new => {
                Err(ReplayError::Corrupted(format!("{} arrived as a message", event.kind.name())))
            }
            EventKind::ExecutionRewound { redone_activities, .. } => {
                for &step in redone_activities {
                    self.restarted.insert(step, event.timestamp);
                    if let Some(OpenStep::Activity { timeouts, .. }) = self.open.get_mut(&step) {
                        timeouts.first_scheduled_at = Some(event.timestamp);
                    }
                }
                Ok(Applied::Nothing)
            }
            EventKind::ExecutionSuspended { .. } | EventKind::ExecutionResumed { .. } | EventKind::Patched { .. } => {
                Ok(Applied::Nothing)
            }
            EventKind::ExecutionCompleted { .. }
            | EventKind::ExecutionTerminated { .. }
            | EventKind::ContinueAsNew { .. } => {
                Err(ReplayError::Corrupted(format!("{} in the middle of a running execution", event.kind.name())))
            }
        }
    }

    fn confirm(&mut self, event: &HistoryEvent) -> Result<Applied, ReplayError> {
        let step = u64::try_from(event.event_id)
            .map_err(|_| ReplayError::Corrupted(format!("{} without an event id", event.kind.name())))?;
        let recorded = describe_recorded(&event.kind);
        let Some(action) = self.unconfirmed.remove(&step) else {
            return Err(ReplayError::NonDeterminism { step, recorded, actual: "nothing".to_owned() });
        };
        if !action.matches(&event.kind) {
            return Err(ReplayError::NonDeterminism { step, recorded, actual: action.describe() });
        }
        // The step runs under the limits history records, whatever the code asks for now.
        let action = match (action, &event.kind) {
            (
                Action::ScheduleTask { id, name, input, attempt, heartbeat, .. },
                EventKind::TaskScheduled { timeouts, .. },
            ) => Action::ScheduleTask { id, name, input, attempt, timeouts: *timeouts, heartbeat },
            (action, _) => action,
        };
        self.open_step(&action);
        Ok(Applied::Nothing)
    }

    fn resolve(
        &mut self,
        step: u64,
        outcome: Outcome,
        position: u64,
        is_new: bool,
        event: &HistoryEvent,
    ) -> Result<Applied, ReplayError> {
        // A result counts only for an open step of its own kind: an activity's result cannot
        // resolve a timer (e.g. one sent by a purged run of an instance with the same id).
        let fits = match self.open.get(&step) {
            Some(OpenStep::Activity { .. }) => {
                matches!(event.kind, EventKind::TaskCompleted { .. } | EventKind::TaskFailed { .. })
            }
            Some(OpenStep::Timer { .. }) => matches!(event.kind, EventKind::TimerFired { .. }),
            Some(OpenStep::SubOrchestration { .. }) => matches!(
                event.kind,
                EventKind::SubOrchestrationInstanceCompleted { .. } | EventKind::SubOrchestrationInstanceFailed { .. }
            ),
            None => false,
        };
        // A schedule-to-close expiry for an earlier deadline than the call's (a rewind gave the
        // call its time again) is stale.
        let stale = is_new
            && match (&event.kind, self.open.get(&step)) {
                (EventKind::TaskFailed { failure_details, .. }, Some(OpenStep::Activity { timeouts, .. })) => {
                    failure_details.error_type == crate::error_types::SCHEDULE_TO_CLOSE_TIMEOUT
                        && timeouts.deadline().is_some_and(|deadline| event.timestamp < deadline)
                }
                _ => false,
            };
        // Stored history is replayed as it was recorded (before this check, a purged run's
        // result could be recorded for a step of another kind): only an unknown step is corrupt.
        let recorded_open = !is_new && self.open.contains_key(&step);
        if stale || (!fits && !recorded_open) {
            if is_new {
                return Ok(Applied::Duplicate);
            }
            return Err(ReplayError::Corrupted(format!(
                "{} for step {step}, which is not an open step",
                event.kind.name()
            )));
        }
        self.open.remove(&step);
        self.results.insert(Slot::Step(step), Completion { outcome, position });
        Ok(Applied::Poll)
    }

    fn open_step(&mut self, action: &Action) {
        let open = match action {
            Action::ScheduleTask { name, attempt, timeouts, .. } => {
                // A first attempt's deadline runs from now, the time its event records.
                let first =
                    ActivityTimeouts { first_scheduled_at: Some(self.current_time), ..ActivityTimeouts::default() };
                OpenStep::Activity { name: name.clone(), attempt: *attempt, timeouts: timeouts.or(&first) }
            }
            Action::CreateTimer { fire_at, .. } => OpenStep::Timer { fire_at: *fire_at },
            Action::CreateSubOrchestration { name, instance_id, .. } => {
                OpenStep::SubOrchestration { name: name.clone(), instance_id: instance_id.clone() }
            }
            Action::SendEvent { .. } => return,
        };
        self.open.insert(action.id(), open);
    }

    fn take_step(&mut self, make: impl FnOnce(u64) -> Action) -> u64 {
        let step = self.next_step;
        self.next_step += 1;
        if let Some(trace) = &mut self.trace {
            let tick = trace.tick();
            trace.steps.push(TracedStep { tick, position: self.position });
        }
        let action = make(step);
        if self.replaying {
            self.unconfirmed.insert(step, action);
        } else {
            self.open_step(&action);
            self.new_actions.push(action);
        }
        step
    }

    /// Schedules an activity attempt under the call's timeouts, handing it the previous
    /// attempt's last heartbeat details; returns its step.
    pub fn schedule_activity(
        &mut self,
        name: &str,
        input: Payload,
        attempt: u32,
        timeouts: ActivityTimeouts,
        heartbeat: Option<Payload>,
    ) -> u64 {
        self.take_step(|id| Action::ScheduleTask { id, name: name.to_owned(), input, attempt, timeouts, heartbeat })
    }

    /// Creates a durable timer; returns its step.
    pub fn create_timer(&mut self, fire_at: Timestamp) -> u64 {
        self.take_step(|id| Action::CreateTimer { id, fire_at })
    }

    /// Starts a sub-orchestration; returns its step. Without an id the child gets
    /// `{parent id}:{execution}:{step}`, which is stable across replays.
    pub fn schedule_sub_orchestration(
        &mut self,
        name: &str,
        version: &str,
        instance_id: Option<String>,
        input: Payload,
    ) -> u64 {
        let parent = self.instance_id.clone();
        let execution = self.execution;
        self.take_step(|id| Action::CreateSubOrchestration {
            id,
            name: name.to_owned(),
            version: version.to_owned(),
            instance_id: instance_id.unwrap_or_else(|| format!("{parent}:{execution}:{id}")),
            input,
        })
    }

    /// Sends an event to another instance (fire and forget).
    pub fn send_event(&mut self, instance_id: &str, name: &str, input: Payload) {
        self.take_step(|id| Action::SendEvent {
            id,
            instance_id: instance_id.to_owned(),
            name: name.to_owned(),
            input,
        });
    }

    /// Waits for the next external event with this name. An event that arrived before anyone
    /// waited is handed over at once, in arrival order.
    pub fn wait_for_event(&mut self, name: &str) -> Slot {
        let slot = Slot::Event(self.next_event_wait);
        self.next_event_wait += 1;
        match self.buffered_events.get_mut(name).and_then(VecDeque::pop_front) {
            Some((input, position)) => {
                self.results.insert(slot, Completion { outcome: Outcome::Completed(input), position });
                self.delivered_events.insert(self.next_event_wait - 1, name.to_owned());
            }
            None => self.event_waiters.entry(name.to_owned()).or_default().push_back(self.next_event_wait - 1),
        }
        slot
    }

    /// Takes the result of a slot, if it has one.
    pub fn take(&mut self, slot: Slot) -> Option<Completion> {
        if let Slot::Event(wait) = slot {
            self.delivered_events.remove(&wait);
        }
        let taken = self.results.remove(&slot);
        if let (Some(trace), Slot::Step(step), Some(Completion { outcome: Outcome::Failed(_), .. })) =
            (&mut self.trace, slot, &taken)
        {
            let tick = trace.tick();
            trace.failures_taken.insert(step, tick);
        }
        taken
    }

    /// Whether a step was taken and has no result yet.
    pub fn is_open(&self, step: u64) -> bool {
        self.open.contains_key(&step)
    }

    /// Notes that the code dropped a step's future without taking its result: nothing awaits
    /// the step any more (a rewind does not run it again).
    pub fn abandon_step(&mut self, step: u64) {
        if let Some(trace) = &mut self.trace {
            let tick = trace.tick();
            trace.dropped_steps.entry(step).or_insert(tick);
        }
    }

    /// Gives up a wait for an external event whose result the code will never take (its future
    /// was dropped, e.g. after losing a `select2`): it stops waiting, and an event already handed
    /// to it goes back to the buffer, in arrival order, for the next wait with that name. The code
    /// drops its futures at the same points on every replay, so this is deterministic too.
    pub fn abandon_event_wait(&mut self, slot: Slot) {
        let Slot::Event(wait) = slot else { return };
        let Some(name) = self.delivered_events.remove(&wait) else {
            for waiters in self.event_waiters.values_mut() {
                waiters.retain(|w| *w != wait);
            }
            return;
        };
        let Some(Completion { outcome: Outcome::Completed(input), position }) = self.results.remove(&slot) else {
            return;
        };
        // The oldest live wait for this name takes it, as it would have had the event come now;
        // the code must then be polled again (see `take_handed_over`). Otherwise it is buffered.
        match self.event_waiters.get_mut(&name).and_then(VecDeque::pop_front) {
            Some(next) => {
                self.results.insert(Slot::Event(next), Completion { outcome: Outcome::Completed(input), position });
                self.delivered_events.insert(next, name);
                self.handed_over = true;
            }
            None => {
                let queue = self.buffered_events.entry(name).or_default();
                let at = queue.partition_point(|(_, earlier)| *earlier < position);
                queue.insert(at, (input, position));
            }
        }
    }

    /// Whether an abandoned wait handed its event to another wait since the last call (the code
    /// has a result it has not seen yet and must be polled again).
    pub fn take_handed_over(&mut self) -> bool {
        std::mem::take(&mut self.handed_over)
    }

    /// The history position of a slot's result, if it has one (without taking it).
    pub fn position_of(&self, slot: Slot) -> Option<u64> {
        self.results.get(&slot).map(|c| c.position)
    }

    /// A slot's result, if it has one, without taking it.
    pub fn peek(&self, slot: Slot) -> Option<&Completion> {
        self.results.get(&slot)
    }

    /// Records a custom status; it is saved with the turn.
    pub fn set_custom_status(&mut self, status: Payload) {
        self.custom_status = Some(status);
        self.custom_status_changed = true;
    }

    /// The custom status, if it changed during this turn (resets the flag).
    pub fn take_changed_custom_status(&mut self) -> Option<Payload> {
        if std::mem::take(&mut self.custom_status_changed) { self.custom_status.clone() } else { None }
    }

    /// Asks to end this execution and start a new one with `input`.
    pub fn request_continue_as_new(&mut self, input: Payload, preserve_unprocessed_events: bool) {
        self.continue_as_new = Some((input, preserve_unprocessed_events));
    }

    /// The continue-as-new request, if the code made one.
    pub fn continue_as_new_request(&self) -> Option<&(Payload, bool)> {
        self.continue_as_new.as_ref()
    }

    /// Records an error found while the code was running (e.g. an invalid step).
    pub fn record_code_error(&mut self, err: ReplayError) {
        self.code_error.get_or_insert(err);
    }

    /// An error found while the code was running, if any.
    pub fn take_code_error(&mut self) -> Option<ReplayError> {
        self.code_error.take()
    }

    /// The replay-safe current time: the timestamp of the turn being replayed.
    pub fn current_time(&self) -> Timestamp {
        self.current_time
    }

    /// True while old history is being replayed.
    pub fn is_replaying(&self) -> bool {
        self.replaying
    }

    /// The instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The execution (generation) number.
    pub fn execution(&self) -> u64 {
        self.execution
    }

    /// A deterministic seed for the next replay-safe UUID: the same on every replay.
    pub fn next_uuid_seed(&mut self) -> String {
        self.uuid_counter += 1;
        format!("{}_{}_{}_{}", self.instance_id, self.execution, self.current_time.millis(), self.uuid_counter)
    }

    /// Takes this turn's new actions, in the order the code took them.
    pub fn take_new_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.new_actions)
    }

    /// True if the execution waits for no step and no event (what [`ReplayState::waiting_on`]
    /// would list is empty), without building that list.
    pub fn waits_for_nothing(&self) -> bool {
        self.open.is_empty() && self.event_waiters.values().all(VecDeque::is_empty)
    }

    /// What the execution waits for: open steps, then event waits.
    pub fn waiting_on(&self) -> Vec<WaitingOn> {
        let mut waiting: Vec<WaitingOn> = self
            .open
            .iter()
            .map(|(id, step)| match step {
                OpenStep::Activity { name, attempt, timeouts } => WaitingOn::Activity {
                    name: name.clone(),
                    attempt: *attempt,
                    task_id: *id,
                    deadline: timeouts.deadline(),
                    start_to_close_ms: timeouts.start_to_close_ms,
                    heartbeat_timeout_ms: timeouts.heartbeat_ms,
                },
                OpenStep::Timer { fire_at } => WaitingOn::Timer { fire_at: *fire_at, timer_id: *id },
                OpenStep::SubOrchestration { name, instance_id } => {
                    WaitingOn::SubOrchestration { name: name.clone(), instance_id: instance_id.clone() }
                }
            })
            .collect();
        let mut events: Vec<&String> =
            self.event_waiters.iter().filter(|(_, w)| !w.is_empty()).map(|(name, _)| name).collect();
        events.sort();
        waiting.extend(events.into_iter().map(|name| WaitingOn::Event { name: name.clone() }));
        waiting
    }

    /// Instance ids of sub-orchestrations that have not finished (for cascading terminate).
    pub fn open_sub_orchestrations(&self) -> Vec<String> {
        self.open
            .values()
            .filter_map(|s| match s {
                OpenStep::SubOrchestration { instance_id, .. } => Some(instance_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// External events that arrived and were not consumed, in arrival order.
    pub fn unconsumed_events(&self) -> Vec<(String, Payload)> {
        let mut events: Vec<(u64, String, Payload)> = self
            .buffered_events
            .iter()
            .flat_map(|(name, queue)| queue.iter().map(|(p, pos)| (*pos, name.clone(), p.clone())))
            .collect();
        events.sort_by_key(|(pos, _, _)| *pos);
        events.into_iter().map(|(_, name, payload)| (name, payload)).collect()
    }
}

fn describe_recorded(kind: &EventKind) -> String {
    match kind {
        EventKind::TaskScheduled { name, .. } => format!("TaskScheduled('{name}')"),
        EventKind::SubOrchestrationInstanceCreated { name, .. } => {
            format!("SubOrchestrationInstanceCreated('{name}')")
        }
        EventKind::EventSent { name, .. } => format!("EventSent('{name}')"),
        other => other.name().to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
