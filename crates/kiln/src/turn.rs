//! One orchestration turn: from a claimed work item to one atomic [`TurnCommit`].
//!
//! The turn sorts the inbox (messages of other executions are dropped, messages held back
//! while suspended stay), handles terminate and rewind, gets a live execution (from the cache,
//! or by replaying stored history), applies the new events, and turns the resulting actions and
//! outcome into history, outgoing work and the new instance state.

use crate::attempt::Timeout;
use crate::cache::RecordStamp;
use crate::executor::Execution;
use crate::log_fields;
use crate::registry::OrchestrationFn;
use crate::runtime::{Runtime, new_run_execution, wall_clock};
use kiln_core::{
    Action, EventKind, ExecutionOutcome, FailureDetails, HistoryEvent, InstanceContext, ParentInstance, Payload,
    ReplayError, RuntimeStatus, Timestamp, error_types, plan_rewind, rewind_body,
};
use kiln_store::{
    FinishedActivity, HistoryUpdate, InboxMessage, InstanceRecord, NewActivity, NewInstance, NewSubOrchestration,
    OrchestrationWorkItem, OutgoingMessage, StoreError, TurnCommit, UNPINNED_VERSION, UNSTORED_MESSAGE_ID, Unrunnable,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// What to do with a claimed work item.
enum TurnPlan {
    /// Commit this; cache the execution afterwards if there is one.
    Commit(Box<TurnCommit>, Option<Execution>),
    /// Release the work for later (e.g. its orchestration version is not registered here).
    Abandon(Duration),
}

/// A turn that landed, as its log lines describe it (see `log_fields`).
pub(crate) struct Committed<'a> {
    pub(crate) instance_id: &'a str,
    pub(crate) orchestration: &'a str,
    pub(crate) execution: u64,
    pub(crate) status: RuntimeStatus,
    pub(crate) labels: &'a kiln_core::Labels,
    pub(crate) correlation: Option<&'a kiln_core::Correlation>,
}

impl Committed<'_> {
    /// Logs the turn (debug) and the timers and events it took in.
    pub(crate) fn log(&self, arrivals: Vec<&InboxMessage>) {
        let Committed { instance_id, orchestration, execution, status, labels, correlation } = *self;
        let correlation_id = log_fields::correlation_id(correlation);
        tracing::debug!(instance_id, orchestration, execution, %status, correlation_id, %labels, "turn committed");
        for arrival in arrivals {
            match &arrival.event.kind {
                EventKind::TimerFired { timer_id, .. } => {
                    tracing::debug!(instance_id, orchestration, execution, timer_id, correlation_id, %labels, "timer fired")
                }
                EventKind::EventRaised { name: event, .. } => {
                    tracing::info!(instance_id, orchestration, execution, event, correlation_id, %labels, "event received")
                }
                _ => {}
            }
        }
    }

    /// Logs the end of the instance, `millis` after its creation.
    pub(crate) fn log_end(&self, failure: Option<&FailureDetails>, millis: u64) {
        let Committed { instance_id, orchestration, execution, status, labels, correlation } = *self;
        tracing::info!(
            instance_id,
            orchestration,
            execution,
            %status,
            error = failure.map(ToString::to_string),
            millis,
            correlation_id = log_fields::correlation_id(correlation),
            trace_id = log_fields::trace_id(correlation),
            %labels,
            "instance finished"
        );
    }
}

/// How an execution ended.
enum ExecutionEnd {
    Completed(Payload),
    Failed(FailureDetails),
    Terminated(Option<String>),
}

