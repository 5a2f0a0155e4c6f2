//! The registry of orchestrations and activities, by name (and, for orchestrations, version).
//! Typed user functions are wrapped into type-erased ones that speak [`Payload`]s.

use crate::activity::{ActivityContext, Timeouts};
use crate::context::OrchestrationContext;
use crate::failure::Failure;
use kiln_core::{ActivityTimeouts, FailureDetails, InvalidTimeout, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A running orchestration or activity, type-erased to payloads.
pub(crate) type ErasedFuture = Pin<Box<dyn Future<Output = Result<Payload, FailureDetails>> + Send>>;
/// A user function taking context `C`, type-erased to payloads.
pub(crate) type ErasedFn<C> = Arc<dyn Fn(C, Payload) -> ErasedFuture + Send + Sync>;
/// An orchestration function, type-erased.
pub(crate) type OrchestrationFn = ErasedFn<OrchestrationContext>;
/// An activity function, type-erased.
pub(crate) type ActivityFn = ErasedFn<ActivityContext>;

/// Registered functions. Orchestrations may have several versions; the last one registered is
/// the default for new instances.
#[derive(Default, Clone)]
pub(crate) struct Registry {
    orchestrations: HashMap<String, Vec<(String, OrchestrationFn)>>,
    activities: HashMap<String, RegisteredActivity>,
}

/// The valid timeouts registered with activities, by activity name.
pub(crate) type ActivityDefaults = HashMap<String, ActivityTimeouts>;

/// An activity function and the timeouts its calls get unless they set their own (checked
/// when the runtime starts: [`Registry::invalid_timeouts`]).
#[derive(Clone)]
pub(crate) struct RegisteredActivity {
    pub(crate) function: ActivityFn,
    pub(crate) timeouts: Result<ActivityTimeouts, InvalidTimeout>,
}

/// Wraps a typed user function into one that decodes its input and encodes its output.
pub(crate) fn erase<C, I, O, F, Fut>(f: F, input_what: &'static str, output_what: &'static str) -> ErasedFn<C>
where
    C: Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + 'static,
    F: Fn(C, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, Failure>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |ctx, input: Payload| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let input: I = input.decode_lenient().map_err(|e| Failure::serialization(input_what, &e).into_details())?;
            let output = f(ctx, input).await.map_err(Failure::into_details)?;
            Payload::encode(&output).map_err(|e| Failure::serialization(output_what, &e).into_details())
        })
    })
}

impl Registry {
    pub(crate) fn add_orchestration<I, O, F, Fut>(&mut self, name: &str, version: &str, f: F)
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        let erased: OrchestrationFn = erase(f, "orchestration input", "orchestration output");
        let versions = self.orchestrations.entry(name.to_owned()).or_default();
        versions.retain(|(v, _)| v != version);
        versions.push((version.to_owned(), erased));
    }

    pub(crate) fn add_activity<I, O, F, Fut>(&mut self, name: &str, timeouts: Timeouts, f: F)
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
    {
        let function = erase(f, "activity input", "activity output");
        self.activities.insert(name.to_owned(), RegisteredActivity { function, timeouts: timeouts.record() });
    }

    /// The orchestration registered under `name` and `version`.
    pub(crate) fn orchestration(&self, name: &str, version: &str) -> Option<OrchestrationFn> {
        self.orchestrations.get(name)?.iter().find(|(v, _)| v == version).map(|(_, f)| Arc::clone(f))
    }

    /// The version new instances of `name` start on (the last registered), if registered.
    pub(crate) fn default_version(&self, name: &str) -> Option<&str> {
        self.orchestrations.get(name)?.last().map(|(v, _)| v.as_str())
    }

    /// True if this version of `name` is registered.
    pub(crate) fn has_version(&self, name: &str, version: &str) -> bool {
        self.orchestration(name, version).is_some()
    }

    pub(crate) fn activity(&self, name: &str) -> Option<RegisteredActivity> {
        self.activities.get(name).cloned()
    }

    /// The timeouts registered with activities (those that set any, and valid).
    pub(crate) fn activity_defaults(&self) -> ActivityDefaults {
        self.activities
            .iter()
            .filter_map(|(name, a)| a.timeouts.as_ref().ok().filter(|t| !t.is_empty()).map(|t| (name.clone(), *t)))
            .collect()
    }

    /// The first activity (by name) registered with timeouts out of bounds, and why.
    pub(crate) fn invalid_timeouts(&self) -> Option<(String, InvalidTimeout)> {
        let mut invalid: Vec<(&String, &InvalidTimeout)> =
            self.activities.iter().filter_map(|(name, a)| a.timeouts.as_ref().err().map(|e| (name, e))).collect();
        invalid.sort_by_key(|(name, _)| *name);
        invalid.first().map(|(name, err)| ((*name).clone(), (*err).clone()))
    }

    /// An orchestration registered under `version`, if any.
    pub(crate) fn name_with_version(&self, version: &str) -> Option<&str> {
        self.orchestrations
            .iter()
            .find(|(_, versions)| versions.iter().any(|(v, _)| v == version))
            .map(|(n, _)| n.as_str())
    }

    /// An orchestration or activity whose name starts with `prefix`, if any.
    pub(crate) fn name_with_prefix(&self, prefix: &str) -> Option<String> {
        self.orchestrations.keys().chain(self.activities.keys()).find(|name| name.starts_with(prefix)).cloned()
    }

    /// Names of the orchestrations the application registered (not the built-in ones), sorted.
    pub(crate) fn orchestration_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .orchestrations
            .keys()
            .filter(|name| !name.starts_with(crate::bulk::RESERVED_PREFIX))
            .cloned()
            .collect();
        names.sort();
        names
    }
}
