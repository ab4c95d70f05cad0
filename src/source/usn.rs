//! Active Directory incremental reads: `uSNChanged` polling pinned to the DC's invocationId, applied to the stored snapshot.
//!
//! Every write on a DC gives the entry it touches the DC's next update sequence number
//! (`uSNChanged`); the rootDSE's `highestCommittedUSN` is the last one handed out. USNs are the
//! DC's own: another DC, or this one restored from a backup, numbers differently, which its
//! `invocationId` (on the NTDS Settings object the rootDSE's `dsServiceName` names) tells. A
//! cursor is therefore (invocationId, USN, time), stored as both scopes' cookie, and read before
//! anything else, so that a change made during a run is read again next time, never skipped.
//!
//! A refresh from USN `n` reads:
//! 1. every scope's entries that match its filter and changed (`(&(filter)(uSNChanged>=n+1))`):
//!    the server evaluates the filter, so the answer is exactly what a full read gives for them;
//! 2. everything that changed in the domain naming context, tombstones included (the Show
//!    Deleted control; AD moves a deleted object to `CN=Deleted Objects` and keeps its
//!    objectGUID): a stored entry that changed but is not in 1 was deleted, moved out of the base
//!    or stopped matching the filter, and is dropped;
//! 3. the groups whose member DNs changed without the group being written: AD rewrites a member
//!    value when the member is renamed, moved or deleted, and the group keeps its `uSNChanged`.
//!    Stored groups naming a changed entry's old DN (from the snapshot, or a tombstone's
//!    `lastKnownParent` and name) or the new DN of a renamed or new entry, and groups the server
//!    finds naming such a new DN, are read again.
//!
//! Anything doubtful is an [`IncrementalError`], and the caller reads in full: another DC, a
//! stored USN above the DC's, a cursor older than the shortest tombstone lifetime, a bind DN that
//! sees no tombstone in `CN=Deleted Objects`, a filter on an attribute AD changes without a new
//! `uSNChanged` (`memberOf`), a base outside the domain naming context, more changes than a
//! full read costs, any failed search.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ldap3::controls::RawControl;
use ldap3::{Ldap, Scope, SearchOptions, dn_escape, ldap_escape};
use rustc_hash::FxHashSet;

use super::incremental::{IncrementalError, ScopeSnapshot, Snapshot};
use super::ldap::{
    RC_SUCCESS, complete_member_ranges, connect, decode_entry, group_attributes, search,
    user_attributes,
};
use super::{RawEntry, SourceError, holds_user_names, member_attributes};
use crate::config::{GroupsConfig, LdapConfig, UsersConfig};
use crate::dn::{is_under, normalize};

/// The Show Deleted control: searches return tombstones too.
const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
/// The domain scope control: no continuation references to the other naming contexts.
const DOMAIN_SCOPE_OID: &str = "1.2.840.113556.1.4.1339";
/// LDAP_MATCHING_RULE_IN_CHAIN: a transitive match, which changes when a nested entry does.
const IN_CHAIN_OID: &str = "1.2.840.113556.1.4.1941";
/// Attributes AD computes or maintains as back links: a change to them gives the entry no new
/// `uSNChanged` (adding a user to a group changes the group, not the user's `memberOf`), so a
/// filter or read that uses one cannot be followed by USN.
const UNTRACKED_ATTRIBUTES: [&str; 11] = [
    "memberof",
    "msds-memberoftransitive",
    "msds-membertransitive",
    "directreports",
    "managedobjects",
    "tokengroups",
    "tokengroupsglobalanduniversal",
    "primarygrouptoken",
    "canonicalname",
    "msds-principalname",
    "msds-user-account-control-computed",
];
/// `sizeLimitExceeded`: more entries than the one asked for.
const RC_SIZE_LIMIT_EXCEEDED: u32 = 4;
/// What a cookie of this module starts with (a syncrepl cookie never does).
const COOKIE_PREFIX: &str = "adusn1";
/// AD purges tombstones after the forest's tombstone lifetime (180 days today, 60 in forests
/// created before Windows Server 2003 SP1): a deletion older than that may leave no trace.
const MAX_CURSOR_AGE_SECS: u64 = 60 * 24 * 3600;
/// Values per OR filter when looking entries up by DN or objectGUID.
const CHUNK: usize = 50;
/// Below this many changed entries an incremental read is always tried; above it, only while
/// they are fewer than a quarter of the snapshot (else a full read costs less).
const FEW_CHANGES: usize = 1000;