/// Processes a work item and commits (or abandons) it; true if the commit landed. A turn
/// that took an activity's result directly (`finished`) also finishes that activity.
pub(crate) async fn run_turn(rt: &Runtime, item: OrchestrationWorkItem, finished: Option<FinishedActivity>) -> bool {
    let instance_id = item.instance.instance_id.clone();
    let (name, created_at) = (item.instance.name.clone(), item.instance.created_at);
    let lease = item.lease;
    let was_terminal = item.instance.status.is_terminal();
    let plan = match plan_turn(rt, &item).await {
        Ok(plan) => plan,
        Err(err @ StoreError::Unavailable(_)) => {
            tracing::warn!(instance_id, error = %err, "turn could not be prepared; retrying later");
            TurnPlan::Abandon(Duration::from_secs(1))
        }
        Err(err) => {
            // E.g. a history that cannot be read: it may fail every time, so the lease is left
            // to lapse — the retry counts, and an instance that never gets through ends as poison.
            tracing::error!(instance_id, error = %err, "turn could not be prepared; retried when its lease lapses");
            return false;
        }
    };
    match plan {
        TurnPlan::Commit(mut commit, execution) => {
            if finished.is_some() && !commit.consumed.contains(&UNSTORED_MESSAGE_ID) {
                // The turn left the activity's result unprocessed (a suspend or rewind came in
                // the same batch): committing would delete the activity with its result. Give
                // the instance back; the caller stores the result as an ordinary message.
                let _ = rt.store.abandon_orchestration_work(&instance_id, lease, Duration::ZERO).await;
                return false;
            }
            commit.finished_activities.extend(finished);
            // Cached before the commit: the instance may be claimed again the moment the commit
            // lands. The entry is stamped with the record the commit leaves, so it is only ever
            // used if the commit did land.
            if let Some(execution) = execution {
                rt.cache.put(instance_id.clone(), execution);
            }
            // A finished instance's turn that only drops or keeps late messages did not end it
            // again (a rewind that finishes at once rewrites the history, and did).
            let late_only = was_terminal && matches!(commit.history, HistoryUpdate::Append(_));
            let ended = (commit.status.is_terminal() && !late_only).then_some(commit.now);
            let (status, failure, execution) = (commit.status, commit.failure.clone(), commit.execution);
            // Timers and events this turn takes in, logged once it lands (never on replay).
            let arrivals: Vec<&InboxMessage> = if tracing::enabled!(tracing::Level::INFO) {
                item.messages
                    .iter()
                    .filter(|m| matches!(m.event.kind, EventKind::TimerFired { .. } | EventKind::EventRaised { .. }))
                    .filter(|m| commit.consumed.contains(&m.id))
                    .collect()
            } else {
                Vec::new()
            };
            match rt.store.commit_turn(*commit).await {
                Ok(()) => {
                    rt.metrics.turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let committed = Committed {
                        instance_id: &instance_id,
                        orchestration: &name,
                        execution,
                        status,
                        labels: &item.instance.labels,
                        correlation: item.instance.correlation.as_ref(),
                    };
                    committed.log(arrivals);
                    if status == RuntimeStatus::Terminated {
                        // The commit withdrew its activities: stop the ones running here now
                        // (elsewhere, they stop when they next renew their lease).
                        rt.running.cancel(&instance_id, execution);
                    }
                    if let Some(ended) = ended {
                        let millis = u64::try_from(ended.millis() - created_at.millis()).unwrap_or(0);
                        rt.metrics.record_duration(&name, Duration::from_millis(millis));
                        committed.log_end(failure.as_ref(), millis);
                    }
                    true
                }
                Err(err) => {
                    rt.cache.take(&instance_id);
                    if finished.is_some() {
                        // The instance lease may still be held (the activity's was lost): free it.
                        let _ = rt.store.abandon_orchestration_work(&instance_id, lease, Duration::ZERO).await;
                    } else if matches!(err, StoreError::LeaseLost(_)) {
                        tracing::warn!(instance_id, "lease lost before commit; another worker redoes the turn");
                    } else if matches!(err, StoreError::Unavailable(_)) {
                        // A passing store failure (a full disk, a lost connection): given back,
                        // the claim does not count towards poison.
                        tracing::warn!(instance_id, error = %err, "turn commit failed; retrying later");
                        let _ = rt.store.abandon_orchestration_work(&instance_id, lease, Duration::from_secs(1)).await;
                    } else {
                        // Anything else may fail again every time: the lease is left to lapse, so
                        // the retry counts and a turn that never commits ends as poison.
                        tracing::error!(instance_id, error = %err, "turn commit failed; retried when its lease lapses");
                    }
                    false
                }
            }
        }
        TurnPlan::Abandon(retry_after) => {
            let _ = rt.store.abandon_orchestration_work(&instance_id, lease, retry_after).await;
            false
        }
    }
}

/// Runs a new instance's first turn before the instance is stored, so that the store can write
/// both in one commit. `None` if the turn cannot run here (it then runs on a worker as usual).
pub(crate) async fn first_turn(rt: &Runtime, instance: &NewInstance) -> Option<TurnCommit> {
    let item = instance.first_work_item();
    match plan_turn(rt, &item).await {
        Ok(TurnPlan::Commit(commit, execution)) => {
            if let Some(execution) = execution {
                rt.cache.put(instance.instance_id.clone(), execution);
            }
            Some(*commit)
        }
        Ok(TurnPlan::Abandon(_)) | Err(_) => None,
    }
}

