//! Incremental reads: RFC 4533 content synchronization (syncrepl, refreshOnly) applied to a stored snapshot of the scopes.
//!
//! A full read first asks the server for a sync cookie (a base-scope refresh of each scope's base
//! DN: cheap, and refused at once by a server without the `syncprov` overlay), then records every
//! entry it reads into a [`Snapshot`] keyed by entryUUID. The next run sends each scope's cookie
//! with that scope's search and receives only what changed: added or modified entries in full,
//! deleted ones by UUID (delete phase), or every unchanged one by UUID (present phase, after which
//! whatever was not named is gone). Nothing is applied to the snapshot until both scopes'
//! refreshes ended with success and a Sync Done control. Anything else — `e-syncRefreshRequired`,
//! a rejected cookie, a refresh failing half-way, an undecodable control, a result that would
//! empty a scope — is an [`IncrementalError`], and the whole directory is read instead, under the
//! incomplete-read rules of a full read (docs/safety.md rule 1).
//!
//! Against Active Directory (`id_attribute = "objectGUID"`) the same snapshot is refreshed by
//! `uSNChanged` polling instead (src/source/usn.rs); the id attributes choose which.
//!
//! The controls are decoded with a small BER reader that never panics and never recurses
//! (ldap3's own syncrepl parsers panic on input they do not expect).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ldap3::controls::{MakeCritical, RawControl, RefreshMode, SyncRequest};
use ldap3::{Ldap, ResultEntry, Scope};
use rustc_hash::FxHashSet;
use serde::Serialize;

use super::ldap::{RC_SUCCESS, connect, decode_entry, group_attributes, user_attributes};
use super::{EntrySink, RawEntry, ReadStats, SourceError};
use crate::config::{GroupsConfig, IncrementalMode, LdapConfig, UsersConfig};

const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
const SYNC_INFO_OID: &str = "1.3.6.1.4.1.4203.1.9.1.4";
/// `e-syncRefreshRequired` (RFC 4533 §3.4): the cookie is too old; a full refresh is needed.
const RC_SYNC_REFRESH_REQUIRED: u32 = 4096;
/// `unavailableCriticalExtension`: the server does not offer the Sync Request control.
const RC_UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;

/// How a run read the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    Full,
    Incremental,
}

impl ReadMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Full => "full",
            ReadMode::Incremental => "incremental",
        }
    }
}

/// One scope (`users` or `groups`) as the last complete read left it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeSnapshot {
    /// The RFC 4533 cookie that continues from this state (for Active Directory: the DC's
    /// invocationId and USN, src/source/usn.rs).
    pub cookie: Vec<u8>,
    /// Entries with the attributes a read asks for, keyed by entryUUID (objectGUID on AD).
    pub entries: BTreeMap<String, RawEntry>,
    /// Keys added, changed or removed since the snapshot was loaded: what the store writes.
    pub changed: BTreeSet<String>,
    /// Made by a full read: the store replaces the whole scope.
    pub replaced: bool,
}

impl ScopeSnapshot {
    /// Removes the entries `keys` names (those it holds), marking them changed; how many.
    pub(super) fn remove_entries(&mut self, keys: impl IntoIterator<Item = String>) -> u64 {
        let mut removed = 0;
        for key in keys {
            if self.entries.remove(&key).is_some() {
                self.changed.insert(key);
                removed += 1;
            }
        }
        removed
    }

    /// Stores `entries` (those that differ from the stored ones), marking them changed; how many.
    pub(super) fn store_entries(
        &mut self,
        entries: impl IntoIterator<Item = (String, RawEntry)>,
    ) -> u64 {
        let mut stored = 0;
        for (key, entry) in entries {
            if self.entries.get(&key) != Some(&entry) {
                self.changed.insert(key.clone());
                self.entries.insert(key, entry);
                stored += 1;
            }
        }
        stored
    }

    /// An error when applying changes emptied a scope that held `before` entries: a read that
    /// would delete everything is never trusted (docs/safety.md rule 1).
    pub(super) fn check_not_emptied(
        &self,
        scope: &'static str,
        before: usize,
    ) -> Result<(), IncrementalError> {
        if before > 0 && self.entries.is_empty() {
            return Err(IncrementalError::ScopeEmptied { scope, before });
        }
        Ok(())
    }
}

/// Both scopes, pinned to the server, bind DN, bases, filters and attributes they came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub identity: String,
    pub users: ScopeSnapshot,
    pub groups: ScopeSnapshot,
}

impl Snapshot {
    /// Delivers the snapshot to `sink` as a read would: users first, then groups.
    pub fn feed(&self, sink: &mut impl EntrySink) -> Result<ReadStats, SourceError> {
        for entry in self.users.entries.values() {
            sink.add_user(entry)?;
        }
        for entry in self.groups.entries.values() {
            sink.add_group(entry)?;
        }
        Ok(ReadStats {
            users: self.users.entries.len() as u64,
            groups: self.groups.entries.len() as u64,
            ..ReadStats::default()
        })
    }
}

