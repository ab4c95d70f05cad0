#!/usr/bin/env bash
# The performance harness: 100k users, 10k groups, 1M memberships in a real slapd;
# cold `sync --dry-run` vs `ldapsearch -E pr=1000/noprompt`, and ldapsync's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
command -v /usr/bin/time >/dev/null || apt-get install -y -qq time
cargo test --release --locked --test bench -- --ignored --nocapture
