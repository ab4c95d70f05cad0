//! Sources: read the configured user and group scopes from an LDAP server or an LDIF file into a Directory.
//!
//! A read is all or nothing: any failed page, non-success result, referral we cannot follow or
//! range retrieval cut short is a [`SourceError`], never a shorter list (DESIGN.md §4.1).

pub mod filter;
pub mod ldap;
pub mod ldif;

use crate::config::Config;
use crate::directory::{Directory, DirectoryBuilder, DirectoryError};

/// Why the directory could not be read completely. Every variant fails the run for every sink.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "cannot connect to LDAP server {url}: {message}. Check [ldap] url, the network and TLS settings"
    )]
    Connect { url: String, message: String },
    #[error("cannot load the CA file {path}: {message}. Check [ldap] ca_file")]
    CaFile { path: String, message: String },
    #[error(
        "LDAP bind as {dn} failed: result {rc} {text}. Check [ldap] bind_dn and the bind password"
    )]
    Bind { dn: String, rc: u32, text: String },
    #[error(
        "LDAP search of {base} with filter {filter} failed: {message}. The read is incomplete; nothing was written"
    )]
    Search {
        base: String,
        filter: String,
        message: String,
    },
    #[error(
        "LDAP search of {base} returned a referral to {referrals}, which ldapsync does not follow; point [{section}] base_dn at the server that holds the entries"
    )]
    Referral {
        base: String,
        section: &'static str,
        referrals: String,
    },
    #[error(
        "ranged retrieval of \"{attribute}\" on {dn} was cut short ({message}); the member list would be incomplete"
    )]
    RangeCutShort {
        dn: String,
        attribute: String,
        message: String,
    },
    #[error("LDIF source {path}:{line}: {message}")]
    Ldif {
        path: String,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("the LDAP bind password could not be resolved: {0}")]
    Secret(#[from] crate::config::SecretError),
}

/// Counts of what a read returned, for metrics and the scope-emptied check.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadStats {
    pub users: u64,
    pub groups: u64,
    pub continuation_references_skipped: u64,
}

/// Reads the configured scopes from `[ldap]` (server or LDIF file) into a Directory.
pub async fn read_directory(config: &Config) -> Result<(Directory, ReadStats), SourceError> {
    let started = std::time::Instant::now();
    let mut builder = DirectoryBuilder::new(&config.groups, &config.users);
    let stats = match &config.ldap.ldif_file {
        Some(path) => ldif::read(path, config, &mut builder)?,
        None => ldap::read(config, &mut builder).await?,
    };
    let read_seconds = started.elapsed().as_secs_f64();
    let directory = builder.finish();
    tracing::debug!(
        users = stats.users,
        groups = stats.groups,
        read_seconds,
        resolve_seconds = started.elapsed().as_secs_f64() - read_seconds,
        "directory read"
    );
    Ok((directory, stats))
}
