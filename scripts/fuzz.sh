#!/usr/bin/env bash
# Fuzzing, longer than CI's smoke run: the libFuzzer targets in fuzz/ (token parsing, the JSON
# edge, history decoding, Durable Functions query parsing) for SECONDS each (default 60).
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); without them, runs the
# same targets on stable with many more mutations than CI does (not coverage-guided).
# Findings land in fuzz/artifacts/<target>/; reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
targets=(token json_edge history management_query)
if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
    for target in "${targets[@]}"; do
        echo "== $target ($seconds s)"
        (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
            | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss|==[0-9]+== ERROR|SUMMARY)" || true)
    done
else
    echo "no nightly toolchain or cargo-fuzz: running the targets on stable, uncovered" >&2
    KILN_FUZZ_ITERATIONS="${KILN_FUZZ_ITERATIONS:-2000000}" cargo test --release -p kiln-http --test fuzz_smoke
fi
