#!/usr/bin/env bash
# Builds the Debian package from this checkout and prints its path on stdout:
#   1. `cargo build --release --locked` (the binary that goes into the package);
#   2. runs that binary to write the ldapsync(1) man page and the bash, zsh and fish completion
#      scripts into $CARGO_TARGET_DIR/release/assets/ (default target/): they are generated from
#      the clap definitions of the packaged binary, so they never drift from the command line;
#   3. `cargo deb --no-build` packs [package.metadata.deb] of Cargo.toml into
#      $CARGO_TARGET_DIR/debian/ldapsync_<version>-1_<arch>.deb (binary stripped; a Debian
#      changelog entry for the version is generated beside the other assets).
# Needs cargo-deb (`cargo install cargo-deb --locked`; scripts/check-package.sh installs it).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf 'package: %s\n' "$*" >&2; }

if ! cargo deb --version >/dev/null 2>&1; then
    log "cargo-deb is missing: cargo install cargo-deb --locked"
    exit 1
fi

target="${CARGO_TARGET_DIR:-$REPO/target}"
log "cargo build --release --locked --bin ldapsync"
cargo build --release --locked --bin ldapsync >&2

bin="$target/release/ldapsync"
assets="$target/release/assets"
log "man page and completions from $bin into $assets"
rm -rf "$assets"
mkdir -p "$assets"
# Dates (man page, changelog): the last commit's, unless SOURCE_DATE_EPOCH says otherwise.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}"
"$bin" manpage | gzip -9n >"$assets/ldapsync.1.gz"
"$bin" completions bash >"$assets/ldapsync.bash"
"$bin" completions zsh >"$assets/_ldapsync"
"$bin" completions fish >"$assets/ldapsync.fish"
# The Debian changelog lintian asks for: one entry for this version.
revision=1
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
maintainer="$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
{
    printf 'ldapsync (%s-%s) unstable; urgency=medium\n\n' "$version" "$revision"
    printf '  * ldapsync %s, built with cargo-deb from commit %s.\n\n' "$version" "$commit"
    printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$assets/changelog.Debian.gz"

for f in ldapsync.1.gz ldapsync.bash _ldapsync ldapsync.fish changelog.Debian.gz; do
    [ -s "$assets/$f" ] || { log "empty asset $assets/$f"; exit 1; }
done

log "cargo deb --no-build"
# cargo-deb prints the path of the package it wrote as its last line.
deb="$(cargo deb --no-build --strip --deb-revision "$revision" | tail -n 1)"
[ -f "$deb" ] || { log "no package at ${deb:-<nothing printed>}"; exit 1; }
log "built $deb"
printf '%s\n' "$deb"
