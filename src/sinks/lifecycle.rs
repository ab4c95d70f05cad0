//! The group lifecycle shared by the HTTP group sinks, written once: a target implements the [`GroupApi`] primitives and [`apply`] drives them.
//!
//! The driver owns everything that is the same on every target:
//!
//! * **Resolve** (before planning, read-only): [`resolve`] maps the directory's members to
//!   target users ([`GroupApi::map_users`], bulk where the target allows) and finds the groups to
//!   be created that exist already (one listing, or a lookup per group), each checked by
//!   [`identify`] on the client side; the planner turns them into `adopt` operations.
//! * **Adopt**: records the group and the members it already has.
//! * **Create**: an optional lookup first ([`GroupApi::prepare_create`]; by default only for a
//!   resumed create, `Create { resume: true }`, by externalId only), the intent recorded before
//!   the request, which is sent once; a conflict answer ("it exists") resolved by
//!   [`find_existing`] under the sink's [`AdoptPolicy`]; an answer that was lost or failed after
//!   sending ([`OpError::maybe_committed`]) resolved by a lookup by externalId, never by a
//!   second create.
//! * **Update**: [`Outcome::NotFound`] fails the op and forgets the group, so the next run
//!   recreates it.
//! * **Delete**: an unconfirmed create (no target id) is looked up by externalId only; not
//!   found (the intent is dropped, nothing deleted), or a 404, is done.
//! * **Members**: users mapped through [`GroupApi::user_id`] (unmapped members counted, never
//!   fatal), sent in chunks of [`GroupApi::member_chunk_size`], recorded in batches; a group the
//!   target owns the membership of ([`Membership::Provider`]) is recorded as in sync, unsent.
//! * Every op fails on its own ([`Recorder::failed`]) and the run goes on, except a rejected
//!   credential (HTTP 401, a failed token request), which stops the sink.
//!
//! A primitive returns `Err` for "this request failed" and an [`Outcome`] for the answers the
//! driver acts on; it never touches the [`Recorder`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::http::{HttpError, Response};
use super::target::quote;
use super::{Recorder, Sink, SinkError};
use crate::directory::Directory;
use crate::ledger::Ledger;
use crate::model::{
    ActualGroup, AdoptedBy, ExistingGroup, GroupSpec, MemberRef, OpKind, Operation, Plan,
    TargetView, UserMapping,
};

/// Sends of one create at most, each after a lookup showed the previous one left nothing.
const CREATE_ATTEMPTS: u32 = 3;
/// The wait before the second send of a create (doubled before the third).
const CREATE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// A sink whose target is "groups with members" driven by [`apply`]: its [`Sink`] impl comes
/// from here, so such a sink writes only its primitives, its type name and its probe.
#[async_trait]
pub trait GroupSink: GroupApi {
    /// The `type` of its `[[sinks]]` table.
    const TYPE_NAME: &'static str;

    /// Authenticates and makes one harmless read (`check --connect`).
    async fn probe(&self) -> Result<(), SinkError>;
}

#[async_trait]
impl<A: GroupSink> Sink for A {
    fn identity(&self) -> (&str, &'static str) {
        (self.sink_name(), A::TYPE_NAME)
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.probe().await
    }

    async fn apply(&self, plan: &Plan, recorder: &mut Recorder<'_>) -> Result<(), SinkError> {
        apply(self, plan, recorder).await
    }

    async fn resolve(
        &self,
        directory: &Directory,
        ledger: &Ledger,
        full: bool,
    ) -> Result<TargetView, SinkError> {
        resolve(self, directory, ledger, full)
            .await
            .map_err(|e| SinkError::Target {
                sink: self.sink_name().to_string(),
                message: format!("reading the target before planning: {e}"),
            })
    }
}

/// Member changes written to the ledger together, to keep writes few on large groups.
const RECORD_BATCH: usize = 100;

/// Why an operation (or one step of it) failed: the text that goes into the run report, and
/// what kind of failure it was, so the driver decides on the kind, never on the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// A request failed: an HTTP error status (kept in the [`HttpError`]), an unreachable
    /// target, a failed token request or an unreadable answer. `hint` is appended as is
    /// (empty, or " (…)" saying what to do, where the sink knows the target's error code).
    #[error("{source}{hint}")]
    Request {
        source: HttpError,
        hint: &'static str,
    },
    /// The target's answer or state rules the change out, in the sink's words (e.g. a
    /// ForgeRock group with a `condition`, a create answer without an id); `status` is the
    /// HTTP status of that answer, when it was an error answer.
    #[error("{message}")]
    Target {
        status: Option<u16>,
        message: String,
    },
    /// `source` happened for one object of the operation: a member, a user being provisioned.
    #[error("{object}: {source}")]
    Object {
        object: String,
        source: Box<OpError>,
    },
}

impl OpError {
    /// A failed request with an operator hint (" (…)") appended to its text.
    pub fn hinted(source: HttpError, hint: &'static str) -> Self {
        OpError::Request { source, hint }
    }

    /// This error, as it happened for `object` (its text is prefixed with "`object`: ").
    pub fn of(self, object: impl Into<String>) -> Self {
        OpError::Object {
            object: object.into(),
            source: Box::new(self),
        }
    }

    /// The HTTP status the target answered, if the failure was an error answer.
    #[cfg(test)]
    pub fn status(&self) -> Option<u16> {
        match self {
            OpError::Request { source, .. } => source.status(),
            OpError::Target { status, .. } => *status,
            OpError::Object { source, .. } => source.status(),
        }
    }

    /// The request may have been carried out although it failed: no answer (timeout, reset), a
    /// 5xx or 429, or an answer that could not be read. A 4xx other than 429 is a refusal.
    pub fn maybe_committed(&self) -> bool {
        let status_says = |status: u16| status >= 500 || status == 429;
        match self {
            OpError::Request { source, .. } => match source {
                HttpError::Transport { .. } | HttpError::Decode { .. } => true,
                HttpError::Status { status, .. } | HttpError::RetryAfterTooLong { status, .. } => {
                    status_says(*status)
                }
                HttpError::Token { .. } => false,
            },
            OpError::Target { status, .. } => status.is_none_or(status_says),
            OpError::Object { source, .. } => source.maybe_committed(),
        }
    }

    /// The target asked to wait longer than `max_retry_after_secs`: not sent again in this run.
    pub fn asks_to_wait_too_long(&self) -> bool {
        match self {
            OpError::Request { source, .. } => {
                matches!(source, HttpError::RetryAfterTooLong { .. })
            }
            OpError::Target { .. } => false,
            OpError::Object { source, .. } => source.asks_to_wait_too_long(),
        }
    }

    /// The target rejected the credential (HTTP 401, a failed OAuth2 token request): the sink
    /// cannot go on.
    pub fn is_auth(&self) -> bool {
        match self {
            OpError::Request { source, .. } => source.is_auth(),
            OpError::Target { status, .. } => *status == Some(401),
            OpError::Object { source, .. } => source.is_auth(),
        }
    }
}

impl From<HttpError> for OpError {
    fn from(source: HttpError) -> Self {
        OpError::hinted(source, "")
    }
}

/// A refusal in the sink's words, without an HTTP status.
impl From<String> for OpError {
    fn from(message: String) -> Self {
        OpError::Target {
            status: None,
            message,
        }
    }
}

impl From<&str> for OpError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

/// What to do before a create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The group is already in the target: adopt this id, send nothing.
    Adopt(String),
    /// Send the create, with what the lookup found for it (e.g. an import ticket).
    Create(Option<String>),
}

/// The answer to a create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The target created the group with this id.
    Id(String),
    /// The target says the group exists: the driver adopts it through
    /// [`GroupApi::find_existing`], or fails the create with this error.
    Conflict(OpError),
}

/// The answer to an update, a delete, or a chunk of member changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The group is gone from the target.
    NotFound,
    /// The target refuses this change for the whole group: the rest of the operation fails
    /// with this error (no further chunk is sent).
    Refused(OpError),
}

/// Who changes a group's members, read once per member operation.
pub enum Membership<T> {
    /// ldapsync does, with what the target needed to read first (e.g. current relationships).
    Managed(T),
    /// The target's identity provider does: changes are recorded as in sync, not sent.
    Provider,
    /// The group is gone from the target.
    Gone,
}

/// The primitives of one target. See the module documentation for what the driver adds.
#[async_trait]
pub trait GroupApi: Send + Sync {
    /// What [`GroupApi::members`] reads before a member operation; `()` for most targets.
    type Members: Default + Send + Sync;

    /// Who the sink is and how its target behaves.
    fn profile(&self) -> ApiProfile<'_>;

    /// The sink's configured name (logs and errors).
    fn sink_name(&self) -> &str {
        self.profile().sink
    }

