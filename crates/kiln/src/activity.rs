//! [`ActivityContext`]: what an activity knows about the call it serves.

/// Facts about one activity call. Activities run at least once, so use
/// [`ActivityContext::idempotency_key`] to make side effects idempotent.
#[derive(Clone, Debug)]
pub struct ActivityContext {
    pub(crate) instance_id: String,
    pub(crate) execution: u64,
    pub(crate) task_id: u64,
    pub(crate) name: String,
    pub(crate) attempt: u32,
    pub(crate) delivery: u32,
}

impl ActivityContext {
    /// The orchestration instance that called this activity.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The activity's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step (task id) in the orchestration's history.
    pub fn task_id(&self) -> u64 {
        self.task_id
    }

    /// Attempt number under the caller's retry policy, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many times this very attempt has been handed to a worker, from 1 (more than 1 after a
    /// crash or a lapsed lease).
    pub fn delivery(&self) -> u32 {
        self.delivery
    }

    /// A key that is the same on every delivery of this attempt and different for every other
    /// call: `{instance}:{execution}:{task id}`.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.instance_id, self.execution, self.task_id)
    }
}
