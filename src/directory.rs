//! The Directory model: users and groups keyed by immutable source ids, with members resolved to users.
//!
//! A [`DirectoryBuilder`] is fed raw entries by a source (users first, then groups), resolves
//! member values as they stream in (DNs case-insensitively and with escapes decoded, or user
//! names for `memberUid`), then [`DirectoryBuilder::finish`] applies the nesting mode, drops
//! duplicate group names deterministically and sorts everything so plans are reproducible.

use std::collections::{BTreeMap, HashSet};

use rustc_hash::FxHashSet;

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{GroupsConfig, LdapConfig, NestedMode, UsersConfig};
use crate::dn;
use crate::model::User;
use crate::source::incremental::{Snapshot, SnapshotRead};
use crate::source::{self, EntrySink, RawEntry, SourceError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub id: String,
    pub dn: String,
    pub name: String,
    pub description: Option<String>,
    /// Indexes into [`Directory::users`], sorted and unique.
    pub members: Vec<u32>,
}

/// Reads the configured scopes (LDAP server or LDIF file) into a Directory. All or nothing: any
/// incomplete read is an error, never a shorter directory. Incremental from `stored` when it can
/// (see `source::incremental`): a snapshot refreshed with what changed gives the same Directory
/// as a full read.
pub async fn read_with_snapshot(
    ldap: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
    stored: Option<Snapshot>,
    full: bool,
    record: bool,
) -> Result<(Directory, SnapshotRead), SourceError> {
    let started = std::time::Instant::now();
    let mut builder = DirectoryBuilder::new(groups, users);
    let read =
        source::incremental::read(ldap, users, groups, stored, full, record, &mut builder).await?;
    let read_seconds = started.elapsed().as_secs_f64();
    let mut directory = builder.finish();
    directory
        .warnings
        .extend(continuation_warnings(&read.stats.continuation_references));
    tracing::debug!(
        users = read.stats.users,
        groups = read.stats.groups,
        mode = read.mode.as_str(),
        read_seconds,
        resolve_seconds = started.elapsed().as_secs_f64() - read_seconds,
        "directory read"
    );
    Ok((directory, read))
}

/// One warning per search base that answered with continuation references (a users and a
/// groups search of the same base make one line): the entries behind them are not read.
fn continuation_warnings(skipped: &[source::SkippedReferences]) -> Vec<String> {
    let mut by_base: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for search in skipped {
        let urls = by_base.entry(search.base.as_str()).or_default();
        for url in &search.urls {
            if !urls.contains(&url.as_str()) {
                urls.push(url);
            }
        }
    }
    by_base
        .into_iter()
        .map(|(base, urls)| {
            format!(
                "search of {base}: {} continuation reference(s) skipped ({}); entries in those naming contexts are not read (point base_dn at them to sync them)",
                urls.len(),
                urls.join(", ")
            )
        })
        .collect()
}

/// A complete, consistent read of the configured scopes.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Sorted by id; shared with plans so a million memberships do not copy user data.
    pub users: Vec<Arc<User>>,
    /// Sorted by id.
    pub groups: Vec<Group>,
    pub warnings: Vec<String>,
}

impl Directory {
    pub fn user(&self, index: u32) -> &Arc<User> {
        &self.users[index as usize]
    }
}

const MAX_LISTED_WARNINGS: usize = 50;

pub struct DirectoryBuilder {
    groups_config: GroupsConfig,
    users_config: UsersConfig,
    users: Vec<User>,
    /// Normalized DNs and lower-cased names of accounts left out by `exclude_disabled`: a
    /// membership naming one is dropped without a warning.
    excluded: FxHashSet<String>,
    /// `ad_primary_group`: the objectSid of each user's primary group (their domain SID and
    /// primaryGroupID) → those users.
    by_primary_group: HashMap<Vec<u8>, Vec<u32>>,
    user_by_dn: HashMap<String, u32>,
    user_by_name: HashMap<String, u32>,
    user_ids: FxHashSet<String>,
    groups: Vec<PendingGroup>,
    warnings: Vec<String>,
    suppressed_warnings: u64,
    /// The member DN being resolved, normalized (one buffer for every member).
    scratch: String,
}

struct PendingGroup {
    group: Group,
    normalized_dn: String,
    /// Member values that were not users: maybe groups (resolved in `finish`).
    /// (normalized DN, the value as the directory wrote it).
    unresolved: Vec<(String, String)>,
}