async fn plan_turn(rt: &Runtime, item: &OrchestrationWorkItem) -> Result<TurnPlan, StoreError> {
    // Never the last commit's stamp, even within one millisecond: the stamp is part of the
    // version the execution cache checks (see `RecordStamp`), so every commit must change it.
    // (Not "at least one later": a node whose clock runs ahead would drag every later turn's
    // time, and the timers they set, along with it.)
    let wall = wall_clock();
    let now = if wall == item.instance.updated_at { Timestamp(wall.0 + 1) } else { wall };
    let instance = &item.instance;
    let mut commit = unchanged_commit(item, now);
    // Messages addressed to another execution (late activity results, old timers, a purged run's) are dropped.
    let (mut current, stale): (Vec<&InboxMessage>, Vec<&InboxMessage>) =
        item.messages.iter().partition(|m| m.execution.is_none_or(|e| e == instance.execution));
    commit.consumed.extend(stale.iter().map(|m| m.id));
    // A new execution starts with its start, then the events its predecessor carried over
    // (continue-as-new), then whatever arrived meanwhile: events keep their order across the
    // restart. (Only a new execution's first turn has a start to put first.)
    if current.iter().any(|m| matches!(m.event.kind, EventKind::ExecutionStarted { .. })) {
        current.sort_by_key(|m| match m.event.kind {
            EventKind::ExecutionStarted { .. } => 0,
            _ if is_carried_over(m, instance.execution) => 1,
            _ => 2,
        });
    }

    // Before the poison check: a finished instance must never be failed again.
    if instance.status.is_terminal() {
        // A finished instance ignores whatever still arrives for it, except that a failed one
        // keeps the results of steps still running when it failed, after its end: a rewind
        // reopens those steps, and nothing would complete them again.
        let late: Vec<&InboxMessage> = match instance.status {
            RuntimeStatus::Failed => current.iter().copied().filter(|m| m.event.kind.is_step_result()).collect(),
            _ => Vec::new(),
        };
        let rewind = current.iter().find(|m| matches!(m.event.kind, EventKind::ExecutionRewound { .. }));
        if let (Some(message), RuntimeStatus::Failed) = (rewind, instance.status) {
            // Without the code here, the whole batch waits for a worker that has it: what came
            // after the rewind is for the rewound code.
            let Some(code) = orchestration_for(rt, instance) else {
                return Ok(not_here(rt, instance, "the rewind waits for a worker that has it"));
            };
            if item.dequeue_count <= rt.config.max_dequeue_count {
                return rewind_turn(rt, instance, code, commit, message, &late).await;
            }
            tracing::error!(instance_id = instance.instance_id, "the rewind kept failing; it is given up");
            report_failure_again(instance, &mut commit);
        }
        commit.consumed.extend(current.iter().map(|m| m.id));
        commit.history = HistoryUpdate::Append(late.iter().map(|m| m.event.clone()).collect());
        return Ok(TurnPlan::Commit(Box::new(commit), None));
    }

    if item.dequeue_count > rt.config.max_dequeue_count {
        commit.consumed.extend(current.iter().map(|m| m.id));
        let failure = FailureDetails::new(
            error_types::POISON,
            format!("the instance's work was claimed {} times without completing; giving up", item.dequeue_count - 1),
        );
        let results = current.iter().filter(|m| m.event.kind.delivers_to_code()).map(|m| m.event.clone()).collect();
        finish(&mut commit, instance, None, vec![turn_started(now)], ExecutionEnd::Failed(failure), results);
        return Ok(TurnPlan::Commit(Box::new(commit), None));
    }

    if let Some(message) = current.iter().find(|m| matches!(m.event.kind, EventKind::ExecutionTerminated { .. })) {
        commit.consumed.extend(current.iter().map(|m| m.id));
        terminate(rt, instance, &mut commit, &message.event).await?;
        return Ok(TurnPlan::Commit(Box::new(commit), None));
    }

    // While suspended, only suspend/resume are processed; other messages wait in the inbox.
    let mut suspended = instance.status == RuntimeStatus::Suspended;
    let mut events = Vec::new();
    for message in current {
        match message.event.kind {
            EventKind::ExecutionSuspended { .. } => suspended = true,
            EventKind::ExecutionResumed { .. } => suspended = false,
            _ if suspended => continue,
            _ => {}
        }
        commit.consumed.push(message.id);
        events.push(message.event.clone());
    }

    let Some((orchestration, version)) = orchestration_for(rt, instance) else {
        return Ok(not_here(rt, instance, "the instance stays pending"));
    };
    commit.version = version;
    let mut execution = match rt.cache.take_matching(instance) {
        Some(cached) => cached,
        None => {
            if instance.history_len == 0 {
                replayed(rt, instance, orchestration, &[])
            } else {
                let history = rt.store.get_history(&instance.instance_id).await?;
                rt.metrics.replays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                replayed(rt, instance, orchestration, &history)
            }
        }
    };
    apply_events(rt, instance, &mut commit, &mut execution, None, events, suspended);
    Ok(finished_plan(commit, execution))
}

/// Keeps the execution for the cache unless the turn ended it.
fn finished_plan(commit: TurnCommit, execution: Execution) -> TurnPlan {
    let ended = commit.status.is_terminal() || commit.status == RuntimeStatus::ContinuedAsNew;
    TurnPlan::Commit(Box::new(commit), if ended { None } else { Some(execution) })
}

