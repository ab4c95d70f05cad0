#!/usr/bin/env bash
# A bounded fuzz pass over the parsers that take outside data (CI runs it after scripts/test.sh):
#   scripts/fuzz.sh [target…]             # default: every target of fuzz/ (dn ldif filter guid config ber)
#   FUZZ_SECONDS=600 scripts/fuzz.sh ber  # a longer run of one target
#   FUZZ_RUNS=40000 scripts/fuzz.sh       # what CI runs: a fixed seed and input count per target
# Builds the libFuzzer targets of fuzz/ (a cargo-fuzz crate, see fuzz/Cargo.toml) and runs each
# for FUZZ_SECONDS (default 15) from its seed corpus fuzz/corpus/<target>/. A crash fails the
# script and leaves the input in fuzz/artifacts/<target>/: once fixed, copy it into
# fuzz/corpus/<target>/, which `cargo test` replays (src/fuzzing.rs), so it stays a regression
# test. New inputs found here go to a temporary folder, never into the committed corpus.
#
# Stable Rust only, and cheap in CI: instead of `cargo fuzz build` (which puts its flags in
# RUSTFLAGS and so rebuilds every dependency), fuzz/rustc-sancov.sh adds the same coverage flags
# as `cargo fuzz build --dev --sanitizer none` to ldapsync and the targets alone, so every other
# crate is reused from the test build in the same target directory ($CARGO_TARGET_DIR, else
# target/). No sanitizer: the parsers have no unsafe code for ASan to watch; libFuzzer finds panics,
# timeouts and memory blow-ups. For long local runs, `cargo install cargo-fuzz --locked` and
# `cd fuzz && cargo fuzz run <target> --sanitizer none` work on stable as well.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_SECONDS="${FUZZ_SECONDS:-15}"
# With FUZZ_RUNS set, each target runs exactly that many inputs from seed FUZZ_SEED (default 1):
# the same inputs on every machine, so CI passes or fails on the code, never on luck or speed.
# Without it, a time-bounded run from a random seed explores new ground (for local hunting).
if [ -n "${FUZZ_RUNS:-}" ]; then
    budget=(-runs="$FUZZ_RUNS" -seed="${FUZZ_SEED:-1}" -max_total_time=900)
    budget_text="from seed ${FUZZ_SEED:-1}"
else
    budget=(-max_total_time="$FUZZ_SECONDS")
    budget_text="${FUZZ_SECONDS}s"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
export RUSTC_WRAPPER="$REPO/fuzz/rustc-sancov.sh"
cd "$REPO/fuzz"

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -vx ldapsync-fuzz)
fi

# The fuzz crate uses exactly the versions of the main crate's Cargo.lock (its own lock file
# is made from it, never committed: it would go stale with every dependency change); cargo adds
# only the few fuzz-only packages (libfuzzer-sys and its dependencies).
cp "$REPO/Cargo.lock" Cargo.lock
echo "== build the fuzz targets (${targets[*]}) with coverage instrumentation" >&2
cargo build --bins

found="$(mktemp -d)"
trap 'rm -rf "$found"' EXIT
mkdir -p artifacts
for target in "${targets[@]}"; do
    mkdir -p "$found/$target" "artifacts/$target"
    if ! "$CARGO_TARGET_DIR/debug/$target" "${budget[@]}" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
        "$found/$target" "corpus/$target" >"$found/$target.log" 2>&1; then
        tail -n 60 "$found/$target.log" >&2
        echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$found/$target.log")"
    echo "fuzz: $target: ${runs:-?} inputs ($budget_text), no crash" >&2
done
echo "fuzz: ${#targets[@]} target(s), no crash" >&2
