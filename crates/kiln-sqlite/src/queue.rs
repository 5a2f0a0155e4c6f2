//! In-memory dispatch state in front of the tables.
//!
//! One process owns the database file, so which instances have work, which activities are
//! waiting, which leases are held and when timers fire can all live in memory: workers are woken
//! directly after a commit instead of polling the database. The tables stay the source of truth;
//! [`Queues`] is rebuilt from them at start and changed only by the writer thread after a commit
//! is durable (and by claims and releases, which are not persisted).

use kiln_core::{Payload, Timestamp};
use kiln_store::{InboxMessage, Lease, NewActivity};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A queued activity.
#[derive(Clone, Debug)]
pub struct ActivityEntry {
    /// Row id.
    pub id: i64,
    /// What to run.
    pub activity: NewActivity,
    /// Claims so far.
    pub dequeue_count: u32,
    /// Loaded at start: it may have been running when the process died, so its next claim must
    /// be recorded durably before it runs.
    pub recovered: bool,
}

#[derive(Debug, Default)]
struct InstanceSlot {
    messages: Vec<InboxMessage>,
    lease: Option<HeldLease>,
    in_ready: bool,
    suspended: bool,
    retry_at: Option<Timestamp>,
    dequeue_count: u32,
    recovered: bool,
}

#[derive(Clone, Copy, Debug)]
struct HeldLease {
    lease: Lease,
    /// A commit under this lease is being written: it must not lapse meanwhile.
    pinned: bool,
}

#[derive(Debug)]
enum Delayed {
    Message(String, InboxMessage),
    InstanceRetry(String),
    Activity(ActivityEntry),
}

#[derive(Debug)]
enum LeaseTarget {
    Instance(String),
    Activity(i64),
}

/// What was claimed: an instance with a snapshot of its messages.
#[derive(Debug)]
pub struct ClaimedInstance {
    /// The instance.
    pub instance_id: String,
    /// Its visible messages.
    pub messages: Vec<InboxMessage>,
    /// The claim.
    pub lease: Lease,
    /// Claims without a commit so far, including this one.
    pub dequeue_count: u32,
    /// The claim must be recorded durably before the turn runs (see [`ActivityEntry::recovered`]).
    pub recovered: bool,
}

/// The in-memory dispatch state.
#[derive(Debug, Default)]
pub struct Queues {
    slots: HashMap<String, InstanceSlot>,
    ready: VecDeque<String>,
    delayed: BTreeMap<(Timestamp, u64), Delayed>,
    leases: BTreeMap<(Timestamp, u64), LeaseTarget>,
    activities: VecDeque<ActivityEntry>,
    /// Activities a claim passed over because their name was excluded (its concurrency limit
    /// was reached), by name, in queue order. Each entry is moved here at most once; claims that
    /// do not exclude its name take it from here first (it is older than the queue's entries).
    held_back: HashMap<String, VecDeque<ActivityEntry>>,
    leased_activities: HashMap<i64, (HeldLease, ActivityEntry)>,
    next_token: u64,
}

impl InstanceSlot {
    fn eligible(&self) -> bool {
        self.lease.is_none()
            && self.retry_at.is_none()
            && !self.messages.is_empty()
            && (!self.suspended || self.messages.iter().any(|m| m.event.kind.is_control()))
    }
}

impl Queues {
    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Adds a message for an instance; returns true if an orchestration worker should wake
    /// (the instance became ready, or a timer is now the earliest deadline).
    pub fn push_message(
        &mut self,
        instance_id: &str,
        message: InboxMessage,
        visible_at: Option<Timestamp>,
        now: Timestamp,
    ) -> bool {
        match visible_at {
            Some(at) if at > now => {
                let earliest = self.next_deadline().is_none_or(|next| at < next);
                let seq = self.token();
                self.delayed.insert((at, seq), Delayed::Message(instance_id.to_owned(), message));
                earliest
            }
            _ => {
                self.slots.entry(instance_id.to_owned()).or_default().messages.push(message);
                self.mark_ready(instance_id)
            }
        }
    }