/// A commit that changes nothing yet: the starting point every turn edits.
fn unchanged_commit(item: &OrchestrationWorkItem, now: Timestamp) -> TurnCommit {
    let instance = &item.instance;
    TurnCommit {
        instance_id: instance.instance_id.clone(),
        lease: item.lease,
        consumed: Vec::new(),
        history: HistoryUpdate::Append(Vec::new()),
        execution: instance.execution,
        version: instance.version.clone(),
        input: instance.input.clone(),
        status: instance.status,
        output: instance.output.clone(),
        failure: instance.failure.clone(),
        custom_status: instance.custom_status.clone(),
        waiting_on: instance.waiting_on.clone(),
        activities: Vec::new(),
        messages: Vec::new(),
        sub_orchestrations: Vec::new(),
        finished_activities: Vec::new(),
        now,
    }
}

fn turn_started(now: Timestamp) -> HistoryEvent {
    HistoryEvent::new(now, EventKind::OrchestratorStarted)
}

fn replay_failure(err: &ReplayError) -> FailureDetails {
    let error_type = match err {
        ReplayError::NonDeterminism { .. } => error_types::NON_DETERMINISM,
        ReplayError::Corrupted(_) => error_types::CORRUPTED_HISTORY,
    };
    FailureDetails::new(error_type, err.to_string())
}

/// Terminates an instance and cascades to its unfinished sub-orchestrations.
async fn terminate(
    rt: &Runtime,
    instance: &InstanceRecord,
    commit: &mut TurnCommit,
    event: &HistoryEvent,
) -> Result<(), StoreError> {
    let children = match rt.cache.take_matching(instance) {
        Some(execution) => execution.state().open_sub_orchestrations(),
        None => open_children(&rt.store.get_history(&instance.instance_id).await?),
    };
    for child in children {
        commit.messages.push(OutgoingMessage {
            instance_id: child,
            execution: None,
            event: HistoryEvent::new(
                commit.now,
                EventKind::ExecutionTerminated { reason: Some("parent terminated".into()) },
            ),
            visible_at: None,
        });
    }
    let reason = match &event.kind {
        EventKind::ExecutionTerminated { reason } => reason.clone(),
        _ => None,
    };
    let end = ExecutionEnd::Terminated(reason);
    finish(commit, instance, None, vec![turn_started(commit.now), event.clone()], end, Vec::new());
    Ok(())
}

/// Sub-orchestrations started in a history that have not reported back.
fn open_children(history: &[HistoryEvent]) -> Vec<String> {
    let mut open = BTreeMap::new();
    for event in history {
        match &event.kind {
            EventKind::SubOrchestrationInstanceCreated { instance_id, .. } => {
                open.insert(event.event_id, instance_id.clone());
            }
            EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id, .. }
            | EventKind::SubOrchestrationInstanceFailed { task_scheduled_id, .. } => {
                open.remove(&(*task_scheduled_id as i64));
            }
            _ => {}
        }
    }
    open.into_values().collect()
}

/// The orchestration function for an instance on this worker, and the version it runs. An
/// instance created [`UNPINNED_VERSION`] (a child whose orchestration was not registered where
/// its parent ran) takes this worker's default; the turn's commit pins it.
fn orchestration_for(rt: &Runtime, instance: &InstanceRecord) -> Option<(OrchestrationFn, String)> {
    let version = match instance.version.as_str() {
        UNPINNED_VERSION => rt.registry.default_version(&instance.name)?,
        version => version,
    };
    Some((rt.registry.orchestration(&instance.name, version)?, version.to_owned()))
}

/// Gives back an instance whose orchestration version is not registered on this worker
/// (uncounted: it waits for a worker that has it), logging `what` happens meanwhile: at once when
/// the store's claims skip it from now on (for another node), otherwise (a store one process
/// owns) after a delay.
fn not_here(rt: &Runtime, instance: &InstanceRecord, what: &str) -> TurnPlan {
    tracing::warn!(
        instance_id = instance.instance_id,
        name = instance.name,
        version = instance.version,
        "orchestration version is not registered on this worker; {what}"
    );
    rt.metrics.unregistered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let unrunnable = Unrunnable::Orchestration { name: instance.name.clone(), version: instance.version.clone() };
    let skipped = rt.store.skip_in_claims(&unrunnable);
    TurnPlan::Abandon(if skipped { Duration::ZERO } else { rt.config.unregistered_retry })
}