    /// The target as messages name it.
    fn target_label(&self) -> &str {
        self.profile().target
    }

    /// What to check when the target rejects the credentials.
    fn auth_hint(&self) -> &str {
        self.profile().auth_hint
    }

    /// Members per [`GroupApi::change_members`] call.
    fn member_chunk_size(&self) -> usize {
        self.profile().member_chunk_size
    }

    /// Logged once per run when member changes were recorded without being sent.
    fn skipped_note(&self) -> String {
        "the target manages group membership itself; these membership changes were not sent (recorded as in sync)".into()
    }

    /// The target groups that may be `group`: those whose externalId (or the target's
    /// equivalent) is the source id and, with `by_name`, those named like it. Raw lookup results:
    /// a target may ignore the filter and answer anything, so the driver checks each one
    /// ([`identify`]) before adopting it.
    async fn candidates(
        &self,
        group: &GroupSpec,
        by_name: bool,
    ) -> Result<Vec<TargetGroup>, OpError>;

    /// Every group of the target in one paged listing, when the target can list them (used
    /// instead of [`GroupApi::candidates`] when many groups are to be created); `None` otherwise.
    async fn list_groups(&self) -> Result<Option<Vec<TargetGroup>>, OpError> {
        Ok(None)
    }

    /// The members of the target group `id` (user id, display name), for a group about to be
    /// adopted whose candidate did not carry them. By default none are read.
    async fn group_members(&self, _id: &str) -> Result<Vec<(String, String)>, OpError> {
        Ok(Vec::new())
    }

    /// The real state of the owned group `id` (name, description where the sink writes one,
    /// every member, all pages), for a full reconcile; `None` when it is gone from the target.
    async fn read_group(&self, _id: &str) -> Result<Option<ActualGroup>, OpError> {
        Err(format!(
            "a full reconcile cannot read groups from {} yet",
            self.target_label()
        )
        .into())
    }

    /// The sink's `adopt` setting.
    fn adopt_policy(&self) -> AdoptPolicy {
        self.profile().adopt
    }

    /// Whether the target stores the source id on the group.
    fn has_external_id(&self) -> bool {
        self.profile().external_id
    }

    /// The target attribute LDAP users are matched on and the user property it is matched with
    /// (the sink's `user_match`): the key of the state file's user map (`userName=alice`), so a
    /// cached mapping is dropped when either changes. `None`: nothing is cached.
    fn user_match(&self) -> Option<(&'static str, UserKey)> {
        None
    }

    /// The sink creates missing users (`provision_users`): members without a target user are
    /// planned, not listed as unmapped.
    fn provisions_users(&self) -> bool {
        false
    }

    /// The sink plans its user creates and deactivations as operations (`user_create`,
    /// `user_deactivate`) instead of creating users while adding members.
    fn plans_user_ops(&self) -> bool {
        false
    }

    /// Creates the target user of `user` (sent once: a create whose answer was lost is looked
    /// up, never sent again blindly); its target id.
    async fn create_user(&self, _user: &MemberRef) -> Result<String, OpError> {
        Err("this sink does not create users".into())
    }

    /// Deactivates the target user `id` (never deletes it), or with `active` reactivates it.
    async fn set_user_active(&self, _id: &str, _active: bool) -> Result<Outcome, OpError> {
        Err("this sink does not deactivate users".into())
    }

    /// Target user ids of `users` (source id → target id), for the users the target has. By
    /// default one [`GroupApi::user_id`] per user; targets that can list or filter users in bulk
    /// override it ([`map_by_filter`], or one paged listing).
    async fn map_users(&self, users: &[MemberRef]) -> Result<HashMap<String, String>, OpError> {
        let mut mapped = HashMap::new();
        for user in users {
            if let Some(id) = self.user_id(user).await? {
                mapped.insert(user.source_id.clone(), id);
            }
        }
        Ok(mapped)
    }

    /// The lookup before a create; by default [`adopt_on_resume`].
    async fn prepare_create(&self, group: &GroupSpec, resume: bool) -> Result<Prepared, OpError> {
        adopt_on_resume(self, group, resume).await
    }

    /// Sends the create. `ticket` is what [`GroupApi::prepare_create`] found.
    async fn create(&self, group: &GroupSpec, ticket: Option<String>) -> Result<Created, OpError>;

    /// Writes the new name/description of the group `id`.
    async fn update(
        &self,
        id: &str,
        group: &GroupSpec,
        previous: &GroupSpec,
    ) -> Result<Outcome, OpError>;

    /// Deletes the group `id` ([`Outcome::NotFound`] counts as done).
    async fn delete(&self, id: &str) -> Result<Outcome, OpError>;

    /// The target user id of an LDAP user; `None` when the target has no such user. Cached by
    /// the sink.
    async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, OpError>;

    /// Reads what a member operation on group `id` needs; an `Err` fails the whole operation.
    async fn members(
        &self,
        _kind: OpKind,
        _id: &str,
        _group: &GroupSpec,
    ) -> Result<Membership<Self::Members>, OpError> {
        Ok(Membership::Managed(Self::Members::default()))
    }

    /// Adds or removes one chunk of members of a group.
    async fn change_members(&self, change: Change<'_, Self::Members>) -> Result<Outcome, OpError>;
}

/// Who a [`GroupApi`] sink is and how its target behaves ([`GroupApi::profile`]).
#[derive(Debug, Clone, Copy)]
pub struct ApiProfile<'a> {
    /// The sink's configured name (logs and errors).
    pub sink: &'a str,
    /// The target as messages name it ("the target", "PingOne", "Connect").
    pub target: &'static str,
    /// What to check when the target rejects the credentials, e.g. "check the token".
    pub auth_hint: &'static str,
    /// The sink's `adopt` setting.
    pub adopt: AdoptPolicy,
    /// Members per [`GroupApi::change_members`] call (1 unless the target takes several).
    pub member_chunk_size: usize,
    /// Whether the target stores the source id on the group (SCIM and PingOne `externalId`).
    /// Targets that do not (Connect, ForgeRock) enforce unique group names, and there the
    /// exact name is the identity: it matches as `by: "name"`, also for an unconfirmed create.
    pub external_id: bool,
}

impl<'a> ApiProfile<'a> {
    /// A target with externalIds that takes one member per call.
    pub fn new(
        sink: &'a str,
        target: &'static str,
        auth_hint: &'static str,
        adopt: AdoptPolicy,
    ) -> Self {
        ApiProfile {
            sink,
            target,
            auth_hint,
            adopt,
            member_chunk_size: 1,
            external_id: true,
        }
    }
}

/// One [`GroupApi::change_members`] call: what to do to which group with which members.
pub struct Change<'c, M> {
    pub kind: MemberChange,
    /// The target id of the group.
    pub id: &'c str,
    /// What [`GroupApi::members`] read of the group for this operation.
    pub current: &'c M,
    /// The members, each with its `target_id`.
    pub chunk: &'c [MemberRef],
}

/// What [`GroupApi::change_members`] does with its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Add,
    Remove,
}

/// The default [`GroupApi::prepare_create`]: a resumed create adopts what
/// [`find_existing`] finds by externalId; otherwise nothing is looked up (the engine's
/// [`resolve`] already looked for the group before planning).
pub async fn adopt_on_resume<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    resume: bool,
) -> Result<Prepared, OpError> {
    if resume && let Some((id, _)) = find_existing(api, group, Lookup::Ours).await? {
        tracing::info!(sink = %api.sink_name(), group = %group.name, id, "adopted the group an interrupted run created");
        return Ok(Prepared::Adopt(id));
    }
    Ok(Prepared::Create(None))
}

/// The sink's `adopt` setting: which existing target groups a sink may take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdoptPolicy {
    /// By externalId equal to the source id, or by an exactly equal name on a group that
    /// carries no other externalId.
    #[default]
    Name,
    /// By externalId only.
    ExternalId,
    /// Never by name; a create conflict fails that group's create. Groups carrying ldapsync's
    /// own externalId (the source id) are still recognised: they are ldapsync's own creates.
    Never,
}

/// A group as the target lists it: the fields identity is checked on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetGroup {
    pub id: String,
    pub name: String,
    /// Its externalId; `None` when it has none (or the target has no such field).
    pub external_id: Option<String>,
    /// Its members (user id, display name), when the lookup returned them.
    pub members: Option<Vec<(String, String)>>,
}

/// What a lookup may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Only ldapsync's own group: externalId equal to the source id (the exact name on targets
    /// without externalId). For unconfirmed creates.
    Ours,
    /// What the sink's [`AdoptPolicy`] allows.
    Adopt,
}