/// Where a snapshot's content comes from; a stored snapshot with another identity is not used.
pub fn identity(ldap: &LdapConfig, users: &UsersConfig, groups: &GroupsConfig) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{}",
        ldap.url.as_deref().unwrap_or(""),
        ldap.bind_dn.as_deref().unwrap_or(""),
        users.base_dn,
        users.filter,
        user_attributes(users, groups).join(","),
        groups.base_dn,
        groups.filter,
        group_attributes(groups).join(","),
    )
}

/// How a configuration can read incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// RFC 4533 content synchronization (OpenLDAP's syncprov), entries keyed by entryUUID.
    Syncrepl,
    /// Active Directory `uSNChanged` polling (src/source/usn.rs), entries keyed by objectGUID.
    Usn,
}

impl Flavor {
    fn id_attribute(self) -> &'static str {
        match self {
            Flavor::Syncrepl => "entryUUID",
            Flavor::Usn => "objectGUID",
        }
    }
}

/// How this configuration reads incrementally, or why it reads in full every time.
fn flavor(
    ldap: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
) -> Result<Flavor, &'static str> {
    if ldap.incremental == IncrementalMode::Off {
        return Err("[ldap] incremental = \"off\"");
    }
    if ldap.url.is_none() {
        return Err("the source is an LDIF file");
    }
    // The snapshot is keyed by the id the server's change tracking names entries by: Sync State
    // controls carry entryUUID; AD's objects are tracked by objectGUID.
    for flavor in [Flavor::Syncrepl, Flavor::Usn] {
        let id = flavor.id_attribute();
        if users.id_attribute.eq_ignore_ascii_case(id)
            && groups.id_attribute.eq_ignore_ascii_case(id)
        {
            return Ok(flavor);
        }
    }
    Err(
        "incremental reads need id_attribute = \"entryUUID\" (OpenLDAP) or \"objectGUID\" (Active Directory) in both [users] and [groups]",
    )
}

/// What a read returned besides the entries it delivered.
#[derive(Debug)]
pub struct SnapshotRead {
    pub stats: ReadStats,
    pub mode: ReadMode,
    /// Entries read: every entry for a full read; added, changed or removed ones for an incremental one.
    pub changes: u64,
    /// The snapshot to store after the run accepted the read (`None`: nothing to store, and any
    /// stored snapshot is stale).
    pub snapshot: Option<Snapshot>,
    /// Why an incremental read was not possible, when one was tried.
    pub fallback: Option<String>,
}

/// Why an incremental read was not possible; the caller reads everything instead.
#[derive(Debug, thiserror::Error)]
pub enum IncrementalError {
    #[error(
        "the server asks for a full refresh of the {scope} scope (e-syncRefreshRequired: the stored cookie is too old)"
    )]
    RefreshRequired { scope: &'static str },
    #[error(
        "the server does not offer content synchronization (RFC 4533; the syncprov overlay on OpenLDAP)"
    )]
    Unsupported,
    #[error("the incremental read of the {scope} scope failed: {message}")]
    Failed {
        scope: &'static str,
        message: String,
    },
    #[error(
        "the incremental read would empty the {scope} scope ({before} entries at the last read)"
    )]
    ScopeEmptied { scope: &'static str, before: usize },
    #[error("Active Directory incremental reads are not possible: {message}")]
    UsnUnavailable { message: String },
    #[error(
        "the domain controller is not the one the last read came from (invocationId {stored}, now {current}: another DC behind the same URL, or this one restored from a backup)"
    )]
    DcChanged { stored: String, current: String },
    #[error(
        "the stored update sequence number {stored} is above the domain controller's highestCommittedUSN {current} (restored from a backup?)"
    )]
    UsnBehind { stored: u64, current: u64 },
    #[error(
        "the last read is {days} days old: deletions older than Active Directory's shortest tombstone lifetime (60 days) may have left no trace"
    )]
    CursorTooOld { days: u64 },
    #[error("{count} entries changed since the last read: a full read costs less")]
    TooManyChanges { count: usize },
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// Reads the configured scopes into `sink`: incrementally from `stored` when it matches this
/// configuration and the run is not `full`, else the whole directory (recording a new snapshot,
/// when `record` and the server offers content synchronization: a dry run records nothing, as it
/// stores nothing).
pub async fn read(
    ldap: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
    stored: Option<Snapshot>,
    full: bool,
    record: bool,
    sink: &mut impl EntrySink,
) -> Result<SnapshotRead, SourceError> {
    let flavor = match flavor(ldap, users, groups) {
        Ok(flavor) => flavor,
        Err(why) => {
            tracing::debug!(why, "full read");
            let stats = super::read(ldap, users, groups, sink).await?;
            return Ok(SnapshotRead {
                changes: stats.users + stats.groups,
                stats,
                mode: ReadMode::Full,
                snapshot: None,
                fallback: None,
            });
        }
    };
    let identity = identity(ldap, users, groups);
    let mut fallback = None;
    match stored {
        Some(_) if full => fallback = Some("a full read was asked for (--full)".to_string()),
        Some(stored) if stored.identity != identity => {
            fallback = Some(
                "the server, bind DN, base DNs, filters or attributes changed since the last read"
                    .to_string(),
            )
        }
        Some(stored) => match match flavor {
            Flavor::Syncrepl => refresh(ldap, users, groups, stored).await,
            Flavor::Usn => super::usn::refresh(ldap, users, groups, stored).await,
        } {
            Ok((snapshot, changes)) => {
                let stats = snapshot.feed(sink)?;
                return Ok(SnapshotRead {
                    stats,
                    mode: ReadMode::Incremental,
                    changes,
                    snapshot: Some(snapshot),
                    fallback: None,
                });
            }
            // The server cannot be reached or refuses the bind: a full read would fail the same way.
            Err(IncrementalError::Source(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "incremental read not possible; reading the whole directory");
                fallback = Some(e.to_string());
            }
        },
        None => {}
    }
    let primed = if record {
        Some(match flavor {
            Flavor::Syncrepl => prime(ldap, users, groups).await,
            Flavor::Usn => super::usn::prime(ldap, users, groups).await,
        })
    } else {
        None
    };
    let cookies = match primed {
        None => None,
        Some(Ok(cookies)) => Some(cookies),
        Some(Err(e)) => {
            tracing::info!(error = %e, "no incremental cursor: the next run reads the whole directory too");
            None
        }
    };
    let mut recorder = Recording {
        inner: sink,
        key: flavor.id_attribute(),
        record: cookies.is_some(),
        users: BTreeMap::new(),
        groups: BTreeMap::new(),
    };
    let stats = super::ldap::read(ldap, users, groups, &mut recorder).await?;
    let (users, groups) = (recorder.users, recorder.groups);
    let snapshot = cookies.map(|(users_cookie, groups_cookie)| Snapshot {
        identity,
        users: ScopeSnapshot {
            cookie: users_cookie,
            entries: users,
            changed: BTreeSet::new(),
            replaced: true,
        },
        groups: ScopeSnapshot {
            cookie: groups_cookie,
            entries: groups,
            changed: BTreeSet::new(),
            replaced: true,
        },
    });
    Ok(SnapshotRead {
        changes: stats.users + stats.groups,
        stats,
        mode: ReadMode::Full,
        snapshot,
        fallback,
    })
}

