//! The sticky cache and full replay must be indistinguishable, and replay must catch changed code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestKiln, failure_message, output};
use kiln::{ActivityContext, Failure, Kiln, KilnBuilder, OrchestrationContext, RuntimeConfig, RuntimeStatus, join_all};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// One step of a generated orchestration program.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    Call(u8),
    Parallel(Vec<u8>),
    Timer,
    Status(u8),
}

async fn add_ten(_: ActivityContext, n: u8) -> Result<u32, Failure> {
    // Small, varying delays make completions arrive out of order.
    tokio::time::sleep(Duration::from_millis(u64::from(n % 3))).await;
    Ok(u32::from(n) + 10)
}

async fn interpret(ctx: OrchestrationContext, program: Vec<Op>) -> Result<Vec<u32>, Failure> {
    let mut results = Vec::new();
    for op in program {
        match op {
            Op::Call(n) => results.push(ctx.call_activity("add_ten", &n).await?),
            Op::Parallel(ns) => {
                let calls: Vec<_> = ns.iter().map(|n| ctx.call_activity::<_, u32>("add_ten", n)).collect();
                for result in join_all(calls).await {
                    results.push(result?);
                }
            }
            Op::Timer => ctx.sleep(Duration::from_millis(1)).await?,
            Op::Status(n) => ctx.set_custom_status(&n),
        }
    }
    Ok(results)
}

fn builder() -> KilnBuilder {
    Kiln::builder().orchestration("interpret", interpret).activity("add_ten", add_ten)
}

async fn run_programs(cache_capacity: usize, programs: &[Vec<Op>]) -> (Vec<(Value, Vec<&'static str>)>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { cache_capacity, ..RuntimeConfig::default() };
    let kiln = builder().config(config).sqlite(dir.path().join("kiln.db")).start().await.unwrap();
    let client = kiln.client();
    let mut ids = Vec::new();
    for program in programs {
        ids.push(client.start("interpret", program).await.unwrap());
    }
    let mut results = Vec::new();
    for id in &ids {
        let done = client.wait_for_completion(id, common::DEADLINE).await.unwrap();
        let history = client.history(id).await.unwrap();
        // Turn boundaries depend on timing; the sequence of steps and results must not.
        let steps = history.iter().map(|e| e.kind.name()).filter(|n| *n != "OrchestratorStarted").collect();
        results.push((output(&done), steps));
    }
    let replays = kiln.metrics().replays;
    kiln.shutdown().await;
    (results, replays)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..50).prop_map(Op::Call),
        prop::collection::vec(0u8..50, 1..5).prop_map(Op::Parallel),
        Just(Op::Timer),
        (0u8..5).prop_map(Op::Status),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cached_and_replayed_turns_give_identical_results(programs in prop::collection::vec(prop::collection::vec(op(), 0..6), 1..4)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (cached, cached_replays) = rt.block_on(run_programs(1_000, &programs));
        let (replayed, _) = rt.block_on(run_programs(0, &programs));
        prop_assert_eq!(&cached, &replayed);
        prop_assert_eq!(cached_replays, 0, "a large cache never needs to replay");
        // Orchestration semantics: each result is its input plus ten, in program order.
        for (program, (out, _)) in programs.iter().zip(&cached) {
            let expected: Vec<u32> = program.iter().flat_map(|op| match op {
                Op::Call(n) => vec![u32::from(*n) + 10],
                Op::Parallel(ns) => ns.iter().map(|n| u32::from(*n) + 10).collect(),
                _ => vec![],
            }).collect();
            prop_assert_eq!(out, &serde_json::to_value(expected).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_cache_evicts_and_falls_back_to_replay() {
    let programs: Vec<Vec<Op>> = (0..8).map(|i| vec![Op::Call(i), Op::Timer, Op::Parallel(vec![i, i + 1])]).collect();
    let (evicting, replays) = run_programs(1, &programs).await;
    let (full, _) = run_programs(10_000, &programs).await;
    assert_eq!(evicting, full);
    assert!(replays > 0, "with one slot for eight instances, some turns must replay");
}

async fn asks_a_then_waits(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    let a: String = ctx.call_activity("named", &"a").await?;
    ctx.wait_for_event::<()>("continue").await?;
    Ok(a)
}

async fn asks_b_then_waits(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    let b: String = ctx.call_activity("renamed", &"b").await?;
    ctx.wait_for_event::<()>("continue").await?;
    Ok(b)
}

async fn named(_: ActivityContext, name: String) -> Result<String, Failure> {
    Ok(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_code_fails_the_instance_with_a_non_determinism_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let before =
        TestKiln::start_at(Kiln::builder().orchestration("flow", asks_a_then_waits).activity("named", named), &path)
            .await;
    let id = before.client.start("flow", &()).await.unwrap();
    before.client.wait_until(&id, common::DEADLINE, |r| r.history_len > 4).await.unwrap().unwrap();
    before.stop().await;

    // Same name, different steps: replay must refuse rather than corrupt the instance.
    let after = TestKiln::start_at(
        Kiln::builder().orchestration("flow", asks_b_then_waits).activity("named", named).activity("renamed", named),
        &path,
    )
    .await;
    after.client.raise_event(&id, "continue", &()).await.unwrap();
    let message = failure_message(&after.finish(&id).await);
    assert!(message.starts_with("non-determinism at step 0: history has TaskScheduled('named')"), "{message}");
    after.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_keep_the_version_they_started_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let v1 = || Kiln::builder().orchestration_version("flow", "1", asks_a_then_waits).activity("named", named);
    let first = TestKiln::start_at(v1(), &path).await;
    let id = first.client.start("flow", &()).await.unwrap();
    first.client.wait_until(&id, common::DEADLINE, |r| r.history_len > 4).await.unwrap().unwrap();
    first.stop().await;

    // A worker without version 1 leaves the instance alone: it is not failed by surprise.
    let only_v2 = TestKiln::start_at(
        Kiln::builder().orchestration_version("flow", "2", asks_b_then_waits).activity("named", named),
        &path,
    )
    .await;
    only_v2.client.raise_event(&id, "continue", &()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = only_v2.client.status(&id).await.unwrap().unwrap();
    assert_eq!((record.status, record.version.as_str()), (RuntimeStatus::Running, "1"));
    only_v2.stop().await;

    let both = TestKiln::start_at(v1().orchestration_version("flow", "2", asks_b_then_waits), &path).await;
    assert_eq!(output(&both.finish(&id).await), serde_json::json!("a"));
    let fresh = both.client.start("flow", &()).await.unwrap();
    assert_eq!(both.client.status(&fresh).await.unwrap().unwrap().version, "2", "new instances start on the latest");
    both.stop().await;
}
