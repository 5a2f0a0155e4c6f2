//! The simulated workload: a seed generates small *programs* (plain serde values), and one
//! registered orchestration, [`interpret`], runs any program deterministically. Because we wrote
//! the interpreter, the output a program must end with ([`expected_output`]) and the activity
//! side effects it must leave ([`expected_effects`]) are pure functions of the program.
//!
//! Keys: every step of every generation (continue-as-new) of every program has a key
//! `{tag}/g{generation}/s{step}`; activities record one side effect per run under it (retried
//! attempts add `#{attempt}`, fan-out branches `:{branch}`), a child program's tag is its step's
//! key, and a reminder step waits for the event named by its key.

use crate::rng::Rng;
use kiln::{ActivityContext, Either, Failure, OrchestrationContext, RetryPolicy, join_all, select2};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One simulated tick: every long timer in a program lasts exactly this long, and the driver
/// moves the clock by a little more than this only when nothing else can happen.
pub const TICK: Duration = Duration::from_secs(3600);
/// Short timers (sleeps, retry delays) fire in real time.
const SHORT: Duration = Duration::from_millis(10);
/// How long a slow activity takes (real time).
const SLOW: Duration = Duration::from_millis(25);
/// The error message of the activity that always fails.
const DELIBERATE: &str = "deliberate failure";

/// A generated program: its steps run in order, `restarts` more times through continue-as-new.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Program {
    /// Unique per started instance (and per child): the prefix of every key.
    pub tag: String,
    /// The steps.
    pub steps: Vec<Step>,
    /// How many more generations follow through continue-as-new.
    pub restarts: u32,
    /// This generation.
    pub generation: u32,
    /// Outputs of earlier generations, carried over.
    pub carried: Vec<Value>,
}

/// One step of a program.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum Step {
    /// An activity returning `2n + 1`.
    Work { n: u64 },
    /// The same, taking a few milliseconds (so crashes and lease expiries catch it running).
    SlowWork { n: u64 },
    /// An activity that fails; the program catches the failure.
    Fail { n: u64 },
    /// An activity failing its first `failures` attempts, called with enough retries.
    Retry { n: u64, failures: u32 },
    /// A short durable timer.
    Sleep,
    /// A one-tick durable timer.
    LongSleep,
    /// Waits for its event raced against a one-tick reminder timer, in a loop; the driver raises
    /// the event once `reminders` reminders have fired.
    Reminder { reminders: u32 },
    /// Activities in parallel, joined.
    FanOut { ns: Vec<u64> },
    /// A sub-orchestration running `program` (its tag is replaced by this step's key), with an
    /// id derived by the runtime or, if `named`, chosen by the program.
    Child {
        program: Box<Program>,
        #[serde(default)]
        named: bool,
    },
    /// Sends an event to its own instance and waits for it.
    Echo,
    /// A sub-orchestration raced against a one-tick timer. If `wins`, a quick one (it wins);
    /// else one that sleeps two ticks: the timer wins, and the child's output, arriving a tick
    /// later, must be ignored.
    ChildRace { n: u64, wins: bool },
    /// An activity raced against a one-tick timer. If `wins`, a quick activity (it wins: the
    /// driver moves the clock only when no activity runs); else one held at a gate until the
    /// timer has won, whose late result the orchestration must ignore.
    Timeout { n: u64, wins: bool },
    /// Waits for an event nobody raises (the driver terminates such an instance).
    Block,
    /// An activity that fails (unhandled: the instance fails) the first time it runs and returns
    /// `2n + 1` after that: the driver rewinds the instance (only with `KILN_SIM_REWIND=1`).
    FailOnce { n: u64 },
}

/// What an activity is called with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    key: String,
    n: u64,
    failures: u32,
}

/// Runs of each activity, by key: the side effect the invariants count.
static EFFECTS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

/// Records one run of `key`; returns how many runs there were before.
fn record(key: String) -> u32 {
    let mut effects = EFFECTS.lock().unwrap_or_else(|p| p.into_inner());
    let runs = effects.entry(key).or_default();
    *runs += 1;
    *runs - 1
}

