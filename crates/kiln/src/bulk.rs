//! Bulk operations: terminate, purge or rewind every instance a query selects, as a durable
//! operation of its own.
//!
//! A bulk operation is an instance of the built-in orchestration [`BULK_ORCHESTRATION`]: it
//! walks the selection one page at a time, each page an activity ([`BULK_PAGE_ACTIVITY`]) that
//! acts on up to [`PAGE_SIZE`] instances, so a crash or a deploy resumes it at the page it was
//! on. Its custom status is its progress, its output the totals. It continues as new every
//! [`PAGES_PER_RUN`] pages so its history stays short. The selection ends at the time it
//! starts: instances created after that are left alone, and so are bulk operations (unless it
//! names [`BULK_ORCHESTRATION`]).
//!
//! Acting is at least once, like any activity: a page redone after a crash acts again on what
//! is still in a state to be acted on. An instance already terminated, or rewound and running
//! again, is skipped; one whose termination or rewind had not been carried out yet gets a second
//! (a second termination is a no-op; a second rewind of an instance that failed again after the
//! first runs its failed steps again), and the totals count it twice.

use crate::client::{ClientError, KilnClient, StartOptions};
use crate::retry::RetryPolicy;
use crate::runtime::{Runtime, wall_clock};
use crate::{ActivityContext, Failure, OrchestrationContext, Timeouts};
use kiln_core::{Payload, RuntimeStatus, Timestamp};
use kiln_store::{InstanceQuery, PREVIEW_COUNT_LIMIT, PageCursor, PurgeFilter};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Names starting with this are kept for the runtime's built-in orchestrations and activities.
pub const RESERVED_PREFIX: &str = "kiln.";
/// The built-in orchestration that runs bulk operations.
pub const BULK_ORCHESTRATION: &str = "kiln.bulk";
/// The version of [`BULK_ORCHESTRATION`] this build runs.
const BULK_VERSION: &str = "1";
/// The built-in activity that acts on one page of a bulk operation's selection.
pub const BULK_PAGE_ACTIVITY: &str = "kiln.bulk.page";
/// Most instances one page acts on.
pub const PAGE_SIZE: usize = 100;
/// Pages one execution of a bulk operation runs before it continues as new.
const PAGES_PER_RUN: u64 = 50;

/// What a bulk operation does to each instance it selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BulkAction {
    /// Terminate unfinished instances.
    Terminate,
    /// Purge finished instances (with their history and finished sub-orchestrations).
    Purge,
    /// Rewind failed instances.
    Rewind,
}

impl BulkAction {
    /// The statuses this action applies to.
    pub fn statuses(self) -> Vec<RuntimeStatus> {
        match self {
            BulkAction::Terminate => RuntimeStatus::ALL.into_iter().filter(|s| !s.is_terminal()).collect(),
            BulkAction::Purge => RuntimeStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect(),
            BulkAction::Rewind => vec![RuntimeStatus::Failed],
        }
    }

    fn verb(self) -> &'static str {
        match self {
            BulkAction::Terminate => "terminate",
            BulkAction::Purge => "purge",
            BulkAction::Rewind => "rewind",
        }
    }
}

impl std::str::FromStr for BulkAction {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<Self, ClientError> {
        match text {
            "terminate" => Ok(BulkAction::Terminate),
            "purge" => Ok(BulkAction::Purge),
            "rewind" => Ok(BulkAction::Rewind),
            other => Err(ClientError::InvalidBulkOperation(format!(
                "unknown action '{other}': use terminate, purge or rewind"
            ))),
        }
    }
}

/// A bulk operation: an action and the instances it applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkOperation {
    /// What to do.
    pub action: BulkAction,
    /// Only these statuses (all those the action applies to when empty).
    #[serde(default)]
    pub statuses: Vec<RuntimeStatus>,
    /// Only instances of this orchestration.
    #[serde(default)]
    pub name: Option<String>,
    /// Created at or after.
    #[serde(default)]
    pub created_from: Option<Timestamp>,
    /// Created at or before (when the operation starts, if not given).
    #[serde(default)]
    pub created_to: Option<Timestamp>,
    /// Why (recorded with each termination or rewind).
    #[serde(default)]
    pub reason: Option<String>,
}

impl BulkOperation {
    /// An operation on every instance `action` applies to.
    pub fn new(action: BulkAction) -> BulkOperation {
        BulkOperation { action, statuses: Vec::new(), name: None, created_from: None, created_to: None, reason: None }
    }

