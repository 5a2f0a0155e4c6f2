//! Processes one talk submission and prints each stage of its custom status.
//!
//! `cargo run -p kiln-samples --bin call_for_speakers [DB_PATH]`

use kiln::Kiln;
use kiln_samples::call_for_speakers::{self, Submission};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "call_for_speakers.db".to_owned());
    let kiln = call_for_speakers::register(Kiln::builder().sqlite(&path)).start().await?;
    let client = kiln.client();
    let submission = Submission {
        speaker: "Ada".into(),
        email: "ada@example.com".into(),
        title: "Durable Rust".into(),
        abstract_text: "How replaying an event history makes ordinary async Rust survive crashes, deploys \
                        and kill -9, what it costs to do that fast, and how group commit, a sticky cache of live \
                        orchestrations and in-process wake-ups keep it under a millisecond."
            .into(),
    };
    let id = client.start(call_for_speakers::ORCHESTRATION, &submission).await?;
    println!("started submission {id}");
    let mut last_stage = None;
    let done = client
        .wait_until(&id, Duration::from_secs(30), |record| {
            let stage = record.custom_status.as_ref().map(|c| c.to_string());
            if stage.is_some() && stage != last_stage {
                println!("  {}: {}", record.status, stage.as_deref().unwrap_or_default());
                last_stage = stage;
            }
            record.status.is_terminal()
        })
        .await?;
    if let Some(done) = done {
        println!("{}: {}", done.status, done.output.map(|o| o.into_string()).unwrap_or_default());
    }
    kiln.shutdown().await;
    Ok(())
}
