//! `type = "pingone_provisioning_sync"`: PingOne's external-group import with start/next tokens, one sync cycle per run.
//!
//! Every run is one cycle of `POST {api}/environments/{env}/propagation/provisioningSyncs/{id}`
//! requests (Content-Type `application/vnd.pingidentity.propagation.provisioningsync.groupimport+json`).
//! Each batch carries `startToken` = the token stored after the last complete cycle (absent on
//! the first cycle, after which none is stored, and on `sync --full`); the last batch carries
//! `nextToken`, a new opaque token ldapsync generates (timestamp high-water mark + random run
//! id). The token is proposed to the engine only after that last batch is accepted, so a failed
//! cycle is retried from the old token next run.
//!
//! A cycle without a start token is a full cycle: every group the directory holds now is sent
//! (rebuilt from the ledger plus the plan) without `operation`; deleted groups are also sent,
//! explicitly `DELETED`, because whether PingOne deletes unseen groups after a full cycle is
//! UNCONFIRMED. An incremental cycle sends only touched groups, `CREATED` / `UPDATED` with full
//! attributes and the full `member` list, or `DELETED` with the last known attributes.
//! Batches are split by `batch_size` and `max_batch_bytes`; a group too large to fit in a body
//! on its own is reported as failed, never truncated, and the cycle is then left open (no
//! `nextToken`) so the token does not advance.

use crate::config::Invalid;
use crate::secret::SecretField;
use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::connection_fields;
use crate::ledger::{Ledger, LedgerGroup};
use crate::model::{GroupSpec, OpKind, Operation, Plan};
use crate::plan::apply_to_ledger;
use crate::sinks::http::{Body, HttpClient, HttpError, HttpSettings};
use crate::sinks::target;
use crate::sinks::{Recorder, Sink, SinkError};

/// The vendor content type of the group import (docs/pingone.md).
pub const IMPORT_CONTENT_TYPE: &str =
    "application/vnd.pingidentity.propagation.provisioningsync.groupimport+json";

/// Attribute keys ldapsync sets itself; `extra_attributes` may not use them.
const RESERVED_ATTRIBUTES: [&str; 5] = ["name", "dn", "member", "active", "objectguid"];

/// How members are listed in the `member` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MemberFormat {
    /// The members' DNs, like the AD `member` attribute (default).
    #[default]
    Dn,
    /// The members' immutable source ids (entryUUID / objectGUID).
    SourceId,
}

/// A configured extra attribute: one string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AttributeValue {
    One(String),
    Many(Vec<String>),
}

connection_fields! {
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProvisioningSyncConfig {
        pub provisioning_sync_id: String,
        /// Groups per request.
        #[serde(default = "default_batch_size")]
        pub batch_size: usize,
        /// Largest request body, in bytes (the real limit is UNCONFIRMED).
        #[serde(default = "default_max_batch_bytes")]
        pub max_batch_bytes: usize,
        #[serde(default)]
        pub member_format: MemberFormat,
        /// Send `objectguid` = [source id]. Unset: when the group DN is in AD form (`…,DC=…`)
        /// and the source id is GUID-shaped.
        pub objectguid: Option<bool>,
        /// Static attributes added to every group.
        #[serde(default)]
        pub extra_attributes: BTreeMap<String, AttributeValue>,
    }
}

fn default_batch_size() -> usize {
    100
}

fn default_max_batch_bytes() -> usize {
    1_000_000
}