/// Forwards entries to the directory builder and keeps a copy keyed by `key` (entryUUID or objectGUID).
struct Recording<'a, S: EntrySink> {
    inner: &'a mut S,
    key: &'static str,
    record: bool,
    users: BTreeMap<String, RawEntry>,
    groups: BTreeMap<String, RawEntry>,
}

impl<S: EntrySink> EntrySink for Recording<'_, S> {
    fn add_user(&mut self, entry: &RawEntry) -> Result<(), SourceError> {
        self.take_user(entry.clone())
    }
    fn add_group(&mut self, entry: &RawEntry) -> Result<(), SourceError> {
        self.take_group(entry.clone())
    }
    fn take_user(&mut self, entry: RawEntry) -> Result<(), SourceError> {
        self.inner.add_user(&entry)?;
        keep(self.record, &mut self.users, self.key, entry);
        Ok(())
    }
    fn take_group(&mut self, entry: RawEntry) -> Result<(), SourceError> {
        self.inner.add_group(&entry)?;
        keep(self.record, &mut self.groups, self.key, entry);
        Ok(())
    }
}

/// With `record`, keeps `entry` in `scope` under its `key` attribute.
fn keep(record: bool, scope: &mut BTreeMap<String, RawEntry>, key: &str, entry: RawEntry) {
    if let Some(key) = entry.source_id(key).filter(|_| record) {
        scope.insert(key, entry);
    }
}

/// The Sync Request control of a refreshOnly search, critical so that a server without it
/// refuses the search instead of answering it as a plain one.
fn sync_request(cookie: Option<&[u8]>) -> RawControl {
    SyncRequest {
        mode: RefreshMode::RefreshOnly,
        cookie: cookie.map(<[u8]>::to_vec),
        reload_hint: false,
    }
    .critical()
    .into()
}

/// Asks for each scope's current cookie, before the full read (a change made during the full
/// read is then sent again next time, which is harmless; none is skipped).
async fn prime(
    ldap_config: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
) -> Result<(Vec<u8>, Vec<u8>), IncrementalError> {
    let mut ldap = connect(ldap_config).await?;
    let timeout = Duration::from_secs(ldap_config.timeout_secs);
    let mut cookies = Vec::with_capacity(2);
    for (scope, base) in [("users", &users.base_dn), ("groups", &groups.base_dn)] {
        let delta = sync_search(
            &mut ldap,
            timeout,
            scope,
            base,
            Scope::Base,
            "(objectClass=*)",
            vec!["1.1".to_string()],
            None,
        )
        .await?;
        let cookie = delta.cookie.ok_or(IncrementalError::Failed {
            scope,
            message: "the server sent no cookie".into(),
        })?;
        cookies.push(cookie);
    }
    let _ = ldap.unbind().await;
    let groups_cookie = cookies.pop().unwrap_or_default();
    let users_cookie = cookies.pop().unwrap_or_default();
    Ok((users_cookie, groups_cookie))
}

