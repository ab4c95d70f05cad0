#!/usr/bin/env bash
# RUSTC_WRAPPER of scripts/fuzz.sh: compiles ldapsync and the fuzz targets with the coverage
# instrumentation libFuzzer needs (the flags `cargo fuzz build --dev --sanitizer none` sets in
# RUSTFLAGS), and every other crate exactly as the normal debug build does, so those are reused
# from the test build's target directory instead of being built a second time.
rustc="$1"
shift
instrument=false
for arg in "$@"; do
    case "$arg" in
    ldapsync | */fuzz/fuzz_targets/*.rs | fuzz_targets/*.rs) instrument=true ;;
    esac
done
if $instrument; then
    exec "$rustc" "$@" -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
        -Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
        -Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions --cfg fuzzing
fi
exec "$rustc" "$@"