impl crate::sinks::SinkType for ProvisioningSyncConfig {
    fn secret_fields(&self) -> Vec<SecretField<'_>> {
        vec![self.connection().secret_field()]
    }
    fn validate(&self) -> Result<(), Invalid> {
        self.connection().validate()?;
        let id = self.provisioning_sync_id.trim();
        if id.is_empty() || id.contains(['/', '?', '#']) {
            return Err((
                "provisioning_sync_id",
                "must be the provisioning sync's id".into(),
            ));
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err(("batch_size", "must be between 1 and 1000".into()));
        }
        if self.max_batch_bytes < 1024 {
            return Err(("max_batch_bytes", "must be at least 1024".into()));
        }
        for key in self.extra_attributes.keys() {
            if RESERVED_ATTRIBUTES.contains(&key.as_str()) {
                return Err((
                    "extra_attributes",
                    format!("{key:?} is set by ldapsync and cannot be configured"),
                ));
            }
        }
        Ok(())
    }
    fn build(&self, name: String, http: HttpSettings) -> crate::sinks::Built {
        Ok(Box::new(ProvisioningSyncSink::new(name, self, http)?))
    }
}

/// One group of a cycle: its JSON entry, the plan operations it carries, and its size.
#[derive(Debug)]
pub(crate) struct Entry<'p> {
    pub group: GroupSpec,
    pub ops: Vec<&'p Operation>,
    pub body: Value,
    pub size: usize,
}

/// Everything one cycle would send, before splitting into batches.
#[derive(Debug)]
pub(crate) struct Cycle<'p> {
    pub full: bool,
    pub start_token: Option<String>,
    pub entries: Vec<Entry<'p>>,
}

/// The batches of a cycle (indices into its entries) and the entries too big to send.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub batches: Vec<Vec<usize>>,
    pub oversize: Vec<usize>,
}