/// Rewinds a failed instance: the failures its code did not get past are undone, their steps
/// run again, and it is running once more (see [`kiln_core::rewind`]). `late` are step results
/// that came in the same batch (kept after the end, as when they come before it). A rewind that
/// cannot be done — the current code does not replay the history, or fails again at once —
/// leaves the instance failed as it was.
async fn rewind_turn(
    rt: &Runtime,
    instance: &InstanceRecord,
    (orchestration, version): (OrchestrationFn, String),
    mut commit: TurnCommit,
    message: &InboxMessage,
    late: &[&InboxMessage],
) -> Result<TurnPlan, StoreError> {
    commit.consumed.push(message.id);
    commit.consumed.extend(late.iter().map(|m| m.id));
    let late: Vec<HistoryEvent> = late.iter().map(|m| m.event.clone()).collect();
    let reason = match &message.event.kind {
        EventKind::ExecutionRewound { reason, .. } => reason.clone(),
        _ => None,
    };
    let mut history = rt.store.get_history(&instance.instance_id).await?;
    history.extend(late.iter().cloned());
    let new_execution = || {
        rt.metrics.replays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Execution::new(
            &instance.instance_id,
            &instance.name,
            instance.execution,
            orchestration.clone(),
            rt.config.limits,
            std::sync::Arc::clone(&rt.activity_defaults),
        )
    };
    // One replay of the failed history, tracing the code's decisions: which failures it got past.
    let mut probe = new_execution();
    probe.state().trace_decisions();
    if let Err(err) = probe.replay(rewind_body(&history)) {
        return Ok(not_rewound(instance, commit, late, &format!("the current code does not replay it: {err}")));
    }
    let Some(trace) = probe.state().take_trace() else {
        return Ok(not_rewound(instance, commit, late, "its replay was not traced"));
    };
    let plan = plan_rewind(&history, &trace, commit.now, reason);
    let mut execution = new_execution();
    if let Err(err) = execution.replay(&plan.history) {
        return Ok(not_rewound(instance, commit, late, &format!("the rewound history does not replay: {err}")));
    }
    let children = children_to_redo(rt, instance, plan.failed_children, commit.now).await?;
    let unchanged = commit.clone();
    commit.version = version;
    commit.output = None;
    commit.failure = None;
    let mut reapplied = plan.reapplied;
    reapplied.extend(children.reports);
    apply_events(rt, instance, &mut commit, &mut execution, Some(plan.history), reapplied, false);
    match commit.status {
        // Undoing the failures changed nothing: the code fails again at once. Committing would
        // only drop the failures it undid (a later rewind could not redo them).
        RuntimeStatus::Failed => {
            let failure = commit.failure.as_ref().map(ToString::to_string).unwrap_or_default();
            return Ok(not_rewound(instance, unchanged, late, &format!("it fails again at once: {failure}")));
        }
        // Ended (completed, or continued as new) on results it kept: nothing to carry out.
        status if status.is_terminal() || status == RuntimeStatus::ContinuedAsNew => {
            return Ok(finished_plan(commit, execution));
        }
        _ => {}
    }
    // What is still open and nothing will complete: carried out again.
    let open = |action: &Action| execution.state().is_open(action.id());
    let redo: Vec<Action> = plan.redo.into_iter().chain(children.recreate).filter(open).collect();
    carry_out(rt, instance, &mut commit, redo, true);
    for (step, child) in children.rewind {
        if execution.state().is_open(step) {
            let rewound =
                EventKind::ExecutionRewound { reason: Some("parent rewound".into()), redone_activities: Vec::new() };
            commit.messages.push(OutgoingMessage {
                instance_id: child,
                execution: None,
                event: HistoryEvent::new(commit.now, rewound),
                visible_at: None,
            });
        }
    }
    Ok(finished_plan(commit, execution))
}

/// A rewind that cannot be done: the request is dropped (results that came with it are kept)
/// and the instance stays failed as it was.
fn not_rewound(instance: &InstanceRecord, mut commit: TurnCommit, late: Vec<HistoryEvent>, why: &str) -> TurnPlan {
    tracing::warn!(instance_id = instance.instance_id, why, "the instance cannot be rewound; it stays failed");
    commit.history = HistoryUpdate::Append(late);
    report_failure_again(instance, &mut commit);
    TurnPlan::Commit(Box::new(commit), None)
}

/// Tells the parent of a failed child whose rewind was not done that it is still failed: the
/// parent's own rewind reopened its step and waits for the child's answer. (A parent not
/// waiting for it drops the message as a duplicate.)
fn report_failure_again(instance: &InstanceRecord, commit: &mut TurnCommit) {
    let (Some(parent), Some(failure)) = (&instance.parent, &instance.failure) else { return };
    let failed = EventKind::SubOrchestrationInstanceFailed {
        task_scheduled_id: parent.task_scheduled_id,
        failure_details: failure.clone(),
    };
    commit.messages.push(to_parent(parent, HistoryEvent::new(commit.now, failed)));
}

/// What a rewind does with the sub-orchestrations whose failure it undoes.
struct ChildrenToRedo {
    /// Children of this step that failed themselves: rewound (step, child id).
    rewind: Vec<(u64, String)>,
    /// Children terminated, purged or never created (the id was taken): created again.
    recreate: Vec<Action>,
    /// The results of children of ours that completed (their own report may have been dropped
    /// while the step was closed): applied with the rewind.
    reports: Vec<HistoryEvent>,
}