impl DirectoryBuilder {
    pub fn new(groups_config: &GroupsConfig, users_config: &UsersConfig) -> Self {
        DirectoryBuilder {
            groups_config: groups_config.clone(),
            users_config: users_config.clone(),
            users: Vec::new(),
            excluded: FxHashSet::default(),
            by_primary_group: HashMap::default(),
            user_by_dn: HashMap::default(),
            user_by_name: HashMap::default(),
            user_ids: FxHashSet::default(),
            groups: Vec::new(),
            warnings: Vec::new(),
            suppressed_warnings: 0,
            scratch: String::new(),
        }
    }

    fn warn(&mut self, message: String) {
        if self.warnings.len() < MAX_LISTED_WARNINGS {
            self.warnings.push(message);
        } else {
            self.suppressed_warnings += 1;
        }
    }

    fn text(&mut self, entry: &RawEntry, attribute: &str) -> Option<String> {
        let value = entry.values(attribute).first()?;
        Some(match String::from_utf8(value.clone()) {
            Ok(s) => s,
            Err(_) => {
                self.warn(format!(
                    "{}: attribute \"{attribute}\" is not valid UTF-8; invalid bytes replaced with U+FFFD",
                    entry.dn
                ));
                String::from_utf8_lossy(value).into_owned()
            }
        })
    }
}

/// Whether a name holds a C0 control character or DEL (NUL, ESC, CR, LF, TAB…): such a name
/// could forge output lines or terminal escapes, and targets reject or mangle it.
fn has_control(name: &str) -> bool {
    name.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}')
}

impl EntrySink for DirectoryBuilder {
    /// Adds a user entry. Users must all be added before the first group.
    fn add_user(&mut self, entry: &RawEntry) -> Result<(), SourceError> {
        let id_attribute = self.users_config.id_attribute.clone();
        let id = entry
            .source_id(&id_attribute)
            .ok_or_else(|| SourceError::MissingId {
                dn: entry.dn.clone(),
                attribute: id_attribute.clone(),
                section: "users",
            })?;
        if !self.user_ids.insert(id.clone()) {
            self.warn(format!(
                "{}: duplicate user id {id}; entry ignored",
                entry.dn
            ));
            return Ok(());
        }
        let username_attribute = self.users_config.username_attribute.clone();
        let username = match self.text(entry, &username_attribute) {
            Some(name) => name,
            None => {
                self.warn(format!(
                    "{}: user has no \"{username_attribute}\"; its first RDN value is used as user name",
                    entry.dn
                ));
                dn::first_rdn_value(&entry.dn).unwrap_or_else(|| entry.dn.clone())
            }
        };
        if has_control(&username) {
            self.warn(format!(
                "{}: user name {username:?} contains control characters (NUL, ESC, CR/LF…); user skipped. Fix the \"{username_attribute}\" value in LDAP",
                entry.dn.escape_debug()
            ));
            return Ok(());
        }
        if self.users_config.exclude_disabled && is_disabled(entry) {
            tracing::debug!(dn = %entry.dn, "disabled account excluded (exclude_disabled)");
            self.excluded.insert(dn::normalize(&entry.dn));
            self.excluded.insert(username.to_lowercase());
            return Ok(());
        }
        let email_attribute = self.users_config.email_attribute.clone();
        let email = self.text(entry, &email_attribute);
        let index = self.users.len() as u32;
        if self.groups_config.ad_primary_group
            && let Some(sid) = primary_group_sid(entry)
        {
            self.by_primary_group.entry(sid).or_default().push(index);
        }
        self.user_by_dn.insert(dn::normalize(&entry.dn), index);
        self.user_by_name
            .entry(username.to_lowercase())
            .or_insert(index);
        self.users.push(User {
            source_id: id,
            dn: entry.dn.clone(),
            username,
            email,
        });
        Ok(())
    }

