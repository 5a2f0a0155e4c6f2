//! What one seed decides: the instances to start (their programs), the client operations to send
//! at which tick, and the faults to inject. Nothing else in a run is random.

use crate::program::{Expectations, Program, Step, expect, generate};
use crate::rng::Rng;
use crate::samples::{self, SampleStart};

/// One top-level instance to start.
#[derive(Clone, Debug)]
pub struct Start {
    /// Its caller-chosen id.
    pub id: String,
    /// Its program.
    pub program: Program,
    /// Through which node's client it is started (on PostgreSQL the nodes' default versions
    /// differ, so this picks the version it is pinned to).
    pub via: usize,
}

/// Purging a finished instance and starting another program under the same id.
#[derive(Clone, Debug)]
pub struct Reuse {
    /// Index into [`Plan::starts`] of the instance whose id is reused.
    pub of: usize,
    /// The new program.
    pub program: Program,
    /// Purge first (otherwise the start replaces the finished instance).
    pub purge: bool,
}

/// The faults of a run.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Per mille of store calls failed before, failed after commit, or delayed.
    pub store_per_mille: u64,
    /// Crash a node at this busy poll of the driver (and start a new one).
    pub crash_at: Option<u32>,
    /// Move the clock past the lease at these busy polls (running activities lose their claim).
    pub lease_expiries: Vec<u32>,
    /// Per mille of waiting claims that miss their wake-up.
    pub lost_notifications: u64,
}

/// Everything a seed decides.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Instances to start at the beginning.
    pub starts: Vec<Start>,
    /// An instance that blocks forever and the tick at which it is terminated.
    pub blocker: Option<(Start, u32)>,
    /// Suspend this start at the first tick, resume at the second.
    pub suspend: Option<(usize, u32, u32)>,
    /// An id reused after its instance finished.
    pub reuse: Option<Reuse>,
    /// Injected faults.
    pub faults: Faults,
    /// Execution cache capacity (0 makes every turn replay its history).
    pub cache: usize,
    /// The reused id is reused while a child of its old instance still runs.
    pub orphans: bool,
    /// Sample instances to start at the beginning.
    pub samples: Vec<SampleStart>,
}

impl Plan {
    /// The plan of `seed` for `nodes` nodes. With `rewind`, some steps fail once and are rewound; with `orphans`, the instance whose id
    /// is reused ends with a child that loses a race and still runs when the id is reused.
    pub fn new(seed: u64, nodes: usize, rewind: bool, orphans: bool) -> Plan {
        let mut rng = Rng::new(seed);
        let count = 2 + rng.below(4) as usize;
        let mut starts: Vec<Start> = (0..count)
            .map(|i| {
                let id = format!("s{seed}-i{i}");
                let program = generate(&mut rng, format!("{id}.0"), 2, rewind);
                Start { id, program, via: rng.below(nodes as u64) as usize }
            })
            .collect();
        let blocker = rng.chance(300).then(|| {
            let id = format!("s{seed}-block");
            let steps = vec![Step::Work { n: 7 }, Step::Block];
            let program = Program { tag: format!("{id}.0"), steps, restarts: 0, generation: 0, carried: Vec::new() };
            (Start { id, program, via: 0 }, 1 + rng.below(2) as u32)
        });
        let suspend = rng.chance(300).then(|| {
            let at = rng.below(2) as u32;
            (rng.below(count as u64) as usize, at, at + 1 + rng.below(2) as u32)
        });
        let reuse = rng.chance(300).then(|| {
            let of = rng.below(count as u64) as usize;
            let mut program = generate(&mut rng, format!("{}.1", starts[of].id), 1, rewind);
            if orphans {
                // The new instance repeats the old one's steps: its own losing child has the same
                // step number as the old one's, which is still running.
                starts[of].program.steps.push(Step::ChildRace { n: 5, wins: false });
                program.steps = starts[of].program.steps.clone();
                program.restarts = starts[of].program.restarts;
            }
            Reuse { of, program, purge: rng.chance(500) }
        });
        let faults = if rng.chance(400) {
            Faults::default()
        } else {
            Faults {
                store_per_mille: if rng.chance(300) { 0 } else { 10 + rng.below(50) },
                crash_at: rng.chance(400).then(|| 1 + rng.below(40) as u32),
                lease_expiries: (0..rng.below(3)).map(|_| 1 + rng.below(40) as u32).collect(),
                lost_notifications: if rng.chance(250) { 20 + rng.below(80) } else { 0 },
            }
        };
        let cache = if rng.chance(300) { 0 } else { 1000 };
        Plan { starts, blocker, suspend, reuse, faults, cache, orphans, samples: samples::plan(seed) }
    }

    /// The rewinds `program` may need (one per step that fails once).
    pub fn rewinds(program: &Program) -> u32 {
        let mut one = Expectations::default();
        expect(program, &mut one);
        one.rewinds
    }

    /// What all of the plan's programs must do.
    pub fn expectations(&self) -> Expectations {
        let mut all = Expectations::default();
        for start in self.starts.iter().chain(self.blocker.as_ref().map(|(s, _)| s)) {
            expect(&start.program, &mut all);
        }
        if let Some(reuse) = &self.reuse {
            expect(&reuse.program, &mut all);
        }
        all
    }
}