/// Refreshes both scopes of `snapshot` from its cookies; returns it updated, with the number
/// of entries added, changed or removed. On any error the snapshot is dropped unchanged.
async fn refresh(
    ldap_config: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
    mut snapshot: Snapshot,
) -> Result<(Snapshot, u64), IncrementalError> {
    let mut ldap = connect(ldap_config).await?;
    let timeout = Duration::from_secs(ldap_config.timeout_secs);
    let users_delta = sync_search(
        &mut ldap,
        timeout,
        "users",
        &users.base_dn,
        Scope::Subtree,
        &users.filter,
        user_attributes(users, groups),
        Some(&snapshot.users.cookie),
    )
    .await?;
    let groups_delta = sync_search(
        &mut ldap,
        timeout,
        "groups",
        &groups.base_dn,
        Scope::Subtree,
        &groups.filter,
        group_attributes(groups),
        Some(&snapshot.groups.cookie),
    )
    .await?;
    let _ = ldap.unbind().await;
    let changes = users_delta.apply("users", &mut snapshot.users)?
        + groups_delta.apply("groups", &mut snapshot.groups)?;
    tracing::debug!(changes, "incremental read");
    Ok((snapshot, changes))
}

/// What [`probe`] found: whether a refresh from the stored cookies changed nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// Both scopes answered "no change since the cookie": the stored snapshot is the
    /// directory. The cookies to store (the server may send a newer one; `None`: keep the old).
    Unchanged {
        users_cookie: Option<Vec<u8>>,
        groups_cookie: Option<Vec<u8>>,
    },
    /// Something changed, or the answer does not say that nothing did (a present phase, a
    /// configuration the snapshot was not made for): read as usual.
    Changed,
}

/// Refreshes both scopes from the stored cookies without the snapshot itself, to learn whether
/// anything changed (the no-change fast path of a run). Only an answer that names no entry,
/// deletes none and ends in the delete phase counts as unchanged; anything else is `Changed`.
pub async fn probe(
    ldap_config: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
    stored_identity: &str,
    users_cookie: &[u8],
    groups_cookie: &[u8],
) -> Result<Probe, IncrementalError> {
    // Only syncrepl answers "nothing changed" without the snapshot; an AD read goes the usual
    // way (its refresh needs the stored entries).
    if flavor(ldap_config, users, groups) != Ok(Flavor::Syncrepl)
        || identity(ldap_config, users, groups) != stored_identity
    {
        return Ok(Probe::Changed);
    }
    let mut ldap = connect(ldap_config).await?;
    let timeout = Duration::from_secs(ldap_config.timeout_secs);
    let mut cookies = Vec::with_capacity(2);
    for (scope, base, filter, attrs, cookie) in [
        (
            "users",
            &users.base_dn,
            &users.filter,
            user_attributes(users, groups),
            users_cookie,
        ),
        (
            "groups",
            &groups.base_dn,
            &groups.filter,
            group_attributes(groups),
            groups_cookie,
        ),
    ] {
        let delta = sync_search(
            &mut ldap,
            timeout,
            scope,
            base,
            Scope::Subtree,
            filter,
            attrs,
            Some(cookie),
        )
        .await?;
        let unchanged = delta.upserts.is_empty()
            && delta.deletes.is_empty()
            && delta.present.is_empty()
            && !delta.present_phase;
        if !unchanged {
            let _ = ldap.unbind().await;
            return Ok(Probe::Changed);
        }
        cookies.push(delta.cookie);
    }
    let _ = ldap.unbind().await;
    let groups_cookie = cookies.pop().flatten();
    let users_cookie = cookies.pop().flatten();
    Ok(Probe::Unchanged {
        users_cookie,
        groups_cookie,
    })
}

/// What one refresh said about a scope.
#[derive(Debug, Default)]
struct ScopeDelta {
    cookie: Option<Vec<u8>>,
    upserts: Vec<(String, RawEntry)>,
    deletes: Vec<String>,
    /// UUIDs named as present (and those added or modified).
    present: FxHashSet<String>,
    /// The refresh used the present phase: entries not named are gone.
    present_phase: bool,
    continuation_references: u64,
}