/// Checks lookup results on the client side: the one candidate whose externalId is the group's
/// source id, else (when `lookup` and the sink's policy allow it) the one whose name equals the
/// group's name exactly and that carries no externalId. Several matches are an error (ldapsync
/// cannot tell which one is the group); anything else in `candidates` is ignored.
pub fn identify<'c>(
    api: &(impl GroupApi + ?Sized),
    group: &GroupSpec,
    candidates: &'c [TargetGroup],
    lookup: Lookup,
) -> Result<Option<(&'c TargetGroup, AdoptedBy)>, OpError> {
    let unique = |found: Vec<&'c TargetGroup>, what: &str| match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(OpError::from(format!(
            "{} groups in {} {what}; cannot tell which one is {} (remove the extra ones)",
            many.len(),
            api.target_label(),
            group.dn
        ))),
    };
    let mut distinct: Vec<&TargetGroup> = Vec::new();
    for c in candidates {
        if !distinct.iter().any(|d| d.id == c.id) {
            distinct.push(c);
        }
    }
    if api.has_external_id() {
        let ours = distinct
            .iter()
            .copied()
            .filter(|c| c.external_id.as_deref() == Some(group.source_id.as_str()))
            .collect();
        if let Some(found) = unique(ours, &format!("carry externalId {:?}", group.source_id))? {
            return Ok(Some((found, AdoptedBy::ExternalId)));
        }
    }
    let by_name = match (lookup, api.adopt_policy()) {
        (_, AdoptPolicy::Never) => !api.has_external_id() && lookup == Lookup::Ours,
        (Lookup::Ours, _) => !api.has_external_id(),
        (Lookup::Adopt, AdoptPolicy::Name) => true,
        // Without an externalId nothing proves a same-name group is ldapsync's: not adopted.
        (Lookup::Adopt, AdoptPolicy::ExternalId) => false,
    };
    if !by_name {
        return Ok(None);
    }
    let named = distinct
        .iter()
        .copied()
        .filter(|c| c.name == group.name && c.external_id.as_deref().is_none_or(str::is_empty))
        .collect();
    Ok(unique(named, &format!("are named {:?}", group.name))?.map(|c| (c, AdoptedBy::Name)))
}

/// Whether a candidates lookup asks for same-named groups too: where a name may identify the
/// group, with `adopt = "name"` when adopting, and always on a target without externalIds.
fn looks_up_by_name(api: &(impl GroupApi + ?Sized), lookup: Lookup) -> bool {
    lookup == Lookup::Adopt && api.adopt_policy() == AdoptPolicy::Name || !api.has_external_id()
}

/// Looks `group` up in the target and checks the answers ([`identify`]): its target id and how
/// it matched.
pub async fn find_existing<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    lookup: Lookup,
) -> Result<Option<(String, AdoptedBy)>, OpError> {
    let candidates = api.candidates(group, looks_up_by_name(api, lookup)).await?;
    Ok(identify(api, group, &candidates, lookup)?.map(|(c, by)| (c.id.clone(), by)))
}

/// Above this many groups to look for, [`resolve`] lists the target's groups once instead of
/// looking each one up.
const LIST_ABOVE: usize = 20;

/// What the sink's target holds for a plan (read-only, dry run too): the target users of every
/// directory member, and the existing target groups that the groups the ledger does not hold
/// (or holds only as an unconfirmed create) are to adopt, each checked by [`identify`].
pub async fn resolve<A: GroupApi + ?Sized>(
    api: &A,
    directory: &Directory,
    ledger: &Ledger,
    full: bool,
) -> Result<TargetView, OpError> {
    // A full reconcile reads both sides in full: no user comes from the user map.
    let no_cache = HashMap::new();
    let cache = if full { &no_cache } else { &ledger.users };
    let mut wanted = vec![false; directory.users.len()];
    for group in &directory.groups {
        for &index in &group.members {
            if let Some(slot) = wanted.get_mut(index as usize) {
                *slot = true;
            }
        }
    }
    let members: Vec<MemberRef> = directory
        .users
        .iter()
        .zip(&wanted)
        .filter(|(_, w)| **w)
        .map(|(u, _)| MemberRef::new(Arc::clone(u)))
        .collect();
    let mut learned = BTreeMap::new();
    let users = map_cached(api, cache, &members, &mut learned).await?;

    let missing: Vec<(GroupSpec, Lookup)> = directory
        .groups
        .iter()
        .filter_map(|g| {
            let lookup = match ledger.groups.get(&g.id) {
                None => Lookup::Adopt,
                Some(recorded) if recorded.target_id.is_none() => Lookup::Ours,
                Some(_) => return None,
            };
            Some((
                GroupSpec {
                    source_id: g.id.clone(),
                    name: g.name.clone(),
                    description: g.description.clone(),
                    dn: g.dn.clone(),
                    target_id: None,
                },
                lookup,
            ))
        })
        .collect();
    let listed = match missing.len() > LIST_ABOVE {
        true => api.list_groups().await?,
        false => None,
    };
    let mut existing = BTreeMap::new();
    for (group, lookup) in &missing {
        let looked_up;
        let candidates = match &listed {
            Some(all) => all.as_slice(),
            None => {
                looked_up = api
                    .candidates(group, looks_up_by_name(api, *lookup))
                    .await?;
                looked_up.as_slice()
            }
        };
        let Some((found, by)) =
            identify(api, group, candidates, *lookup).map_err(|e| e.of(&group.name))?
        else {
            continue;
        };
        let members = match &found.members {
            Some(members) => members.clone(),
            None => api.group_members(&found.id).await?,
        };
        existing.insert(
            group.source_id.clone(),
            ExistingGroup {
                target_id: found.id.clone(),
                by,
                members,
            },
        );
    }
    // Full reconcile: the real state of every group the ledger holds with a target id.
    let actual = match full {
        false => None,
        true => {
            let mut actual = BTreeMap::new();
            for group in &directory.groups {
                let Some(id) = ledger
                    .groups
                    .get(&group.id)
                    .and_then(|g| g.target_id.as_deref())
                else {
                    continue;
                };
                let state = api.read_group(id).await.map_err(|e| e.of(&group.name))?;
                actual.insert(group.id.clone(), state);
            }
            Some(actual)
        }
    };
    // Members of adopted (or reconciled) groups that no group member maps to: name them by the
    // other directory users (a removal shows a user name, not a target id).
    let mut users = users;
    let known: HashSet<&String> = users.values().collect();
    let strangers = existing
        .values()
        .flat_map(|g| &g.members)
        .chain(
            actual
                .iter()
                .flat_map(|a| a.values().flatten().flat_map(|g| &g.members)),
        )
        .any(|(id, _)| !known.contains(id));
    if strangers {
        let others: Vec<MemberRef> = directory
            .users
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| !**w)
            .map(|(u, _)| MemberRef::new(Arc::clone(u)))
            .collect();
        users.extend(map_cached(api, cache, &others, &mut learned).await?);
    }
    Ok(TargetView {
        users: Some(users),
        existing,
        provisions_users: api.provisions_users(),
        plans_user_ops: api.plans_user_ops(),
        learned,
        actual,
    })
}

/// The key a user is cached under in the user map (`attribute=value`), when the sink caches.
fn user_key(api: &(impl GroupApi + ?Sized), member: &MemberRef) -> Option<String> {
    let (attribute, key) = api.user_match()?;
    Some(format!("{attribute}={}", key.of(member)?))
}

/// Maps `members` to target users: from the ledger's user map where its key still holds, the
/// others through [`GroupApi::map_users`] (so a user who appears in the target later is found
/// on the next run); what those lookups found goes into `learned`.
async fn map_cached<A: GroupApi + ?Sized>(
    api: &A,
    cache: &HashMap<String, UserMapping>,
    members: &[MemberRef],
    learned: &mut BTreeMap<String, UserMapping>,
) -> Result<HashMap<String, String>, OpError> {
    let mut mapped = HashMap::new();
    let mut misses = Vec::new();
    for member in members {
        let key = user_key(api, member);
        match cache.get(&member.source_id) {
            Some(cached) if key.as_deref() == Some(cached.key.as_str()) => {
                mapped.insert(member.source_id.clone(), cached.target_id.clone());
            }
            _ => misses.push(member.clone()),
        }
    }
    if misses.is_empty() {
        return Ok(mapped);
    }
    let found = api.map_users(&misses).await?;
    for member in &misses {
        if let (Some(target_id), Some(key)) = (found.get(&member.source_id), user_key(api, member))
        {
            learned.insert(
                member.source_id.clone(),
                UserMapping {
                    key,
                    target_id: target_id.clone(),
                },
            );
        }
    }
    mapped.extend(found);
    Ok(mapped)
}

