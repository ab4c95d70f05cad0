#!/usr/bin/env bash
# Builds the Debian package (scripts/package.sh) and checks it on this machine, as root:
#   - lintian reports no error and no warning beyond the accepted ones below;
#   - its contents: the binary, the unit, the sysusers file, the man page, the completions, the
#     docs and the example configuration at their paths; nothing under /etc, no conffile;
#   - `dpkg -i`: `ldapsync --version`, `man -w ldapsync`, the service account, /etc/ldapsync
#     (0750 root:ldapsync, readable by that account and no other user) and its credentials/
#     (0700), the unit neither enabled nor started,
#     `systemd-analyze verify` and `security` on the installed unit (scripts/check-systemd.sh),
#     the installed completion scripts equal `ldapsync completions SHELL` and parse (bash -n,
#     zsh -n, fish -n), and bash and fish complete a subcommand with them;
#   - `dpkg -r`: nothing is left but /etc/ldapsync; `dpkg -P`: not even that.
# Idempotent: a leftover ldapsync package is purged first (the script refuses to run when
# /etc/ldapsync holds files, i.e. on a machine where ldapsync is configured for real).
# Installs what it needs when missing: Debian lintian, man-db, zsh, fish, systemd, and cargo-deb
# (`cargo install cargo-deb --locked`, minutes on 2 cores; skipped when installed).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export DEBIAN_FRONTEND=noninteractive
log() { printf 'check-package: %s\n' "$*" >&2; }
fail() {
    log "FAILED: $*"
    exit 1
}

# Lintian warnings accepted, each with its reason (also in docs/daemon.md, "The Debian package").
ACCEPTED_LINTIAN=(
    # The changelog's one entry closes no Debian bug: the package is not uploaded to the Debian
    # archive (no ITP bug to close); it is built from this repository.
    initial-upload-closes-no-bugs
)

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and removes the ldapsync package"

# ---------------------------------------------------------------- tools
pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}
missing=()
for p in lintian man-db zsh fish systemd; do pkg_installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt_opts=(-o DPkg::Lock::Timeout=600)
    apt-get "${apt_opts[@]}" update -qq
    apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install cargo-deb --locked
fi

# ---------------------------------------------------------------- no leftover install
rm -f /etc/ldapsync/check-package.* # this script's own, from a run that stopped half-way
if [ -d /etc/ldapsync ] && [ -n "$(find /etc/ldapsync -mindepth 1 -not -type d -print -quit)" ]; then
    fail "/etc/ldapsync holds files: ldapsync looks configured on this machine; not touching it"
fi
if dpkg-query -W -f='${db:Status-Status}' ldapsync >/dev/null 2>&1; then
    log "purging a leftover ldapsync package"
    dpkg -P ldapsync >/dev/null
fi
rmdir /etc/ldapsync/credentials /etc/ldapsync 2>/dev/null || true
[ ! -e /etc/ldapsync ] || fail "/etc/ldapsync is still there after the purge"

# ---------------------------------------------------------------- build
start=$SECONDS
deb="$(bash "$REPO/scripts/package.sh")"
log "built $deb in $((SECONDS - start))s"

# ---------------------------------------------------------------- lintian
log "lintian (accepted: ${ACCEPTED_LINTIAN[*]})"
accepted="$(
    IFS=,
    printf '%s' "${ACCEPTED_LINTIAN[*]}"
)"
if ! lintian --fail-on error,warning --suppress-tags "$accepted" --display-info "$deb" >&2; then
    fail "lintian"
fi

# ---------------------------------------------------------------- contents
log "contents"
contents="$(dpkg-deb --fsys-tarfile "$deb" | tar -tv)"
printf '%s\n' "$contents" >&2
mode_of() { printf '%s\n' "$contents" | awk -v p="./$1" '$6 == p { print $1 }'; }
for path in \
    usr/bin/ldapsync:-rwxr-xr-x \
    lib/systemd/system/ldapsync.service:-rw-r--r-- \
    usr/lib/sysusers.d/ldapsync.conf:-rw-r--r-- \
    usr/share/man/man1/ldapsync.1.gz:-rw-r--r-- \
    usr/share/bash-completion/completions/ldapsync:-rw-r--r-- \
    usr/share/zsh/vendor-completions/_ldapsync:-rw-r--r-- \
    usr/share/fish/vendor_completions.d/ldapsync.fish:-rw-r--r-- \
    usr/share/doc/ldapsync/README.md:-rw-r--r-- \
    usr/share/doc/ldapsync/daemon.md:-rw-r--r-- \
    usr/share/doc/ldapsync/pingone.md:-rw-r--r-- \
    usr/share/doc/ldapsync/connect.md:-rw-r--r-- \
    usr/share/doc/ldapsync/forgerock.md:-rw-r--r-- \
    usr/share/doc/ldapsync/alerts.yml:-rw-r--r-- \
    usr/share/doc/ldapsync/copyright:-rw-r--r-- \
    usr/share/doc/ldapsync/examples/config.toml:-rw-r--r--; do
    want="${path##*:}"
    path="${path%:*}"
    got="$(mode_of "$path")"
    [ "$got" = "$want" ] || fail "/$path: want $want, got '${got:-missing}'"
