//! The fuzz targets (`fuzz/targets`) on stable, for a short while: each runs over its seeds and
//! a few thousand mutations of them (deterministic; `KILN_FUZZ_ITERATIONS` sets how many, and
//! `scripts/fuzz.sh` runs the coverage-guided libFuzzer targets for longer).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/targets/mod.rs"]
mod targets;

/// A xorshift generator: the same mutations on every run.
struct Mutator(u64);

/// Pieces that parsers trip on, spliced into inputs.
const INTERESTING: &[&[u8]] = &[
    b"\\ud800",
    b"\\u0000",
    b"\0",
    b"\r\n",
    b"%",
    b"%00",
    b"%ZZ",
    b"=",
    b"&",
    b",",
    b".",
    b"..",
    b"[",
    b"{",
    b"\"",
    b"-1",
    b"1e999",
    b"9999999999999999999999",
    b"null",
    b"true",
    b"\xff\xfe",
    b"\xe2\x80\xae",
    b"}",
    b"]",
];

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(data.len() + 1);
            match self.below(5) {
                0 if !data.is_empty() => {
                    let i = self.below(data.len());
                    data[i] ^= 1 << self.below(8);
                }
                1 => {
                    let piece = INTERESTING[self.below(INTERESTING.len())];
                    data.splice(at..at, piece.iter().copied());
                }
                2 => data.truncate(at),
                3 if !data.is_empty() => {
                    let start = self.below(data.len());
                    let piece = data[start..(start + self.below(16)).min(data.len())].to_vec();
                    data.splice(at..at, piece);
                }
                _ => data.insert(at, self.next() as u8),
            }
        }
        data
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("KILN_FUZZ_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

fn run(target: fn(&[u8]), seeds: &[&[u8]], count: usize) {
    let mut mutator = Mutator(0x9e37_79b9_7f4a_7c15);
    for seed in seeds {
        target(seed);
    }
    for n in 0..count {
        let input = mutator.mutate(seeds[n % seeds.len()]);
        target(&input);
    }
}

#[test]
fn token_parsing() {
    let seeds: &[&[u8]] = &[
        b"id-1\n1800000060.rc.1799999999995.AAAA",
        b"id-1\n1800000060.r.AAAA",
        b"\n...",
        b"x\n9223372036854775807.rc.-9223372036854775808.____",
    ];
    run(targets::token, seeds, iterations(50_000));
}

#[test]
fn json_edge() {
    let seeds: &[&[u8]] = &[
        br#"{"customer_id":"c-1","delay_seconds":0,"nested":[1,2.5,{"a":null}]}"#,
        br#""\u00e9\ud83d\ude00""#,
        b"  [true, false, null]  ",
        b"123456789012345678901234567890",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ];
    run(targets::json_edge, seeds, iterations(50_000));
}

#[test]
fn history_decoding() {
    let seeds: &[&[u8]] = &[
        br#"[{"EventId":-1,"Timestamp":1800000000000,"EventType":"ExecutionStarted","Name":"echo","Version":"","Input":"1"}]"#,
        br#"[{"EventId":0,"Timestamp":1,"EventType":"TaskScheduled","Name":"work","Input":"null"},{"EventId":-1,"Timestamp":2,"EventType":"TaskCompleted","TaskScheduledId":0,"Result":"3"}]"#,
        b"[]",
    ];
    run(targets::history, seeds, iterations(50_000));
}

#[test]
fn management_queries() {
    let seeds: &[&[u8]] = &[
        b"instances?top=2&runtimeStatus=Running,Completed&createdTimeFrom=2026-01-01T00:00:00Z",
        b"instances?instanceIdPrefix=job-&showInput=true&x-ms-continuation-token=abc",
        b"instances/some-id?showHistory=true&showHistoryOutput=true",
        b"instances?createdTimeTo=2026-13-45T99:99:99Z&runtimeStatus=Sleeping",
        b"orchestrators/echo/chosen-id?",
        b"instances/some-id/raiseEvent/go?",
        b"instances/some-id/terminate?reason=enough",
    ];
    run(targets::management_query, seeds, iterations(3_000));
}
