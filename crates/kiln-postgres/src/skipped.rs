//! What a node's claims leave to other nodes: the orchestration versions and activities its
//! runtime has not registered (see `Store::skip_in_claims`). Kept as the skipping statements'
//! array parameters, so that a claim copies them out in one short lock.

use kiln_store::{TurnCommit, Unrunnable};
use std::sync::{Mutex, MutexGuard};

/// The skip list of one node.
#[derive(Debug, Default)]
pub struct SkipList(Mutex<Skipped>);

#[derive(Debug, Default)]
struct Skipped {
    orchestration_names: Vec<String>,
    orchestration_versions: Vec<String>,
    activities: Vec<String>,
}

impl SkipList {
    fn lock(&self) -> MutexGuard<'_, Skipped> {
        // Pushes only: a poisoned lock is safe to recover.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `work` (once).
    pub fn add(&self, work: &Unrunnable) {
        let mut skipped = self.lock();
        match work {
            Unrunnable::Orchestration { name, version } => {
                let known = skipped.orchestration_names.iter().zip(&skipped.orchestration_versions);
                if !known.into_iter().any(|(n, v)| n == name && v == version) {
                    skipped.orchestration_names.push(name.clone());
                    skipped.orchestration_versions.push(version.clone());
                }
            }
            Unrunnable::Activity { name } if !skipped.activities.contains(name) => {
                skipped.activities.push(name.clone())
            }
            Unrunnable::Activity { .. } => {}
        }
    }

    /// The skipped orchestrations' names and versions, pairwise (both empty when none is).
    pub fn orchestrations(&self) -> (Vec<String>, Vec<String>) {
        let skipped = self.lock();
        (skipped.orchestration_names.clone(), skipped.orchestration_versions.clone())
    }

    /// The skipped activities' names.
    pub fn activities(&self) -> Vec<String> {
        self.lock().activities.clone()
    }

    /// Whether a turn schedules an activity this node skips.
    pub fn schedules_skipped_activity(&self, commit: &TurnCommit) -> bool {
        let skipped = self.lock();
        commit.activities.iter().any(|activity| skipped.activities.contains(&activity.name))
    }
}