    /// Adds a group entry, resolving its user members now and keeping the rest for `finish`.
    fn add_group(&mut self, entry: &RawEntry) -> Result<(), SourceError> {
        let id_attribute = self.groups_config.id_attribute.clone();
        let id = entry
            .source_id(&id_attribute)
            .ok_or_else(|| SourceError::MissingId {
                dn: entry.dn.clone(),
                attribute: id_attribute.clone(),
                section: "groups",
            })?;
        let name_attribute = self.groups_config.name_attribute.clone();
        let name = match self.text(entry, &name_attribute) {
            Some(name) => name,
            None => {
                self.warn(format!(
                    "{}: group has no \"{name_attribute}\"; its first RDN value is used as name",
                    entry.dn
                ));
                dn::first_rdn_value(&entry.dn).unwrap_or_else(|| entry.dn.clone())
            }
        };
        if has_control(&name) {
            self.warn(format!(
                "{}: group name {name:?} contains control characters (NUL, ESC, CR/LF…); group skipped. Fix the \"{name_attribute}\" value in LDAP",
                entry.dn.escape_debug()
            ));
            return Ok(());
        }
        let description_attribute = self.groups_config.description_attribute.clone();
        let description = self.text(entry, &description_attribute);
        let mut members = Vec::new();
        let mut unresolved = Vec::new();
        match self.groups_config.member_attribute.clone() {
            Some(configured) => {
                self.warn_members_elsewhere(entry, &name, &configured);
                self.read_members(entry, &configured, &mut members, &mut unresolved);
            }
            None => {
                for attribute in source::MEMBERSHIP_ATTRIBUTES {
                    self.read_members(entry, attribute, &mut members, &mut unresolved);
                }
            }
        }
        if self.groups_config.ad_primary_group
            && let Some(sid) = entry.values("objectSid").first()
            && let Some(primary) = self.by_primary_group.get(sid)
        {
            members.extend_from_slice(primary);
        }
        self.groups.push(PendingGroup {
            normalized_dn: dn::normalize(&entry.dn),
            group: Group {
                id,
                dn: entry.dn.clone(),
                name,
                description,
                members,
            },
            unresolved,
        });
        Ok(())
    }
}

impl DirectoryBuilder {
    /// Resolves the values of one membership attribute: user names for `memberUid`, DNs
    /// otherwise (a `uniqueMember`'s optional `#'…'B` suffix stripped). DNs that are not users
    /// may be groups, resolved in `finish`.
    fn read_members(
        &mut self,
        entry: &RawEntry,
        attribute: &str,
        members: &mut Vec<u32>,
        unresolved: &mut Vec<(String, String)>,
    ) {
        let names = source::holds_user_names(attribute);
        for raw in entry.values(attribute) {
            let Ok(value) = std::str::from_utf8(raw) else {
                self.warn(format!(
                    "{}: a \"{attribute}\" value is not valid UTF-8; skipped",
                    entry.dn
                ));
                continue;
            };
            if names {
                let key = value.trim().to_lowercase();
                match self.user_by_name.get(&key) {
                    Some(&index) => members.push(index),
                    None if self.excluded.contains(&key) => {}
                    None => self.warn(format!(
                        "{}: member user name {value:?} is not a user in [users] scope; skipped",
                        entry.dn
                    )),
                }
            } else {
                dn::normalize_into(strip_unique_member_uid(value), &mut self.scratch);
                let normalized = self.scratch.as_str();
                match self.user_by_dn.get(normalized) {
                    Some(&index) => members.push(index),
                    None if self.excluded.contains(normalized) => {}
                    None => unresolved.push((normalized.to_string(), value.to_string())),
                }
            }
        }
    }