/// Sorts undone child failures: a child that is this step's own and failed is rewound in turn; one
/// that completed (rewound by hand) hands over its result; one still running reports back by
/// itself; any other (terminated, purged, or an instance that held the id) is created again,
/// as when the step was first taken — which, as then, replaces a finished holder of the id and
/// fails the step with `AlreadyExists` if the holder is still running.
async fn children_to_redo(
    rt: &Runtime,
    instance: &InstanceRecord,
    failed_children: Vec<Action>,
    now: Timestamp,
) -> Result<ChildrenToRedo, StoreError> {
    let mut children = ChildrenToRedo { rewind: Vec::new(), recreate: Vec::new(), reports: Vec::new() };
    for action in failed_children {
        let Action::CreateSubOrchestration { id, instance_id, .. } = &action else { continue };
        let ours = ParentInstance {
            instance_id: instance.instance_id.clone(),
            execution: instance.execution,
            task_scheduled_id: *id,
        };
        match rt.store.get_instance(instance_id).await? {
            Some(child) if child.parent.as_ref() == Some(&ours) && child.status == RuntimeStatus::Failed => {
                children.rewind.push((*id, instance_id.clone()));
            }
            Some(child) if child.parent.as_ref() == Some(&ours) && child.status == RuntimeStatus::Completed => {
                let result = child.output.unwrap_or_else(Payload::null);
                let completed = EventKind::SubOrchestrationInstanceCompleted { task_scheduled_id: *id, result };
                children.reports.push(HistoryEvent::new(now, completed));
            }
            Some(child) if child.parent.as_ref() == Some(&ours) && !child.status.is_terminal() => {}
            _ => children.recreate.push(action),
        }
    }
    Ok(children)
}

/// A new execution of the instance with `history` replayed into it. A history the code does not
/// reproduce leaves the execution failed with the replay error.
fn replayed(
    rt: &Runtime,
    instance: &InstanceRecord,
    orchestration: OrchestrationFn,
    history: &[HistoryEvent],
) -> Execution {
    let mut execution = Execution::new(
        &instance.instance_id,
        &instance.name,
        instance.execution,
        orchestration,
        rt.config.limits,
        std::sync::Arc::clone(&rt.activity_defaults),
    );
    if let Err(err) = execution.replay(history) {
        execution.fail(replay_failure(&err));
    }
    execution
}

