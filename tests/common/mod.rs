//! Shared helpers for the integration tests: real OpenLDAP `slapd`, a real Samba AD DC, the real
//! `scim2-server`, the Python emulators of `tests/emulators/`, and running the `ldapsync` binary.
//!
//! Every test file uses it with `mod common;` and `use common::*;`, which brings in everything
//! the submodules export:
//!
//! - [`process`]: commands with a timeout and [`OutputExt`], polling (`wait_until`, `wait_for`),
//!   free ports, files and log tails, and the start/stop plumbing of the servers below;
//! - [`http`]: a small blocking HTTP client ([`http_request`], [`HttpResponse`]);
//! - [`pki`]: a test CA and server certificate ([`generate_test_pki`], [`TestPki`]);
//! - [`ldap`]: the [`LdapServer`] trait (ldap-utils administration) and LDIF reading;
//! - [`slapd`]: a real OpenLDAP [`Slapd`], optionally bulk-loaded with [`Ldif`];
//! - [`samba`]: a real Samba AD domain controller, [`SambaDc`];
//! - [`ds389`]: a real 389 Directory Server, [`Ds389`];
//! - [`scim`]: the real `scim2-server`, [`ScimServer`];
//! - [`emulators`]: the Python target emulators ([`Emulator`], [`EmulatorWorld`]);
//! - [`proxy`]: the fault-injecting proxy ([`FaultProxy`]) put in front of a target;
//! - [`faults`]: the fault matrix every sink type is driven through ([`drive_fault_matrix`]);
//! - [`incremental`]: the state file's directory snapshot as plain data ([`snapshot_dump`]) and
//!   an Active Directory source config ([`ad_config_toml`]);
//! - [`run`]: the `ldapsync` binary, config TOML builders, [`run_ldapsync`], [`sync`],
//!   [`assert_code`].
//!
//! Each test file uses only some helpers, hence the `allow(dead_code)` (it covers the
//! submodules) and the `allow(unused_imports)` on the re-exports. Everything here panics with a useful message (including the tail of the
//! server's log) instead of returning errors: a helper failing is a broken test environment.
//!
//! External programs come from `scripts/install-test-deps.sh` (Debian slapd, ldap-utils, openssl,
//! samba, 389-ds-base; the venv at `$REPO/.venv` with scim2-server). Nothing here sleeps for a fixed time to
//! synchronise: readiness is always polled.
#![allow(dead_code)]

mod ds389;
mod emulators;
mod faults;
mod http;
mod incremental;
mod ldap;
mod pki;
mod process;
mod proxy;
mod run;
mod samba;
mod scim;
mod slapd;

// A test file that uses nothing of a submodule would warn about its re-export.
#[allow(unused_imports)]
pub use {
    ds389::*, emulators::*, faults::*, http::*, incremental::*, ldap::*, pki::*, process::*,
    proxy::*, run::*, samba::*, scim::*, slapd::*,
};
