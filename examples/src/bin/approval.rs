//! Starts two approvals: one gets an `Approval` event, the other times out.
//!
//! `cargo run -p kiln-samples --bin approval [DB_PATH]`

use kiln::Kiln;
use kiln_samples::approval::{self, ApprovalDecision, ApprovalRequest};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "approval.db".to_owned());
    let kiln = approval::register(Kiln::builder().sqlite(&path)).start().await?;
    let client = kiln.client();
    let approved = client
        .start(approval::ORCHESTRATION, &ApprovalRequest { subject: "laptop".into(), timeout_seconds: 30 })
        .await?;
    let timed_out =
        client.start(approval::ORCHESTRATION, &ApprovalRequest { subject: "yacht".into(), timeout_seconds: 1 }).await?;
    client.raise_event(&approved, approval::EVENT, &ApprovalDecision { approved: true, by: "grace".into() }).await?;
    for id in [approved, timed_out] {
        let done = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
        println!("{id}: {}", done.output.map(|o| o.into_string()).unwrap_or_default());
    }
    kiln.shutdown().await;
    Ok(())
}
