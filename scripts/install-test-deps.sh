#!/usr/bin/env bash
# Install what the integration tests need, on Debian 12, as root, with no standard input.
#
#   Debian: slapd ldap-utils openssl prometheus (promtool), systemd (systemd-analyze), time (bench),
#           samba samba-dsdb-modules samba-vfs-modules samba-ad-provision (a throwaway Samba AD
#           DC for tests/samba_ad.rs: samba, samba-tool; the DC's sam.ldb modules; acl_xattr, which
#           `domain provision` loads to set the sysvol ACLs; the provisioning templates) and
#           ldb-tools (ldbsearch, an independent reader of objectGUID); 389-ds-base (a throwaway
#           389 Directory Server for tests/ds389.rs: dscreate, ns-slapd); g++ when there is no
#           C++ compiler (libFuzzer's runtime, for scripts/fuzz.sh)
#   Python: a venv at $REPO/.venv with scim2-server (pinned), plus
#           tests/emulators/requirements.txt when that file exists.
#
# Idempotent and fast when everything is present: apt-get update runs only when a package is
# missing, and pip runs only when the venv lacks the pinned versions (or the requirements file
# changed since the last install).
#
# The Debian slapd and samba packages start system daemons (slapd on :389; smbd, nmbd and, once
# provisioned, samba-ad-dc) when installed; the tests start their own from temporary directories,
# so this script keeps package scripts from starting them, then stops and disables any that run.
set -euo pipefail

SCIM2_SERVER_VERSION=0.8.3
SCIM2_MODELS_VERSION=0.12.3

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
export DEBIAN_FRONTEND=noninteractive
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
        log "not root and no sudo: cannot install Debian packages"
    fi
fi

# ---------------------------------------------------------------- Debian packages
pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

want=(slapd ldap-utils openssl prometheus samba samba-dsdb-modules samba-vfs-modules samba-ad-provision
    ldb-tools 389-ds-base time)
command -v systemd-analyze >/dev/null 2>&1 || want+=(systemd)
# scripts/fuzz.sh: libfuzzer-sys compiles libFuzzer's C++ runtime.
command -v c++ >/dev/null 2>&1 || want+=(g++)

missing=()
for p in "${want[@]}"; do pkg_installed "$p" || missing+=("$p"); done

# The venv needs python3 with the venv module (ensurepip); Debian splits it out.
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    PYTHON=/usr/bin/python3
    pkg_installed python3-venv || missing+=(python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # Keep package scripts from starting daemons (slapd, smbd, nmbd, prometheus, node-exporter) while we
    # install; restore whatever policy was there before.
    policy=/usr/sbin/policy-rc.d
    policy_backup=""
    if [ -e "$policy" ]; then
        policy_backup="$(mktemp)"
        "${SUDO[@]}" cp -p "$policy" "$policy_backup"
    fi
    restore_policy() {
        if [ -n "$policy_backup" ]; then
            "${SUDO[@]}" cp -p "$policy_backup" "$policy"
            rm -f "$policy_backup"
        else
            "${SUDO[@]}" rm -f "$policy"
        fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"

    apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq \
        --no-install-recommends "${missing[@]}" </dev/null

    restore_policy
    trap - EXIT
fi

# ---------------------------------------------------------------- no system slapd
# Whatever started it (a package script without policy-rc.d, an earlier boot), stop it and keep
# it from starting again: nothing of ours may depend on it, and :389 must stay free.
stop_system_slapd() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        "${SUDO[@]}" systemctl disable --now slapd >/dev/null 2>&1 || true
    elif command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/slapd ]; then
        "${SUDO[@]}" update-rc.d slapd disable >/dev/null 2>&1 || true
    fi
    local pids
    pids="$(cat /run/slapd/slapd.pid /var/run/slapd/slapd.pid 2>/dev/null | sort -u || true)"
    if [ -n "$pids" ] || pgrep -x slapd -u openldap >/dev/null 2>&1; then
        log "stopping the system slapd"
        "${SUDO[@]}" service slapd stop >/dev/null 2>&1 || true
        # Only the packaged daemon: it runs as user openldap with the packaged config, whereas the
        # tests' slapd processes run as the test user with a config in a temporary directory.
        for pid in $pids $(pgrep -x slapd -u openldap 2>/dev/null || true); do
            if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q '/tmp/'; then
                "${SUDO[@]}" kill "$pid" 2>/dev/null || true
            fi
        done
    fi
}
stop_system_slapd

# ---------------------------------------------------------------- no system samba
# The same for the packaged Samba services: smbd/nmbd would hold :139/:445 and samba-ad-dc would
# take :389/:636, which the tests' DC binds on 127.0.0.1. The tests' samba processes run as this
# user with an smb.conf under /tmp/, so only daemons without one are killed.
stop_system_samba() {
    local unit pid
    for unit in samba-ad-dc smbd nmbd samba winbind; do
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            "${SUDO[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
        elif command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$unit" ]; then
            "${SUDO[@]}" update-rc.d "$unit" disable >/dev/null 2>&1 || true
            "${SUDO[@]}" service "$unit" stop >/dev/null 2>&1 || true
        fi
    done
    for pid in $(pgrep -x 'samba|smbd|nmbd|winbindd' 2>/dev/null || true); do
        if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q '/tmp/'; then
            log "stopping the system $(cat "/proc/$pid/comm" 2>/dev/null || echo samba) ($pid)"
            "${SUDO[@]}" kill "$pid" 2>/dev/null || true
        fi
    done
}
stop_system_samba

for tool in /usr/sbin/slapd /usr/sbin/slapadd ldapsearch ldapadd ldapmodify openssl promtool systemd-analyze \
    /usr/sbin/samba samba-tool ldbsearch /usr/sbin/dscreate /usr/sbin/ns-slapd unshare; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing after install: $tool"; exit 1; }
done

# ---------------------------------------------------------------- Python venv
req="$REPO/tests/emulators/requirements.txt"
stamp="$VENV/.ldapsync-test-deps"
want_stamp="scim2-server==$SCIM2_SERVER_VERSION scim2-models==$SCIM2_MODELS_VERSION"
if [ -f "$req" ]; then
    want_stamp="$want_stamp req:$(sha256sum "$req" | cut -d' ' -f1)"
fi

venv_ok() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/scim2-server" ] &&
        [ "$(cat "$stamp" 2>/dev/null || true)" = "$want_stamp" ] &&
        "$VENV/bin/python" - "$SCIM2_SERVER_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import scim2_server.testserver.cli  # noqa: F401  (imports every runtime dependency)
sys.exit(version("scim2-server") != sys.argv[1])
EOF
}

if ! venv_ok; then
    if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        log "creating venv $VENV with $("$PYTHON" --version 2>&1)"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    log "installing scim2-server==$SCIM2_SERVER_VERSION into $VENV"
    "$VENV/bin/python" -m pip install -q "scim2-server==$SCIM2_SERVER_VERSION" \
        "scim2-models==$SCIM2_MODELS_VERSION"
    if [ -f "$req" ]; then
        log "installing $req"
        "$VENV/bin/python" -m pip install -q -r "$req"
    fi
    printf '%s\n' "$want_stamp" >"$stamp"
    venv_ok || { log "venv check failed after install"; exit 1; }
fi

log "ok"