/// How many values one filter of [`map_by_filter`] carries (`a eq "1" or a eq "2" …`): few
/// enough to keep the request URL short, many enough that 100,000 users take 2,000 requests.
pub const FILTER_VALUES: usize = 50;

/// Bulk user resolution through filters with several values: `attribute eq "v1" or attribute
/// eq "v2" …`, [`FILTER_VALUES`] at a time; `find(filter)` returns every user it answers as
/// (target id, value of `attribute`), following pages. The answers are matched locally (a
/// target may ignore the filter), case-insensitively unless the key is the source id; a value
/// several target users carry is left unmapped, with a warning.
pub async fn map_by_filter<F, Fut>(
    sink: &str,
    users: &[MemberRef],
    (attribute, key): (&str, UserKey),
    find: F,
) -> Result<HashMap<String, String>, OpError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Vec<(String, String)>, HttpError>>,
{
    let fold = |value: &str| match key {
        UserKey::SourceId => value.to_string(),
        _ => value.to_lowercase(),
    };
    let mut mapped = HashMap::new();
    let wanted: Vec<(&MemberRef, &str)> = users
        .iter()
        .filter_map(|m| key.of(m).map(|v| (m, v)))
        .collect();
    for chunk in wanted.chunks(FILTER_VALUES) {
        let mut values: Vec<&str> = chunk.iter().map(|(_, v)| *v).collect();
        values.sort_unstable();
        values.dedup();
        let filter = values
            .iter()
            .map(|v| format!("{attribute} eq {}", quote(v)))
            .collect::<Vec<_>>()
            .join(" or ");
        let mut by_value: HashMap<String, Vec<String>> = HashMap::new();
        for (id, value) in find(filter).await? {
            let ids = by_value.entry(fold(&value)).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        for (member, value) in chunk {
            match by_value.get(&fold(value)).map(Vec::as_slice) {
                Some([id]) => {
                    mapped.insert(member.source_id.clone(), id.clone());
                }
                Some([_, _, ..]) => {
                    tracing::warn!(sink, member = %member.username, attribute, "several target users match; member skipped")
                }
                _ => {}
            }
        }
    }
    Ok(mapped)
}

/// Member changes recorded without a request, for the one log line per run.
#[derive(Default)]
struct Skipped {
    members: u64,
    groups: HashSet<String>,
}

/// The [`Recorder`] of one apply, which also remembers the first rejected credential.
struct Ops<'r, 'a> {
    recorder: &'r mut Recorder<'a>,
    /// The report text of the first failure that [`OpError::is_auth`].
    rejected: Option<String>,
}

impl<'r, 'a> Ops<'r, 'a> {
    fn new(recorder: &'r mut Recorder<'a>) -> Self {
        Ops {
            recorder,
            rejected: None,
        }
    }

    /// Records a failed operation (`count` changes); a rejected credential stops the sink at
    /// the end of the operation ([`Ops::go_on`]).
    fn fail(&mut self, kind: OpKind, group: &GroupSpec, error: impl Into<OpError>, count: u64) {
        let error = error.into();
        if error.is_auth() && self.rejected.is_none() {
            self.rejected = Some(error.to_string());
        }
        self.recorder.failed(kind, group, error, count);
    }

    /// `Err` once the target rejected the credential: the sink cannot go on.
    fn go_on(&self, api: &(impl GroupApi + ?Sized)) -> Result<(), SinkError> {
        match &self.rejected {
            None => Ok(()),
            Some(error) => Err(SinkError::Target {
                sink: api.sink_name().to_string(),
                message: format!("authentication rejected ({error}); {}", api.auth_hint()),
            }),
        }
    }
}

/// Executes `plan` on the target behind `api`, recording every success in `recorder`.
pub async fn apply<A: GroupApi + ?Sized>(
    api: &A,
    plan: &Plan,
    recorder: &mut Recorder<'_>,
) -> Result<(), SinkError> {
    let mut skipped = Skipped::default();
    let ops = &mut Ops::new(recorder);
    for op in &plan.operations {
        match op {
            Operation::Create { group, resume } => create_op(api, group, *resume, ops).await?,
            Operation::Adopt { group, by, present } => {
                let id = group.target_id.as_deref().unwrap_or_default();
                tracing::info!(sink = %api.sink_name(), group = %group.name, id, by = by.as_str(), "adopted a group that already exists in {}", api.target_label());
                ops.recorder.adopted(group, id, present)?
            }
            Operation::Update { group, previous } => update(api, group, previous, ops).await?,
            Operation::MemberAdd { group, members }
            | Operation::MemberRemove { group, members } => {
                change_members(api, op.kind(), group, members, ops, &mut skipped).await?
            }
            Operation::Delete { group } => delete(api, group, ops).await?,
            Operation::UserCreate { group, user } => match api.create_user(user).await {
                Ok(id) => ops.recorder.user_created(group, user, &id)?,
                Err(e) => ops.fail(OpKind::UserCreate, group, e.of(&user.username), 1),
            },
            Operation::UserDeactivate { group, user }
            | Operation::UserReactivate { group, user } => {
                let kind = op.kind();
                let id = user.target_id.as_deref().unwrap_or_default();
                let active = kind == OpKind::UserReactivate;
                match api.set_user_active(id, active).await {
                    Ok(Outcome::Done) => ops.recorder.user_active_changed(kind, group, user)?,
                    // A user to deactivate that is gone is as good as deactivated.
                    Ok(Outcome::NotFound) if !active => {
                        ops.recorder.user_active_changed(kind, group, user)?
                    }
                    // Not mapped any more, so the next run plans its create.
                    Ok(Outcome::NotFound) => {
                        let gone = format!("the target user {id} is gone");
                        ops.fail(kind, group, OpError::from(gone).of(&user.username), 1)
                    }
                    Ok(Outcome::Refused(e)) | Err(e) => {
                        ops.fail(kind, group, e.of(&user.username), 1)
                    }
                }
            }
        }
        ops.go_on(api)?;
    }
    if skipped.members > 0 {
        tracing::warn!(
            sink = %api.sink_name(),
            memberships = skipped.members,
            groups = skipped.groups.len(),
            "{}",
            api.skipped_note()
        );
    }
    Ok(())
}

fn gone(api: &(impl GroupApi + ?Sized), kind: OpKind) -> String {
    match kind {
        OpKind::MemberRemove => format!("the group no longer exists in {}", api.target_label()),
        _ => format!(
            "the group no longer exists in {}; it will be recreated next run",
            api.target_label()
        ),
    }
}

/// Creates (or adopts) one group; `Err` also when the target rejected the credential.
#[cfg(test)]
pub async fn create<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    resume: bool,
    recorder: &mut Recorder<'_>,
) -> Result<(), SinkError> {
    let ops = &mut Ops::new(recorder);
    create_op(api, group, resume, ops).await?;
    ops.go_on(api)
}

async fn create_op<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    resume: bool,
    ops: &mut Ops<'_, '_>,
) -> Result<(), SinkError> {
    let ticket = match api.prepare_create(group, resume).await {
        Ok(Prepared::Adopt(id)) => return ops.recorder.created(group, &id),
        Ok(Prepared::Create(ticket)) => ticket,
        Err(e) => {
            ops.fail(OpKind::Create, group, e, 1);
            return Ok(());
        }
    };
    ops.recorder.intent(group)?;
    let mut attempt = 1;
    let error = loop {
        let e = match api.create(group, ticket.clone()).await {
            Ok(Created::Id(id)) => return ops.recorder.created(group, &id),
            Ok(Created::Conflict(conflict)) if api.adopt_policy() == AdoptPolicy::Never => {
                break OpError::from(format!(
                    "{conflict}; a group named {:?} already exists in {} and this sink has adopt = \"never\" (rename or remove that group, or set adopt = \"name\")",
                    group.name,
                    api.target_label()
                ));
            }
            Ok(Created::Conflict(conflict)) => {
                break match find_existing(api, group, Lookup::Adopt).await {
                    Ok(Some((id, by))) => {
                        tracing::info!(sink = %api.sink_name(), group = %group.name, id, by = by.as_str(), "the group already exists in {}; adopted it", api.target_label());
                        return ops.recorder.created(group, &id);
                    }
                    Ok(None) => conflict,
                    Err(e) => e,
                };
            }
            Err(e) => e,
        };
        if !e.maybe_committed() {
            break e;
        }
        // The answer was lost or failed after sending: the target may have committed the
        // create. Look before anything is sent again (never a blind second create).
        match find_existing(api, group, Lookup::Ours).await {
            Ok(Some((id, _))) => {
                tracing::info!(sink = %api.sink_name(), group = %group.name, id, error = %e, "the create failed but the target has the group; recorded it");
                return ops.recorder.created(group, &id);
            }
            Ok(None) if attempt < CREATE_ATTEMPTS && !e.asks_to_wait_too_long() => {
                tracing::info!(sink = %api.sink_name(), group = %group.name, error = %e, attempt, "the create failed and the target does not have the group; sending it again");
                tokio::time::sleep(CREATE_RETRY_DELAY * attempt).await;
                attempt += 1;
            }
            Ok(None) => break e,
            Err(lookup) => {
                break OpError::from(format!(
                    "{e}; then the lookup of what the create may have made failed: {lookup} (looked up again before the next create)"
                ));
            }
        }
    };
    ops.fail(OpKind::Create, group, error, 1);
    Ok(())
}