    /// With `member_attribute` set, a group whose members all sit in another membership
    /// attribute would sync empty: say so, by name.
    fn warn_members_elsewhere(&mut self, entry: &RawEntry, name: &str, configured: &str) {
        if !entry.values(configured).is_empty() {
            return;
        }
        let elsewhere: Vec<&str> = source::MEMBERSHIP_ATTRIBUTES
            .into_iter()
            .filter(|a| !a.eq_ignore_ascii_case(configured) && !entry.values(a).is_empty())
            .collect();
        if !elsewhere.is_empty() {
            self.warn(format!(
                "group {name:?} ({}) has no \"{configured}\" values but has {}: it is synced with no members. Remove [groups] member_attribute to read each group's members from the attribute its class uses",
                entry.dn,
                elsewhere
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
    }

    pub fn finish(mut self) -> Directory {
        // Sort users by id and remap member indexes.
        let mut order: Vec<u32> = (0..self.users.len() as u32).collect();
        order.sort_by(|&a, &b| {
            self.users[a as usize]
                .source_id
                .cmp(&self.users[b as usize].source_id)
        });
        let mut remap = vec![0u32; self.users.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old as usize] = new as u32;
        }
        let mut slots: Vec<Option<User>> = self.users.drain(..).map(Some).collect();
        let users: Vec<Arc<User>> = order
            .iter()
            .filter_map(|&old| slots[old as usize].take().map(Arc::new))
            .collect();

        // Duplicate group ids, then duplicate names: keep the first by DN, report the rest.
        let mut pending = std::mem::take(&mut self.groups);
        pending.sort_by(|a, b| a.normalized_dn.cmp(&b.normalized_dn));
        let mut seen_ids = HashSet::new();
        let mut kept_by_name: BTreeMap<String, String> = BTreeMap::new();
        let mut kept = Vec::with_capacity(pending.len());
        for group in pending {
            if !seen_ids.insert(group.group.id.clone()) {
                self.warn(format!(
                    "{}: duplicate group id {}; entry ignored",
                    group.group.dn, group.group.id
                ));
                continue;
            }
            let key = group.group.name.to_lowercase();
            if let Some(first) = kept_by_name.get(&key) {
                let message = format!(
                    "duplicate group name {:?}: {} is synced, {} is skipped (rename one of them in LDAP)",
                    group.group.name, first, group.group.dn
                );
                self.warn(message);
                continue;
            }
            kept_by_name.insert(key, group.group.dn.clone());
            kept.push(group);
        }
        kept.sort_by(|a, b| a.group.id.cmp(&b.group.id));
        let group_by_dn: HashMap<&str, u32> = kept
            .iter()
            .enumerate()
            .map(|(i, g)| (g.normalized_dn.as_str(), i as u32))
            .collect();

        // Direct user members (remapped) and direct subgroups.
        let mut direct_users: Vec<Vec<u32>> = Vec::with_capacity(kept.len());
        let mut direct_groups: Vec<Vec<u32>> = Vec::with_capacity(kept.len());
        let mut unknown = Vec::new();
        for group in &kept {
            let mut members: Vec<u32> = group
                .group
                .members
                .iter()
                .map(|&i| remap[i as usize])
                .collect();
            members.sort_unstable();
            members.dedup();
            direct_users.push(members);
            let mut subgroups = Vec::new();
            for (normalized, original) in &group.unresolved {
                match group_by_dn.get(normalized.as_str()) {
                    Some(&index) => subgroups.push(index),
                    None => unknown.push((group.group.dn.clone(), original.clone())),
                }
            }
            subgroups.sort_unstable();
            subgroups.dedup();
            direct_groups.push(subgroups);
        }
        for (group_dn, member_dn) in unknown {
            self.warn(format!(
                "{group_dn}: member {member_dn} is neither a user in [users] scope nor a synced group; skipped"
            ));
        }

        let nested = self.groups_config.nested;
        let groups: Vec<Group> = kept
            .into_iter()
            .enumerate()
            .map(|(index, pending)| {
                let members = match nested {
                    NestedMode::Ignore => direct_users[index].clone(),
                    NestedMode::Flatten => transitive_members(index, &direct_users, &direct_groups),
                };
                Group {
                    members,
                    ..pending.group
                }
            })
            .collect();

        let mut warnings = self.warnings;
        if self.suppressed_warnings > 0 {
            warnings.push(format!("… and {} more warnings", self.suppressed_warnings));
        }
        Directory {
            users,
            groups,
            warnings,
        }
    }
}

/// Users reachable from `start` through subgroups; cycles are visited once.
fn transitive_members(start: usize, users: &[Vec<u32>], groups: &[Vec<u32>]) -> Vec<u32> {
    if groups[start].is_empty() {
        return users[start].clone();
    }
    let mut visited = vec![false; users.len()];
    let mut stack = vec![start];
    let mut members = Vec::new();
    while let Some(index) = stack.pop() {
        if std::mem::replace(&mut visited[index], true) {
            continue;
        }
        members.extend_from_slice(&users[index]);
        stack.extend(groups[index].iter().map(|&g| g as usize));
    }
    members.sort_unstable();
    members.dedup();
    members
}

/// AD `userAccountControl` with the ACCOUNTDISABLE bit (0x2) set.
fn is_disabled(entry: &RawEntry) -> bool {
    entry
        .values("userAccountControl")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|flags| flags & 0x2 != 0)
}

/// The objectSid of a user's primary group: the user's own SID (binary, MS-DTYP 2.4.2.2) with
/// its last sub-authority, the RID, replaced by `primaryGroupID`.
fn primary_group_sid(entry: &RawEntry) -> Option<Vec<u8>> {
    let sid = entry.values("objectSid").first()?;
    let rid: u32 = std::str::from_utf8(entry.values("primaryGroupID").first()?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let count = usize::from(*sid.get(1)?);
    if count == 0 || sid.len() != 8 + 4 * count {
        return None;
    }
    let mut group = sid.clone();
    group[sid.len() - 4..].copy_from_slice(&rid.to_le_bytes());
    Some(group)
}

/// `uniqueMember` values may carry an optional `#'0101'B` UID suffix (RFC 4519).
fn strip_unique_member_uid(value: &str) -> &str {
    match value.rfind("#'") {
        Some(pos) if value.ends_with("'B") => &value[..pos],
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> RawEntry {
        RawEntry::for_test(dn, attrs)
    }

    fn configs(nested: NestedMode, member: &str) -> (GroupsConfig, UsersConfig) {
        let text = format!(
            "[ldap]\nldif_file=\"x\"\n[groups]\nbase_dn=\"ou=g\"\nmember_attribute=\"{member}\"\nnested=\"{}\"\n[users]\nbase_dn=\"ou=p\"\n[state]\npath=\"s\"\n[[sinks]]\nname=\"f\"\ntype=\"file\"\npath=\"-\"\n",
            match nested {
                NestedMode::Flatten => "flatten",
                NestedMode::Ignore => "ignore",
            }
        );
        let c = crate::config::TestConfig::parse(&text, std::path::Path::new("t.toml")).unwrap();
        (c.groups, c.users)
    }

    fn build(nested: NestedMode) -> Directory {
        let (g, u) = configs(nested, "member");
        let mut b = DirectoryBuilder::new(&g, &u);
        b.add_user(&entry(
            "uid=smith\\, j,ou=p",
            &[("entryUUID", &["u2"]), ("uid", &["smith"])],
        ))
        .unwrap();
        b.add_user(&entry(
            "uid=Jürgen,ou=p",
            &[("entryUUID", &["u1"]), ("uid", &["juergen"])],
        ))
        .unwrap();
        b.add_group(&entry(
            "cn=outer,ou=g",
            &[
                ("entryUUID", &["g1"]),
                ("cn", &["outer"]),
                (
                    "member",
                    &["UID=SMITH\\2C J,OU=P", "cn=inner,ou=g", "cn=ghost,ou=p"],
                ),
            ],
        ))
        .unwrap();
        b.add_group(&entry(
            "cn=inner,ou=g",
            &[
                ("entryUUID", &["g2"]),
                ("cn", &["inner"]),
                ("member", &["uid=J\\C3\\BCrgen,ou=p", "cn=outer,ou=g"]),
            ],
        ))
        .unwrap();
        b.finish()
    }

    #[test]
    fn flatten_resolves_escaped_dns_and_survives_cycles() {
        let d = build(NestedMode::Flatten);
        assert_eq!(d.users[0].source_id, "u1");
        let outer = d.groups.iter().find(|g| g.name == "outer").unwrap();
        let names: Vec<_> = outer
            .members
            .iter()
            .map(|&i| d.user(i).username.as_str())
            .collect();
        assert_eq!(names, ["juergen", "smith"]);
        let inner = d.groups.iter().find(|g| g.name == "inner").unwrap();
        assert_eq!(inner.members.len(), 2, "cycle inner→outer→inner adds smith");
        assert!(d.warnings.iter().any(|w| w.contains("ghost")));
    }

    #[test]
    fn ignore_drops_group_members() {
        let d = build(NestedMode::Ignore);
        let outer = d.groups.iter().find(|g| g.name == "outer").unwrap();
        assert_eq!(outer.members.len(), 1);
    }

    #[test]
    fn names_with_control_characters_are_skipped_with_a_warning() {
        let (g, u) = configs(NestedMode::Flatten, "member");
        let mut b = DirectoryBuilder::new(&g, &u);
        b.add_user(&entry(
            "uid=ok,ou=p",
            &[("entryUUID", &["u1"]), ("uid", &["ok"])],
        ))
        .unwrap();
        b.add_user(&entry(
            "uid=evil,ou=p",
            &[("entryUUID", &["u2"]), ("uid", &["ev\0il"])],
        ))
        .unwrap();
        for (id, name) in [
            ("g1", "fine"),
            ("g2", "x\n  + create fake"),
            ("g3", "\u{1b}[31mred"),
        ] {
            b.add_group(&entry(
                &format!("cn={id},ou=g"),
                &[
                    ("entryUUID", &[id]),
                    ("cn", &[name]),
                    ("member", &["uid=ok,ou=p"]),
                ],
            ))
            .unwrap();
        }
        let d = b.finish();
        let names: Vec<&str> = d.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["fine"]);
        let users: Vec<&str> = d.users.iter().map(|u| u.username.as_str()).collect();
        assert_eq!(users, ["ok"]);
        let skipped: Vec<&String> = d
            .warnings
            .iter()
            .filter(|w| w.contains("control characters"))
            .collect();
        assert_eq!(skipped.len(), 3, "{:?}", d.warnings);
        assert!(skipped.iter().all(|w| !has_control(w)), "{skipped:?}");
    }

    #[test]
    fn duplicate_names_keep_the_first_dn_and_warn() {
        let (g, u) = configs(NestedMode::Flatten, "member");
        let mut b = DirectoryBuilder::new(&g, &u);
        b.add_group(&entry(
            "cn=Dup,ou=b",
            &[("entryUUID", &["x2"]), ("cn", &["Dup"])],
        ))
        .unwrap();
        b.add_group(&entry(
            "cn=dup,ou=a",
            &[("entryUUID", &["x1"]), ("cn", &["dup"])],
        ))
        .unwrap();
        let d = b.finish();
        assert_eq!(d.groups.len(), 1);
        assert_eq!(d.groups[0].dn, "cn=dup,ou=a");
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("duplicate group name"))
        );
    }

