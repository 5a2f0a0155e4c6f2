//! libFuzzer target: see `targets::json_edge`.
#![no_main]

#[path = "../targets/mod.rs"]
#[allow(dead_code)] // each target uses one of the shared bodies
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::json_edge(data));
