//! The driver of one seeded run. It starts the plan's instances, then polls the store: while
//! anything can still happen without the clock moving (an activity runs, a short timer is due, a
//! raised event is on its way, a child finished), it waits — injecting the plan's crashes and
//! lease expiries meanwhile; once every instance only waits on a one-tick timer or on an event it
//! is not yet time to raise, it sends the client operations due at this tick, then moves the
//! clock one tick forward. It raises a reminder step's event once the step's custom status shows
//! the planned number of reminders. So every race has one possible winner, and the outputs are
//! a pure function of the seed whatever the faults.

use crate::invariants::{Observed, Snapshot};
use crate::nodes::{Backend, LEASE, Node, NodeSpec};
use crate::plan::{Plan, Start};
use crate::program::{Expectations, Program, TICK, Waiting, close_gates, open_gate, reset_gates, take_effects};
use crate::samples::APPROVAL_EVENT;
use kiln::{ClientError, InstanceQuery, InstanceRecord, KilnClient, Payload, RuntimeStatus, StartOptions, WaitingOn};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A run that does not settle within this (real) time has a stuck instance.
const RUN_DEADLINE: Duration = Duration::from_secs(30);
/// More ticks than any plan needs.
const MAX_TICKS: u32 = 40;
/// A timer due sooner than this is a short one: it fires in real time.
const SHORT_TIMER_MILLIS: i64 = 60_000;
/// Nothing moving for this long in a run with faults means work waits for a lease to lapse.
const STALL: Duration = Duration::from_millis(100);
/// [`STALL`] in a run with samples, whose activities work for up to 0.7 s in real time (less
/// would lapse their leases again and again until they are failed as poison), and while a
/// rewind is on its way.
const SAMPLES_STALL: Duration = Duration::from_millis(1_500);

/// The versions each node registers. On PostgreSQL, in odd seeds (all with
/// `KILN_SIM_MIXED_VERSIONS=1`, none with `=0`) the second node lacks the newest version — a
/// rolling deploy — so instances started through the first node can only run there; otherwise
/// both nodes have both (and pin instances to their default, the newest).
fn node_specs(backend: &Backend, plan: &Plan, seed: u64) -> Vec<NodeSpec> {
    let spec = |versions: Vec<&'static str>, n: u64| NodeSpec {
        versions,
        per_mille: plan.faults.store_per_mille,
        fault_seed: seed.wrapping_mul(31).wrapping_add(n),
        lost_notifications: plan.faults.lost_notifications,
        cache: plan.cache,
    };
    match backend {
        Backend::Sqlite(_) => vec![spec(vec!["1"], 0)],
        Backend::Postgres { .. } if mixed_versions(seed) => vec![spec(vec!["1", "2"], 0), spec(vec!["1"], 1)],
        Backend::Postgres { .. } => vec![spec(vec!["1", "2"], 0), spec(vec!["1", "2"], 1)],
    }
}

/// Whether a PostgreSQL seed runs its second node without the newest version.
fn mixed_versions(seed: u64) -> bool {
    crate::switch("KILN_SIM_MIXED_VERSIONS", seed % 2 == 1)
}

/// How many nodes a backend runs.
pub fn node_count(backend: &Backend) -> usize {
    match backend {
        Backend::Sqlite(_) => 1,
        Backend::Postgres { .. } => 2,
    }
}