    #[test]
    fn member_uid_values_are_user_names() {
        let (g, u) = configs(NestedMode::Flatten, "memberUid");
        let mut b = DirectoryBuilder::new(&g, &u);
        b.add_user(&entry(
            "uid=a,ou=p",
            &[("entryUUID", &["u1"]), ("uid", &["Alice"])],
        ))
        .unwrap();
        b.add_group(&entry(
            "cn=p,ou=g",
            &[
                ("entryUUID", &["g"]),
                ("cn", &["p"]),
                ("memberUid", &["alice", "bob"]),
            ],
        ))
        .unwrap();
        let d = b.finish();
        assert_eq!(d.groups[0].members, vec![0]);
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("\"bob\""), "{:?}", d.warnings);
    }

    #[test]
    fn missing_id_is_an_error_and_non_utf8_is_a_warning() {
        let (g, u) = configs(NestedMode::Flatten, "member");
        let mut b = DirectoryBuilder::new(&g, &u);
        assert!(b.add_group(&entry("cn=x,ou=g", &[("cn", &["x"])])).is_err());
        let mut e = entry("cn=y,ou=g", &[("entryUUID", &["g"])]);
        e.attrs.insert("cn".into(), vec![vec![0xff, b'a']]);
        b.add_group(&e).unwrap();
        let d = b.finish();
        assert_eq!(d.groups[0].name, "\u{fffd}a");
        assert!(d.warnings[0].contains("not valid UTF-8"));
    }

    #[test]
    fn object_guid_uses_microsoft_byte_order() {
        let mut e = RawEntry::default();
        e.attrs.insert(
            "objectguid".into(),
            vec![vec![
                0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff,
            ]],
        );
        assert_eq!(
            e.source_id("objectGUID").unwrap(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
    }

    /// Users alice (u1) and bob (u2); with `extra` appended to `[groups]`/`[users]` keys.
    fn builder_with(groups_extra: &str, users_extra: &str) -> DirectoryBuilder {
        let text = format!(
            "[ldap]\nldif_file=\"x\"\n[groups]\nbase_dn=\"ou=g\"\n{groups_extra}\n[users]\nbase_dn=\"ou=p\"\n{users_extra}\n[state]\npath=\"s\"\n[[sinks]]\nname=\"f\"\ntype=\"file\"\npath=\"-\"\n"
        );
        let c = crate::config::TestConfig::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let mut b = DirectoryBuilder::new(&c.groups, &c.users);
        for (id, uid) in [("u1", "alice"), ("u2", "bob")] {
            b.add_user(&entry(
                &format!("uid={uid},ou=p"),
                &[("entryUUID", &[id]), ("uid", &[uid])],
            ))
            .unwrap();
        }
        b
    }

    fn add_mixed_groups(b: &mut DirectoryBuilder) {
        for (id, class, attribute, values) in [
            ("g1", "groupOfNames", "member", &["uid=alice,ou=p"][..]),
            (
                "g2",
                "groupOfUniqueNames",
                "uniqueMember",
                &["uid=bob,ou=p#'0101'B", "uid=alice,ou=p"][..],
            ),
            ("g3", "posixGroup", "memberUid", &["BOB"][..]),
        ] {
            b.add_group(&entry(
                &format!("cn={id},ou=g"),
                &[
                    ("entryUUID", &[id]),
                    ("cn", &[id]),
                    ("objectClass", &[class]),
                    (attribute, values),
                ],
            ))
            .unwrap();
        }
    }

    #[test]
    fn without_member_attribute_each_group_keeps_the_members_of_its_class() {
        let mut b = builder_with("", "");
        add_mixed_groups(&mut b);
        let d = b.finish();
        let members: Vec<Vec<u32>> = d.groups.iter().map(|g| g.members.clone()).collect();
        assert_eq!(members, [vec![0], vec![0, 1], vec![1]]);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn a_set_member_attribute_warns_about_groups_whose_members_are_elsewhere() {
        let mut b = builder_with("member_attribute=\"member\"", "");
        add_mixed_groups(&mut b);
        let d = b.finish();
        let members: Vec<usize> = d.groups.iter().map(|g| g.members.len()).collect();
        assert_eq!(members, [1, 0, 0]);
        assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
        assert!(
            d.warnings[0].starts_with("group \"g2\"") && d.warnings[0].contains("\"uniqueMember\"")
        );
        assert!(
            d.warnings[1].starts_with("group \"g3\"") && d.warnings[1].contains("\"memberUid\"")
        );
    }

    /// S-1-5-21-1-2-3-RID as objectSid bytes.
    fn sid(rid: u32) -> Vec<u8> {
        let mut sid = vec![1, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21, 1, 2, 3, rid] {
            sid.extend_from_slice(&u32::to_le_bytes(sub));
        }
        sid
    }

    #[test]
    fn ad_primary_group_and_disabled_accounts() {
        let mut b = builder_with("ad_primary_group = true", "exclude_disabled = true");
        let mut user = |dn: &str, id: &str, name: &str, uac: &str, primary: &str| {
            let mut e = entry(
                dn,
                &[
                    ("entryUUID", &[id]),
                    ("uid", &[name]),
                    ("userAccountControl", &[uac]),
                    ("primaryGroupID", &[primary]),
                ],
            );
            e.attrs.insert("objectsid".into(), vec![sid(1100)]);
            b.add_user(&e).unwrap();
        };
        user("uid=carol,ou=p", "u3", "carol", "512", "1200");
        user("uid=dave,ou=p", "u4", "dave", "514", "1200");
        user("uid=erin,ou=p", "u5", "erin", "512", "513");
        let mut group = entry(
            "cn=g,ou=g",
            &[
                ("entryUUID", &["g"]),
                ("cn", &["g"]),
                ("member", &["uid=alice,ou=p", "uid=dave,ou=p"]),
                ("memberUid", &["dave"]),
            ],
        );
        group.attrs.insert("objectsid".into(), vec![sid(1200)]);
        b.add_group(&group).unwrap();
        let d = b.finish();
        let names: Vec<&str> = d.groups[0]
            .members
            .iter()
            .map(|&i| d.user(i).username.as_str())
            .collect();
        assert_eq!(
            names,
            ["alice", "carol"],
            "primary group by RID, disabled dave left out"
        );
        assert!(d.users.iter().all(|u| u.username != "dave"));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn continuation_references_make_one_warning_per_base() {
        let skipped = |base: &str, urls: &[&str]| source::SkippedReferences {
            base: base.into(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
        };
        let warnings = continuation_warnings(&[
            skipped("dc=x", &["ldap://a/dc=x", "ldap://b/dc=x"]),
            skipped("dc=x", &["ldap://a/dc=x"]),
            skipped("ou=g,dc=x", &["ldap://c/ou=g,dc=x"]),
        ]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("search of dc=x: 2 continuation reference(s)"));
        assert!(warnings[1].starts_with("search of ou=g,dc=x: 1 continuation"));
    }

    #[test]
    fn unique_member_uid_suffix_is_stripped() {
        assert_eq!(strip_unique_member_uid("cn=a,dc=x#'0101'B"), "cn=a,dc=x");
        assert_eq!(strip_unique_member_uid("cn=a#b,dc=x"), "cn=a#b,dc=x");
    }
}