impl ScopeDelta {
    /// Takes one message of the refresh; Err names what could not be understood.
    fn take(&mut self, item: ResultEntry) -> Result<(), String> {
        if item.is_intermediate() {
            let info = intermediate_value(&item.0)
                .filter(|(name, _)| *name == SYNC_INFO_OID.as_bytes())
                .and_then(|(_, value)| decode_sync_info(value))
                .ok_or("the server sent an intermediate message that is not a readable syncInfo")?;
            match info {
                SyncInfo::NewCookie(cookie) => self.cookie = Some(cookie),
                SyncInfo::RefreshDelete { cookie, .. }
                | SyncInfo::RefreshPresent { cookie, .. } => {
                    if cookie.is_some() {
                        self.cookie = cookie;
                    }
                }
                SyncInfo::IdSet {
                    cookie,
                    refresh_deletes,
                    uuids,
                } => {
                    if cookie.is_some() {
                        self.cookie = cookie;
                    }
                    for uuid in uuids {
                        let key = uuid_text(uuid);
                        if refresh_deletes {
                            self.deletes.push(key);
                        } else {
                            self.present.insert(key);
                        }
                    }
                }
            }
            return Ok(());
        }
        if item.is_ref() {
            self.continuation_references += 1;
            return Ok(());
        }
        let state = item
            .1
            .iter()
            .find(|c| c.1.ctype == SYNC_STATE_OID)
            .and_then(|c| c.1.val.as_deref())
            .and_then(decode_sync_state)
            .ok_or("the server sent an entry without a readable Sync State control")?;
        if state.cookie.is_some() {
            self.cookie = state.cookie;
        }
        let key = uuid_text(state.uuid);
        match state.state {
            EntryState::Present => {
                self.present.insert(key);
            }
            EntryState::Add | EntryState::Modify => {
                let entry = decode_entry(item)
                    .ok_or("the server sent an entry that could not be decoded")?;
                self.present.insert(key.clone());
                self.upserts.push((key, entry));
            }
            EntryState::Delete => self.deletes.push(key),
        }
        Ok(())
    }

    /// Applies the refresh to `scope`; returns the number of entries added, changed or removed.
    fn apply(self, name: &'static str, scope: &mut ScopeSnapshot) -> Result<u64, IncrementalError> {
        let before = scope.entries.len();
        let mut changes = 0;
        if self.present_phase {
            let gone: Vec<String> = scope
                .entries
                .keys()
                .filter(|key| !self.present.contains(*key))
                .cloned()
                .collect();
            changes += scope.remove_entries(gone);
        }
        changes += scope.remove_entries(self.deletes);
        changes += scope.store_entries(self.upserts);
        scope.check_not_emptied(name, before)?;
        if let Some(cookie) = self.cookie {
            scope.cookie = cookie;
        }
        if self.continuation_references > 0 {
            tracing::info!(
                scope = name,
                count = self.continuation_references,
                "skipped continuation references (entries in other naming contexts are not read)"
            );
        }
        Ok(changes)
    }
}

/// One refreshOnly search; every message is taken before the result decides.
#[allow(clippy::too_many_arguments)]
async fn sync_search(
    ldap: &mut Ldap,
    timeout: Duration,
    scope: &'static str,
    base: &str,
    search_scope: Scope,
    filter: &str,
    attrs: Vec<String>,
    cookie: Option<&[u8]>,
) -> Result<ScopeDelta, IncrementalError> {
    let failed = |message: String| IncrementalError::Failed { scope, message };
    let mut stream = ldap
        .with_controls(vec![sync_request(cookie)])
        .with_timeout(timeout)
        .streaming_search(base, search_scope, filter, attrs)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut delta = ScopeDelta::default();
    let mut problem = None;
    loop {
        match stream.next().await {
            Ok(Some(item)) => {
                if problem.is_none()
                    && let Err(p) = delta.take(item)
                {
                    problem = Some(p);
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = stream.finish().await;
                return Err(failed(e.to_string()));
            }
        }
    }
    let result = stream.finish().await;
    match result.rc {
        RC_SUCCESS => {}
        RC_SYNC_REFRESH_REQUIRED => return Err(IncrementalError::RefreshRequired { scope }),
        RC_UNAVAILABLE_CRITICAL_EXTENSION => return Err(IncrementalError::Unsupported),
        rc => return Err(failed(format!("result code {rc} {}", result.text))),
    }
    if let Some(problem) = problem {
        return Err(failed(problem.to_string()));
    }
    let done = result
        .ctrls
        .iter()
        .find(|c| c.1.ctype == SYNC_DONE_OID)
        .ok_or_else(|| failed("the search ended without a Sync Done control".into()))?;
    let done = done
        .1
        .val
        .as_deref()
        .and_then(decode_sync_done)
        .ok_or_else(|| failed("the Sync Done control could not be read".into()))?;
    if done.cookie.is_some() {
        delta.cookie = done.cookie;
    }
    delta.present_phase = !done.refresh_deletes;
    Ok(delta)
}

/// A syncUUID as entryUUID prints it.
fn uuid_text(uuid: [u8; 16]) -> String {
    uuid::Uuid::from_bytes(uuid).hyphenated().to_string()
}

/// An IntermediateResponse (`[APPLICATION 25] { [0] name, [1] value }`) as (name, value).
fn intermediate_value(tag: &ldap3::asn1::StructureTag) -> Option<(&[u8], &[u8])> {
    use ldap3::asn1::PL;
    let PL::C(parts) = &tag.payload else {
        return None;
    };
    let mut name: &[u8] = &[];
    let mut value = None;
    for part in parts {
        match (&part.payload, part.id) {
            (PL::P(bytes), 0) => name = bytes,
            (PL::P(bytes), 1) => value = Some(bytes.as_slice()),
            _ => return None,
        }
    }
    Some((name, value?))
}

// ---- BER, just enough for the RFC 4533 controls ----

const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const ENUMERATED: u8 = 0x0a;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const NEW_COOKIE: u8 = 0x80;
const REFRESH_DELETE: u8 = 0xa1;
const REFRESH_PRESENT: u8 = 0xa2;
const SYNC_ID_SET: u8 = 0xa3;

/// One element: its identifier octet and its contents.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
}