fn looks_like_guid(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Splits entries of the given sizes into batches of at most `batch_size` entries whose
/// body (`overhead` + entries + separators) stays within `max_bytes`. Entries that cannot fit
/// even alone are returned as `oversize`. Order is kept.
pub(crate) fn split_batches(
    sizes: &[usize],
    batch_size: usize,
    max_bytes: usize,
    overhead: usize,
) -> Split {
    let mut batches = Vec::new();
    let mut oversize = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = overhead;
    for (index, &size) in sizes.iter().enumerate() {
        if overhead + size > max_bytes {
            oversize.push(index);
            continue;
        }
        let separator = usize::from(!current.is_empty());
        if current.len() >= batch_size.max(1) || bytes + separator + size > max_bytes {
            batches.push(std::mem::take(&mut current));
            bytes = overhead;
        }
        bytes += usize::from(!current.is_empty()) + size;
        current.push(index);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    Split { batches, oversize }
}

/// A new opaque cycle token: a UTC high-water mark plus a random run id.
pub(crate) fn new_token() -> String {
    format!(
        "ldapsync:{}:{:016x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        rand::random::<u64>()
    )
}

impl ProvisioningSyncConfig {
    fn send_objectguid(&self, group: &LedgerGroup) -> bool {
        self.objectguid
            .unwrap_or_else(|| group.dn.contains("DC=") && looks_like_guid(&group.source_id))
    }

    /// The `attributes` map of a group as last known (`group` from the ledger or the plan's result).
    fn attributes(&self, group: &LedgerGroup) -> Value {
        let mut members: Vec<&str> = group
            .members
            .iter()
            .map(|(id, m)| match self.member_format {
                MemberFormat::Dn => m.dn.as_str(),
                MemberFormat::SourceId => id.as_ref(),
            })
            .collect();
        members.sort_unstable();
        let mut attributes = Map::new();
        for (key, value) in &self.extra_attributes {
            let value = match value {
                AttributeValue::One(v) => json!(v),
                AttributeValue::Many(v) => json!(v),
            };
            attributes.insert(key.clone(), value);
        }
        attributes.insert("name".into(), json!(group.name));
        attributes.insert("dn".into(), json!(group.dn));
        attributes.insert("member".into(), json!(members));
        attributes.insert("active".into(), json!(true));
        if self.send_objectguid(group) {
            attributes.insert("objectguid".into(), json!([group.source_id]));
        }
        Value::Object(attributes)
    }

    fn entry<'p>(
        &self,
        group: GroupSpec,
        state: &LedgerGroup,
        operation: Option<&str>,
        ops: Vec<&'p Operation>,
    ) -> Entry<'p> {
        let mut body = json!({"uniqueId": group.source_id, "attributes": self.attributes(state)});
        if let (Some(op), Some(object)) = (operation, body.as_object_mut()) {
            object.insert("operation".into(), json!(op));
        }
        let size = serde_json::to_vec(&body).map(|b| b.len()).unwrap_or(0);
        Entry {
            group,
            ops,
            body,
            size,
        }
    }

    /// Builds the cycle for `plan`: full when asked, or when no token is stored yet.
    pub(crate) fn cycle<'p>(&self, plan: &'p Plan, ledger: &Ledger, full: bool) -> Cycle<'p> {
        let full = full || plan.full || ledger.cursor.is_none();
        let mut after = ledger.clone();
        apply_to_ledger(&mut after, plan);
        // The operations of each group, in plan order; groups in order of first appearance.
        let mut order: Vec<&str> = Vec::new();
        let mut touched: BTreeMap<&str, Vec<&'p Operation>> = BTreeMap::new();
        for op in &plan.operations {
            let id = op.group().source_id.as_str();
            let ops = touched.entry(id).or_default();
            if ops.is_empty() {
                order.push(id);
            }
            ops.push(op);
        }
        let mut entries = Vec::new();
        if full {
            let mut present: Vec<&LedgerGroup> = after.groups.values().collect();
            present.sort_by(|a, b| (&a.name, &a.source_id).cmp(&(&b.name, &b.source_id)));
            for state in present {
                let ops = touched.remove(state.source_id.as_str()).unwrap_or_default();
                let spec = ops
                    .first()
                    .map(|op| op.group().clone())
                    .unwrap_or_else(|| GroupSpec::from(state));
                entries.push(self.entry(spec, state, None, ops));
            }
        }
        for id in order {
            let Some(ops) = touched.remove(id) else {
                continue; // sent above, in a full cycle
            };
            let Some(first) = ops.first() else { continue };
            let spec = first.group().clone();
            if let Operation::Delete { .. } = first {
                // The last known attributes, from the ledger as it was before this cycle.
                if let Some(state) = ledger.groups.get(id) {
                    entries.push(self.entry(spec, state, Some("DELETED"), ops));
                }
                continue;
            }
            let Some(state) = after.groups.get(id) else {
                continue;
            };
            let operation = if ops.iter().any(|op| matches!(op, Operation::Create { .. })) {
                "CREATED"
            } else {
                "UPDATED"
            };
            entries.push(self.entry(spec, state, Some(operation), ops));
        }
        Cycle {
            full,
            start_token: if full { None } else { ledger.cursor.clone() },
            entries,
        }
    }

    /// The request body of one batch.
    fn batch_body(cycle: &Cycle<'_>, indices: &[usize], next_token: Option<&str>) -> Value {
        let groups: Vec<Value> = indices
            .iter()
            .filter_map(|&i| cycle.entries.get(i).map(|e| e.body.clone()))
            .collect();
        let mut body = json!({ "groups": groups });
        if let Some(object) = body.as_object_mut() {
            if let Some(start) = &cycle.start_token {
                object.insert("startToken".into(), json!(start));
            }
            if let Some(next) = next_token {
                object.insert("nextToken".into(), json!(next));
            }
        }
        body
    }

    /// The body of a batch without groups, with both tokens: what every batch costs besides its groups.
    fn overhead(cycle: &Cycle<'_>, next_token: &str) -> usize {
        serde_json::to_vec(&Self::batch_body(cycle, &[], Some(next_token)))
            .map(|b| b.len())
            .unwrap_or(0)
    }

    /// Splits a cycle; an empty cycle (a full cycle of an empty directory) is one empty batch.
    fn split(&self, cycle: &Cycle<'_>, next_token: &str) -> Split {
        let sizes: Vec<usize> = cycle.entries.iter().map(|e| e.size).collect();
        let mut split = split_batches(
            &sizes,
            self.batch_size,
            self.max_batch_bytes,
            Self::overhead(cycle, next_token),
        );
        if cycle.entries.is_empty() {
            split.batches.push(Vec::new());
        }
        split
    }
}

