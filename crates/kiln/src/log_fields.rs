//! The fields that tie a log line to its instance: besides `instance_id`, the orchestration
//! name, the execution, `correlation_id`, `trace_id` and `labels` (`key:value,…`). Instances and
//! activities from before Kiln kept a correlation log empty ids.

use kiln_core::{Correlation, InstanceContext, Labels};

/// The correlation id, or empty.
pub(crate) fn correlation_id(correlation: Option<&Correlation>) -> &str {
    correlation.map_or("", |c| c.id.as_str())
}

/// The trace id, or empty.
pub(crate) fn trace_id(correlation: Option<&Correlation>) -> &str {
    correlation.map_or("", |c| c.trace.trace_id())
}

/// An activity's instance context, or an empty one.
pub(crate) fn context(context: Option<&InstanceContext>) -> (&str, &Labels, Option<&Correlation>) {
    static NONE: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::default);
    match context {
        Some(c) => (c.orchestration.as_str(), &c.labels, c.correlation.as_ref()),
        None => ("", &NONE, None),
    }
}
