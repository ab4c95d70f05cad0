//! ldapsync: reconcile LDAP groups and their members into SCIM, PingOne, Posit Connect and ForgeRock.
//!
//! The modules form a ladder; each uses only the rungs below it (ARCHITECTURE.md draws it):
//!
//! - leaf types: [`exit`] (exit statuses), `secret`, `dn`, `model` (users, group specs,
//!   operations, plans, summaries), `ledger` (what a sink holds), `telemetry` (metrics, logging);
//! - [`config`]: the TOML file, validation with file:line errors; knows no sink type;
//! - [`source`]: LDAP (paged, ranged) and LDIF readers producing raw entries;
//! - `directory`: users and groups keyed by immutable ids, member resolution, nesting;
//! - `plan`: the pure diff and the safety guard;
//! - `planfile`: saved plans (`--save-plan`, `--plan`) and the fingerprints that guard them;
//! - `store`: the SQLite state file (the only SQLite user);
//! - `sinks`: the `Sink` trait, the sink registry, the shared HTTP layer, one module per target;
//! - `engine`: one run, dry or real; `report`: text and JSON output of a run and of `status`;
//! - `app`: configuration with its sinks and the source check, shared by both front ends;
//! - [`cli`] and `daemon`: the commands and the scheduled service.
//! - `manual`: shell completions and the man page, from the `cli` definitions.
//! - `fuzzing` (feature `fuzzing`, and in tests): the entry points of the fuzz targets in `fuzz/`.

pub(crate) mod app;
pub mod cli;
pub mod config;
pub(crate) mod daemon;
pub(crate) mod directory;
pub(crate) mod dn;
pub(crate) mod engine;
pub mod exit;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod ledger;
pub(crate) mod manual;
pub(crate) mod model;
pub(crate) mod plan;
pub(crate) mod planfile;
#[cfg(test)]
mod proptests;
pub(crate) mod report;
pub(crate) mod secret;
pub(crate) mod sinks;
pub mod source;
pub(crate) mod store;
pub mod telemetry;