pub struct ProvisioningSyncSink {
    name: String,
    config: ProvisioningSyncConfig,
    http: HttpClient,
}

impl ProvisioningSyncSink {
    pub fn new(
        name: String,
        config: &ProvisioningSyncConfig,
        settings: HttpSettings,
    ) -> Result<ProvisioningSyncSink, SinkError> {
        let http = config.connection().http_client(&name, settings)?;
        Ok(ProvisioningSyncSink {
            name,
            config: config.clone(),
            http,
        })
    }

    fn path(&self) -> String {
        format!(
            "/propagation/provisioningSyncs/{}",
            urlencoding::encode(self.config.provisioning_sync_id.trim())
        )
    }

    fn too_large(&self, entry: &Entry<'_>) -> String {
        let members = entry
            .body
            .pointer("/attributes/member")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        format!(
            "group \"{}\" with {members} member(s) is {} bytes, more than max_batch_bytes ({}) allows for one request; it was not sent (ldapsync never truncates a member list) and the cycle was left open, so the token did not advance",
            entry.group.name, entry.size, self.config.max_batch_bytes
        )
    }

    fn batch_error(&self, batch: usize, batches: usize, error: HttpError) -> SinkError {
        let hint = match error.status() {
            Some(404) => " (check provisioning_sync_id and environment_id)",
            Some(415) => " (the target refused the group-import content type)",
            Some(401) | Some(403) => " (check the worker app's credentials and roles)",
            Some(413) => " (lower max_batch_bytes or batch_size)",
            _ => "",
        };
        SinkError::Target {
            sink: self.name.clone(),
            message: format!(
                "provisioning sync cycle stopped at batch {batch} of {batches}: {error}{hint}; the token was not advanced, the next run resends from the last complete cycle"
            ),
        }
    }