    /// Refuses statuses the action does not apply to.
    pub fn validate(&self) -> Result<(), ClientError> {
        let applicable = self.action.statuses();
        match self.statuses.iter().find(|s| !applicable.contains(s)) {
            Some(status) => Err(ClientError::InvalidBulkOperation(format!(
                "{} does not apply to {status} instances (only to {})",
                self.action.verb(),
                applicable.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// Whether the operation acts on instances of `name`: built-in ones only when it names them.
    fn selects(&self, name: &str) -> bool {
        !name.starts_with(RESERVED_PREFIX) || self.name.as_deref() == Some(name)
    }

    fn statuses(&self) -> Vec<RuntimeStatus> {
        if self.statuses.is_empty() { self.action.statuses() } else { self.statuses.clone() }
    }

    fn query(&self, after: Option<PageCursor>, page_size: usize) -> InstanceQuery {
        InstanceQuery {
            statuses: self.statuses(),
            name: self.name.clone(),
            created_from: self.created_from,
            created_to: self.created_to,
            instance_id_prefix: None,
            labels: Vec::new(),
            page_size,
            after,
        }
    }

    fn purge_filter(&self) -> PurgeFilter {
        let excluded_names = match &self.name {
            Some(_) => Vec::new(),
            None => vec![BULK_ORCHESTRATION.to_owned()],
        };
        PurgeFilter {
            created_from: self.created_from,
            created_to: self.created_to,
            statuses: self.statuses(),
            name: self.name.clone(),
            excluded_names,
            finished_before: None,
            after: None,
        }
    }
}

/// A bulk operation's progress (its custom status while it runs, its output at the end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkProgress {
    /// Instances acted on (for a purge: deleted, sub-orchestrations included).
    pub done: u64,
    /// Instances selected that were no longer in a state to act on (finished, rewound or
    /// deleted meanwhile).
    pub skipped: u64,
    /// Pages walked.
    pub pages: u64,
}

/// What a bulk operation would act on now (a dry run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkPreview {
    /// How many instances it selects (at least this many when `complete` is false).
    pub matched: u64,
    /// Whether `matched` is the whole count.
    pub complete: bool,
    /// The first of them, oldest created first: id, name, status, created and last updated.
    pub first: Vec<kiln_store::InstanceSummary>,
}

/// One execution's input: the operation, where it is in the selection, and what it did so far.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkRun {
    operation: BulkOperation,
    after: Option<String>,
    progress: BulkProgress,
}

/// One page's request and result.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageRequest {
    operation: BulkOperation,
    after: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageDone {
    done: u64,
    skipped: u64,
    /// Where the next page starts (`None`: this was the last): a listing's cursor, or for a
    /// purge the status it is at and the cursor in it.
    next: Option<String>,
}

/// Registers the built-in orchestration and activity; the activity reaches the runtime through
/// `runtime` once it is set.
pub(crate) fn register(registry: &mut crate::registry::Registry, runtime: Arc<OnceLock<Weak<Runtime>>>) {
    // Versioned, so that a later Kiln with a different walk keeps replaying operations in flight.
    // ("" too, last registered first: what a build before versioning started.)
    registry.add_orchestration(BULK_ORCHESTRATION, "", run);
    registry.add_orchestration(BULK_ORCHESTRATION, BULK_VERSION, run);
    registry.add_activity(
        BULK_PAGE_ACTIVITY,
        Timeouts::new().start_to_close(Duration::from_secs(600)),
        move |ctx, request| {
            let runtime = runtime.get().and_then(Weak::upgrade);
            page(ctx, runtime, request)
        },
    );
}

async fn run(ctx: OrchestrationContext, mut run: BulkRun) -> Result<BulkProgress, Failure> {
    run.operation.validate().map_err(|e| Failure::typed("InvalidBulkOperation", e.to_string()))?;
    let retry = RetryPolicy::new(10, Duration::from_secs(1)).with_max_interval(Duration::from_secs(60));
    for _ in 0..PAGES_PER_RUN {
        let request = PageRequest { operation: run.operation.clone(), after: run.after.take() };
        let page: PageDone = ctx.call_activity_with_retry(BULK_PAGE_ACTIVITY, &request, retry.clone()).await?;
        run.progress.done += page.done;
        run.progress.skipped += page.skipped;
        run.progress.pages += 1;
        ctx.set_custom_status(&run.progress);
        match page.next {
            Some(next) => run.after = Some(next),
            None => return Ok(run.progress),
        }
    }
    ctx.continue_as_new(&run).await
}

async fn page(ctx: ActivityContext, runtime: Option<Arc<Runtime>>, request: PageRequest) -> Result<PageDone, Failure> {
    let runtime = runtime.ok_or_else(|| Failure::new("the runtime has stopped"))?;
    let client = KilnClient::new(runtime);
    let operation = &request.operation;
    let store_failure = |e: kiln_store::StoreError| Failure::new(format!("store: {e}"));
    operation.validate().map_err(|e| Failure::typed("InvalidBulkOperation", e.to_string()))?;
    if operation.action == BulkAction::Purge {
        // One status at a time, each walked once in creation order from where the last page
        // ended (`STATUS_INDEX|CURSOR`), as retention does: a page reads no further than it
        // needs, and what it left (a tree with a message waiting) is not selected again.
        let statuses = operation.statuses();
        let (index, after) = match request.after.as_deref().and_then(|a| a.split_once('|')) {
            Some((index, cursor)) => (index.parse::<usize>().unwrap_or(0), PageCursor::decode(cursor)),
            None => (0, None),
        };
        let Some(&status) = statuses.get(index) else {
            return Ok(PageDone { done: 0, skipped: 0, next: None });
        };
        let filter = PurgeFilter { statuses: vec![status], after, ..operation.purge_filter() };
        let batch = client.rt.store.purge_batch(&filter, PAGE_SIZE).await.map_err(store_failure)?;
        let next = match batch.last {
            Some(last) if batch.selected == PAGE_SIZE => Some(format!("{index}|{}", last.encode())),
            _ => (index + 1 < statuses.len()).then(|| format!("{}|", index + 1)),
        };
        return Ok(PageDone { done: batch.deleted, skipped: 0, next });
    }
    let after = request.after.as_deref().and_then(PageCursor::decode);
    let page = client.rt.store.list_instances(&operation.query(after, PAGE_SIZE)).await.map_err(store_failure)?;
    let (mut done, mut skipped) = (0, 0);
    // Never itself, nor (unless named) another bulk operation.
    let selected = page.instances.iter().filter(|i| i.instance_id != ctx.instance_id() && operation.selects(&i.name));
    for instance in selected {
        let id = &instance.instance_id;
        let reason = operation.reason.as_deref();
        let acted = match operation.action {
            BulkAction::Terminate => client.terminate(id, reason).await,
            _ => client.rewind(id, reason).await,
        };
        match acted {
            Ok(()) => done += 1,
            Err(ClientError::NotFound(_) | ClientError::Finished { .. } | ClientError::WrongState { .. }) => {
                skipped += 1;
            }
            Err(err) => return Err(Failure::new(format!("{} {id}: {err}", operation.action.verb()))),
        }
    }
    Ok(PageDone { done, skipped, next: page.next.map(|cursor| cursor.encode()) })
}

impl KilnClient {
    /// Starts a bulk operation (see the [module docs](crate::bulk)); returns its instance id,
    /// whose custom status is its [`BulkProgress`]. Without `created_to`, the selection ends now.
    pub async fn start_bulk(&self, mut operation: BulkOperation) -> Result<String, ClientError> {
        operation.validate()?;
        operation.created_to.get_or_insert_with(wall_clock);
        let run = BulkRun { operation, after: None, progress: BulkProgress::default() };
        let input = Payload::encode(&run)
            .map_err(|e| ClientError::InvalidPayload { what: "bulk operation", message: e.to_string() })?;
        Ok(self.create(BULK_ORCHESTRATION, input, StartOptions::default()).await?.instance_id)
    }

    /// What a bulk operation would act on now, and the first `max` instances (a dry run).
    pub async fn preview_bulk(&self, operation: &BulkOperation, max: usize) -> Result<BulkPreview, ClientError> {
        operation.validate()?;
        let mut operation = operation.clone();
        operation.created_to.get_or_insert_with(wall_clock);
        if operation.action == BulkAction::Purge {
            let preview = self.rt.store.preview_purge(&operation.purge_filter(), max).await?;
            return Ok(BulkPreview { matched: preview.matched, complete: preview.complete, first: preview.first });
        }
        let mut preview = BulkPreview { complete: true, ..BulkPreview::default() };
        let mut after = None;
        loop {
            let page = self.rt.store.list_instances(&operation.query(after, 1_000)).await?;
            let selected: Vec<_> = page.instances.iter().filter(|r| operation.selects(&r.name)).collect();
            for record in &selected {
                if preview.first.len() < max {
                    preview.first.push(kiln_store::InstanceSummary {
                        instance_id: record.instance_id.clone(),
                        name: record.name.clone(),
                        status: record.status,
                        created_at: record.created_at,
                        updated_at: record.updated_at,
                    });
                }
            }
            preview.matched += selected.len() as u64;
            match page.next {
                Some(next) if preview.matched < PREVIEW_COUNT_LIMIT => after = Some(next),
                Some(_) => {
                    preview.complete = false;
                    return Ok(preview);
                }
                None => return Ok(preview),
            }
        }
    }
}