done
if printf '%s\n' "$contents" | awk '{ print $6 }' | grep -q '^\./etc/'; then
    fail "the package ships files under /etc (configuration is the administrator's)"
fi
ctrl="$(mktemp -d)"
trap 'rm -rf "$ctrl"' EXIT
dpkg-deb -e "$deb" "$ctrl"
[ ! -e "$ctrl/conffiles" ] || fail "the package has conffiles: $(cat "$ctrl/conffiles")"
# The unit is installed, never enabled or started by the package (comments aside; an upgrade's
# try-restart only restarts a service that runs).
for script in postinst prerm postrm; do
    if sed 's/#.*//' "$ctrl/$script" | grep -nE 'systemctl.*(enable|start)|deb-systemd-helper.*enable|deb-systemd-invoke.* (start|restart)'; then
        fail "$script enables or starts the unit"
    fi
done

# ---------------------------------------------------------------- install
# Paths outside the package database before the install, to find what `dpkg -r` leaves behind.
snapshot() {
    find /etc /usr /var/lib -xdev \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/man-db \) -prune \
        -o -print 2>/dev/null | LC_ALL=C sort
}
before="$(mktemp)"
after="$(mktemp)"
trap 'rm -rf "$ctrl" "$before" "$after"' EXIT
snapshot >"$before"

log "dpkg -i $deb"
dpkg -i "$deb" >&2

version="$(ldapsync --version)"
want_version="ldapsync $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
[ "$version" = "$want_version" ] || fail "ldapsync --version: want '$want_version', got '$version'"
log "ldapsync --version: $version"
[ "$(command -v ldapsync)" = /usr/bin/ldapsync ] || fail "ldapsync is not /usr/bin/ldapsync"

manpath="$(man -w ldapsync)" || fail "man -w ldapsync"
[ "$manpath" = /usr/share/man/man1/ldapsync.1.gz ] || fail "man -w ldapsync: $manpath"
page="$(MANWIDTH=100 man ldapsync 2>/dev/null | col -b)"
for section in NAME SYNOPSIS OPTIONS COMMANDS 'EXIT STATUS' ENVIRONMENT FILES; do
    printf '%s\n' "$page" | grep -q "^$section\$" || fail "man ldapsync: no $section section"
done
for word in 'ldapsync sync' 'ldapsync completions' LDAPSYNC_CONFIG RUST_LOG /var/lib/ldapsync/state.db \
    /etc/ldapsync/config.toml 130; do
    printf '%s\n' "$page" | grep -qF -- "$word" || fail "man ldapsync: '$word' missing"
done
log "man -w ldapsync: $manpath"

getent passwd ldapsync >/dev/null || fail "no ldapsync system user"
[ "$(stat -c '%a %U %G' /etc/ldapsync)" = "750 root ldapsync" ] ||
    fail "/etc/ldapsync: $(stat -c '%a %U %G' /etc/ldapsync), want 750 root ldapsync"
[ "$(stat -c '%a %U %G' /etc/ldapsync/credentials)" = "700 root root" ] ||
    fail "/etc/ldapsync/credentials: $(stat -c '%a %U %G' /etc/ldapsync/credentials)"
[ ! -e /etc/systemd/system/multi-user.target.wants/ldapsync.service ] || fail "the unit was enabled"
[ ! -e /etc/systemd/system/ldapsync.service ] || fail "/etc/systemd/system/ldapsync.service exists"
if [ -d /run/systemd/system ] && systemctl is-active --quiet ldapsync.service; then
    fail "the package started the service"
fi
[ "$(find /usr/share/doc/ldapsync -name 'daemon.md')" = /usr/share/doc/ldapsync/daemon.md ] ||
    fail "the unit's Documentation= does not resolve"

bash "$REPO/scripts/check-systemd.sh" /lib/systemd/system/ldapsync.service