/// Where the next refresh starts: a DC, one of its USNs, and when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    invocation_id: String,
    usn: u64,
    /// Seconds since the Unix epoch.
    at: u64,
}

impl Cursor {
    fn encode(&self) -> Vec<u8> {
        format!(
            "{COOKIE_PREFIX}:{}:{}:{}",
            self.invocation_id, self.usn, self.at
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Cursor> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(':');
        if parts.next()? != COOKIE_PREFIX {
            return None;
        }
        let invocation_id = parts.next()?.to_string();
        let usn = parts.next()?.parse().ok()?;
        let at = parts.next()?.parse().ok()?;
        (parts.next().is_none() && !invocation_id.is_empty()).then_some(Cursor {
            invocation_id,
            usn,
            at,
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unavailable(message: impl Into<String>) -> IncrementalError {
    IncrementalError::UsnUnavailable {
        message: message.into(),
    }
}

/// The attribute names a filter tests (`(cn=x)`, `(cn>=x)`, `(member:rule:=x)` → cn, member).
fn filter_attributes(filter: &str) -> Vec<String> {
    filter
        .split('(')
        .skip(1)
        .filter_map(|item| {
            let end = item.find(['=', '~', '<', '>', ':'])?;
            let name = item[..end].trim();
            (!name.is_empty() && !name.starts_with(['&', '|', '!', ')']))
                .then(|| name.to_ascii_lowercase())
        })
        .collect()
}

/// Why this configuration cannot be followed by USN: a filter or read attribute whose changes
/// leave `uSNChanged` alone.
fn untracked(users: &UsersConfig, groups: &GroupsConfig) -> Option<String> {
    for (section, filter) in [("users", &users.filter), ("groups", &groups.filter)] {
        if filter.contains(IN_CHAIN_OID) {
            return Some(format!(
                "[{section}] filter uses the in-chain matching rule {IN_CHAIN_OID}, whose result changes without the entry changing"
            ));
        }
        if let Some(attribute) = filter_attributes(filter)
            .into_iter()
            .find(|a| UNTRACKED_ATTRIBUTES.contains(&a.as_str()))
        {
            return Some(format!(
                "[{section}] filter tests {attribute}, which AD changes without changing the entry's uSNChanged"
            ));
        }
    }
    let read = user_attributes(users, groups)
        .into_iter()
        .chain(group_attributes(groups));
    for attribute in read {
        if UNTRACKED_ATTRIBUTES.contains(&attribute.to_ascii_lowercase().as_str()) {
            return Some(format!(
                "the attribute {attribute} is computed by AD and changes without changing the entry's uSNChanged"
            ));
        }
    }
    None
}

fn show_deleted() -> RawControl {
    RawControl {
        ctype: SHOW_DELETED_OID.to_string(),
        crit: true,
        val: None,
    }
}

/// One base-scope read of `dn` with `attrs`; `None` when the entry is not visible.
async fn read_base(
    ldap: &mut Ldap,
    timeout: Duration,
    dn: &str,
    attrs: &[&str],
    controls: Vec<RawControl>,
) -> Result<Option<RawEntry>, IncrementalError> {
    let found = ldap
        .with_controls(controls)
        .with_timeout(timeout)
        .search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec())
        .await
        .map_err(|e| unavailable(format!("reading {dn:?}: {e}")))?;
    let (entries, result) = (found.0, found.1);
    if result.rc != RC_SUCCESS {
        return Ok(None);
    }
    Ok(entries.into_iter().find_map(decode_entry))
}

fn text(entry: &RawEntry, attribute: &str) -> Option<String> {
    let value = entry.values(attribute).first()?;
    String::from_utf8(value.clone()).ok()
}

/// The DC's state: its cursor now and its domain naming context; checks that `bases` lie in it
/// and that the bind DN sees tombstones.
async fn dc_state(
    ldap: &mut Ldap,
    timeout: Duration,
    bases: [&str; 2],
) -> Result<(Cursor, String), IncrementalError> {
    let root = read_base(
        ldap,
        timeout,
        "",
        &[
            "highestCommittedUSN",
            "dsServiceName",
            "defaultNamingContext",
        ],
        vec![],
    )
    .await?
    .ok_or_else(|| unavailable("the rootDSE could not be read"))?;
    let (Some(usn), Some(service), Some(context)) = (
        text(&root, "highestCommittedUSN").and_then(|u| u.trim().parse::<u64>().ok()),
        text(&root, "dsServiceName"),
        text(&root, "defaultNamingContext"),
    ) else {
        return Err(unavailable(
            "the rootDSE has no highestCommittedUSN, dsServiceName or defaultNamingContext (not an Active Directory domain controller)",
        ));
    };
    let settings = read_base(ldap, timeout, &service, &["invocationId"], vec![])
        .await?
        .ok_or_else(|| unavailable(format!("the bind DN cannot read {service}")))?;
    // A GUID, printed like objectGUID (Microsoft byte order).
    let invocation_id = settings
        .values("invocationId")
        .first()
        .and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok())
        .map(|bytes| uuid::Uuid::from_bytes_le(bytes).hyphenated().to_string())
        .ok_or_else(|| unavailable(format!("{service} has no readable invocationId")))?;
    let normalized_context = normalize(&context);
    for base in bases {
        if !is_under(&normalize(base), &normalized_context) {
            return Err(unavailable(format!(
                "{base} is not in the domain naming context {context}, where changes are looked for"
            )));
        }
    }
    // Deletions are seen through tombstones, so the bind DN must be able to list them. Samba
    // shows the container itself to any user but its tombstones only to administrators, so the
    // test is one tombstone listed (a domain without any deletion reads in full until its first).
    let deleted_objects = format!("CN=Deleted Objects,{context}");
    let listed = ldap
        .with_controls(vec![show_deleted()])
        .with_search_options(SearchOptions::new().sizelimit(1))
        .with_timeout(timeout)
        .search(
            &deleted_objects,
            Scope::OneLevel,
            "(isDeleted=TRUE)",
            vec!["1.1"],
        )
        .await
        .map_err(|e| unavailable(format!("listing {deleted_objects}: {e}")))?;
    if !matches!(listed.1.rc, RC_SUCCESS | RC_SIZE_LIMIT_EXCEEDED) || listed.0.is_empty() {
        return Err(unavailable(format!(
            "the bind DN sees no deleted object in {deleted_objects} (Show Deleted control), so deletions could go unseen; grant it the right to list deleted objects, or set [ldap] incremental = \"off\" (a domain where nothing was ever deleted reads in full until its first deletion)"
        )));
    }
    Ok((
        Cursor {
            invocation_id,
            usn,
            at: now(),
        },
        context,
    ))
}

/// The cookie (the same for both scopes) a full read starting now continues from; read before
/// the full read, so that a change made during it is read again next time.
pub(super) async fn prime(
    ldap_config: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
) -> Result<(Vec<u8>, Vec<u8>), IncrementalError> {
    if let Some(why) = untracked(users, groups) {
        return Err(unavailable(why));
    }
    let mut ldap = connect(ldap_config).await?;
    let timeout = Duration::from_secs(ldap_config.timeout_secs);
    let (cursor, _) = dc_state(&mut ldap, timeout, [&users.base_dn, &groups.base_dn]).await?;
    let _ = ldap.unbind().await;
    Ok((cursor.encode(), cursor.encode()))
}

/// An entry that changed since the cursor, anywhere in the domain.
#[derive(Debug)]
struct Changed {
    key: String,
    dn: String,
    deleted: bool,
    /// For a tombstone: the DN it had, as far as its name and `lastKnownParent` tell.
    former_dn: Option<String>,
}

/// Searches `base` (subtree, paged) with `filter`; Err names the scope and what failed.
async fn entries(
    ldap: &mut Ldap,
    config: &LdapConfig,
    scope: &'static str,
    base: &str,
    filter: &str,
    attrs: Vec<String>,
    controls: Vec<RawControl>,
) -> Result<Vec<RawEntry>, IncrementalError> {
    let mut found = Vec::new();
    let mut failure = None;
    ldap.with_controls(controls);
    search(
        ldap,
        config,
        scope,
        base,
        filter,
        attrs,
        |entry| {
            found.push(entry);
            Ok(())
        },
        &mut failure,
    )
    .await
    .map_err(|e| failed(scope, e))?;
    Ok(found)
}

fn failed(scope: &'static str, e: SourceError) -> IncrementalError {
    IncrementalError::Failed {
        scope,
        message: e.to_string(),
    }
}

/// Groups under the groups base matching `(&(filter)extra)`, ranged members completed.
async fn group_entries(
    ldap: &mut Ldap,
    config: &LdapConfig,
    groups: &GroupsConfig,
    extra: &str,
) -> Result<Vec<RawEntry>, IncrementalError> {
    let filter = format!("(&{}{extra})", parenthesized(&groups.filter));
    let mut found = entries(
        ldap,
        config,
        "groups",
        &groups.base_dn,
        &filter,
        group_attributes(groups),
        vec![],
    )
    .await?;
    let timeout = Duration::from_secs(config.timeout_secs);
    let attributes: Vec<String> = member_attributes(groups)
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    for entry in &mut found {
        complete_member_ranges(ldap, timeout, entry, &attributes)
            .await
            .map_err(|e| failed("groups", e))?;
    }
    Ok(found)
}

fn parenthesized(filter: &str) -> String {
    let filter = filter.trim();
    if filter.starts_with('(') {
        filter.to_string()
    } else {
        format!("({filter})")
    }
}

/// Entries keyed by their id attribute; an entry without one fails the refresh.
fn keyed(
    scope: &'static str,
    id_attribute: &str,
    found: Vec<RawEntry>,
    into: &mut BTreeMap<String, RawEntry>,
) -> Result<(), IncrementalError> {
    for entry in found {
        let key = entry
            .source_id(id_attribute)
            .ok_or_else(|| IncrementalError::Failed {
                scope,
                message: format!("{} has no {id_attribute}", entry.dn),
            })?;
        into.insert(key, entry);
    }
    Ok(())
}

/// `(|(objectGUID=\xx…)…)` for GUID keys (canonical text, Microsoft byte order).
fn guid_filter(keys: &[&String]) -> String {
    let mut filter = String::from("(|");
    for key in keys {
        if let Ok(uuid) = uuid::Uuid::parse_str(key) {
            filter.push_str("(objectGUID=");
            for byte in uuid.to_bytes_le() {
                filter.push_str(&format!("\\{byte:02x}"));
            }
            filter.push(')');
        }
    }
    filter.push(')');
    filter
}

/// Refreshes both scopes of `snapshot` from the USN in its cookie; returns it updated, with the
/// number of entries added, changed or removed. On any error the snapshot is dropped unchanged.
pub(super) async fn refresh(
    ldap_config: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
    mut snapshot: Snapshot,
) -> Result<(Snapshot, u64), IncrementalError> {
    let stored = Cursor::decode(&snapshot.users.cookie)
        .filter(|c| snapshot.groups.cookie == c.encode())
        .ok_or_else(|| unavailable("the stored cursor is not an Active Directory USN cursor"))?;
    if let Some(why) = untracked(users, groups) {
        return Err(unavailable(why));
    }
    let mut ldap = connect(ldap_config).await?;
    let timeout = Duration::from_secs(ldap_config.timeout_secs);
    let (current, context) =
        dc_state(&mut ldap, timeout, [&users.base_dn, &groups.base_dn]).await?;
    if current.invocation_id != stored.invocation_id {
        return Err(IncrementalError::DcChanged {
            stored: stored.invocation_id,
            current: current.invocation_id,
        });
    }
    if stored.usn > current.usn {
        return Err(IncrementalError::UsnBehind {
            stored: stored.usn,
            current: current.usn,
        });
    }
    let age = current.at.saturating_sub(stored.at);
    if age > MAX_CURSOR_AGE_SECS {
        return Err(IncrementalError::CursorTooOld { days: age / 86_400 });
    }
    let since = format!("(uSNChanged>={})", stored.usn + 1);

    // 2. Everything that changed in the domain, tombstones included.
    let changed_entries = entries(
        &mut ldap,
        ldap_config,
        "domain",
        &context,
        &since,
        vec![
            "objectGUID".into(),
            "isDeleted".into(),
            "lastKnownParent".into(),
            "name".into(),
        ],
        vec![
            show_deleted(),
            RawControl {
                ctype: DOMAIN_SCOPE_OID.to_string(),
                crit: false,
                val: None,
            },
        ],
    )
    .await?;
    let total = snapshot.users.entries.len() + snapshot.groups.entries.len();
    if changed_entries.len() > FEW_CHANGES && changed_entries.len() > total / 4 {
        return Err(IncrementalError::TooManyChanges {
            count: changed_entries.len(),
        });
    }
    let mut changed = Vec::with_capacity(changed_entries.len());
    for entry in changed_entries {
        let Some(key) = entry.source_id("objectGUID") else {
            continue; // every object has one; one without cannot be in the snapshot
        };
        let deleted = text(&entry, "isDeleted").is_some_and(|v| v.eq_ignore_ascii_case("TRUE"));
        let former_dn = if deleted {
            // A tombstone is `CN=<name>\0ADEL:<guid>,CN=Deleted Objects,…`; its name attribute
            // is `<name>\nDEL:<guid>`.
            let kind = entry.dn.split('=').next().unwrap_or("CN").to_string();
            text(&entry, "name")
                .and_then(|n| n.split('\n').next().map(str::to_string))
                .zip(text(&entry, "lastKnownParent"))
                .map(|(name, parent)| format!("{kind}={},{parent}", dn_escape(name.as_str())))
        } else {
            None
        };
        changed.push(Changed {
            key,
            dn: entry.dn,
            deleted,
            former_dn,
        });
    }

    // 1. The changed entries of each scope, as a full read gives them.
    let mut found_users = BTreeMap::new();
    let user_filter = format!("(&{}{since})", parenthesized(&users.filter));
    let found = entries(
        &mut ldap,
        ldap_config,
        "users",
        &users.base_dn,
        &user_filter,
        user_attributes(users, groups),
        vec![],
    )
    .await?;
    keyed("users", &users.id_attribute, found, &mut found_users)?;
    let mut found_groups = BTreeMap::new();
    let found = group_entries(&mut ldap, ldap_config, groups, &since).await?;
    keyed("groups", &groups.id_attribute, found, &mut found_groups)?;

    // 3. Groups whose member values the server rewrote.
    let dn_attributes: Vec<String> = member_attributes(groups)
        .into_iter()
        .filter(|a| !holds_user_names(a))
        .map(|a| a.to_ascii_lowercase())
        .collect();
    let mut former: FxHashSet<String> = FxHashSet::default();
    let mut current_dns: Vec<&str> = Vec::new();
    for c in &changed {
        let stored_dn = snapshot
            .users
            .entries
            .get(&c.key)
            .or_else(|| snapshot.groups.entries.get(&c.key))
            .map(|e| e.dn.as_str());
        match stored_dn {
            Some(dn) if c.deleted || normalize(dn) != normalize(&c.dn) => {
                former.insert(normalize(dn));
            }
            Some(_) => {}
            None => {
                if let Some(dn) = &c.former_dn {
                    former.insert(normalize(dn));
                }
            }
        }
        let renamed_or_new = stored_dn.is_none_or(|dn| normalize(dn) != normalize(&c.dn));
        if !c.deleted && renamed_or_new {
            current_dns.push(&c.dn);
            // A stored group may still name this DN for the entry that had it before (renamed
            // and deleted since: its tombstone tells only its last name).
            former.insert(normalize(&c.dn));
        }
    }
    let changed_keys: FxHashSet<&str> = changed.iter().map(|c| c.key.as_str()).collect();
    // Normalizing every stored member DN costs a pass over all memberships: only when needed.
    let stale: Vec<&String> = snapshot
        .groups
        .entries
        .iter()
        .take_while(|_| !former.is_empty())
        .filter(|(key, _)| !changed_keys.contains(key.as_str()))
        .filter(|(_, entry)| {
            dn_attributes.iter().any(|a| {
                entry
                    .values(a)
                    .iter()
                    .any(|v| former.contains(&normalize(&String::from_utf8_lossy(v))))
            })
        })
        .map(|(key, _)| key)
        .collect();
    for chunk in stale.chunks(CHUNK) {
        let found = group_entries(&mut ldap, ldap_config, groups, &guid_filter(chunk)).await?;
        let mut reread = BTreeMap::new();
        keyed("groups", &groups.id_attribute, found, &mut reread)?;
        if let Some(missing) = chunk.iter().find(|k| !reread.contains_key(k.as_str())) {
            return Err(IncrementalError::Failed {
                scope: "groups",
                message: format!("group {missing} disappeared without a recorded change"),
            });
        }
        found_groups.extend(reread);
    }
    for chunk in current_dns.chunks(CHUNK) {
        let mut filter = String::from("(|");
        for dn in chunk {
            for attribute in &dn_attributes {
                filter.push_str(&format!("({attribute}={})", ldap_escape(*dn)));
            }
        }
        filter.push(')');
        let found = group_entries(&mut ldap, ldap_config, groups, &filter).await?;
        keyed("groups", &groups.id_attribute, found, &mut found_groups)?;
    }
    let _ = ldap.unbind().await;

    let cookie = current.encode();
    let changes = apply(
        "users",
        &mut snapshot.users,
        &changed_keys,
        found_users,
        &cookie,
    )? + apply(
        "groups",
        &mut snapshot.groups,
        &changed_keys,
        found_groups,
        &cookie,
    )?;
    tracing::debug!(changes, usn = current.usn, "incremental read (uSNChanged)");
    Ok((snapshot, changes))
}

/// Drops the stored entries that changed but were not found, stores those found; returns the
/// number of entries added, changed or removed.
fn apply(
    name: &'static str,
    scope: &mut ScopeSnapshot,
    changed: &FxHashSet<&str>,
    found: BTreeMap<String, RawEntry>,
    cookie: &[u8],
) -> Result<u64, IncrementalError> {
    let before = scope.entries.len();
    let gone: Vec<String> = scope
        .entries
        .keys()
        .filter(|key| changed.contains(key.as_str()) && !found.contains_key(*key))
        .cloned()
        .collect();
    let changes = scope.remove_entries(gone) + scope.store_entries(found);
    scope.check_not_emptied(name, before)?;
    scope.cookie = cookie.to_vec();
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A stored cursor is state-file bytes: any of them decode or are refused, never a panic;
        /// every cursor round-trips.
        #[test]
        fn cursors_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                  id in "[0-9a-f-]{1,36}", usn: u64, at: u64) {
            let _ = Cursor::decode(&bytes);
            let cursor = Cursor { invocation_id: id, usn, at };
            prop_assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        }
    }

    #[test]
    fn cursors_round_trip_and_foreign_cookies_are_refused() {
        let cursor = Cursor {
            invocation_id: "73673978-e088-424b-8151-fe22f79995ac".into(),
            usn: 4001,
            at: 1_800_000_000,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            &b"rid=000,csn=20261202012429.000000Z#000000#000#000000"[..],
            b"adusn1::5:6",
            b"adusn1:x:five:6",
            b"adusn1:x:5:6:7",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn filters_on_back_links_cannot_be_followed_by_usn() {
        assert_eq!(
            filter_attributes("(&(objectClass=user)(!(cn>=x))(member:1.2.3:=y)(|(mail=*)))"),
            ["objectclass", "cn", "member", "mail"]
        );
        let config = |users: &str, groups: &str| -> (UsersConfig, GroupsConfig) {
            let section = |filter: &str| format!("base_dn = \"dc=x\"\nfilter = \"{filter}\"\n");
            (
                toml::from_str(&section(users)).unwrap(),
                toml::from_str(&section(groups)).unwrap(),
            )
        };
        let (users, groups) = config("(objectClass=user)", "(objectClass=group)");
        assert_eq!(untracked(&users, &groups), None);
        let (users, groups) = config(
            "(&(objectClass=user)(memberOf=CN=App,DC=x))",
            "(objectClass=group)",
        );
        assert!(untracked(&users, &groups).unwrap().contains("memberof"));
        let (users, groups) = config(
            "(objectClass=user)",
            "(member:1.2.840.113556.1.4.1941:=CN=a,DC=x)",
        );
        assert!(untracked(&users, &groups).unwrap().contains("in-chain"));
    }

    #[test]
    fn guid_filters_use_the_microsoft_byte_order() {
        let key = "d319edcc-2e67-4b1a-ba38-57bd5bc5c8d0".to_string();
        assert_eq!(
            guid_filter(&[&key]),
            "(|(objectGUID=\\cc\\ed\\19\\d3\\67\\2e\\1a\\4b\\ba\\38\\57\\bd\\5b\\c5\\c8\\d0))"
        );
        assert_eq!(parenthesized(" objectClass=group "), "(objectClass=group)");
        assert_eq!(parenthesized("(cn=*)"), "(cn=*)");
    }

    #[test]
    fn apply_drops_changed_entries_not_found_and_refuses_to_empty_a_scope() {
        let entry = |dn: &str| RawEntry {
            dn: dn.into(),
            ..RawEntry::default()
        };
        let mut scope = ScopeSnapshot {
            entries: [("a", "cn=a"), ("b", "cn=b"), ("c", "cn=c")]
                .into_iter()
                .map(|(k, dn)| (k.to_string(), entry(dn)))
                .collect(),
            ..ScopeSnapshot::default()
        };
        let changed: FxHashSet<&str> = ["a", "b", "x"].into_iter().collect();
        let found = [
            ("b".to_string(), entry("cn=b2")),
            ("d".into(), entry("cn=d")),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            apply("users", &mut scope, &changed, found, b"k").unwrap(),
            3
        );
        assert_eq!(scope.entries.keys().collect::<Vec<_>>(), ["b", "c", "d"]);
        assert_eq!(scope.cookie, b"k");
        let unchanged = [("c".to_string(), entry("cn=c"))].into_iter().collect();
        assert_eq!(
            apply("users", &mut scope, &FxHashSet::default(), unchanged, b"k").unwrap(),
            0,
            "an entry found as stored is no change"
        );
        let all: FxHashSet<&str> = ["b", "c", "d"].into_iter().collect();
        let err = apply("groups", &mut scope, &all, BTreeMap::new(), b"k").unwrap_err();
        assert!(matches!(
            err,
            IncrementalError::ScopeEmptied { before: 3, .. }
        ));
    }
}