struct Driver<'a> {
    backend: &'a Backend,
    plan: &'a Plan,
    specs: Vec<NodeSpec>,
    nodes: Vec<Option<Node>>,
    expectations: Expectations,
    tick: u32,
    busy_polls: u32,
    raised: BTreeSet<String>,
    observed: Observed,
    terminated: bool,
    suspended: bool,
    resumed: bool,
    reused: bool,
    /// Held activities seen, by idempotency key: the tick they were first seen at, and whether
    /// their gate is open.
    gates: BTreeMap<String, (u32, bool)>,
    /// Rewinds sent, by instance.
    rewinds: BTreeMap<String, u32>,
    /// An instance sent a suspension (true) or resumption (false) not taken in yet.
    awaiting: Option<(String, bool)>,
    /// Instances rewound and not seen so yet, with their execution and how often its history
    /// had been rewound.
    rewinding: BTreeMap<String, (u64, usize)>,
    log: Vec<String>,
    began: Instant,
    /// What the records looked like, since when.
    fingerprint: (Vec<(String, RuntimeStatus, u64, kiln::Timestamp)>, Instant),
    planned_faults: bool,
}

/// Runs `plan` on `backend` and returns what the invariants need.
pub fn run(seed: u64, backend: &Backend, plan: &Plan) -> Result<Observed, String> {
    let specs = node_specs(backend, plan, seed);
    let mut nodes = Vec::new();
    for spec in &specs {
        nodes.push(Some(Node::start(backend, spec)?));
    }
    let mut driver = Driver {
        backend,
        plan,
        specs,
        nodes,
        expectations: plan.expectations(),
        tick: 0,
        busy_polls: 0,
        raised: BTreeSet::new(),
        observed: Observed::default(),
        terminated: false,
        suspended: false,
        resumed: false,
        reused: false,
        rewinds: BTreeMap::new(),
        gates: BTreeMap::new(),
        rewinding: BTreeMap::new(),
        awaiting: None,
        log: Vec::new(),
        began: Instant::now(),
        fingerprint: (Vec::new(), Instant::now()),
        planned_faults: plan.faults.store_per_mille > 0
            || plan.faults.crash_at.is_some()
            || !plan.faults.lease_expiries.is_empty()
            || plan.faults.lost_notifications > 0,
    };
    take_effects();
    reset_gates();
    let result = driver.drive();
    driver.observed.effects = take_effects();
    let result = result.and_then(|()| driver.collect());
    for index in 0..driver.nodes.len() {
        if let Some(node) = driver.nodes[index].take() {
            let metrics = node.metrics();
            driver.note(format!("node {index}: {metrics:?}"));
            node.stop();
        }
    }
    driver.note("stopped".to_owned());
    let log = driver.log.join("\n  ");
    if std::env::var("KILN_SIM_VERBOSE").is_ok() {
        eprintln!("seed {seed}:\n  {log}");
    }
    result.map(|()| std::mem::take(&mut driver.observed)).map_err(|e| format!("{e}\ndriver log:\n  {log}"))
}