    /// Records the operations a group's accepted batch carried.
    fn record(entry: &Entry<'_>, recorder: &mut Recorder<'_>) -> Result<(), SinkError> {
        for op in &entry.ops {
            match op {
                Operation::Create { group, .. } => recorder.created(group, &group.source_id)?,
                Operation::Adopt { group, present, .. } => {
                    let target = group.target_id.as_deref().unwrap_or(&group.source_id);
                    recorder.adopted(group, target, present)?
                }
                Operation::Update { group, .. } => {
                    let target = group.target_id.as_deref().unwrap_or(&group.source_id);
                    recorder.updated(group, target)?
                }
                Operation::MemberAdd { group, members }
                | Operation::MemberRemove { group, members } => {
                    recorder.members_changed(op.kind(), group, members)?
                }
                Operation::Delete { group } => recorder.deleted(group)?,
                // Never planned for this sink (it does not provision users).
                Operation::UserCreate { .. }
                | Operation::UserDeactivate { .. }
                | Operation::UserReactivate { .. } => {}
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for ProvisioningSyncSink {
    fn identity(&self) -> (&str, &'static str) {
        (&self.name, "pingone_provisioning_sync")
    }

    /// Gets a token: the import endpoint has no harmless read.
    async fn check(&self) -> Result<(), SinkError> {
        self.http
            .authenticate()
            .await
            .map_err(target::http_error(&self.name))
    }

    async fn apply(&self, plan: &Plan, recorder: &mut Recorder<'_>) -> Result<(), SinkError> {
        let cycle = self
            .config
            .cycle(plan, recorder.planned_against(), plan.full);
        let next_token = new_token();
        let split = self.config.split(&cycle, &next_token);
        for &index in &split.oversize {
            if let Some(entry) = cycle.entries.get(index) {
                let message = self.too_large(entry);
                if entry.ops.is_empty() {
                    recorder.failed(OpKind::Update, &entry.group, &message, 0);
                }
                for op in &entry.ops {
                    recorder.failed(op.kind(), &entry.group, &message, op.weight());
                }
            }
        }
        let complete = split.oversize.is_empty();
        let path = self.path();
        let total = split.batches.len();
        tracing::info!(sink = %self.name, full = cycle.full, groups = cycle.entries.len(), batches = total, start_token = cycle.start_token.is_some(), "sending a provisioning sync cycle");
        for (number, indices) in split.batches.iter().enumerate() {
            let last = number + 1 == total;
            let next = (last && complete).then_some(next_token.as_str());
            let body = Body::typed(
                IMPORT_CONTENT_TYPE,
                &ProvisioningSyncConfig::batch_body(&cycle, indices, next),
            );
            let accepted = match self.http.send(Method::POST, &path, &[], Some(&body)).await {
                Ok(response) => response.success().map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(error) = accepted {
                return Err(self.batch_error(number + 1, total, error));
            }
            for &index in indices {
                if let Some(entry) = cycle.entries.get(index) {
                    Self::record(entry, recorder)?;
                }
            }
        }
        if complete {
            recorder.set_cursor(next_token);
        }
        Ok(())
    }

    fn preview(&self, plan: &Plan, ledger: &Ledger, full: bool) -> Option<Value> {
        let cycle = self.config.cycle(plan, ledger, full);
        let next_token = new_token();
        let split = if plan.is_empty() && !(full || plan.full) {
            Split {
                batches: Vec::new(),
                oversize: Vec::new(),
            }
        } else {
            self.config.split(&cycle, &next_token)
        };
        let complete = split.oversize.is_empty();
        let total = split.batches.len();
        let batches: Vec<Value> = split
            .batches
            .iter()
            .enumerate()
            .map(|(number, indices)| {
                let next = (number + 1 == total && complete).then_some(next_token.as_str());
                json!({
                    "method": "POST",
                    "path": self.path(),
                    "content_type": IMPORT_CONTENT_TYPE,
                    "body": ProvisioningSyncConfig::batch_body(&cycle, indices, next),
                })
            })
            .collect();
        let rejected: Vec<Value> = split
            .oversize
            .iter()
            .filter_map(|&i| cycle.entries.get(i))
            .map(|e| json!({"group": e.group.name, "source_id": e.group.source_id, "bytes": e.size, "error": self.too_large(e)}))
            .collect();
        Some(json!({
            "provisioning_sync_id": self.config.provisioning_sync_id,
            "full": cycle.full,
            "start_token": cycle.start_token,
            "next_token_note": "a new nextToken is generated for every run; the one shown is an example",
            "batches": batches,
            "rejected": rejected,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerMember;
    use crate::model::MemberRef;
    use crate::sinks::SinkType as _;

    fn config(batch_size: usize, max_batch_bytes: usize) -> ProvisioningSyncConfig {
        toml::from_str(&format!(
            r#"
environment_id = "env"
client_id = "c"
client_secret = "s"
provisioning_sync_id = "sync"
batch_size = {batch_size}
max_batch_bytes = {max_batch_bytes}
"#
        ))
        .unwrap()
    }

    fn spec(id: &str, name: &str) -> GroupSpec {
        GroupSpec::for_test(id, name)
    }

    fn member(i: usize) -> MemberRef {
        let user = crate::model::User::for_test(format!("u{i:04}"), &format!("user{i}"));
        MemberRef::new(std::sync::Arc::new(user))
    }

    /// A ledger with cursor `T` and these groups: (id, name, member count).
    fn ledger_with(groups: &[(&str, &str, usize)]) -> Ledger {
        let groups = groups
            .iter()
            .map(|&(id, name, members)| (id.into(), ledger_group(id, name, members)));
        Ledger {
            cursor: Some("T".into()),
            groups: groups.collect(),
            ..Ledger::default()
        }
    }

    fn ledger_group(id: &str, name: &str, members: usize) -> LedgerGroup {
        LedgerGroup {
            source_id: id.into(),
            target_id: Some(id.into()),
            name: name.into(),
            description: None,
            dn: format!("cn={name},ou=Groups,dc=example,dc=com"),
            members: (0..members)
                .map(|i| {
                    let m = member(i);
                    (
                        m.source_id.as_str().into(),
                        LedgerMember {
                            user: m.user,
                            target_id: None,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn split_respects_count_bytes_and_reports_oversize() {
        // overhead 10, limit 50: entries of 15 fit two per batch (10+15+1+15=41; +1+15=57 > 50).
        let s = split_batches(&[15, 15, 15, 45, 15], 10, 50, 10);
        assert_eq!(s.batches, vec![vec![0, 1], vec![2, 4]]);
        assert_eq!(s.oversize, vec![3]);
        let s = split_batches(&[1, 1, 1, 1, 1], 2, 1000, 10);
        assert_eq!(s.batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(split_batches(&[], 2, 1000, 10).batches.is_empty());
        // Exactly at the limit fits.
        let s = split_batches(&[40], 5, 50, 10);
        assert_eq!(s.batches, vec![vec![0]]);
    }

    #[test]
    fn first_cycle_is_full_and_later_cycles_are_incremental() {
        let plan = Plan {
            unmapped: Vec::new(),
            operations: vec![
                Operation::Create {
                    group: spec("g1", "eng"),
                    resume: false,
                },
                Operation::MemberAdd {
                    group: spec("g1", "eng"),
                    members: vec![member(1), member(0)],
                },
            ],
            full: false,
            ..Plan::default()
        };
        let c = config(100, 1_000_000);
        let cycle = c.cycle(&plan, &Ledger::default(), false);
        assert!(cycle.full);
        assert_eq!(cycle.start_token, None);
        assert_eq!(cycle.entries.len(), 1);
        let body = &cycle.entries[0].body;
        assert!(body.get("operation").is_none(), "{body}");
        assert_eq!(body["uniqueId"], "g1");
        assert_eq!(
            body["attributes"]["member"],
            json!([
                "uid=user0,ou=People,dc=example,dc=com",
                "uid=user1,ou=People,dc=example,dc=com"
            ])
        );
        assert_eq!(body["attributes"]["active"], json!(true));
        assert!(body["attributes"].get("objectguid").is_none());
        assert_eq!(cycle.entries[0].ops.len(), 2);

        let ledger = Ledger {
            cursor: Some("T1".into()),
            ..Ledger::default()
        };
        let cycle = c.cycle(&plan, &ledger, false);
        assert!(!cycle.full);
        assert_eq!(cycle.start_token.as_deref(), Some("T1"));
        assert_eq!(cycle.entries[0].body["operation"], "CREATED");
        // --full drops the start token and the operations.
        let cycle = c.cycle(&plan, &ledger, true);
        assert_eq!(cycle.start_token, None);
        assert!(cycle.entries[0].body.get("operation").is_none());
    }

    #[test]
    fn updates_carry_full_members_and_deletes_the_last_known_attributes() {
        let ledger = ledger_with(&[("g1", "eng", 3), ("g2", "ops", 2), ("g3", "idle", 1)]);
        let mut removed = spec("g1", "eng");
        removed.target_id = Some("g1".into());
        let mut gone = spec("g2", "ops");
        gone.target_id = Some("g2".into());
        let plan = Plan {
            unmapped: Vec::new(),
            operations: vec![
                Operation::MemberRemove {
                    group: removed,
                    members: vec![member(2)],
                },
                Operation::Delete { group: gone },
            ],
            full: false,
            ..Plan::default()
        };
        let c = config(100, 1_000_000);
        let cycle = c.cycle(&plan, &ledger, false);
        assert_eq!(cycle.entries.len(), 2, "{:?}", cycle.entries);
        let update = &cycle.entries[0].body;
        assert_eq!(update["operation"], "UPDATED");
        assert_eq!(update["attributes"]["member"].as_array().unwrap().len(), 2);
        let delete = &cycle.entries[1].body;
        assert_eq!(delete["operation"], "DELETED");
        assert_eq!(delete["attributes"]["name"], "ops");
        assert_eq!(delete["attributes"]["member"].as_array().unwrap().len(), 2);

        // A full cycle sends every present group without operation, and the delete explicitly.
        let cycle = c.cycle(&plan, &ledger, true);
        let ops: Vec<(String, Option<&str>)> = cycle
            .entries
            .iter()
            .map(|e| {
                (
                    e.group.name.clone(),
                    e.body.get("operation").and_then(Value::as_str),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                ("eng".into(), None),
                ("idle".into(), None),
                ("ops".into(), Some("DELETED"))
            ]
        );
    }

    #[test]
    fn a_group_too_big_for_one_body_is_rejected_not_truncated() {
        let c = config(2, 2048);
        let ledger = ledger_with(&[("big", "big", 100), ("small", "small", 1)]);
        let plan = Plan::default();
        let cycle = c.cycle(&plan, &ledger, true);
        let split = c.split(&cycle, "next");
        assert_eq!(split.oversize, vec![0]);
        assert_eq!(split.batches, vec![vec![1]]);
        for indices in &split.batches {
            let body = ProvisioningSyncConfig::batch_body(&cycle, indices, Some("next"));
            assert!(serde_json::to_vec(&body).unwrap().len() <= 2048);
        }
    }

    #[test]
    fn batches_fill_up_to_the_byte_limit() {
        let c = config(100, 4096);
        let mut ledger = Ledger::default();
        for i in 0..40 {
            let id = format!("g{i:02}");
            ledger.groups.insert(id.clone(), ledger_group(&id, &id, 5));
        }
        let plan = Plan::default();
        let cycle = c.cycle(&plan, &ledger, true);
        let token = new_token();
        let split = c.split(&cycle, &token);
        assert!(split.oversize.is_empty());
        assert!(split.batches.len() > 1);
        let sent: usize = split.batches.iter().map(Vec::len).sum();
        assert_eq!(sent, 40);
        for (n, indices) in split.batches.iter().enumerate() {
            let last = n + 1 == split.batches.len();
            let body =
                ProvisioningSyncConfig::batch_body(&cycle, indices, last.then_some(token.as_str()));
            assert!(serde_json::to_vec(&body).unwrap().len() <= 4096);
        }
    }

    #[test]
    fn objectguid_member_format_and_extra_attributes() {
        let mut c = config(100, 1_000_000);
        let mut ad = ledger_group("6e04f620-1742-4d83-9828-b94433856b9a", "Demo", 1);
        ad.dn = "CN=Demo,OU=Groups,DC=corp,DC=example".into();
        assert_eq!(
            c.attributes(&ad)["objectguid"],
            json!(["6e04f620-1742-4d83-9828-b94433856b9a"])
        );
        let ldap = ledger_group("6e04f620-1742-4d83-9828-b94433856b9a", "Demo", 1);
        assert!(c.attributes(&ldap).get("objectguid").is_none());
        c.objectguid = Some(true);
        assert!(c.attributes(&ldap).get("objectguid").is_some());
        c.member_format = MemberFormat::SourceId;
        c.extra_attributes
            .insert("source".into(), AttributeValue::One("ldapsync".into()));
        let attributes = c.attributes(&ldap);
        assert_eq!(attributes["member"], json!(["u0000"]));
        assert_eq!(attributes["source"], "ldapsync");
        c.extra_attributes
            .insert("name".into(), AttributeValue::One("x".into()));
        assert_eq!(c.validate().unwrap_err().0, "extra_attributes");
    }
}