async fn update<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    previous: &GroupSpec,
    ops: &mut Ops<'_, '_>,
) -> Result<(), SinkError> {
    let Some(id) = ops.recorder.target_id(group) else {
        ops.fail(OpKind::Update, group, "no target id recorded", 1);
        return Ok(());
    };
    match api.update(&id, group, previous).await {
        Ok(Outcome::Done) => ops.recorder.updated(group, &id),
        Ok(Outcome::NotFound) => {
            ops.fail(OpKind::Update, group, gone(api, OpKind::Update), 1);
            ops.recorder.forget(group)
        }
        Ok(Outcome::Refused(e)) | Err(e) => {
            ops.fail(OpKind::Update, group, e, 1);
            Ok(())
        }
    }
}

async fn delete<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    ops: &mut Ops<'_, '_>,
) -> Result<(), SinkError> {
    let id = match ops.recorder.target_id(group) {
        Some(id) => Some(id),
        // An unconfirmed create on a target without externalId: a group of that name may be
        // someone else's, and nothing proves it is not. The intent is dropped, nothing deleted.
        None if !api.has_external_id() => {
            tracing::warn!(sink = %api.sink_name(), group = %group.name, "an unconfirmed create of a group now gone from LDAP: forgotten; a group of that name in {} (if that create made it) is left in place", api.target_label());
            None
        }
        // An unconfirmed create: only what carries its externalId is ours; a same-name group is
        // not (it may be someone else's). Nothing found: the intent is dropped, nothing deleted.
        None => match find_existing(api, group, Lookup::Ours).await {
            Ok(found) => found.map(|(id, _)| id),
            Err(e) => {
                ops.fail(OpKind::Delete, group, e, 1);
                return Ok(());
            }
        },
    };
    let Some(id) = id else {
        return ops.recorder.deleted(group);
    };
    match api.delete(&id).await {
        Ok(Outcome::Done | Outcome::NotFound) => ops.recorder.deleted(group),
        Ok(Outcome::Refused(e)) | Err(e) => {
            ops.fail(OpKind::Delete, group, e, 1);
            Ok(())
        }
    }
}

/// Records member changes that succeeded and empties `done`.
fn record(
    recorder: &mut Recorder<'_>,
    kind: OpKind,
    group: &GroupSpec,
    done: &mut Vec<MemberRef>,
) -> Result<(), SinkError> {
    let members = std::mem::take(done);
    recorder.members_changed(kind, group, &members)
}

async fn change_members<A: GroupApi + ?Sized>(
    api: &A,
    kind: OpKind,
    group: &GroupSpec,
    members: &[MemberRef],
    ops: &mut Ops<'_, '_>,
    skipped: &mut Skipped,
) -> Result<(), SinkError> {
    let adding = kind == OpKind::MemberAdd;
    let change = if adding {
        MemberChange::Add
    } else {
        MemberChange::Remove
    };
    let count = members.len() as u64;
    let Some(id) = ops.recorder.target_id(group) else {
        let why = if adding {
            "the group was not created"
        } else {
            "no target id recorded"
        };
        ops.fail(kind, group, why, count);
        return Ok(());
    };
    let current = match api.members(kind, &id, group).await {
        Ok(Membership::Managed(current)) => current,
        Ok(Membership::Provider) => {
            ops.recorder.members_skipped(kind, group, members)?;
            skipped.members += count;
            skipped.groups.insert(group.source_id.clone());
            return Ok(());
        }
        Ok(Membership::Gone) => {
            ops.fail(kind, group, gone(api, kind), count);
            return ops.recorder.forget(group);
        }
        Err(e) => {
            ops.fail(kind, group, e, count);
            return Ok(());
        }
    };
    // Map every member to its target user; a removal already knows it from the ledger.
    let mut done = Vec::new();
    let mut mapped = Vec::with_capacity(members.len());
    for member in members {
        // The plan mapped the members it adds when the sink resolved its users.
        let known = member.target_id.clone();
        let found = match known {
            Some(target_id) => Ok(Some(target_id)),
            None => api.user_id(member).await,
        };
        match found {
            Ok(Some(target_id)) => mapped.push(MemberRef {
                target_id: Some(target_id),
                ..member.clone()
            }),
            Ok(None) if adding => ops.recorder.unmapped(group, member),
            // Not in the target at all, so not in the group: nothing to remove.
            Ok(None) => done.push(member.clone()),
            Err(e) => ops.fail(kind, group, e.of(&member.username), 1),
        }
    }
    let mut left = mapped.len() as u64;
    for chunk in mapped.chunks(api.member_chunk_size().max(1)) {
        match api
            .change_members(Change {
                kind: change,
                id: &id,
                current: &current,
                chunk,
            })
            .await
        {
            Ok(Outcome::Done) => {
                done.extend_from_slice(chunk);
                if done.len() >= RECORD_BATCH {
                    record(ops.recorder, kind, group, &mut done)?;
                }
            }
            Ok(Outcome::NotFound) => {
                record(ops.recorder, kind, group, &mut done)?;
                ops.fail(kind, group, gone(api, kind), left);
                return ops.recorder.forget(group);
            }
            Ok(Outcome::Refused(e)) => {
                record(ops.recorder, kind, group, &mut done)?;
                ops.fail(kind, group, e, left);
                return Ok(());
            }
            Err(e) => match chunk {
                [one] => ops.fail(kind, group, e.of(&one.username), 1),
                _ => ops.fail(kind, group, e, chunk.len() as u64),
            },
        }
        left -= chunk.len() as u64;
    }
    record(ops.recorder, kind, group, &mut done)
}

/// The usual answer of a write: 2xx done, 404 gone, anything else an error.
pub fn outcome(response: Response) -> Result<Outcome, OpError> {
    outcome_or(response, |r| r.into_error().into())
}

/// [`outcome`] with the sink's own reading of a failed answer (e.g. an operator hint).
pub fn outcome_or(
    response: Response,
    failed: impl FnOnce(Response) -> OpError,
) -> Result<Outcome, OpError> {
    if response.is_success() {
        Ok(Outcome::Done)
    } else if response.status.as_u16() == 404 {
        Ok(Outcome::NotFound)
    } else {
        Err(failed(response))
    }
}

/// Target user ids by match attribute and value: positive answers only, so a user created in
/// the target later is found on the next run.
#[derive(Debug, Default)]
pub struct UserCache(Mutex<HashMap<String, String>>);

/// The property of an LDAP user that a target's user attribute is matched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKey {
    Username,
    SourceId,
    Email,
}

impl UserKey {
    fn of(self, member: &MemberRef) -> Option<&str> {
        match self {
            UserKey::Username => Some(&member.username),
            UserKey::SourceId => Some(&member.source_id),
            UserKey::Email => member.email.as_deref(),
        }
    }
}

impl UserCache {
    /// The one target user whose `attribute` equals the member's `key`. On a cache miss `find`
    /// gets the filter `<attribute> eq "<value>"` ([`quote`]d) and returns every matching id.
    /// No value (a member without email), no match, or several is `None` (counted as unmapped).
    pub async fn lookup<F>(
        &self,
        sink: &str,
        member: &MemberRef,
        (attribute, key): (&str, UserKey),
        find: impl FnOnce(String) -> F,
    ) -> Result<Option<String>, OpError>
    where
        F: Future<Output = Result<Vec<String>, HttpError>> + Send,
    {
        let Some(value) = key.of(member) else {
            return Ok(None);
        };
        let cache_key = format!("{attribute}\u{0}{value}");
        if let Some(id) = self.0.lock().await.get(&cache_key) {
            return Ok(Some(id.clone()));
        }
        match find(format!("{attribute} eq {}", quote(value)))
            .await?
            .as_slice()
        {
            [id] => {
                self.0.lock().await.insert(cache_key, id.clone());
                Ok(Some(id.clone()))
            }
            [] => Ok(None),
            _ => {
                tracing::warn!(sink, member = %member.username, attribute, "several target users match; member skipped");
                Ok(None)
            }
        }
    }
}

