//! The samples, compiled in from `examples/src` exactly as `kiln serve` runs them: the seed's
//! report job (under its own and the seed's names), the call for speakers and the approval with
//! a timeout. Some seeds start a few of them beside the generated programs, with inputs whose
//! outcomes are known: each must end as its sample promises, whatever the faults.

#[allow(dead_code)]
#[path = "../../../../examples/src/approval.rs"]
mod approval;
#[allow(dead_code)]
#[path = "../../../../examples/src/call_for_speakers.rs"]
mod call_for_speakers;
#[allow(dead_code)]
#[path = "../../../../examples/src/report_jobs.rs"]
mod report_jobs;

use crate::rng::Rng;
use kiln::KilnBuilder;
use serde_json::{Value, json};

/// The event name the approval sample waits for.
pub const APPROVAL_EVENT: &str = approval::EVENT;

/// One sample instance a seed starts.
#[derive(Clone, Debug)]
pub struct SampleStart {
    /// Its caller-chosen id.
    pub id: String,
    /// The orchestration name, as a client of the sample would give it.
    pub name: &'static str,
    /// Its input.
    pub input: Value,
    /// How it must end.
    pub expected: Outcome,
    /// The decision the driver raises as the approval event once the instance waits for it
    /// (without one, the approval times out when the clock moves).
    pub approval: Option<Value>,
}

/// How a sample instance must end.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Completed with this output.
    Output(Value),
    /// Failed with this error type.
    Failure(&'static str),
}

/// Registers every sample's orchestrations and activities.
pub fn register(builder: KilnBuilder) -> KilnBuilder {
    approval::register(call_for_speakers::register(report_jobs::register(builder)))
}

/// The samples seed `seed` starts: none in most seeds, up to three in the rest. Drawn from their
/// own generator, so the rest of a seed's plan is the same as without them.
pub fn plan(seed: u64) -> Vec<SampleStart> {
    let mut rng = Rng::new(seed ^ 0x5A4D_504C_4553);
    if !rng.chance(300) {
        return Vec::new();
    }
    (0..1 + rng.below(3)).map(|i| sample(&mut rng, format!("s{seed}-sample{i}"))).collect()
}

fn sample(rng: &mut Rng, id: String) -> SampleStart {
    let start = |name, input, expected| SampleStart { id: id.clone(), name, input, expected, approval: None };
    match rng.below(7) {
        // The seed document's request, under the sample's and the seed's names.
        0 | 1 => {
            let name = if rng.chance(500) { report_jobs::ORCHESTRATION } else { report_jobs::SEED_ORCHESTRATION };
            let customer = format!("cust-{}", rng.below(1000));
            let input = json!({"customer_id": customer, "operation": "rebuild-report", "delay_seconds": 0});
            let output = json!({
                "status": "completed",
                "instanceId": id,
                "result": {"customerId": customer, "operation": "rebuild-report"},
            });
            start(name, input, Outcome::Output(output))
        }
        2 => {
            let input = json!({"customer_id": "closed-17", "delay_seconds": 0});
            start(report_jobs::ORCHESTRATION, input, Outcome::Failure("AccountClosed"))
        }
        3 => {
            // 30 words: review score 6 of 10.
            let input = submission(&["durable execution in rust today"; 6].join(" "));
            let output = json!({
                "decision": "accepted",
                "score": 6,
                "reason": "review score 6 of 10",
                "notification": "sent 'accepted' to ada@example.com",
            });
            start(call_for_speakers::ORCHESTRATION, input, Outcome::Output(output))
        }
        4 => {
            let input = submission("win big in our crypto giveaway");
            let output = json!({
                "decision": "rejected",
                "score": 0,
                "reason": "the abstract did not pass content screening",
                "notification": "sent 'rejected' to ada@example.com",
            });
            start(call_for_speakers::ORCHESTRATION, input, Outcome::Output(output))
        }
        5 => {
            let input = json!({"subject": "budget", "timeout_seconds": 3600});
            let output = json!({"outcome": "timed_out", "by": null});
            start(approval::ORCHESTRATION, input, Outcome::Output(output))
        }
        _ => {
            let approved = rng.chance(500);
            let input = json!({"subject": "budget", "timeout_seconds": 3600});
            let outcome = if approved { "approved" } else { "rejected" };
            let output = json!({"outcome": outcome, "by": "grace"});
            let mut start = start(approval::ORCHESTRATION, input, Outcome::Output(output));
            start.approval = Some(json!({"approved": approved, "by": "grace"}));
            start
        }
    }
}

fn submission(abstract_text: &str) -> Value {
    json!({"speaker": "Ada", "email": "ada@example.com", "title": "Kilns", "abstract": abstract_text})
}
