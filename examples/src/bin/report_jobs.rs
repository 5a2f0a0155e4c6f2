//! Runs one report job to completion on a local SQLite file.
//!
//! `cargo run -p kiln-samples --bin report_jobs [DB_PATH]`

use kiln::Kiln;
use kiln_samples::report_jobs::{self, ReportRequest};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "report_jobs.db".to_owned());
    let kiln = report_jobs::register(Kiln::builder().sqlite(&path)).start().await?;
    let client = kiln.client();
    let request = ReportRequest { customer_id: "c-42".into(), operation: "quarterly".into(), delay_seconds: 1 };
    let id = client.start(report_jobs::ORCHESTRATION, &request).await?;
    println!("started report job {id}");
    let done = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
    println!("{}: {}", done.status, done.output.map(|o| o.into_string()).unwrap_or_default());
    kiln.shutdown().await;
    Ok(())
}
