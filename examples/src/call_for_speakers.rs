//! Call for speakers: a submission is validated, screened, reviewed and answered, and the
//! custom status shows each stage as `{"stage", "progress", "of"}`.

use kiln::{ActivityContext, Failure, KilnBuilder, OrchestrationContext, Timeouts};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Orchestration name.
pub const ORCHESTRATION: &str = "process_submission";

/// A talk submitted by a speaker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Submission {
    /// Speaker's name.
    pub speaker: String,
    /// Where to send the answer.
    pub email: String,
    /// Talk title.
    pub title: String,
    /// Talk abstract.
    #[serde(rename = "abstract")]
    pub abstract_text: String,
}

/// The outcome for the speaker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Decision {
    /// `accepted` or `rejected`.
    pub decision: String,
    /// Review score, 0–10.
    pub score: u32,
    /// Why, in a sentence.
    pub reason: String,
    /// The message sent to the speaker.
    pub notification: String,
}

/// Words that get a submission rejected at screening.
const BLOCKED_WORDS: &[&str] = &["spam", "crypto giveaway"];
const STAGES: u32 = 4;

/// The orchestration: one activity per stage, custom status before each.
pub async fn process_submission(ctx: OrchestrationContext, submission: Submission) -> Result<Decision, Failure> {
    let stage =
        |name: &str, progress: u32| ctx.set_custom_status(&json!({"stage": name, "progress": progress, "of": STAGES}));
    stage("validation", 1);
    ctx.call_activity::<_, ()>("validate_submission", &submission).await?;
    stage("screening", 2);
    let clean: bool = ctx.call_activity("screen_content", &submission).await?;
    stage("review", 3);
    let score: u32 = if clean { ctx.call_activity("review", &submission).await? } else { 0 };
    let (decision, reason) = match (clean, score) {
        (false, _) => ("rejected", "the abstract did not pass content screening".to_owned()),
        (true, s) if s >= 5 => ("accepted", format!("review score {s} of 10")),
        (true, s) => ("rejected", format!("review score {s} of 10 is below 5")),
    };
    stage("notification", 4);
    let notification: String =
        ctx.call_activity("notify_speaker", &json!({"email": submission.email, "decision": decision})).await?;
    ctx.set_custom_status(&json!({"stage": "done", "progress": STAGES, "of": STAGES}));
    Ok(Decision { decision: decision.to_owned(), score, reason, notification })
}

/// Rejects incomplete submissions.
pub async fn validate_submission(_ctx: ActivityContext, submission: Submission) -> Result<(), Failure> {
    let missing: Vec<&str> = [
        ("speaker", &submission.speaker),
        ("email", &submission.email),
        ("title", &submission.title),
        ("abstract", &submission.abstract_text),
    ]
    .into_iter()
    .filter(|(_, value)| value.trim().is_empty())
    .map(|(field, _)| field)
    .collect();
    if !missing.is_empty() {
        return Err(Failure::typed("ValidationFailed", format!("missing fields: {}", missing.join(", "))));
    }
    if !submission.email.contains('@') {
        return Err(Failure::typed("ValidationFailed", "email is not an address"));
    }
    Ok(())
}

/// How long the stand-ins for real work take, so the stages can be watched while they run.
const SCREENING_TIME: std::time::Duration = std::time::Duration::from_millis(300);
const REVIEW_TIME: std::time::Duration = std::time::Duration::from_millis(700);

/// True if the submission contains no blocked words.
pub async fn screen_content(_ctx: ActivityContext, submission: Submission) -> Result<bool, Failure> {
    tokio::time::sleep(SCREENING_TIME).await;
    let text = format!("{} {}", submission.title, submission.abstract_text).to_lowercase();
    Ok(!BLOCKED_WORDS.iter().any(|word| text.contains(word)))
}

/// Scores the abstract 0–10: a stand-in for a human review, deterministic for the tests.
pub async fn review(_ctx: ActivityContext, submission: Submission) -> Result<u32, Failure> {
    tokio::time::sleep(REVIEW_TIME).await;
    let words = submission.abstract_text.split_whitespace().count() as u32;
    Ok((words / 5).min(10))
}

/// "Sends" the answer and returns the message.
pub async fn notify_speaker(_ctx: ActivityContext, answer: serde_json::Value) -> Result<String, Failure> {
    let email = answer["email"].as_str().unwrap_or("unknown");
    let decision = answer["decision"].as_str().unwrap_or("unknown");
    Ok(format!("sent '{decision}' to {email}"))
}

/// The limit of each activity's attempt, registered with it: the stand-ins take under a
/// second, and a real screening or mail service that hangs must not hold a submission forever.
const ATTEMPT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Registers the orchestration and its activities.
pub fn register(builder: KilnBuilder) -> KilnBuilder {
    let limit = Timeouts::new().start_to_close(ATTEMPT_LIMIT);
    builder
        .orchestration(ORCHESTRATION, process_submission)
        .activity_with_timeouts("validate_submission", limit, validate_submission)
        .activity_with_timeouts("screen_content", limit, screen_content)
        .activity_with_timeouts("review", limit, review)
        .activity_with_timeouts("notify_speaker", limit, notify_speaker)
}