/// Applies a turn's new events to the execution and records the result in the commit.
/// `base` replaces the stored history (rewind) instead of appending to it.
fn apply_events(
    rt: &Runtime,
    instance: &InstanceRecord,
    commit: &mut TurnCommit,
    execution: &mut Execution,
    base: Option<Vec<HistoryEvent>>,
    events: Vec<HistoryEvent>,
    suspended: bool,
) {
    let now = commit.now;
    let mut appended = Vec::with_capacity(events.len() + 2);
    // Events after the one that ended the execution: a continue-as-new may carry them over.
    let mut unapplied = Vec::new();
    for event in std::iter::once(turn_started(now)).chain(events) {
        if execution.outcome().is_some() {
            unapplied.push(event);
            continue;
        }
        match execution.apply_new(&event) {
            Ok(true) => appended.push(event),
            Ok(false) => {}
            Err(err) => execution.fail(replay_failure(&err)),
        }
    }
    if appended.is_empty() {
        appended.push(turn_started(now));
    }
    let patches = execution.state().take_new_patches();
    appended.extend(patches.into_iter().map(|patch| HistoryEvent::new(now, patch)));
    let actions = execution.state().take_new_actions();
    appended.extend(actions.iter().map(|a| a.to_event(now)));
    if let Some(custom_status) = execution.state().take_changed_custom_status() {
        commit.custom_status = Some(custom_status);
    }
    // Still running with nothing to wait for: the code awaits a future that is not a step, which
    // nothing will ever poll again (the executor polls only when a step's result arrives).
    if execution.outcome().is_none() && execution.state().waits_for_nothing() {
        execution.fail(if execution.started() {
            FailureDetails::new(
                error_types::NON_DURABLE_AWAIT,
                "the orchestration awaits something that is not a durable step and would wait forever; use \
                 ctx.sleep instead of a runtime's timer, and call I/O from activities (ctx.call_activity)",
            )
        } else {
            FailureDetails::new(error_types::CORRUPTED_HISTORY, "the execution has no ExecutionStarted event")
        });
    }
    match execution.outcome().cloned() {
        None => {
            carry_out(rt, instance, commit, actions, true);
            commit.status = if suspended { RuntimeStatus::Suspended } else { RuntimeStatus::Running };
            commit.waiting_on = execution.state().waiting_on();
            execution.committed = Some(RecordStamp {
                created_at: instance.created_at,
                execution: instance.execution,
                history_len: base.as_ref().map_or(instance.history_len, |b| b.len() as u64) + appended.len() as u64,
                updated_at: now,
            });
            commit.history = match base {
                Some(mut base) => {
                    base.append(&mut appended);
                    HistoryUpdate::Replace(base)
                }
                None => HistoryUpdate::Append(appended),
            };
        }
        Some(ExecutionOutcome::Completed(output)) => {
            carry_out(rt, instance, commit, actions, false);
            let end = match rt.config.limits.check("orchestration output", &output) {
                Ok(()) => ExecutionEnd::Completed(output),
                Err(err) => ExecutionEnd::Failed(FailureDetails::new(error_types::PAYLOAD_TOO_LARGE, err.to_string())),
            };
            finish(commit, instance, base, appended, end, Vec::new());
        }
        Some(ExecutionOutcome::Failed(failure)) => {
            carry_out(rt, instance, commit, actions, false);
            // Results the ended execution never saw are kept for a rewind, as later ones are.
            let results = unapplied.into_iter().filter(|e| e.kind.delivers_to_code()).collect();
            finish(commit, instance, base, appended, ExecutionEnd::Failed(failure), results);
        }
        Some(ExecutionOutcome::ContinuedAsNew { input, preserve_unprocessed_events }) => {
            let (unapplied_controls, unapplied): (Vec<_>, Vec<_>) = unapplied.into_iter().partition(|event| {
                matches!(event.kind, EventKind::ExecutionSuspended { .. } | EventKind::ExecutionResumed { .. })
            });
            carry_out(rt, instance, commit, actions, false);
            let next = instance.execution + 1;
            commit.history = HistoryUpdate::Replace(Vec::new());
            commit.execution = next;
            commit.input = input.clone();
            commit.status = RuntimeStatus::ContinuedAsNew;
            commit.output = None;
            commit.failure = None;
            commit.waiting_on = Vec::new();
            let restart = EventKind::ExecutionStarted {
                name: instance.name.clone(),
                version: commit.version.clone(),
                input,
                parent: instance.parent.clone(),
                features: kiln_core::features::CURRENT,
                labels: instance.labels.clone(),
                correlation: instance.correlation.clone(),
            };
            commit.messages.push(to_self(instance, Some(next), HistoryEvent::new(now, restart), None));
            if preserve_unprocessed_events {
                // Those the code did not take, then those it never saw, in arrival order.
                let buffered = execution.state().unconsumed_events();
                let unseen = unapplied.into_iter().filter_map(|event| match event.kind {
                    EventKind::EventRaised { name, input } => Some((name, input)),
                    _ => None,
                });
                for (name, input) in buffered.into_iter().chain(unseen) {
                    let raised = HistoryEvent::new(now, EventKind::EventRaised { name, input });
                    commit.messages.push(to_self(instance, Some(next), raised, None));
                }
            }
            // A suspend or resume the ended execution never saw holds for the next one.
            for event in unapplied_controls {
                commit.messages.push(to_self(instance, None, event, None));
            }
        }
    }
}

/// Whether a message is an event carried over from the previous execution by a continue-as-new:
/// the only raised events addressed to one execution by number.
fn is_carried_over(message: &InboxMessage, execution: u64) -> bool {
    matches!(message.event.kind, EventKind::EventRaised { .. }) && message.execution == Some(execution)
}

/// A message to the execution of the parent that started this instance.
fn to_parent(parent: &ParentInstance, event: HistoryEvent) -> OutgoingMessage {
    OutgoingMessage {
        instance_id: parent.instance_id.clone(),
        execution: Some(parent.execution),
        event,
        visible_at: None,
    }
}

fn to_self(
    instance: &InstanceRecord,
    execution: Option<u64>,
    event: HistoryEvent,
    visible_at: Option<Timestamp>,
) -> OutgoingMessage {
    OutgoingMessage { instance_id: instance.instance_id.clone(), execution, event, visible_at }
}