/// Takes the side effects recorded so far (one seed's).
pub fn take_effects() -> BTreeMap<String, u32> {
    std::mem::take(&mut *EFFECTS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The activity of [`Step::Work`] and [`Step::FanOut`].
pub async fn work(_ctx: ActivityContext, call: Call) -> Result<u64, Failure> {
    record(call.key);
    Ok(call.n * 2 + 1)
}

/// The activity of [`Step::SlowWork`].
pub async fn slow_work(_ctx: ActivityContext, call: Call) -> Result<u64, Failure> {
    tokio::time::sleep(SLOW).await;
    record(call.key);
    Ok(call.n * 2 + 1)
}

/// Gates of held activities the driver opened, by idempotency key.
static OPEN_GATES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Opens the gate of the held activity with this idempotency key.
pub fn open_gate(key: String) {
    OPEN_GATES.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
}

/// Closes every gate of instance `id` and of its sub-orchestrations (whose derived ids start
/// with it): a new instance under a reused id has the same idempotency keys as the old one.
pub fn close_gates(id: &str) {
    let prefix = format!("{id}:");
    OPEN_GATES.lock().unwrap_or_else(|p| p.into_inner()).retain(|key| !key.starts_with(&prefix));
    LATEST_DELIVERY.lock().unwrap_or_else(|p| p.into_inner()).retain(|key, _| !key.starts_with(&prefix));
}

/// Forgets every gate: each run starts with its held activities held (seeds number their
/// instances alike, so one backend's run would otherwise find another's gates open).
pub fn reset_gates() {
    OPEN_GATES.lock().unwrap_or_else(|p| p.into_inner()).clear();
    LATEST_DELIVERY.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The latest delivery of each held activity to start, by idempotency key.
static LATEST_DELIVERY: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
/// Numbers deliveries of held activities in the order they start.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// The activity of a losing [`Step::Timeout`]: held until the driver opens its gate. A delivery
/// that another one started after (it can only have been handed out again because this one's
/// claim lapsed) gives up, so that lapsed deliveries do not fill every activity slot while they
/// wait; its result must be refused. (Deliveries are told apart by start order: dequeue counts
/// need not grow across a crash.)
pub async fn held(ctx: ActivityContext, call: Call) -> Result<u64, Failure> {
    let key = ctx.idempotency_key();
    let mine = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    let latest = || LATEST_DELIVERY.lock().unwrap_or_else(|p| p.into_inner());
    latest().insert(key.clone(), mine);
    while !OPEN_GATES.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
        if latest().get(&key).is_some_and(|&newest| newest != mine) {
            return Err(Failure::typed("Superseded", "a later delivery took over"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    record(call.key);
    Ok(call.n * 2 + 1)
}

/// The activity of [`Step::Fail`].
pub async fn fail(_ctx: ActivityContext, call: Call) -> Result<u64, Failure> {
    record(call.key);
    Err(Failure::typed("Deliberate", DELIBERATE))
}

/// The activity of [`Step::FailOnce`].
pub async fn fail_once(_ctx: ActivityContext, call: Call) -> Result<u64, Failure> {
    match record(call.key) {
        0 => Err(Failure::typed("FailOnce", "the first run fails")),
        _ => Ok(call.n * 2 + 1),
    }
}

/// The activity of [`Step::Retry`]: fails attempts up to `failures`.
pub async fn flaky(ctx: ActivityContext, call: Call) -> Result<u64, Failure> {
    record(format!("{}#{}", call.key, ctx.attempt()));
    if ctx.attempt() <= call.failures { Err(Failure::typed("Flaky", "not yet")) } else { Ok(call.n * 2 + 1) }
}

/// An orchestration that does nothing: the driver starts one to wake idle workers after it
/// moved the clock (their waits are real-time).
pub async fn nudge(_ctx: OrchestrationContext, _: Value) -> Result<u32, Failure> {
    Ok(0)
}

fn key(tag: &str, generation: u32, step: usize) -> String {
    format!("{tag}/g{generation}/s{step}")
}

/// The custom status a reminder step shows while it waits: which event, after how many reminders.
#[derive(Debug, Serialize, Deserialize)]
pub struct Waiting {
    /// The event name.
    pub event: String,
    /// Reminders fired so far.
    pub reminders: u32,
}

/// The one orchestration: runs `program` step by step.
pub async fn interpret(ctx: OrchestrationContext, program: Program) -> Result<Vec<Value>, Failure> {
    let mut out = program.carried.clone();
    for (step, what) in program.steps.iter().enumerate() {
        let key = key(&program.tag, program.generation, step);
        let call = |n: u64, failures: u32| Call { key: key.clone(), n, failures };
        let value = match what {
            Step::Work { n } => json!(ctx.call_activity::<_, u64>("work", &call(*n, 0)).await?),
            Step::SlowWork { n } => json!(ctx.call_activity::<_, u64>("slow_work", &call(*n, 0)).await?),
            Step::FailOnce { n } => json!(ctx.call_activity::<_, u64>("fail_once", &call(*n, 0)).await?),
            Step::Fail { n } => match ctx.call_activity::<_, u64>("fail", &call(*n, 0)).await {
                Ok(v) => json!(v),
                Err(failure) => json!(format!("caught: {}", failure.message())),
            },
            Step::Retry { n, failures } => {
                let policy = RetryPolicy::new(failures + 1, SHORT);
                json!(ctx.call_activity_with_retry::<_, u64>("flaky", &call(*n, *failures), policy).await?)
            }
            Step::Sleep => {
                ctx.sleep(SHORT).await?;
                json!("slept")
            }
            Step::LongSleep => {
                ctx.sleep(TICK).await?;
                json!("woke")
            }
            Step::Reminder { .. } => {
                let mut reminders = 0;
                loop {
                    ctx.set_custom_status(&Waiting { event: key.clone(), reminders });
                    match select2(ctx.wait_for_event::<String>(&key), ctx.sleep(TICK)).await {
                        Either::Left(event) => break json!({ "event": event?, "reminders": reminders }),
                        Either::Right(fired) => fired.map(|()| reminders += 1)?,
                    }
                }
            }
            Step::FanOut { ns } => {
                let calls = ns.iter().enumerate().map(|(branch, n)| {
                    let call = Call { key: format!("{key}:{branch}"), n: *n, failures: 0 };
                    ctx.call_activity::<_, u64>("work", &call)
                });
                let results = join_all(calls.collect()).await;
                Value::Array(results.into_iter().map(|r| r.map(|v| json!(v))).collect::<Result<_, _>>()?)
            }
            Step::Child { program, named } => {
                let child = Program { tag: key.clone(), ..(**program).clone() };
                let output = if *named {
                    let id = format!("{}~child", key.replace('/', "_"));
                    ctx.call_sub_orchestration_with_id::<_, Vec<Value>>("interp", &id, &child).await?
                } else {
                    ctx.call_sub_orchestration::<_, Vec<Value>>("interp", &child).await?
                };
                Value::Array(output)
            }
            Step::Timeout { n, wins } => {
                let activity = ctx.call_activity::<_, u64>(if *wins { "work" } else { "held" }, &call(*n, 0));
                match select2(activity, ctx.sleep(TICK)).await {
                    Either::Left(result) => json!(result?),
                    Either::Right(fired) => fired.map(|()| json!("timed out"))?,
                }
            }
            Step::ChildRace { n, wins } => {
                let child = Program { tag: key.clone(), ..race_child(*n, *wins) };
                let call = ctx.call_sub_orchestration::<_, Vec<Value>>("interp", &child);
                match select2(call, ctx.sleep(TICK)).await {
                    Either::Left(output) => Value::Array(output?),
                    Either::Right(fired) => fired.map(|()| json!("child timed out"))?,
                }
            }
            Step::Echo => {
                ctx.send_event(&ctx.instance_id(), &key, &key);
                json!({ "echo": ctx.wait_for_event::<String>(&key).await? })
            }
            Step::Block => json!(ctx.wait_for_event::<String>(&format!("{key}/never")).await?),
        };
        out.push(value);
    }
    if program.restarts > 0 {
        let next =
            Program { restarts: program.restarts - 1, generation: program.generation + 1, carried: out, ..program };
        return ctx.continue_as_new(&next).await;
    }
    Ok(out)
}

/// The output `program` must end with, or `None` if it never ends by itself ([`Step::Block`]).
pub fn expected_output(program: &Program) -> Option<Value> {
    let mut out = program.carried.clone();
    for generation in program.generation..=program.generation + program.restarts {
        for (step, what) in program.steps.iter().enumerate() {
            let key = key(&program.tag, generation, step);
            out.push(match what {
                Step::Work { n } | Step::SlowWork { n } | Step::Retry { n, .. } | Step::FailOnce { n } => {
                    json!(n * 2 + 1)
                }
                Step::Fail { .. } => json!(format!("caught: {DELIBERATE}")),
                Step::Sleep => json!("slept"),
                Step::LongSleep => json!("woke"),
                Step::Reminder { reminders } => json!({ "event": key, "reminders": reminders }),
                Step::FanOut { ns } => json!(ns.iter().map(|n| n * 2 + 1).collect::<Vec<_>>()),
                Step::Child { program, .. } => expected_output(&Program { tag: key, ..(**program).clone() })?,
                Step::Echo => json!({ "echo": key }),
                Step::ChildRace { n, wins: true } => expected_output(&Program { tag: key, ..race_child(*n, true) })?,
                Step::ChildRace { wins: false, .. } => json!("child timed out"),
                Step::Timeout { n, wins: true } => json!(n * 2 + 1),
                Step::Timeout { wins: false, .. } => json!("timed out"),
                Step::Block => return None,
            });
        }
    }
    Some(Value::Array(out))
}

/// Everything a program's run must have done: side-effect keys, and reminder events with the
/// reminders to let fire before raising each.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Every key that must run, with how many times it runs without faults.
    pub effects: BTreeMap<String, u32>,
    /// Keys that may run any number of times, none included.
    pub optional: BTreeSet<String>,
    /// Events instances send themselves (always on their way while waited for).
    pub echoes: BTreeSet<String>,
    /// Rewinds each top-level instance needs at most (its steps that fail once).
    pub rewinds: u32,
    /// Event name → reminders that fire before the driver raises it.
    pub events: BTreeMap<String, u32>,
}

/// Adds what `program` must do (up to a [`Step::Block`]) to `into`.
pub fn expect(program: &Program, into: &mut Expectations) {
    for generation in program.generation..=program.generation + program.restarts {
        for (step, what) in program.steps.iter().enumerate() {
            let key = key(&program.tag, generation, step);
            match what {
                Step::Work { .. } | Step::SlowWork { .. } | Step::Fail { .. } | Step::Timeout { wins: true, .. } => {
                    into.effects.insert(key, 1);
                }
                Step::Timeout { wins: false, .. } => {
                    // Held across clock moves, its claim lapses at each: it may be handed out
                    // again as often, or dropped once its instance has ended (its late results
                    // are checked in history, not counted here).
                    into.optional.insert(key);
                }
                Step::FailOnce { .. } => {
                    into.effects.insert(key, 2);
                    into.rewinds += 1;
                }
                Step::Retry { failures, .. } => {
                    into.effects.extend((1..=failures + 1).map(|attempt| (format!("{key}#{attempt}"), 1)));
                }
                Step::FanOut { ns } => {
                    into.effects.extend((0..ns.len()).map(|branch| (format!("{key}:{branch}"), 1)));
                }
                Step::Reminder { reminders } => {
                    into.events.insert(key, *reminders);
                }
                Step::Child { program, .. } => expect(&Program { tag: key, ..(**program).clone() }, into),
                Step::Echo => {
                    into.echoes.insert(key);
                }
                Step::ChildRace { n, wins } => expect(&Program { tag: key, ..race_child(*n, *wins) }, into),
                Step::Sleep | Step::LongSleep => {}
                Step::Block => return,
            }
        }
    }
}

/// The child of a [`Step::ChildRace`] (its tag is set by the caller).
fn race_child(n: u64, wins: bool) -> Program {
    let steps = if wins { vec![Step::Work { n }] } else { vec![Step::LongSleep, Step::LongSleep, Step::Work { n }] };
    Program { tag: String::new(), steps, restarts: 0, generation: 0, carried: Vec::new() }
}

/// A random program of one to four steps; children nest at most `depth` deep. With `rewind`,
/// some steps fail once (see [`Step::FailOnce`]).
pub fn generate(rng: &mut Rng, tag: String, depth: u32, rewind: bool) -> Program {
    let steps = (0..1 + rng.below(4)).map(|_| generate_step(rng, depth, rewind)).collect();
    let restarts = if depth > 0 && rng.chance(150) { 1 + rng.below(2) as u32 } else { 0 };
    Program { tag, steps, restarts, generation: 0, carried: Vec::new() }
}

fn generate_step(rng: &mut Rng, depth: u32, rewind: bool) -> Step {
    let n = rng.below(1000);
    if rewind && rng.chance(100) {
        return Step::FailOnce { n };
    }
    match rng.below(100) {
        0..18 => Step::Work { n },
        18..28 => Step::SlowWork { n },
        28..36 => Step::Fail { n },
        36..47 => Step::Retry { n, failures: 1 + rng.below(2) as u32 },
        47..54 => Step::Sleep,
        54..61 => Step::LongSleep,
        61..76 => Step::Reminder { reminders: rng.below(3) as u32 },
        76..84 => Step::FanOut { ns: (0..2 + rng.below(3)).map(|_| rng.below(1000)).collect() },
        84..88 => Step::Echo,
        88..92 => Step::Timeout { n, wins: rng.chance(400) },
        92..95 => Step::ChildRace { n, wins: rng.chance(400) },
        _ if depth > 0 => {
            let program = Box::new(generate(rng, String::new(), depth - 1, rewind));
            Step::Child { program, named: rng.chance(500) }
        }
        _ => Step::Work { n },
    }
}
