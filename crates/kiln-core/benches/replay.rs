//! Replay cost by history length: decoding a stored history (JSON rows) and feeding it through
//! the replay state machine the way a cold turn does, for 10 to 10,000 completed steps.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kiln_core::{EventKind, HistoryEvent, Payload, ReplayState, Slot, Timestamp};
use std::hint::black_box;

/// The stored rows of an execution that ran `steps` activities one after the other.
fn stored_history(steps: u64) -> Vec<String> {
    let at = Timestamp(1_700_000_000_000);
    let input = Payload::from_json(r#"{"customer":"c-1"}"#).unwrap();
    let mut events = vec![HistoryEvent::new(
        at,
        EventKind::ExecutionStarted {
            name: "steps".into(),
            version: String::new(),
            input: input.clone(),
            parent: None,
            features: kiln_core::features::CURRENT,
            labels: Default::default(),
            correlation: None,
        },
    )];
    for step in 0..steps {
        let mut scheduled = HistoryEvent::new(
            at,
            EventKind::TaskScheduled {
                name: "echo".into(),
                input: input.clone(),
                attempt: 1,
                timeouts: Default::default(),
            },
        );
        scheduled.event_id = step as i64;
        events.push(scheduled);
        events.push(HistoryEvent::new(
            at,
            EventKind::TaskCompleted { task_scheduled_id: step, result: Payload::from_json("42").unwrap() },
        ));
    }
    events.iter().map(|e| serde_json::to_string(e).unwrap()).collect()
}

/// Replays the rows as the executor does: decode, schedule what the code asks for, apply.
fn replay(rows: &[String]) -> u64 {
    let mut state = ReplayState::new("instance", 0);
    state.begin_replay();
    let mut taken = 0;
    let mut next_step = 0;
    for row in rows {
        let event: HistoryEvent = serde_json::from_str(row).unwrap();
        if let EventKind::TaskScheduled { .. } = event.kind {
            let input = Payload::from_trusted(r#"{"customer":"c-1"}"#.to_owned());
            next_step = state.schedule_activity("echo", input, 1, Default::default(), None) + 1;
        }
        state.apply(&event, false).unwrap();
        if next_step > 0 && state.take(Slot::Step(next_step - 1)).is_some() {
            taken += 1;
        }
    }
    state.end_replay().unwrap();
    taken
}

fn replay_by_history_length(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    for steps in [10u64, 100, 1_000, 10_000] {
        let rows = stored_history(steps);
        group.throughput(Throughput::Elements(rows.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(steps), &rows, |b, rows| {
            b.iter(|| assert_eq!(replay(black_box(rows)), steps));
        });
    }
    group.finish();
}

criterion_group!(benches, replay_by_history_length);
criterion_main!(benches);