/// Reads consecutive elements from a byte string; `None` on anything malformed (high tag
/// numbers, indefinite or oversized lengths, truncation). It never indexes out of bounds and
/// never recurses: callers descend one known level at a time.
struct Ber<'a> {
    rest: &'a [u8],
}

impl<'a> Ber<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Ber { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn next(&mut self) -> Option<Tlv<'a>> {
        let (&tag, rest) = self.rest.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let octets = usize::from(first & 0x7f);
            if octets == 0 || octets > 4 || rest.len() < octets {
                return None;
            }
            let (bytes, after) = rest.split_at(octets);
            rest = after;
            bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.rest = after;
        Some(Tlv { tag, contents })
    }

    /// The only element of `bytes`, if it has `tag` and nothing follows it.
    fn single(bytes: &'a [u8], tag: u8) -> Option<Tlv<'a>> {
        let mut reader = Ber::new(bytes);
        let element = reader.next().filter(|e| e.tag == tag)?;
        reader.is_empty().then_some(element)
    }
}

fn boolean(element: Tlv<'_>) -> Option<bool> {
    match element.contents {
        [b] => Some(*b != 0),
        _ => None,
    }
}

/// `syncUUID ::= OCTET STRING (SIZE(16))`.
fn sync_uuid(element: Tlv<'_>) -> Option<[u8; 16]> {
    (element.tag == OCTET_STRING)
        .then(|| element.contents.try_into().ok())
        .flatten()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryState {
    Present,
    Add,
    Modify,
    Delete,
}

/// `syncStateValue ::= SEQUENCE { state ENUMERATED, entryUUID syncUUID, cookie syncCookie OPTIONAL }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncState {
    pub state: EntryState,
    pub uuid: [u8; 16],
    pub cookie: Option<Vec<u8>>,
}

pub(crate) fn decode_sync_state(value: &[u8]) -> Option<SyncState> {
    let mut fields = Ber::new(Ber::single(value, SEQUENCE)?.contents);
    let state = fields.next().filter(|e| e.tag == ENUMERATED)?;
    let state = match state.contents {
        [0] => EntryState::Present,
        [1] => EntryState::Add,
        [2] => EntryState::Modify,
        [3] => EntryState::Delete,
        _ => return None,
    };
    let uuid = sync_uuid(fields.next()?)?;
    let cookie = match fields.next() {
        None => None,
        Some(e) if e.tag == OCTET_STRING => Some(e.contents.to_vec()),
        Some(_) => return None,
    };
    fields.is_empty().then_some(SyncState {
        state,
        uuid,
        cookie,
    })
}

/// `syncDoneValue ::= SEQUENCE { cookie syncCookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncDone {
    pub cookie: Option<Vec<u8>>,
    pub refresh_deletes: bool,
}

pub(crate) fn decode_sync_done(value: &[u8]) -> Option<SyncDone> {
    let mut fields = Ber::new(Ber::single(value, SEQUENCE)?.contents);
    let (cookie, flag) = cookie_and_flag(&mut fields)?;
    fields.is_empty().then_some(SyncDone {
        cookie,
        refresh_deletes: flag.unwrap_or(false),
    })
}

/// `cookie syncCookie OPTIONAL, <flag> BOOLEAN DEFAULT …` at the start of a sequence.
fn cookie_and_flag(fields: &mut Ber<'_>) -> Option<(Option<Vec<u8>>, Option<bool>)> {
    let mut cookie = None;
    let mut flag = None;
    let mut saved = Ber { rest: fields.rest };
    if let Some(e) = saved.next()
        && e.tag == OCTET_STRING
    {
        cookie = Some(e.contents.to_vec());
        fields.rest = saved.rest;
    }
    let mut saved = Ber { rest: fields.rest };
    if let Some(e) = saved.next()
        && e.tag == BOOLEAN
    {
        flag = Some(boolean(e)?);
        fields.rest = saved.rest;
    }
    Some((cookie, flag))
}