impl Driver<'_> {
    /// Adds a line to the run's log, stamped with the real time since the run began.
    fn note(&mut self, line: String) {
        self.log.push(format!("{:>5} ms {line}", self.began.elapsed().as_millis()));
    }

    /// The node the driver talks through (the first one never crashes).
    fn node(&self, index: usize) -> &Node {
        self.nodes[index].as_ref().or(self.nodes[0].as_ref()).expect("the first node is always up")
    }

    fn drive(&mut self) -> Result<(), String> {
        let plan = self.plan;
        let mut starts: Vec<&Start> = plan.starts.iter().collect();
        starts.extend(plan.blocker.as_ref().map(|(s, _)| s));
        for start in starts {
            self.start(start.via, &start.id, &start.program)?;
        }
        for (n, sample) in plan.samples.iter().enumerate() {
            let input = Payload::encode(&sample.input).map_err(|e| e.to_string())?;
            self.start_named(n % self.nodes.len(), &sample.id, sample.name, input)?;
        }
        self.note("started".to_owned());
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let records = self.list()?;
            let busy = self.busy(&records)?;
            if !busy.is_empty() {
                if Instant::now() > deadline {
                    return Err(self.stuck(&records, &busy));
                }
                self.busy_polls += 1;
                self.inject_faults()?;
                self.let_time_pass(&records);
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            if self.open_gates(&records) || self.client_operation(&records)? {
                continue;
            }
            let all_started = self.plan.starts.iter().all(|s| records.contains_key(&s.id))
                && self.plan.samples.iter().all(|s| records.contains_key(&s.id));
            if all_started && self.operations_done() && records.values().all(|r| r.status.is_terminal()) {
                self.note("settled".to_owned());
                return Ok(());
            }
            if self.tick >= MAX_TICKS || Instant::now() > deadline {
                let waiting = format!(
                    "nothing moves although the clock does (terminated {}, suspended {}, resumed {}, reused {})",
                    self.terminated, self.suspended, self.resumed, self.reused
                );
                return Err(self.stuck(&records, &[waiting]));
            }
            kiln_core::time::advance_clock(TICK + Duration::from_secs(1));
            self.tick += 1;
            self.note(format!("tick {}", self.tick));
            // Idle workers wait in real time; a new instance wakes them to see the clock moved.
            // (A caller-chosen id takes the queued path: a generated one runs its first turn in
            // the client, waking nobody.)
            let options = || StartOptions { instance_id: Some(format!("nudge-{}", self.tick)), ..Default::default() };
            let nudge = async |c: &KilnClient| match c.start_with("nudge", Payload::null(), options()).await {
                Err(ClientError::AlreadyExists { .. }) => Ok(String::new()),
                other => other,
            };
            self.node(0).call("nudge", nudge)?;
        }
    }

    /// Every instance, by id.
    fn list(&self) -> Result<BTreeMap<String, InstanceRecord>, String> {
        self.node(0).call("list", async |c| {
            let mut all = BTreeMap::new();
            let mut query = InstanceQuery { page_size: 500, ..InstanceQuery::default() };
            loop {
                let page = c.list(&query).await?;
                all.extend(page.instances.into_iter().map(|r| (r.instance_id.clone(), r)));
                match page.next {
                    Some(cursor) => query.after = Some(cursor),
                    None => return Ok(all),
                }
            }
        })
    }

    /// What can still happen without the clock moving (empty when nothing can). Raises the
    /// events that are due on the way.
    fn busy(&mut self, records: &BTreeMap<String, InstanceRecord>) -> Result<Vec<String>, String> {
        let now = kiln_core::time::now();
        let mut busy = Vec::new();
        // A suspension or resumption on its way: a timer that fires meanwhile would be taken in
        // on one side of it or the other, and a reminder counted or not.
        if let Some((id, suspend)) = &self.awaiting {
            let status = records.get(id).map(|r| r.status);
            let arrived = status.is_none_or(|s| s.is_terminal() || (s == RuntimeStatus::Suspended) == *suspend);
            if arrived {
                self.awaiting = None;
            } else {
                busy.push(format!("{id}: suspension or resumption on its way"));
            }
        }
        for record in records.values() {
            let id = &record.instance_id;
            // A rewind is on its way while the instance is failed in the same execution and its
            // history has no new ExecutionRewound (a failed instance's record also changes as
            // late results are kept; once rewound, it may continue as new, or fail again at
            // once). A history read now may be newer than `record`: a rewind seen only there is
            // taken in, but this poll stays busy, so that the next one sees the record after it.
            if let Some(&(execution, before)) = self.rewinding.get(id) {
                if record.status == RuntimeStatus::Failed && record.execution == execution {
                    let history = self.node(0).call("history", async |c| c.history(id).await)?;
                    if rewinds_in(&history) != before {
                        self.rewinding.remove(id);
                    }
                    busy.push(format!("{id}: rewind on its way"));
                    continue;
                }
                self.rewinding.remove(id);
            }
            match record.status {
                status if status.is_terminal() => continue,
                RuntimeStatus::Suspended => continue,
                RuntimeStatus::Pending => busy.push(format!("{id}: pending")),
                _ if record.waiting_on.is_empty() => busy.push(format!("{id}: waits on nothing")),
                _ => {}
            }
            for waiting in &record.waiting_on {
                match waiting {
                    WaitingOn::Activity { name, task_id, .. } if name == "held" => {
                        // Held at its gate until the timer it races has won (a tick later).
                        let gate = format!("{id}:{}:{task_id}", record.execution);
                        if self.gates.entry(gate).or_insert((self.tick, false)).1 {
                            busy.push(format!("{id}: late result of held activity {task_id} on its way"));
                        }
                    }
                    WaitingOn::Activity { name, .. } => busy.push(format!("{id}: activity {name}")),
                    WaitingOn::Timer { fire_at, .. } if fire_at.millis() < now.millis() + SHORT_TIMER_MILLIS => {
                        busy.push(format!("{id}: timer due at {fire_at}"));
                    }
                    WaitingOn::Timer { .. } => {}
                    WaitingOn::SubOrchestration { instance_id, .. } => {
                        if records.get(instance_id).is_none_or(|child| child.status.is_terminal()) {
                            busy.push(format!("{id}: child {instance_id} finished"));
                        }
                    }
                    WaitingOn::Event { name } if name == APPROVAL_EVENT => {
                        let decision = self.plan.samples.iter().find(|s| s.id == *id).and_then(|s| s.approval.as_ref());
                        let Some(decision) = decision else { continue };
                        let key = format!("{id}/{name}");
                        if self.raised.contains(&key) {
                            busy.push(format!("{id}: event {name} on its way"));
                            continue;
                        }
                        let raise = async |c: &KilnClient| match c.raise_event(id, name, decision).await {
                            Err(ClientError::Finished { .. }) => Ok(()),
                            other => other,
                        };
                        self.node(0).call("raise", raise)?;
                        self.raised.insert(key);
                        self.note(format!("raised {name} to {id}"));
                        busy.push(format!("{id}: event {name} raised"));
                    }
                    WaitingOn::Event { name } if self.expectations.echoes.contains(name) => {
                        busy.push(format!("{id}: its own event {name} on its way"));
                    }
                    WaitingOn::Event { name } => {
                        let Some(&reminders) = self.expectations.events.get(name) else { continue };
                        if self.raised.contains(name) {
                            busy.push(format!("{id}: event {name} on its way"));
                        } else if reminders_shown(record, name).is_some_and(|shown| shown >= reminders) {
                            // An attempt whose answer a fault hid may have been consumed already.
                            let raise = async |c: &KilnClient| match c.raise_event(id, name, name).await {
                                Err(ClientError::Finished { .. }) => Ok(()),
                                other => other,
                            };
                            self.node(0).call("raise", raise)?;
                            self.raised.insert(name.clone());
                            self.note(format!("raised {name} to {id}"));
                            busy.push(format!("{id}: event {name} raised"));
                        }
                    }
                }
            }
        }
        Ok(busy)
    }

    /// Opens the gates of held activities first seen before this tick: the timers they race
    /// have won, and the instances have taken that in (the driver is at a quiet moment) — unless
    /// an instance is suspended (it takes the timer in only once resumed).
    fn open_gates(&mut self, records: &BTreeMap<String, InstanceRecord>) -> bool {
        let tick = self.tick;
        let suspended = |gate: &str| {
            let id = gate.rsplitn(3, ':').nth(2).unwrap_or(gate);
            records.get(id).is_some_and(|r| r.status == RuntimeStatus::Suspended)
        };
        let due: Vec<String> = (self.gates.iter())
            .filter(|(gate, (seen, open))| *seen < tick && !open && !suspended(gate))
            .map(|(g, _)| g.clone())
            .collect();
        for gate in &due {
            open_gate(gate.clone());
            self.gates.insert(gate.clone(), (tick, true));
            self.note(format!("let held activity {gate} go"));
        }
        !due.is_empty()
    }

    /// Crashes and lease expiries due at this busy poll.
    fn inject_faults(&mut self) -> Result<(), String> {
        let faults = &self.plan.faults;
        if faults.crash_at == Some(self.busy_polls) {
            // On PostgreSQL the second node crashes (the driver talks through the first).
            let index = self.nodes.len() - 1;
            if let Some(node) = self.nodes[index].take() {
                self.observed.add_injected(node.injected());
                node.crash();
            }
            self.nodes[index] = Some(Node::start(self.backend, &self.specs[index])?);
            self.observed.crashes += 1;
            self.note(format!("crashed and restarted node {index} at busy poll {}", self.busy_polls));
        }
        if faults.lease_expiries.contains(&self.busy_polls) {
            kiln_core::time::advance_clock(LEASE + Duration::from_secs(1));
            self.observed.lease_expiries += 1;
            self.note(format!("leases expired at busy poll {}", self.busy_polls));
        }
        Ok(())
    }

    /// In a run with faults, a claim whose answer was lost holds its work until the lease
    /// lapses: when nothing has moved for a while, the clock moves past the lease (counted as a
    /// lease expiry). Runs without faults never need this.
    fn let_time_pass(&mut self, records: &BTreeMap<String, InstanceRecord>) {
        let fingerprint: Vec<_> =
            records.values().map(|r| (r.instance_id.clone(), r.status, r.history_len, r.updated_at)).collect();
        if fingerprint != self.fingerprint.0 {
            self.fingerprint = (fingerprint, Instant::now());
        } else if self.planned_faults && self.fingerprint.1.elapsed() > self.stall() {
            kiln_core::time::advance_clock(LEASE + Duration::from_secs(1));
            self.observed.lease_expiries += 1;
            self.fingerprint.1 = Instant::now();
            self.note("nothing moved: leases expired".to_owned());
        }
    }

    /// How long nothing may move before [`Driver::let_time_pass`] lapses every lease. Longer
    /// with samples, and while a rewind is on its way: a rewind turn replays the whole history,
    /// and on a loaded machine it can take longer than [`STALL`]; lapsing its lease again and
    /// again would give it up as poison (the instance stays failed, which the driver cannot
    /// tell from a rewind still on its way). Not the whole story of the "rewind on its way"
    /// failures seen under load (seeds 106, 136; seed 163 failed with this in place).
    fn stall(&self) -> Duration {
        if self.plan.samples.is_empty() && self.rewinding.is_empty() { STALL } else { SAMPLES_STALL }
    }

    fn operations_done(&self) -> bool {
        (self.plan.blocker.is_none() || self.terminated)
            && (self.plan.suspend.is_none() || self.resumed)
            && (self.plan.reuse.is_none() || self.reused)
    }

    /// Sends the client operation due now, if any (one per quiet moment).
    fn client_operation(&mut self, records: &BTreeMap<String, InstanceRecord>) -> Result<bool, String> {
        for (index, start) in self.plan.starts.iter().enumerate() {
            let program = match &self.plan.reuse {
                Some(reuse) if reuse.of == index && self.reused => &reuse.program,
                _ => &start.program,
            };
            let failed = records.get(&start.id).filter(|r| r.status == RuntimeStatus::Failed);
            let done = self.rewinds.get(&start.id).copied().unwrap_or(0);
            if let Some(record) = failed
                && done < Plan::rewinds(program)
            {
                let history = self.node(0).call("history", async |c| c.history(&start.id).await)?;
                let sent =
                    self.node(0).call("rewind", async |c| match c.rewind(&start.id, Some("simulated")).await {
                        // Refused: the listed record was stale (an earlier rewind took effect since);
                        // no rewind is on its way, and one is sent when the instance fails again.
                        Err(
                            ClientError::WrongState { .. } | ClientError::Finished { .. } | ClientError::NotFound(_),
                        ) => Ok(false),
                        other => tolerate(other).map(|()| true),
                    })?;
                if !sent {
                    self.note(format!("rewind of {} refused", start.id));
                    return Ok(true);
                }
                self.rewinding.insert(start.id.clone(), (record.execution, rewinds_in(&history)));
                self.rewinds.insert(start.id.clone(), done + 1);
                self.note(format!("rewound {}", start.id));
                return Ok(true);
            }
        }
        if let Some((blocker, at)) = &self.plan.blocker
            && !self.terminated
            && self.tick >= *at
        {
            let terminate = async |c: &KilnClient| tolerate(c.terminate(&blocker.id, Some("simulated")).await);
            self.node(0).call("terminate", terminate)?;
            self.terminated = true;
            self.note(format!("terminated {}", blocker.id));
            return Ok(true);
        }
        if let Some((index, suspend_at, resume_at)) = self.plan.suspend {
            let id = &self.plan.starts[index].id;
            let running = records.get(id).is_some_and(|r| !r.status.is_terminal());
            if !self.suspended && self.tick >= suspend_at {
                self.suspended = true;
                if running {
                    self.node(0).call("suspend", async |c| tolerate(c.suspend(id, Some("simulated")).await))?;
                    self.note(format!("suspended {id}"));
                    self.awaiting = Some((id.clone(), true));
                    return Ok(true);
                }
                self.resumed = true;
            } else if self.suspended && !self.resumed && self.tick >= resume_at {
                self.node(0).call("resume", async |c| tolerate(c.resume(id, Some("simulated")).await))?;
                self.resumed = true;
                self.awaiting = Some((id.clone(), false));
                self.note(format!("resumed {id}"));
                return Ok(true);
            }
        }
        if let Some(reuse) = &self.plan.reuse
            && !self.reused
        {
            let start = &self.plan.starts[reuse.of];
            let members = family(records, &start.id);
            // With orphans planned, the id is reused while a child of the old instance still
            // runs; otherwise once the whole family has finished.
            let settled = |id: &String| records.get(id).is_some_and(|r| r.status.is_terminal());
            let ready = self.plan.orphans || members.iter().all(settled);
            // (A failed instance is rewound first, if its program plans that.)
            let rewinding = self.rewinds.get(&start.id).copied().unwrap_or(0) < Plan::rewinds(&start.program)
                || self.rewinding.contains_key(&start.id);
            let finished =
                |r: &&InstanceRecord| r.status == RuntimeStatus::Completed || (r.status.is_terminal() && !rewinding);
            if let Some(record) = records.get(&start.id).filter(|r| ready && finished(r)) {
                let history = self.node(0).call("history", async |c| c.history(&start.id).await)?;
                self.observed.replaced.push(Snapshot {
                    record: record.clone(),
                    history,
                    program: start.program.clone(),
                });
                if reuse.purge {
                    for id in members.iter().filter(|id| settled(id)) {
                        // An attempt whose answer a fault hid may have purged it already.
                        let hidden = std::cell::Cell::new(false);
                        let purge = async |c: &KilnClient| match c.purge(id).await {
                            Err(ClientError::NotFound(_)) if hidden.get() => Ok(0),
                            Err(err @ ClientError::Store(_)) => {
                                hidden.set(true);
                                Err(err)
                            }
                            other => other,
                        };
                        self.node(0).call("purge", purge)?;
                    }
                }
                close_gates(&start.id);
                // The new instance under the id gets its own rewinds.
                self.rewinds.remove(&start.id);
                let prefix = format!("{}:", start.id);
                self.gates.retain(|gate, _| !gate.starts_with(&prefix));
                self.start(start.via, &start.id, &reuse.program)?;
                self.reused = true;
                self.note(format!("reused {} (purged first: {})", start.id, reuse.purge));
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Starts `program` as `id`, until the store takes it (an injected fault may hide that it
    /// did: then the stored input tells).
    fn start(&mut self, via: usize, id: &str, program: &Program) -> Result<(), String> {
        // It is pinned to the default version of the node it is started through.
        let version = self.specs[via].versions.last().copied().unwrap_or_default();
        self.observed.versions.insert(program.tag.clone(), version.to_owned());
        let input = Payload::encode(program).map_err(|e| e.to_string())?;
        self.start_named(via, id, "interp", input)
    }

    /// Starts orchestration `name` as `id` with `input`, until the store takes it.
    fn start_named(&self, via: usize, id: &str, name: &str, input: Payload) -> Result<(), String> {
        let node = self.node(via);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let options = StartOptions { instance_id: Some(id.to_owned()), ..Default::default() };
            let started = node.once(async |c| c.start_with(name, input.clone(), options).await);
            match started {
                Ok(_) => return Ok(()),
                Err(ClientError::Store(_) | ClientError::AlreadyExists { .. }) if Instant::now() < deadline => {
                    let stored = node.call("status", async |c| c.status(id).await)?;
                    if stored.is_some_and(|r| r.input.as_str() == input.as_str()) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => return Err(format!("start {id}: {err}")),
            }
        }
    }

    /// Reads every instance's final record and history, and the faults injected.
    fn collect(&mut self) -> Result<(), String> {
        for node in self.nodes.iter().flatten() {
            node.calm();
        }
        let records = self.list()?;
        for (id, record) in records {
            let history = self.node(0).call("history", async |c| c.history(&id).await)?;
            self.observed.finals.insert(id, (record, history));
        }
        for node in self.nodes.iter().flatten() {
            self.observed.add_injected(node.injected());
        }
        self.observed.expectations = std::mem::take(&mut self.expectations);
        Ok(())
    }

    /// Describes the instances that keep the run from settling.
    fn stuck(&self, records: &BTreeMap<String, InstanceRecord>, busy: &[String]) -> String {
        let mut text = format!("stuck at tick {} after {} busy polls: {busy:?}", self.tick, self.busy_polls);
        let busy_ids: BTreeSet<&str> = busy.iter().filter_map(|b| b.split(':').next()).collect();
        for record in records.values().filter(|r| !r.status.is_terminal() || busy_ids.contains(r.instance_id.as_str()))
        {
            let id = &record.instance_id;
            let history = self.node(0).call("history", async |c| c.history(id).await).unwrap_or_default();
            text += &format!(
                "\n  {id}: {} (version '{}', execution {}) waiting on {:?}; history: {}",
                record.status,
                record.version,
                record.execution,
                record.waiting_on,
                crate::invariants::describe(&history)
            );
            for waiting in &record.waiting_on {
                if let WaitingOn::SubOrchestration { instance_id, .. } = waiting {
                    let child = records.get(instance_id).map(|c| (c.status, c.parent.clone(), c.output.clone()));
                    text += &format!("\n    child {instance_id}: {child:?}");
                }
            }
        }
        text
    }
}

/// The reminders a reminder step waiting for `event` shows in its custom status.
fn reminders_shown(record: &InstanceRecord, event: &str) -> Option<u32> {
    let status: Waiting = serde_json::from_str(record.custom_status.as_ref()?.as_str()).ok()?;
    (status.event == event).then_some(status.reminders)
}

/// `id` and its sub-orchestrations, children first.
fn family(records: &BTreeMap<String, InstanceRecord>, id: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for child in records.values().filter(|r| r.parent.as_ref().is_some_and(|p| p.instance_id == id)) {
        ids.extend(family(records, &child.instance_id));
    }
    ids.push(id.to_owned());
    ids
}

/// Terminate, suspend, resume and rewind may have been done by an attempt whose answer a fault hid.
fn tolerate(result: Result<(), ClientError>) -> Result<(), ClientError> {
    match result {
        Err(ClientError::Store(err)) => Err(ClientError::Store(err)),
        _ => Ok(()),
    }
}

/// How many times a history was rewound.
fn rewinds_in(history: &[kiln_core::HistoryEvent]) -> usize {
    history.iter().filter(|e| matches!(e.kind, kiln_core::EventKind::ExecutionRewound { .. })).count()
}
