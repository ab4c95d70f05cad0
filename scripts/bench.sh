#!/usr/bin/env bash
# The performance harness (tests/bench.rs) at three sizes, each against `ldapsearch -E pr=1000`
# on the same slapd in the same run; writes the figures to docs/benchmarks.md.
#   scripts/bench.sh            all three sizes (the largest takes several minutes)
#   BENCH_SIZES="10000:1000:10" scripts/bench.sh    users:groups:members-per-group, space-separated
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
sizes=${BENCH_SIZES:-"10000:1000:10 100000:10000:10 100000:10000:100"}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo test --release --locked --test bench --no-run
for size in $sizes; do
    IFS=: read -r users groups per_group <<<"$size"
    echo "== $users users, $groups groups, $((groups * per_group)) memberships" | tee -a "$out"
    LDAPSYNC_BENCH_USERS=$users LDAPSYNC_BENCH_GROUPS=$groups LDAPSYNC_BENCH_MEMBERS_PER_GROUP=$per_group \
        cargo test --release --locked --test bench -- --ignored --nocapture --test-threads=1 2>&1 | grep '^BENCH' | tee -a "$out"
done
analysis=$(sed -n '/^## Analysis/,$p' docs/benchmarks.md 2>/dev/null || true)
{
    echo "# Benchmarks"
    echo
    echo "Written by \`scripts/bench.sh\` ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GB", $2/1e6}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))."
    echo "Each size: a real slapd loaded with slapadd; \`ldapsearch -E pr=1000/noprompt\` reading the same"
    echo "entries and attributes (best of two) is the baseline; ldapsync runs into a file sink (\`/dev/null\`)."
    echo "Times are wall-clock, medians of three runs where marked; RSS is the peak resident set (GNU time)."
    echo
    echo '```'
    cat "$out"
    echo '```'
    if [ -n "$analysis" ]; then echo; echo "$analysis"; fi
} > docs/benchmarks.md
echo "wrote docs/benchmarks.md"