# The service account reads a configuration (0640 root:ldapsync) inside /etc/ldapsync, and the
# LDIF it names; any other user cannot (exit 2, configuration error).
log "the ldapsync account reads /etc/ldapsync; nobody else does"
conf=/etc/ldapsync/check-package.toml
install -m 0640 -g ldapsync "$REPO/examples/directory.ldif" /etc/ldapsync/check-package.ldif
sed -e 's#^ldif_file = .*#ldif_file = "/etc/ldapsync/check-package.ldif"#' \
    -e 's#^path = "target/.*#path = "/nonexistent/state.db"#' "$REPO/examples/quickstart.toml" |
    install -m 0640 -g ldapsync /dev/stdin "$conf"
as_user() { setpriv --reuid="$1" --regid="$(id -g "$1")" --init-groups --reset-env -- "${@:2}"; }
out="$(as_user ldapsync ldapsync --config "$conf" sync --dry-run 2>&1)" ||
    fail "ldapsync sync --dry-run as the ldapsync user: $out"
printf '%s\n' "$out" | grep -q 'Dry run: read' || fail "ldapsync sync --dry-run as ldapsync: $out"
code=0
as_user nobody ldapsync --config "$conf" check >/dev/null 2>&1 || code=$?
[ "$code" -eq 2 ] || fail "user nobody: ldapsync check exited $code, want 2 (cannot read $conf)"
rm -f /etc/ldapsync/check-package.*

log "completions"
bash_file=/usr/share/bash-completion/completions/ldapsync
zsh_file=/usr/share/zsh/vendor-completions/_ldapsync
fish_file=/usr/share/fish/vendor_completions.d/ldapsync.fish
cmp -s <(ldapsync completions bash) "$bash_file" || fail "$bash_file differs from ldapsync completions bash"
cmp -s <(ldapsync completions zsh) "$zsh_file" || fail "$zsh_file differs from ldapsync completions zsh"
cmp -s <(ldapsync completions fish) "$fish_file" || fail "$fish_file differs from ldapsync completions fish"
bash -n "$bash_file" || fail "bash -n $bash_file"
zsh -n "$zsh_file" || fail "zsh -n $zsh_file"
fish -n "$fish_file" || fail "fish -n $fish_file"
# bash: the function the script registers completes "ldapsync sta" to "status".
reply="$(bash -c '
    source "$1"
    COMP_WORDS=(ldapsync sta); COMP_CWORD=1; COMP_LINE="ldapsync sta"; COMP_POINT=${#COMP_LINE}
    fn="$(complete -p ldapsync | sed -n "s/.*-F \([^ ]*\) .*/\1/p")"
    "$fn" ldapsync sta ldapsync
    printf "%s\n" "${COMPREPLY[@]}"' _ "$bash_file")"
printf '%s\n' "$reply" | grep -qx status || fail "bash completion of 'ldapsync sta': '$reply'"
# fish: loads the vendor completion by itself.
reply="$(HOME="$ctrl" XDG_CONFIG_HOME="$ctrl" fish -c 'complete -C "ldapsync sta"' | cut -f1)"
printf '%s\n' "$reply" | grep -qx status || fail "fish completion of 'ldapsync sta': '$reply'"
# zsh: compinit finds the script in the vendor directory by its #compdef line.
reply="$(zsh -f -c "fpath=($(dirname "$zsh_file") \$fpath); autoload -Uz compinit; compinit -u -D
    print -r -- \$_comps[ldapsync]")"
[ "$reply" = _ldapsync ] || fail "zsh: compinit does not map ldapsync to _ldapsync: '$reply'"

# ---------------------------------------------------------------- remove
log "dpkg -r ldapsync"
dpkg -r ldapsync >&2
snapshot >"$after"
# The only new paths: /etc/ldapsync (the administrator's). systemd-sysusers' backups of the
# account databases (passwd-, group-, …) are not ldapsync's; the account itself stays (policy).
left="$(comm -13 "$before" "$after" | grep -vxE '/etc/ldapsync(/.*)?|/etc/(passwd|group|shadow|gshadow)-|/etc/\.pwd\.lock' || true)"
[ -z "$left" ] || fail "left behind after dpkg -r: $left"
[ -d /etc/ldapsync ] || fail "dpkg -r removed /etc/ldapsync"
gone="$(comm -23 "$before" "$after")"
[ -z "$gone" ] || fail "gone after dpkg -i + dpkg -r (were there before): $gone"
[ ! -e /usr/bin/ldapsync ] || fail "/usr/bin/ldapsync is still there after dpkg -r"

log "dpkg -P ldapsync"
dpkg -P ldapsync >&2
[ ! -e /etc/ldapsync ] || fail "dpkg -P left /etc/ldapsync"
log "OK ($((SECONDS))s)"