/// (the string `id`, the string `attribute`) of each item that has both (a user listing for
/// [`map_by_filter`]).
pub fn id_values(items: &[serde_json::Value], id: &str, attribute: &str) -> Vec<(String, String)> {
    let text = |item: &serde_json::Value, key: &str| {
        item.get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    items
        .iter()
        .filter_map(|item| Some((text(item, id)?, text(item, attribute)?)))
        .collect()
}

/// `(id, user name)` of each listed user, the name falling back to the id (a group's members).
pub fn member_pairs(users: &[serde_json::Value], id: &str, name: &str) -> Vec<(String, String)> {
    let field = |item: &'_ serde_json::Value, key: &str| {
        item.get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    users
        .iter()
        .filter_map(|user| {
            let id = field(user, id)?;
            let name = field(user, name).unwrap_or_else(|| id.clone());
            Some((id, name))
        })
        .collect()
}

/// The groups of a listing on a target without externalIds: the string `id` and `name` of each.
pub fn named_groups(items: &[serde_json::Value], id: &str) -> Vec<TargetGroup> {
    id_values(items, id, "name")
        .into_iter()
        .map(|(id, name)| TargetGroup {
            id,
            name,
            external_id: None,
            members: None,
        })
        .collect()
}

/// The string `key` of each item (the ids of a listing).
pub fn ids(items: &[serde_json::Value], key: &str) -> Vec<String> {
    items
        .iter()
        .filter_map(|item| item.get(key).and_then(serde_json::Value::as_str))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::directory::Directory;
    use crate::model::User;
    use crate::sinks::ApplyReport;
    use crate::store::Store;

    /// A target that answers from fixed tables and logs every call.
    #[derive(Default)]
    struct Fake {
        existing: HashMap<String, String>,
        conflict: bool,
        update_gone: bool,
        /// What every create answers instead of an id.
        create_error: Option<OpError>,
        users: HashMap<String, String>,
        /// What every user lookup answers instead of an id.
        user_error: Option<OpError>,
        calls: StdMutex<Vec<String>>,
        policy: AdoptPolicy,
        /// Keys users by userName for the user map (and logs each user lookup).
        caches_users: bool,
        /// `check --connect` fails.
        probe_fails: bool,
        /// A target without externalIds (names are the identity).
        no_external_id: bool,
        /// The `by_name` of every candidates lookup.
        by_name: StdMutex<Vec<bool>>,
    }

    impl Fake {
        fn log(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl GroupApi for Fake {
        type Members = ();
        fn profile(&self) -> ApiProfile<'_> {
            ApiProfile {
                member_chunk_size: 2,
                external_id: !self.no_external_id,
                ..ApiProfile::new("fake", "the target", "check the fake", self.policy)
            }
        }
        async fn candidates(
            &self,
            group: &GroupSpec,
            by_name: bool,
        ) -> Result<Vec<TargetGroup>, OpError> {
            self.log(format!("find {}", group.name));
            self.by_name.lock().unwrap().push(by_name);
            Ok(self
                .existing
                .get(&group.name)
                .map(|id| TargetGroup {
                    id: id.clone(),
                    name: group.name.clone(),
                    external_id: Some(group.source_id.clone()),
                    members: None,
                })
                .into_iter()
                .collect())
        }
        async fn create(&self, group: &GroupSpec, _: Option<String>) -> Result<Created, OpError> {
            self.log(format!("create {}", group.name));
            if let Some(error) = &self.create_error {
                return Err(error.clone());
            }
            Ok(match self.conflict {
                true => Created::Conflict("HTTP 409".into()),
                false => Created::Id(format!("id-{}", group.name)),
            })
        }
        async fn update(&self, id: &str, _: &GroupSpec, _: &GroupSpec) -> Result<Outcome, OpError> {
            self.log(format!("update {id}"));
            Ok(match self.update_gone {
                true => Outcome::NotFound,
                false => Outcome::Done,
            })
        }
        async fn delete(&self, id: &str) -> Result<Outcome, OpError> {
            self.log(format!("delete {id}"));
            Ok(Outcome::NotFound)
        }
        fn user_match(&self) -> Option<(&'static str, UserKey)> {
            self.caches_users.then_some(("userName", UserKey::Username))
        }
        async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, OpError> {
            if let Some(error) = &self.user_error {
                return Err(error.clone());
            }
            if self.caches_users {
                self.log(format!("user {}", member.username));
            }
            Ok(self.users.get(&member.username).cloned())
        }
        async fn change_members(&self, c: Change<'_, ()>) -> Result<Outcome, OpError> {
            let id = c.id;
            self.log(match c.kind {
                MemberChange::Add => {
                    let ids: Vec<_> = c.chunk.iter().filter_map(|m| m.target_id.clone()).collect();
                    format!("add {id} {}", ids.join(","))
                }
                MemberChange::Remove => format!("remove {id} {}", c.chunk.len()),
            });
            Ok(Outcome::Done)
        }
    }

    fn group(name: &str, target_id: Option<&str>) -> GroupSpec {
        GroupSpec {
            target_id: target_id.map(str::to_string),
            ..GroupSpec::for_test(format!("s-{name}"), name)
        }
    }

    fn member(name: &str) -> MemberRef {
        MemberRef::new(Arc::new(User::for_test(format!("u-{name}"), name)))
    }

    async fn run(api: &Fake, operations: Vec<Operation>) -> (Result<(), SinkError>, ApplyReport) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let mut writer = store.ledger_writer("fake");
        let ledger = Ledger::default();
        let mut recorder = Recorder::new(&mut writer, &ledger, "fake");
        let plan = Plan {
            operations,
            ..Plan::default()
        };
        // Through the `Sink` impl every group sink gets, as the engine calls it.
        let result = Sink::apply(api, &plan, &mut recorder).await;
        (result, recorder.report.clone())
    }

    #[async_trait]
    impl GroupSink for Fake {
        const TYPE_NAME: &'static str = "fake-type";
        async fn probe(&self) -> Result<(), SinkError> {
            match self.probe_fails {
                true => Err(SinkError::Target {
                    sink: "fake".into(),
                    message: "probe refused".into(),
                }),
                false => Ok(()),
            }
        }
    }

    #[test]
    fn a_group_sink_is_named_by_its_profile_and_typed_by_its_registration() {
        let api = Fake::default();
        assert_eq!(Sink::identity(&api), ("fake", "fake-type"));
        assert_eq!(
            (Sink::name(&api), Sink::type_name(&api)),
            ("fake", "fake-type")
        );
        assert_eq!(api.member_chunk_size(), 2);
        assert_eq!(
            (api.target_label(), api.auth_hint()),
            ("the target", "check the fake")
        );
        assert!(api.has_external_id());
    }

    /// What a sink gets when it does not implement the optional parts of [`GroupApi`].
    #[tokio::test]
    async fn the_defaults_of_a_group_api_read_nothing_and_refuse_a_full_reconcile() {
        let api = Fake {
            no_external_id: true,
            ..Fake::default()
        };
        assert!(!api.has_external_id());
        assert!(api.list_groups().await.unwrap().is_none());
        assert!(api.group_members("G").await.unwrap().is_empty());
        let error = api.read_group("G").await.unwrap_err().to_string();
        assert_eq!(
            error,
            "a full reconcile cannot read groups from the target yet"
        );
        assert!(
            api.skipped_note()
                .contains("these membership changes were not sent"),
            "{}",
            api.skipped_note()
        );
        assert!(!api.provisions_users() && !api.plans_user_ops());
        let refused = (
            api.create_user(&member("x")).await.unwrap_err().to_string(),
            api.set_user_active("X", false)
                .await
                .unwrap_err()
                .to_string(),
        );
        assert_eq!(
            refused,
            (
                "this sink does not create users".to_string(),
                "this sink does not deactivate users".to_string()
            )
        );
    }

    /// Candidates are looked up by name too only where a name may identify the group: with
    /// `adopt = "name"` when adopting, and always on a target without externalIds.
    #[tokio::test]
    async fn lookups_ask_for_names_only_where_a_name_may_identify_the_group() {
        use AdoptPolicy::{ExternalId, Name, Never};
        for (no_external_id, policy, lookup, by_name) in [
            (false, Name, Lookup::Adopt, true),
            (false, Name, Lookup::Ours, false),
            (false, ExternalId, Lookup::Adopt, false),
            (false, Never, Lookup::Ours, false),
            (true, ExternalId, Lookup::Ours, true),
            (true, Never, Lookup::Adopt, true),
        ] {
            let api = Fake {
                no_external_id,
                policy,
                ..Fake::default()
            };
            find_existing(&api, &group("a", None), lookup)
                .await
                .unwrap();
            assert_eq!(
                *api.by_name.lock().unwrap(),
                [by_name],
                "{policy:?} {lookup:?}, externalIds: {}",
                !no_external_id
            );
        }
    }

    #[tokio::test]
    async fn check_connect_runs_the_probe() {
        let api = Fake::default();
        Sink::check(&api).await.unwrap();
        let refusing = Fake {
            probe_fails: true,
            ..Fake::default()
        };
        let error = Sink::check(&refusing).await.unwrap_err().to_string();
        assert!(error.contains("probe refused"), "{error}");
    }

    #[tokio::test]
    async fn a_resumed_create_adopts_and_a_conflict_adopts() {
        let mut api = Fake {
            conflict: true,
            ..Fake::default()
        };
        api.existing.insert("a".into(), "t-a".into());
        api.existing.insert("b".into(), "t-b".into());
        let ops = vec![
            Operation::Create {
                group: group("a", None),
                resume: true,
            },
            Operation::Create {
                group: group("b", None),
                resume: false,
            },
            Operation::Create {
                group: group("c", None),
                resume: false,
            },
        ];
        let (result, report) = run(&api, ops).await;
        result.unwrap();
        assert_eq!(report.applied.create, 2);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].error, "HTTP 409");
        assert_eq!(
            api.calls(),
            ["find a", "create b", "find b", "create c", "find c"]
        );
    }

    #[tokio::test]
    async fn members_are_mapped_chunked_and_unmapped_ones_counted() {
        let mut api = Fake::default();
        for (name, id) in [("x", "1"), ("y", "2"), ("z", "3")] {
            api.users.insert(name.into(), id.into());
        }
        let g = group("g", Some("G"));
        let members = ["x", "nobody", "y", "z"].map(member).to_vec();
        let mut known = member("w");
        known.target_id = Some("9".into());
        let ops = vec![
            Operation::MemberAdd {
                group: g.clone(),
                members,
            },
            Operation::MemberRemove {
                group: g.clone(),
                members: vec![known, member("nobody")],
            },
        ];
        let (result, report) = run(&api, ops).await;
        result.unwrap();
        assert_eq!(report.applied.member_add, 3);
        assert_eq!(report.applied.member_remove, 2);
        assert_eq!(report.unmapped, 1);
        assert_eq!(api.calls(), ["add G 1,2", "add G 3", "remove G 1"]);
    }

    #[tokio::test]
    async fn a_gone_group_is_forgotten_and_deletes_of_unconfirmed_creates_look_up() {
        let api = Fake {
            update_gone: true,
            ..Fake::default()
        };
        let ops = vec![
            Operation::Update {
                group: group("a", Some("A")),
                previous: group("old", Some("A")),
            },
            Operation::Delete {
                group: group("b", None),
            },
            Operation::Delete {
                group: group("c", Some("C")),
            },
        ];
        let (result, report) = run(&api, ops).await;
        result.unwrap();
        assert_eq!(report.applied.delete, 2);
        assert!(report.failures[0].error.contains("no longer exists"));
        assert_eq!(api.calls(), ["update A", "find b", "delete C"]);
    }

    /// An HTTP error answer with this status.
    fn status(status: u16, detail: &str) -> OpError {
        HttpError::Status {
            method: "POST".into(),
            path: "/groups".into(),
            status,
            detail: detail.into(),
        }
        .into()
    }

    fn creates(names: &[&str]) -> Vec<Operation> {
        names
            .iter()
            .map(|n| Operation::Create {
                group: group(n, None),
                resume: false,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_rejected_credential_stops_the_sink() {
        let api = Fake {
            create_error: Some(status(401, "no")),
            ..Fake::default()
        };
        let ops = ["a", "b"]
            .map(|n| Operation::Create {
                group: group(n, None),
                resume: false,
            })
            .to_vec();
        let (result, _) = run(&api, ops).await;
        let error = result.unwrap_err().to_string();
        assert!(error.contains("authentication rejected"), "{error}");
        assert!(error.contains("check the fake"), "{error}");
        assert_eq!(api.calls(), ["create a"]);
    }

    /// A target whose creates all fail with a refusal of this status.
    fn refusing(status: u16, message: &str) -> Fake {
        Fake {
            create_error: Some(OpError::Target {
                status: Some(status),
                message: message.into(),
            }),
            ..Fake::default()
        }
    }

    #[tokio::test]
    async fn a_401_stops_the_sink_whatever_its_text_says() {
        let api = refusing(401, "the target turned the credential down");
        let (result, report) = run(&api, creates(&["a", "b"])).await;
        let error = result.unwrap_err().to_string();
        assert!(
            error.contains("authentication rejected (the target turned the credential down)"),
            "{error}"
        );
        assert_eq!(report.failures.len(), 1);
        assert_eq!(api.calls(), ["create a"]);

        let token = HttpError::Token {
            path: "/as/token".into(),
            detail: "HTTP 400: invalid_client".into(),
        };
        let api = Fake {
            create_error: Some(token.into()),
            ..Fake::default()
        };
        let (result, _) = run(&api, creates(&["a", "b"])).await;
        assert!(result.is_err());
        assert_eq!(api.calls(), ["create a"]);
    }

    #[tokio::test]
    async fn failure_text_that_mentions_401_does_not_stop_the_sink() {
        let api = Fake {
            user_error: Some(status(400, "invalid filter")),
            ..Fake::default()
        };
        let g = group("g", Some("G"));
        let mut ops = vec![Operation::MemberAdd {
            group: g.clone(),
            members: vec![member("HTTP 401 Bob")],
        }];
        ops.extend(creates(&["b"]));
        let (result, report) = run(&api, ops).await;
        result.unwrap();
        assert_eq!(
            report.failures[0].error,
            "HTTP 401 Bob: POST /groups: HTTP 400: invalid filter"
        );
        assert_eq!(report.applied.create, 1);
        assert_eq!(api.calls(), ["create b"]);

        // A group named like an auth failure, refused with its own status.
        let api = refusing(403, "token request / HTTP 401 is not a valid name");
        let (result, report) = run(&api, creates(&["a", "b"])).await;
        result.unwrap();
        assert_eq!(report.failures.len(), 2);
        assert_eq!(api.calls(), ["create a", "create b"]);
    }

    fn listed(id: &str, name: &str, external_id: Option<&str>) -> TargetGroup {
        TargetGroup {
            id: id.into(),
            name: name.into(),
            external_id: external_id.map(str::to_string),
            members: None,
        }
    }

    #[test]
    fn lookups_are_checked_on_the_client_side() {
        let g = group("g03", None);
        let ignored_filter = [
            listed("1", "AAA-finance-admins", None),
            listed("2", "g03", Some("someone-else")),
        ];
        let mut api = Fake::default();
        // A target that ignored the filter: nothing it answered is g03.
        assert_eq!(identify(&api, &g, &ignored_filter, Lookup::Adopt), Ok(None));
        // Ours by externalId, whatever its name.
        let ours = [
            listed("3", "renamed", Some("s-g03")),
            listed("4", "g03", None),
        ];
        let (found, by) = identify(&api, &g, &ours, Lookup::Adopt).unwrap().unwrap();
        assert_eq!((found.id.as_str(), by), ("3", AdoptedBy::ExternalId));
        // A hand-made group of the same name: adopted by name only when the policy allows,
        // never for an unconfirmed create.
        let hand_made = [listed("4", "g03", None), listed("5", "G03", None)];
        let (found, by) = identify(&api, &g, &hand_made, Lookup::Adopt)
            .unwrap()
            .unwrap();
        assert_eq!((found.id.as_str(), by), ("4", AdoptedBy::Name));
        assert_eq!(identify(&api, &g, &hand_made, Lookup::Ours), Ok(None));
        api.policy = AdoptPolicy::ExternalId;
        assert_eq!(identify(&api, &g, &hand_made, Lookup::Adopt), Ok(None));
        api.policy = AdoptPolicy::Never;
        assert_eq!(identify(&api, &g, &hand_made, Lookup::Adopt), Ok(None));
        assert_eq!(identify(&api, &g, &hand_made, Lookup::Ours), Ok(None));
        // Two of the same name: ambiguous, refused.
        api.policy = AdoptPolicy::Name;
        let two = [listed("4", "g03", None), listed("6", "g03", None)];
        assert!(identify(&api, &g, &two, Lookup::Adopt).is_err());
        // A target without externalIds (Connect, ForgeRock): the exact name is the identity of
        // ldapsync's own unconfirmed create, whatever `adopt` says; adopting a group ldapsync
        // never created by its name still needs `adopt = "name"`.
        api.no_external_id = true;
        for policy in [
            AdoptPolicy::Never,
            AdoptPolicy::ExternalId,
            AdoptPolicy::Name,
        ] {
            api.policy = policy;
            let (found, by) = identify(&api, &g, &hand_made, Lookup::Ours)
                .unwrap()
                .unwrap();
            assert_eq!(
                (found.id.as_str(), by),
                ("4", AdoptedBy::Name),
                "{policy:?}"
            );
            let adopted = identify(&api, &g, &hand_made, Lookup::Adopt).unwrap();
            assert_eq!(adopted.is_some(), policy == AdoptPolicy::Name, "{policy:?}");
        }
    }

    #[tokio::test]
    async fn a_create_that_failed_after_sending_is_looked_up_before_it_is_sent_again() {
        let mut api = Fake {
            create_error: Some(status(503, "busy")),
            ..Fake::default()
        };
        api.existing.insert("a".into(), "t-a".into());
        let (result, report) = run(&api, creates(&["a", "b"])).await;
        result.unwrap();
        assert_eq!(report.applied.create, 1);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(
            api.calls(),
            [
                "create a", "find a", "create b", "find b", "create b", "find b", "create b",
                "find b"
            ]
        );
    }

    #[tokio::test]
    async fn with_adopt_never_a_conflict_fails_that_group_only() {
        let mut api = Fake {
            conflict: true,
            policy: AdoptPolicy::Never,
            ..Fake::default()
        };
        api.existing.insert("a".into(), "t-a".into());
        let (result, report) = run(&api, creates(&["a"])).await;
        result.unwrap();
        assert_eq!(report.applied.create, 0);
        assert!(
            report.failures[0].error.contains("adopt = \"never\""),
            "{:?}",
            report.failures
        );
    }

    #[tokio::test]
    async fn the_user_map_saves_lookups_and_misses_are_looked_up_every_run() {
        use crate::directory::Group;
        let mut api = Fake {
            caches_users: true,
            ..Fake::default()
        };
        api.users.insert("x".into(), "1".into());
        api.users.insert("y".into(), "2".into());
        let users: Vec<Arc<User>> = ["x", "y", "z"].map(|n| member(n).user).to_vec();
        let directory = Directory {
            users,
            groups: vec![Group {
                id: "s-g".into(),
                dn: "cn=g,dc=x".into(),
                name: "g".into(),
                description: None,
                members: vec![0, 1, 2],
            }],
            warnings: Vec::new(),
        };
        let mut ledger = Ledger::default();
        // Through the `Sink` impl, as the engine calls it.
        let view = Sink::resolve(&api, &directory, &ledger, false)
            .await
            .unwrap();
        assert_eq!(view.learned.len(), 2);
        assert_eq!(view.learned["u-x"].key, "userName=x");
        ledger.users = view.learned.clone().into_iter().collect();
        api.calls.lock().unwrap().clear();
        // z appears in the target: the next run looks up only the miss.
        api.users.insert("z".into(), "3".into());
        let view = resolve(&api, &directory, &ledger, false).await.unwrap();
        let users = view.users.unwrap();
        assert_eq!((users["u-x"].as_str(), users["u-z"].as_str()), ("1", "3"));
        assert!(api.calls().iter().all(|c| !c.starts_with("user x")));
        assert!(api.calls().contains(&"user z".to_string()));
        // A changed key (the user was renamed in LDAP) is a miss again.
        let mut renamed = ledger.clone();
        renamed.users.get_mut("u-y").unwrap().key = "userName=old".into();
        api.calls.lock().unwrap().clear();
        resolve(&api, &directory, &renamed, false).await.unwrap();
        assert!(api.calls().contains(&"user y".to_string()));
        // A failed lookup fails the read, saying when it happened.
        api.user_error = Some(OpError::from("HTTP 500"));
        let error = Sink::resolve(&api, &directory, &ledger, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("reading the target before planning") && error.contains("HTTP 500"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn bulk_filters_carry_several_values_and_answers_are_matched_locally() {
        let members: Vec<MemberRef> = (0..FILTER_VALUES + 3)
            .map(|i| member(&format!("user{i}")))
            .collect();
        let filters = StdMutex::new(Vec::new());
        let find = |filter: String| {
            filters.lock().unwrap().push(filter);
            // A target that ignores the filter: it answers everyone, one name in another case
            // and one name twice.
            async move {
                let mut all: Vec<(String, String)> = (0..FILTER_VALUES + 3)
                    .map(|i| (format!("t{i}"), format!("USER{i}")))
                    .collect();
                all.push(("dup".into(), "user1".into()));
                Ok(all)
            }
        };
        let mapped = map_by_filter("s", &members, ("userName", UserKey::Username), find)
            .await
            .unwrap();
        let filters = filters.into_inner().unwrap();
        assert_eq!(filters.len(), 2);
        assert!(filters[0].starts_with("userName eq \"user0\" or userName eq"));
        assert_eq!(mapped.len(), FILTER_VALUES + 2);
        assert_eq!(mapped["u-user7"], "t7");
        assert!(!mapped.contains_key("u-user1"), "ambiguous: skipped");
    }

    #[test]
    fn op_errors_keep_status_and_kind_through_context() {
        let e = status(401, "denied").of("alice");
        assert_eq!(e.to_string(), "alice: POST /groups: HTTP 401: denied");
        assert_eq!(e.status(), Some(401));
        assert!(e.is_auth());
        let hinted = OpError::hinted(
            HttpError::Status {
                method: "GET".into(),
                path: "/v1/user".into(),
                status: 401,
                detail: "code=24 bad key".into(),
            },
            " (check api_key)",
        );
        assert_eq!(
            hinted.to_string(),
            "GET /v1/user: HTTP 401: code=24 bad key (check api_key)"
        );
        assert!(hinted.is_auth());
        let plain = OpError::from("HTTP 401");
        assert_eq!((plain.status(), plain.is_auth()), (None, false));
    }

    /// What the driver decides on: may the request have been carried out (look it up before
    /// sending it again), did the target ask to wait too long, was the credential refused.
    #[test]
    fn op_errors_are_classified_by_kind_and_status() {
        let (method, path) = (String::from("POST"), String::from("/groups"));
        let answered = |status: u16| HttpError::Status {
            method: method.clone(),
            path: path.clone(),
            status,
            detail: String::new(),
        };
        let target = |status: Option<u16>| OpError::Target {
            status,
            message: "refused".into(),
        };
        let cases: Vec<(&str, OpError, (bool, bool, bool))> = vec![
            (
                "no answer",
                HttpError::Transport {
                    method: method.clone(),
                    path: path.clone(),
                    message: "reset".into(),
                }
                .into(),
                (true, false, false),
            ),
            (
                "unreadable answer",
                HttpError::Decode {
                    method: method.clone(),
                    path: path.clone(),
                    detail: "not JSON".into(),
                }
                .into(),
                (true, false, false),
            ),
            ("HTTP 500", answered(500).into(), (true, false, false)),
            ("HTTP 503", answered(503).into(), (true, false, false)),
            ("HTTP 429", answered(429).into(), (true, false, false)),
            ("HTTP 499", answered(499).into(), (false, false, false)),
            ("HTTP 409", answered(409).into(), (false, false, false)),
            ("HTTP 401", answered(401).into(), (false, false, true)),
            (
                "a long Retry-After on 503",
                HttpError::RetryAfterTooLong {
                    method: method.clone(),
                    path: path.clone(),
                    status: 503,
                    asked: 3600,
                    max: 60,
                }
                .into(),
                (true, true, false),
            ),
            (
                "a long Retry-After on 429",
                HttpError::RetryAfterTooLong {
                    method: method.clone(),
                    path: path.clone(),
                    status: 429,
                    asked: 3600,
                    max: 60,
                }
                .into(),
                (true, true, false),
            ),
            (
                "a long Retry-After on 403",
                HttpError::RetryAfterTooLong {
                    method: method.clone(),
                    path: path.clone(),
                    status: 403,
                    asked: 3600,
                    max: 60,
                }
                .into(),
                (false, true, false),
            ),
            (
                "a failed token request",
                HttpError::Token {
                    path: "/token".into(),
                    detail: "invalid_client".into(),
                }
                .into(),
                (false, false, true),
            ),
            (
                "a refusal in the sink's words",
                target(None),
                (true, false, false),
            ),
            (
                "a refusal with HTTP 409",
                target(Some(409)),
                (false, false, false),
            ),
            (
                "a refusal with HTTP 502",
                target(Some(502)),
                (true, false, false),
            ),
            (
                "a refusal with HTTP 401",
                target(Some(401)),
                (false, false, true),
            ),
        ];
        for (what, error, expected) in cases {
            let kind = |e: &OpError| (e.maybe_committed(), e.asks_to_wait_too_long(), e.is_auth());
            assert_eq!(kind(&error), expected, "{what}");
            // For one member or user of an operation, the same.
            assert_eq!(kind(&error.of("alice")), expected, "{what}, for one object");
        }
    }
}