/// The syncInfo intermediate message (RFC 4533 §2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncInfo {
    NewCookie(Vec<u8>),
    RefreshDelete {
        cookie: Option<Vec<u8>>,
        done: bool,
    },
    RefreshPresent {
        cookie: Option<Vec<u8>>,
        done: bool,
    },
    IdSet {
        cookie: Option<Vec<u8>>,
        refresh_deletes: bool,
        uuids: Vec<[u8; 16]>,
    },
}

pub(crate) fn decode_sync_info(value: &[u8]) -> Option<SyncInfo> {
    let mut outer = Ber::new(value);
    let choice = outer.next()?;
    if !outer.is_empty() {
        return None;
    }
    let mut fields = Ber::new(choice.contents);
    let info = match choice.tag {
        NEW_COOKIE => return Some(SyncInfo::NewCookie(choice.contents.to_vec())),
        REFRESH_DELETE | REFRESH_PRESENT => {
            let (cookie, done) = cookie_and_flag(&mut fields)?;
            let done = done.unwrap_or(true);
            if choice.tag == REFRESH_DELETE {
                SyncInfo::RefreshDelete { cookie, done }
            } else {
                SyncInfo::RefreshPresent { cookie, done }
            }
        }
        SYNC_ID_SET => {
            let (cookie, refresh_deletes) = cookie_and_flag(&mut fields)?;
            let set = fields.next().filter(|e| e.tag == SET)?;
            let mut members = Ber::new(set.contents);
            let mut uuids = Vec::new();
            while !members.is_empty() {
                uuids.push(sync_uuid(members.next()?)?);
            }
            SyncInfo::IdSet {
                cookie,
                refresh_deletes: refresh_deletes.unwrap_or(false),
                uuids,
            }
        }
        _ => return None,
    };
    fields.is_empty().then_some(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// BER for tests: one element with a short or long length.
    pub(crate) fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if contents.len() < 0x80 {
            out.push(contents.len() as u8);
        } else {
            let len = (contents.len() as u32).to_be_bytes();
            out.push(0x84);
            out.extend_from_slice(&len);
        }
        out.extend_from_slice(contents);
        out
    }

    const UUID: [u8; 16] = [0x3a, 0x1b, 0x2c, 0x4d, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    #[test]
    fn sync_state_decodes_each_state_and_rejects_garbage() {
        for (byte, state) in [
            (0, EntryState::Present),
            (1, EntryState::Add),
            (2, EntryState::Modify),
            (3, EntryState::Delete),
        ] {
            let value = tlv(
                SEQUENCE,
                &[tlv(ENUMERATED, &[byte]), tlv(OCTET_STRING, &UUID)].concat(),
            );
            let decoded = decode_sync_state(&value).unwrap();
            assert_eq!(decoded.state, state);
            assert_eq!(decoded.uuid, UUID);
            assert_eq!(decoded.cookie, None);
        }
        let with_cookie = tlv(
            SEQUENCE,
            &[
                tlv(ENUMERATED, &[1]),
                tlv(OCTET_STRING, &UUID),
                tlv(OCTET_STRING, b"rid=000,csn=1"),
            ]
            .concat(),
        );
        assert_eq!(
            decode_sync_state(&with_cookie).unwrap().cookie.as_deref(),
            Some(&b"rid=000,csn=1"[..])
        );
        let short_uuid = tlv(
            SEQUENCE,
            &[tlv(ENUMERATED, &[1]), tlv(OCTET_STRING, &UUID[..15])].concat(),
        );
        assert_eq!(decode_sync_state(&short_uuid), None);
        let bad_state = tlv(
            SEQUENCE,
            &[tlv(ENUMERATED, &[9]), tlv(OCTET_STRING, &UUID)].concat(),
        );
        assert_eq!(decode_sync_state(&bad_state), None);
        assert_eq!(
            decode_sync_state(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(decode_sync_state(&[]), None);
    }

    #[test]
    fn sync_done_defaults_and_flags() {
        let empty = tlv(SEQUENCE, &[]);
        assert_eq!(
            decode_sync_done(&empty),
            Some(SyncDone {
                cookie: None,
                refresh_deletes: false
            })
        );
        let full = tlv(
            SEQUENCE,
            &[tlv(OCTET_STRING, b"c"), tlv(BOOLEAN, &[0xff])].concat(),
        );
        assert_eq!(
            decode_sync_done(&full),
            Some(SyncDone {
                cookie: Some(b"c".to_vec()),
                refresh_deletes: true
            })
        );
        let only_flag = tlv(SEQUENCE, &tlv(BOOLEAN, &[1]));
        assert!(decode_sync_done(&only_flag).unwrap().refresh_deletes);
        let trailing = tlv(
            SEQUENCE,
            &[tlv(BOOLEAN, &[1]), tlv(OCTET_STRING, b"c")].concat(),
        );
        assert_eq!(decode_sync_done(&trailing), None);
    }

    #[test]
    fn sync_info_choices() {
        assert_eq!(
            decode_sync_info(&tlv(NEW_COOKIE, b"k")),
            Some(SyncInfo::NewCookie(b"k".to_vec()))
        );
        assert_eq!(
            decode_sync_info(&tlv(REFRESH_PRESENT, &[])),
            Some(SyncInfo::RefreshPresent {
                cookie: None,
                done: true
            })
        );
        assert_eq!(
            decode_sync_info(&tlv(
                REFRESH_DELETE,
                &[tlv(OCTET_STRING, b"k"), tlv(BOOLEAN, &[0])].concat()
            )),
            Some(SyncInfo::RefreshDelete {
                cookie: Some(b"k".to_vec()),
                done: false
            })
        );
        let uuids = tlv(
            SET,
            &[tlv(OCTET_STRING, &UUID), tlv(OCTET_STRING, &[7; 16])].concat(),
        );
        let id_set = tlv(SYNC_ID_SET, &[tlv(BOOLEAN, &[1]), uuids.clone()].concat());
        assert_eq!(
            decode_sync_info(&id_set),
            Some(SyncInfo::IdSet {
                cookie: None,
                refresh_deletes: true,
                uuids: vec![UUID, [7; 16]]
            })
        );
        let present_set = tlv(SYNC_ID_SET, &uuids);
        assert!(matches!(
            decode_sync_info(&present_set),
            Some(SyncInfo::IdSet {
                refresh_deletes: false,
                ..
            })
        ));
        assert_eq!(decode_sync_info(&tlv(SYNC_ID_SET, &[])), None, "no set");
        assert_eq!(decode_sync_info(&tlv(0xa4, &[])), None);
        assert_eq!(uuid_text(UUID), "3a1b2c4d-0001-0203-0405-060708090a0b");
    }

    #[test]
    fn the_id_attributes_choose_how_changes_are_followed() {
        let ldap = |extra: &str| -> LdapConfig {
            toml::from_str(&format!("url = \"ldaps://dc\"\n{extra}")).unwrap()
        };
        let users = |id: &str| -> UsersConfig {
            toml::from_str(&format!("base_dn = \"dc=x\"\nid_attribute = \"{id}\"")).unwrap()
        };
        let groups = |id: &str| -> GroupsConfig {
            toml::from_str(&format!("base_dn = \"dc=x\"\nid_attribute = \"{id}\"")).unwrap()
        };
        let auto = ldap("");
        assert_eq!(
            flavor(&auto, &users("entryUUID"), &groups("entryuuid")),
            Ok(Flavor::Syncrepl)
        );
        assert_eq!(
            flavor(&auto, &users("objectGUID"), &groups("objectGuid")),
            Ok(Flavor::Usn)
        );
        assert!(flavor(&auto, &users("objectGUID"), &groups("entryUUID")).is_err());
        assert!(flavor(&auto, &users("uid"), &groups("cn")).is_err());
        let off = ldap("incremental = \"off\"");
        assert!(flavor(&off, &users("objectGUID"), &groups("objectGUID")).is_err());
    }

    fn entry(dn: &str) -> RawEntry {
        RawEntry {
            dn: dn.into(),
            ..RawEntry::default()
        }
    }

    fn scope(keys: &[&str]) -> ScopeSnapshot {
        ScopeSnapshot {
            cookie: b"old".to_vec(),
            entries: keys.iter().map(|k| (k.to_string(), entry(k))).collect(),
            ..ScopeSnapshot::default()
        }
    }

    #[test]
    fn present_phase_removes_what_was_not_named_and_delete_phase_only_what_was() {
        let mut s = scope(&["a", "b", "c"]);
        let delta = ScopeDelta {
            cookie: Some(b"new".to_vec()),
            upserts: vec![("d".into(), entry("d2"))],
            present: ["a", "d"].iter().map(|k| k.to_string()).collect(),
            present_phase: true,
            ..ScopeDelta::default()
        };
        assert_eq!(delta.apply("users", &mut s).unwrap(), 3);
        assert_eq!(s.entries.keys().collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(s.cookie, b"new");
        assert_eq!(s.changed.iter().collect::<Vec<_>>(), ["b", "c", "d"]);

        let mut s = scope(&["a", "b"]);
        let delta = ScopeDelta {
            deletes: vec!["b".into(), "zz".into()],
            ..ScopeDelta::default()
        };
        assert_eq!(delta.apply("users", &mut s).unwrap(), 1);
        assert_eq!(s.entries.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.cookie, b"old", "no new cookie: the old one stays");
    }

    #[test]
    fn a_refresh_that_empties_a_scope_is_refused() {
        let mut s = scope(&["a", "b"]);
        let delta = ScopeDelta {
            present_phase: true,
            ..ScopeDelta::default()
        };
        let err = delta.apply("groups", &mut s).unwrap_err();
        assert!(
            matches!(err, IncrementalError::ScopeEmptied { before: 2, .. }),
            "{err}"
        );
        let mut empty = scope(&[]);
        assert_eq!(
            ScopeDelta {
                present_phase: true,
                ..ScopeDelta::default()
            }
            .apply("groups", &mut empty)
            .unwrap(),
            0
        );
    }
}
