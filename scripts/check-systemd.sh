#!/usr/bin/env bash
# Checks the systemd unit and the Prometheus alert rules:
#   - `systemd-analyze verify` on systemd/ldapsync.service (pointed at the built binary, since
#     verify requires ExecStart= to exist);
#   - `systemd-analyze security --offline=true` rates it at most 2.0 ("OK");
#   - `promtool check rules docs/alerts.yml`.
# `check-systemd.sh /lib/systemd/system/ldapsync.service` runs only the two systemd-analyze
# checks, on that installed unit as it is (scripts/check-package.sh does, after `dpkg -i`).
# Installs Debian `systemd` / `prometheus` when the tools are missing (as root, no stdin).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
MAX_EXPOSURE="${MAX_EXPOSURE:-2.0}"
INSTALLED_UNIT="${1:-}"
log() { printf 'check-systemd: %s\n' "$*" >&2; }

need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ -n "$INSTALLED_UNIT" ] || command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -n "$INSTALLED_UNIT" ]; then
    [ -f "$INSTALLED_UNIT" ] || { log "no unit at $INSTALLED_UNIT"; exit 1; }
    log "checking the installed unit $INSTALLED_UNIT"
    unit_dir="$(dirname "$INSTALLED_UNIT")"
else
    target="${CARGO_TARGET_DIR:-$REPO/target}"
    bin="$target/debug/ldapsync"
    if [ ! -x "$bin" ]; then
        log "building $bin"
        cargo build --locked --bin ldapsync
    fi
    bin="$(cd "$(dirname "$bin")" && pwd)/ldapsync"
    # Same unit, with the binary that exists on this machine.
    sed "s#/usr/bin/ldapsync#$bin#g" "$REPO/systemd/ldapsync.service" >"$work/ldapsync.service"
    unit_dir="$work"
fi

log "systemd-analyze verify"
out="$(cd "$unit_dir" && systemd-analyze verify ./ldapsync.service 2>&1)" || {
    printf '%s\n' "$out" >&2
    log "FAILED: systemd-analyze verify"
    exit 1
}
# verify exits 0 on some warnings; treat any line about the unit as a failure.
if printf '%s\n' "$out" | grep -q 'ldapsync.service'; then
    printf '%s\n' "$out" >&2
    log "FAILED: systemd-analyze verify reported problems"
    exit 1
fi

log "systemd-analyze security --offline=true"
report="$(cd "$unit_dir" && systemd-analyze security --offline=true --no-pager ./ldapsync.service 2>&1)" || true
score="$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for ldapsync.service: \([0-9.]*\).*/\1/p')"
if [ -z "$score" ]; then
    printf '%s\n' "$report" >&2
    log "FAILED: no exposure score in the systemd-analyze security output"
    exit 1
fi
if ! awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
    printf '%s\n' "$report" >&2
    log "FAILED: exposure $score > $MAX_EXPOSURE"
    exit 1
fi
log "exposure level $score (<= $MAX_EXPOSURE)"
[ -z "$INSTALLED_UNIT" ] || { log "OK"; exit 0; }

log "promtool check rules docs/alerts.yml"
promtool check rules "$REPO/docs/alerts.yml"
log "OK"
