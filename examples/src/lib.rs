//! The three Kiln samples, as a library so that programs, tests and `kiln serve` share them.
//!
//! - [`call_for_speakers`]: validate → screen → review → notify, with a custom status per stage.
//! - [`report_jobs`]: one slow activity that generates a report.
//! - [`approval`]: wait for an `Approval` event or a durable timer, whichever comes first.
//!
//! Each sample has a runnable program: `cargo run -p kiln-samples --bin report_jobs` (and
//! `call_for_speakers`, `approval`).

pub mod approval;
pub mod call_for_speakers;
pub mod http;
pub mod report_jobs;

/// Registers every sample's orchestrations and activities.
pub fn register_all(builder: kiln::KilnBuilder) -> kiln::KilnBuilder {
    let builder = call_for_speakers::register(builder);
    let builder = report_jobs::register(builder);
    approval::register(builder)
}