    /// Queues an activity; returns true (an activity worker should wake).
    pub fn push_activity(&mut self, entry: ActivityEntry) -> bool {
        self.activities.push_back(entry);
        true
    }

    /// Restores an instance's claim count after a restart; its next claim is marked durably.
    pub fn restore_claims(&mut self, instance_id: &str, dequeue_count: u32) {
        if let Some(slot) = self.slots.get_mut(instance_id) {
            slot.dequeue_count = dequeue_count;
            slot.recovered = true;
        }
    }

    /// Records whether an instance is suspended (only control messages wake it then).
    pub fn set_suspended(&mut self, instance_id: &str, suspended: bool) {
        if suspended {
            self.slots.entry(instance_id.to_owned()).or_default().suspended = true;
        } else if let Some(slot) = self.slots.get_mut(instance_id) {
            slot.suspended = false;
        }
    }

    fn mark_ready(&mut self, instance_id: &str) -> bool {
        match self.slots.get_mut(instance_id) {
            Some(slot) if slot.eligible() && !slot.in_ready => {
                slot.in_ready = true;
                self.ready.push_back(instance_id.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Moves due delayed entries into place and takes back lapsed leases. Returns how many
    /// orchestration and activity items became available.
    pub fn advance(&mut self, now: Timestamp) -> (usize, usize) {
        let (mut instances, mut activities) = (0, 0);
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Delayed::Message(id, message) => {
                    self.slots.entry(id.clone()).or_default().messages.push(message);
                    instances += usize::from(self.mark_ready(&id));
                }
                Delayed::InstanceRetry(id) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.retry_at = None;
                    }
                    instances += usize::from(self.mark_ready(&id));
                }
                Delayed::Activity(entry) => {
                    self.activities.push_back(entry);
                    activities += 1;
                }
            }
        }
        while let Some(entry) = self.leases.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                LeaseTarget::Instance(id) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.lease = None;
                    }
                    instances += usize::from(self.mark_ready(&id));
                }
                LeaseTarget::Activity(id) => {
                    if let Some((_, entry)) = self.leased_activities.remove(&id) {
                        self.activities.push_back(entry);
                        activities += 1;
                    }
                }
            }
        }
        (instances, activities)
    }

    /// The next moment something delayed becomes due or a lease lapses.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let delayed = self.delayed.keys().next().map(|k| k.0);
        let lease = self.leases.keys().next().map(|k| k.0);
        match (delayed, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Claims the next ready instance.
    pub fn claim_instance(&mut self, now: Timestamp, lease_ms: i64) -> Option<ClaimedInstance> {
        while let Some(id) = self.ready.pop_front() {
            let token = self.token();
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            slot.in_ready = false;
            if !slot.eligible() {
                continue;
            }
            let lease = Lease { token, expires_at: now.plus_millis(lease_ms) };
            slot.lease = Some(HeldLease { lease, pinned: false });
            slot.dequeue_count += 1;
            let claimed = ClaimedInstance {
                instance_id: id.clone(),
                messages: slot.messages.clone(),
                lease,
                dequeue_count: slot.dequeue_count,
                recovered: std::mem::take(&mut slot.recovered),
            };
            self.leases.insert((lease.expires_at, token), LeaseTarget::Instance(id));
            return Some(claimed);
        }
        None
    }

    /// Claims one given instance if it is idle: not leased, backing off, suspended or recovered
    /// work (those take the ordinary path). For a turn that takes an activity's result directly.
    pub fn claim_idle_instance(&mut self, instance_id: &str, now: Timestamp, lease_ms: i64) -> Option<ClaimedInstance> {
        let token = self.token();
        let slot = self.slots.entry(instance_id.to_owned()).or_default();
        if slot.lease.is_some() || slot.retry_at.is_some() || slot.suspended || slot.recovered {
            self.drop_if_idle(instance_id);
            return None;
        }
        let lease = Lease { token, expires_at: now.plus_millis(lease_ms) };
        slot.lease = Some(HeldLease { lease, pinned: false });
        slot.dequeue_count += 1;
        let claimed = ClaimedInstance {
            instance_id: instance_id.to_owned(),
            messages: slot.messages.clone(),
            lease,
            dequeue_count: slot.dequeue_count,
            recovered: false,
        };
        self.leases.insert((lease.expires_at, token), LeaseTarget::Instance(instance_id.to_owned()));
        Some(claimed)
    }

    /// Whether an activity is still held under `lease` (and not pinned by a commit).
    pub fn holds_activity(&self, id: i64, lease: Lease) -> bool {
        self.leased_activities.get(&id).is_some_and(|(held, _)| held.lease.token == lease.token && !held.pinned)
    }

    /// Claims the next activity whose name is not `excluded` (passing over, and holding back,
    /// the ones that are).
    pub fn claim_activity(
        &mut self,
        now: Timestamp,
        lease_ms: i64,
        excluded: &[String],
    ) -> Option<(ActivityEntry, Lease)> {
        let mut entry = match self.take_held_back(excluded) {
            Some(entry) => entry,
            None => loop {
                let entry = self.activities.pop_front()?;
                if !excluded.contains(&entry.activity.name) {
                    break entry;
                }
                self.held_back.entry(entry.activity.name.clone()).or_default().push_back(entry);
            },
        };
        entry.dequeue_count += 1;
        let lease = Lease { token: self.token(), expires_at: now.plus_millis(lease_ms) };
        self.leases.insert((lease.expires_at, lease.token), LeaseTarget::Activity(entry.id));
        self.leased_activities.insert(
            entry.id,
            (HeldLease { lease, pinned: false }, ActivityEntry { recovered: false, ..entry.clone() }),
        );
        Some((entry, lease))
    }

    /// The oldest held-back activity whose name is not `excluded` (one look per held-back name).
    fn take_held_back(&mut self, excluded: &[String]) -> Option<ActivityEntry> {
        let name = self
            .held_back
            .iter()
            .filter(|(name, _)| !excluded.contains(name))
            .filter_map(|(name, entries)| Some((entries.front()?.id, name)))
            .min()
            .map(|(_, name)| name.clone())?;
        let entries = self.held_back.get_mut(&name)?;
        let entry = entries.pop_front();
        if entries.is_empty() {
            self.held_back.remove(&name);
        }
        entry
    }

    /// Pins an instance lease for a commit; false if it is not held with this token.
    pub fn pin_instance(&mut self, instance_id: &str, lease: Lease) -> bool {
        match self.slots.get_mut(instance_id).and_then(|s| s.lease.as_mut()) {
            Some(held) if held.lease.token == lease.token => {
                held.pinned = true;
                self.leases.remove(&(held.lease.expires_at, held.lease.token));
                true
            }
            _ => false,
        }
    }

    /// Pins an activity lease for a commit; false if it is not held with this token.
    pub fn pin_activity(&mut self, id: i64, lease: Lease) -> bool {
        match self.leased_activities.get_mut(&id) {
            Some((held, _)) if held.lease.token == lease.token => {
                held.pinned = true;
                self.leases.remove(&(held.lease.expires_at, held.lease.token));
                true
            }
            _ => false,
        }
    }

    /// Keeps a held activity's last heartbeat details with it, for its next claim, if it is
    /// still held under `lease` (a delivery that lost its lease meanwhile saves nothing).
    pub fn set_activity_heartbeat(&mut self, id: i64, lease: Lease, details: Payload) {
        if let Some((held, entry)) = self.leased_activities.get_mut(&id)
            && held.lease.token == lease.token
        {
            entry.activity.heartbeat = Some(details);
        }
    }

    /// Extends a held activity lease.
    pub fn renew_activity(&mut self, id: i64, lease: Lease, now: Timestamp, lease_ms: i64) -> Option<Lease> {
        let (held, _) = self.leased_activities.get_mut(&id)?;
        if held.lease.token != lease.token || held.pinned {
            return None;
        }
        self.leases.remove(&(held.lease.expires_at, held.lease.token));
        held.lease.expires_at = now.plus_millis(lease_ms);
        self.leases.insert((held.lease.expires_at, held.lease.token), LeaseTarget::Activity(id));
        Some(held.lease)
    }

    /// Releases an instance after a commit (or a failed one): drops consumed messages and, if
    /// `committed`, resets its failure count. Returns true if it is ready again.
    pub fn release_instance(&mut self, instance_id: &str, consumed: &[i64], committed: bool) -> bool {
        let Some(slot) = self.slots.get_mut(instance_id) else {
            return false;
        };
        if let Some(held) = slot.lease.take() {
            self.leases.remove(&(held.lease.expires_at, held.lease.token));
        }
        if committed {
            slot.messages.retain(|m| !consumed.contains(&m.id));
            slot.dequeue_count = 0;
            slot.recovered = false;
        }
        let ready = self.mark_ready(instance_id);
        self.drop_if_idle(instance_id);
        ready
    }

    /// Unpins an instance lease after a failed commit: its holder keeps it (and decides what
    /// to do next), and it lapses at its old expiry unless released first.
    pub fn unpin_instance(&mut self, instance_id: &str, lease: Lease) {
        if let Some(held) = self.slots.get_mut(instance_id).and_then(|s| s.lease.as_mut())
            && held.lease.token == lease.token
            && held.pinned
        {
            held.pinned = false;
            self.leases
                .insert((held.lease.expires_at, held.lease.token), LeaseTarget::Instance(instance_id.to_owned()));
        }
    }

    /// Releases an instance without a commit; it becomes claimable again at `retry_at`. The
    /// holder gave it back (its code did not crash), so this claim does not count towards
    /// poison detection.
    pub fn abandon_instance(&mut self, instance_id: &str, lease: Lease, retry_at: Timestamp) -> bool {
        let Some(slot) = self.slots.get_mut(instance_id) else {
            return false;
        };
        match slot.lease {
            Some(held) if held.lease.token == lease.token => {
                self.leases.remove(&(held.lease.expires_at, held.lease.token));
                slot.lease = None;
                slot.dequeue_count = slot.dequeue_count.saturating_sub(1);
                slot.retry_at = Some(retry_at);
                let seq = self.token();
                self.delayed.insert((retry_at, seq), Delayed::InstanceRetry(instance_id.to_owned()));
                true
            }
            _ => false,
        }
    }

    /// Gives back recovered work whose claim could not be recorded durably (the store failed):
    /// uncounted, and still recovered, so its next claim is recorded before it runs.
    pub fn unclaim_recovered_instance(&mut self, instance_id: &str, lease: Lease, retry_at: Timestamp) {
        if self.abandon_instance(instance_id, lease, retry_at)
            && let Some(slot) = self.slots.get_mut(instance_id)
        {
            slot.recovered = true;
        }
    }

    /// Like [`Queues::unclaim_recovered_instance`], for an activity.
    pub fn unclaim_recovered_activity(&mut self, id: i64, lease: Lease, retry_at: Timestamp) {
        if let Some((_, entry)) = self.leased_activities.get_mut(&id) {
            entry.recovered = true;
        }
        self.abandon_activity(id, lease, retry_at);
    }

    /// Forgets a finished activity's lease (its row is gone).
    pub fn finish_activity(&mut self, id: i64) {
        self.leased_activities.remove(&id);
    }

    /// Unpins an activity lease after a failed commit: its holder keeps it (and may renew it
    /// and try again), and it lapses at its old expiry otherwise.
    pub fn unpin_activity(&mut self, id: i64, lease: Lease) {
        if let Some((held, _)) = self.leased_activities.get_mut(&id)
            && held.lease.token == lease.token
            && held.pinned
        {
            held.pinned = false;
            self.leases.insert((held.lease.expires_at, held.lease.token), LeaseTarget::Activity(id));
        }
    }

    /// Releases an activity; it becomes claimable again at `retry_at`. Its holder gave it back,
    /// so this claim does not count towards poison detection.
    pub fn abandon_activity(&mut self, id: i64, lease: Lease, retry_at: Timestamp) -> bool {
        match self.leased_activities.get(&id) {
            Some((held, _)) if held.lease.token == lease.token => {
                let held = held.lease;
                self.leases.remove(&(held.expires_at, held.token));
                if let Some((_, mut entry)) = self.leased_activities.remove(&id) {
                    entry.dequeue_count = entry.dequeue_count.saturating_sub(1);
                    let seq = self.token();
                    self.delayed.insert((retry_at, seq), Delayed::Activity(entry));
                }
                true
            }
            _ => false,
        }
    }

    /// Forgets everything about instances (after a purge or a replacing start).
    pub fn forget_instances(&mut self, ids: &[String]) {
        for id in ids {
            if let Some(slot) = self.slots.remove(id)
                && let Some(held) = slot.lease
            {
                self.leases.remove(&(held.lease.expires_at, held.lease.token));
            }
        }
        self.delayed.retain(|_, d| match d {
            Delayed::Message(id, _) | Delayed::InstanceRetry(id) => !ids.contains(id),
            Delayed::Activity(_) => true,
        });
        for id in ids {
            self.withdraw_activities(id);
        }
    }

    /// Forgets an instance's activities, queued, delayed or leased (after it was terminated or
    /// purged): a running one can no longer renew its lease or report its result.
    pub fn withdraw_activities(&mut self, instance_id: &str) {
        self.delayed.retain(|_, d| !matches!(d, Delayed::Activity(e) if e.activity.instance_id == instance_id));
        self.activities.retain(|e| e.activity.instance_id != instance_id);
        for held in self.held_back.values_mut() {
            held.retain(|e| e.activity.instance_id != instance_id);
        }
        self.held_back.retain(|_, held| !held.is_empty());
        let leased: Vec<i64> = self
            .leased_activities
            .iter()
            .filter(|(_, (_, entry))| entry.activity.instance_id == instance_id)
            .map(|(id, _)| *id)
            .collect();
        for id in leased {
            if let Some((held, _)) = self.leased_activities.remove(&id) {
                self.leases.remove(&(held.lease.expires_at, held.lease.token));
            }
        }
    }

    fn drop_if_idle(&mut self, instance_id: &str) {
        if let Some(slot) = self.slots.get(instance_id)
            && slot.messages.is_empty()
            && slot.lease.is_none()
            && !slot.in_ready
            && !slot.suspended
        {
            self.slots.remove(instance_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{EventKind, HistoryEvent, Payload};

    fn message(id: i64, kind: EventKind) -> InboxMessage {
        InboxMessage { id, execution: None, event: HistoryEvent::new(Timestamp(0), kind) }
    }

    fn raised(id: i64) -> InboxMessage {
        message(id, EventKind::EventRaised { name: "e".into(), input: Payload::null() })
    }

    #[test]
    fn one_holder_at_a_time_and_lapsed_leases_return() {
        let mut q = Queues::default();
        assert!(q.push_message("a", raised(1), None, Timestamp(0)));
        let first = q.claim_instance(Timestamp(0), 100).unwrap();
        q.push_message("a", raised(2), None, Timestamp(0));
        assert!(q.claim_instance(Timestamp(0), 100).is_none(), "leased instances are not handed out twice");
        q.advance(Timestamp(100));
        let second = q.claim_instance(Timestamp(100), 100).unwrap();
        assert_eq!(second.dequeue_count, 2);
        assert!(!q.pin_instance("a", first.lease), "the lapsed lease is fenced out");
        assert!(q.pin_instance("a", second.lease));
        q.release_instance("a", &[1, 2], true);
        assert!(q.claim_instance(Timestamp(100), 100).is_none());
    }

    #[test]
    fn a_failed_commit_leaves_the_lease_with_its_holder_and_giving_work_back_is_no_failure() {
        let mut q = Queues::default();
        q.push_message("a", raised(1), None, Timestamp(0));
        let claimed = q.claim_instance(Timestamp(0), 100).unwrap();
        assert!(q.pin_instance("a", claimed.lease));
        q.unpin_instance("a", claimed.lease);
        assert!(q.claim_instance(Timestamp(50), 100).is_none(), "still held by the turn whose commit failed");
        assert!(q.abandon_instance("a", claimed.lease, Timestamp(60)), "its holder can give it back");
        q.advance(Timestamp(60));
        let again = q.claim_instance(Timestamp(60), 100).unwrap();
        assert_eq!(again.dequeue_count, 1, "a claim given back does not count towards poison");

        q.push_activity(ActivityEntry {
            id: 7,
            activity: NewActivity {
                instance_id: "a".into(),
                execution: 0,
                step: 0,
                name: "x".into(),
                input: Payload::null(),
                attempt: 1,
                timeouts: Default::default(),
                heartbeat: None,
                context: None,
            },
            dequeue_count: 0,
            recovered: false,
        });
        let (_, lease) = q.claim_activity(Timestamp(0), 100, &[]).unwrap();
        assert!(q.pin_activity(7, lease));
        q.unpin_activity(7, lease);
        assert!(q.holds_activity(7, lease), "the activity keeps its lease and its result");
        assert!(q.renew_activity(7, lease, Timestamp(90), 100).is_some());
        assert!(q.abandon_activity(7, lease, Timestamp(0)));
        q.advance(Timestamp(0));
        assert_eq!(q.claim_activity(Timestamp(0), 100, &[]).unwrap().0.dequeue_count, 1);
    }

    #[test]
    fn recovered_work_whose_claim_was_not_recorded_stays_recovered_and_uncounted() {
        let mut q = Queues::default();
        q.push_message("a", raised(1), None, Timestamp(0));
        q.restore_claims("a", 3);
        let claimed = q.claim_instance(Timestamp(0), 100).unwrap();
        assert!(claimed.recovered);
        q.unclaim_recovered_instance("a", claimed.lease, Timestamp(10));
        q.advance(Timestamp(10));
        let again = q.claim_instance(Timestamp(10), 100).unwrap();
        assert!(again.recovered, "its next claim is still recorded durably");
        assert_eq!(again.dequeue_count, claimed.dequeue_count, "the unrecorded claim did not count");
    }

    #[test]
    fn running_activities_of_a_purged_instance_lose_their_lease() {
        let mut q = Queues::default();
        let activity = NewActivity {
            instance_id: "a".into(),
            execution: 0,
            step: 0,
            name: "work".into(),
            input: Payload::null(),
            attempt: 1,
            timeouts: Default::default(),
            heartbeat: None,
            context: None,
        };
        q.push_activity(ActivityEntry { id: 7, activity, dequeue_count: 0, recovered: false });
        let (_, lease) = q.claim_activity(Timestamp(0), 100, &[]).unwrap();
        q.forget_instances(&["a".to_owned()]);
        assert!(!q.holds_activity(7, lease));
        assert!(!q.pin_activity(7, lease), "its result cannot be committed");
        assert_eq!(q.advance(Timestamp(1_000)), (0, 0), "nor is it handed out again");
    }

    #[test]
    fn suspended_instances_wake_only_for_control_messages() {
        let mut q = Queues::default();
        q.set_suspended("a", true);
        assert!(!q.push_message("a", raised(1), None, Timestamp(0)));
        assert!(q.push_message("a", message(2, EventKind::ExecutionResumed { reason: None }), None, Timestamp(0)));
    }

    #[test]
    fn delayed_messages_wait_for_their_time() {
        let mut q = Queues::default();
        q.push_message("a", raised(1), Some(Timestamp(50)), Timestamp(0));
        assert!(q.claim_instance(Timestamp(0), 100).is_none());
        assert_eq!(q.next_deadline(), Some(Timestamp(50)));
        assert_eq!(q.advance(Timestamp(50)), (1, 0));
        assert!(q.claim_instance(Timestamp(50), 100).is_some());
    }
}