/// Turns actions into outgoing work. When the execution ended (`running` is false), only the
/// events it sent are delivered; activities, timers and children it no longer awaits are not.
fn carry_out(rt: &Runtime, instance: &InstanceRecord, commit: &mut TurnCommit, actions: Vec<Action>, running: bool) {
    let execution = commit.execution;
    // What every activity of the turn carries of its instance: made once, shared.
    let mut context: Option<std::sync::Arc<InstanceContext>> = None;
    for action in actions {
        match action {
            Action::SendEvent { instance_id, name, input, .. } => commit.messages.push(OutgoingMessage {
                instance_id,
                execution: None,
                event: HistoryEvent::new(commit.now, EventKind::EventRaised { name, input }),
                visible_at: None,
            }),
            _ if !running => {}
            Action::ScheduleTask { id, name, input, attempt, mut timeouts, heartbeat } => {
                // A first attempt's limits run from this turn's time, the one its event records.
                timeouts.first_scheduled_at.get_or_insert(commit.now);
                let activity = NewActivity {
                    instance_id: instance.instance_id.clone(),
                    execution,
                    step: id,
                    name,
                    input,
                    attempt,
                    timeouts,
                    heartbeat,
                    context: Some(
                        context
                            .get_or_insert_with(|| {
                                std::sync::Arc::new(InstanceContext {
                                    orchestration: instance.name.clone(),
                                    labels: instance.labels.clone(),
                                    correlation: instance.correlation.clone(),
                                })
                            })
                            .clone(),
                    ),
                };
                // The call's deadline holds even if no worker ever starts the attempt (none has
                // the activity, or the queue is long): a durable timer fails the step then,
                // unless its result came first (the later one is a duplicate, dropped).
                if let (Some(deadline), Some(limit)) = (timeouts.deadline(), timeouts.schedule_to_close_ms) {
                    let failure_details = Timeout::ScheduleToClose(limit).failure(&activity);
                    let expired = EventKind::TaskFailed { task_scheduled_id: id, failure_details };
                    let expired = HistoryEvent::new(deadline, expired);
                    commit.messages.push(to_self(instance, Some(execution), expired, Some(deadline)));
                }
                commit.activities.push(activity);
            }
            Action::CreateTimer { id, fire_at } => {
                let fired = HistoryEvent::new(fire_at, EventKind::TimerFired { timer_id: id, fire_at });
                commit.messages.push(to_self(instance, Some(execution), fired, Some(fire_at)));
            }
            Action::CreateSubOrchestration { id, name, version, instance_id, input } => {
                // Without a version: this worker's default, or, if the orchestration is not
                // registered here, none yet — the worker that runs the child picks and pins it.
                let version = match version.as_str() {
                    "" => rt.registry.default_version(&name).unwrap_or(UNPINNED_VERSION).to_owned(),
                    _ => version,
                };
                commit.sub_orchestrations.push(NewSubOrchestration {
                    instance: NewInstance {
                        instance_id,
                        name,
                        version,
                        input,
                        parent: Some(ParentInstance {
                            instance_id: instance.instance_id.clone(),
                            execution,
                            task_scheduled_id: id,
                        }),
                        created_at: commit.now,
                        execution: new_run_execution(),
                        labels: instance.labels.clone(),
                        correlation: instance.correlation.clone(),
                    },
                });
            }
        }
    }
}

/// Ends the execution: final history events, status, output, and the parent's notification.
/// `after_end` is recorded after the end (step results a failed execution keeps for a rewind).
fn finish(
    commit: &mut TurnCommit,
    instance: &InstanceRecord,
    base: Option<Vec<HistoryEvent>>,
    mut appended: Vec<HistoryEvent>,
    end: ExecutionEnd,
    mut after_end: Vec<HistoryEvent>,
) {
    let now = commit.now;
    commit.waiting_on = Vec::new();
    let parent = instance.parent.as_ref().map(|p| p.task_scheduled_id);
    let (status, output, failure, parent_event) = match end {
        ExecutionEnd::Completed(output) => (
            RuntimeStatus::Completed,
            Some(output.clone()),
            None,
            parent.map(|task_scheduled_id| EventKind::SubOrchestrationInstanceCompleted {
                task_scheduled_id,
                result: output,
            }),
        ),
        ExecutionEnd::Failed(failure) => (
            RuntimeStatus::Failed,
            None,
            Some(failure.clone()),
            parent.map(|task_scheduled_id| EventKind::SubOrchestrationInstanceFailed {
                task_scheduled_id,
                failure_details: failure,
            }),
        ),
        ExecutionEnd::Terminated(reason) => {
            let failure = FailureDetails::new(
                error_types::TERMINATED,
                format!("sub-orchestration was terminated: {}", reason.as_deref().unwrap_or("no reason given")),
            );
            let output = reason.as_deref().map_or_else(Payload::null, encode_text);
            let event = parent.map(|task_scheduled_id| EventKind::SubOrchestrationInstanceFailed {
                task_scheduled_id,
                failure_details: failure,
            });
            (RuntimeStatus::Terminated, Some(output), None, event)
        }
    };
    // A termination is recorded by its ExecutionTerminated event; other ends by ExecutionCompleted.
    if status != RuntimeStatus::Terminated {
        let completed = EventKind::ExecutionCompleted {
            orchestration_status: status,
            result: output.clone(),
            failure_details: failure.clone(),
        };
        appended.push(HistoryEvent::new(now, completed));
    }
    appended.append(&mut after_end);
    commit.status = status;
    commit.output = output;
    commit.failure = failure;
    if let (Some(parent), Some(event)) = (&instance.parent, parent_event) {
        commit.messages.push(to_parent(parent, HistoryEvent::new(now, event)));
    }
    commit.history = match base {
        Some(mut base) => {
            base.append(&mut appended);
            HistoryUpdate::Replace(base)
        }
        None => HistoryUpdate::Append(appended),
    };
}

/// A text as a JSON string payload.
fn encode_text(text: &str) -> Payload {
    // Encoding a &str as JSON cannot fail.
    Payload::encode(text).unwrap_or_else(|_| Payload::null())
}
