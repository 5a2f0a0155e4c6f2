//! libFuzzer target: see `targets::json_edge`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::json_edge(data));
