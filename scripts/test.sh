#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine that has only the Rust toolchain:
#   scripts/test.sh [extra `cargo test` arguments, e.g. --test harness]
# Installs the test dependencies (Debian packages, the Python venv at .venv), runs every cargo
# test target, then the Python emulators' own unit tests. Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash "$REPO/scripts/install-test-deps.sh"

echo "== cargo test --locked --all-targets $*" >&2
cargo test --locked --all-targets "$@"

if compgen -G "$REPO/tests/emulators/test_*.py" >/dev/null; then
    echo "== emulator self-tests (tests/emulators/test_*.py)" >&2
    PYTHONDONTWRITEBYTECODE=1 "$REPO/.venv/bin/python" -m unittest discover \
        -s tests/emulators -p 'test_*.py'
else
    echo "== no emulator self-tests (tests/emulators/test_*.py) yet" >&2
fi
