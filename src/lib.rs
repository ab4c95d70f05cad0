//! ldapsync: reconcile LDAP groups and their members into SCIM, PingOne, Posit Connect and ForgeRock.
//!
//! The flow goes one way: `source` → `directory` → `plan` (with its guard) → `sinks`, with
//! `store` beside it. See ARCHITECTURE.md for the map and the invariants.
//!
//! - [`config`]: the TOML file, validation with file:line errors, secrets.
//! - [`source`]: LDAP (paged, ranged) and LDIF readers.
//! - [`directory`]: users and groups keyed by immutable ids, member resolution, nesting.
//! - [`ledger`]: what a sink holds according to ldapsync.
//! - [`plan`]: the pure diff and the safety guard.
//! - [`sinks`]: the `Sink` trait, the shared HTTP layer and one module per target.
//! - [`store`]: the SQLite state file (the only SQLite user).
//! - [`engine`]: one run, dry or real.
//! - [`report`]: text and JSON output of a run.
//! - [`daemon`], [`telemetry`]: the scheduled service, metrics and logging.
//! - [`cli`]: the commands behind the binary.
//! - [`manual`]: shell completions and the man page, from the `cli` definitions.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod directory;
pub mod dn;
pub mod engine;
pub mod ledger;
pub mod manual;
pub mod plan;
pub mod report;
pub mod sinks;
pub mod source;
pub mod store;
pub mod telemetry;
