//! The group lifecycle shared by the HTTP group sinks, written once: a target implements the [`GroupApi`] primitives and [`apply`] drives them.
//!
//! The driver owns everything that is the same on every target:
//!
//! * **Create**: an optional lookup first ([`GroupApi::prepare_create`]; by default only for a
//!   resumed create, `Create { resume: true }`), the intent recorded before the request, and a
//!   conflict answer ("it exists") resolved by [`GroupApi::find_existing`] and adopted.
//! * **Update**: [`Outcome::NotFound`] fails the op and forgets the group, so the next run
//!   recreates it.
//! * **Delete**: an unconfirmed create (no target id) is looked up first; not found, or a 404,
//!   is done.
//! * **Members**: users mapped through [`GroupApi::user_id`] (unmapped members counted, never
//!   fatal), sent in chunks of [`GroupApi::member_chunk_size`], recorded in batches; a group the
//!   target owns the membership of ([`Membership::Provider`]) is recorded as in sync, unsent.
//! * Every op fails on its own ([`Recorder::failed`]) and the run goes on, except a rejected
//!   credential (HTTP 401, a failed token request), which stops the sink.
//!
//! A primitive returns `Err` for "this request failed" and an [`Outcome`] for the answers the
//! driver acts on; it never touches the [`Recorder`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::http::{HttpError, Response};
use super::{Recorder, SinkError};
use crate::model::{GroupSpec, MemberRef, OpKind, Operation, Plan};

/// Member changes written to the ledger together, to keep writes few on large groups.
const RECORD_BATCH: usize = 100;

/// Why one request of an operation failed: the text that goes into the run report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError(String);

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<HttpError> for OpError {
    fn from(error: HttpError) -> Self {
        OpError(error.to_string())
    }
}

impl From<String> for OpError {
    fn from(message: String) -> Self {
        OpError(message)
    }
}

impl From<&str> for OpError {
    fn from(message: &str) -> Self {
        OpError(message.to_string())
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

    /// The sink's configured name (logs and errors).
    fn sink_name(&self) -> &str;

    /// The target as messages name it ("the target", "PingOne", "Connect").
    fn target_label(&self) -> &str {
        "the target"
    }

    /// What to check when the target rejects the credentials, e.g. "check the token".
    fn auth_hint(&self) -> &str;

    /// Members per [`GroupApi::add_members`] / [`GroupApi::remove_members`] call.
    fn member_chunk_size(&self) -> usize {
        1
    }

    /// Logged once per run when member changes were recorded without being sent.
    fn skipped_note(&self) -> String {
        "the target manages group membership itself; these membership changes were not sent (recorded as in sync)".into()
    }

    /// A group this sink may adopt (an interrupted or conflicting create): externalId, then name.
    async fn find_existing(&self, group: &GroupSpec) -> Result<Option<String>, OpError>;

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

    /// Adds one chunk of members (each with its `target_id`) to group `id`.
    async fn add_members(
        &self,
        id: &str,
        group: &GroupSpec,
        current: &Self::Members,
        chunk: &[MemberRef],
    ) -> Result<Outcome, OpError>;

    /// Removes one chunk of members (each with its `target_id`) from group `id`.
    async fn remove_members(
        &self,
        id: &str,
        group: &GroupSpec,
        current: &Self::Members,
        chunk: &[MemberRef],
    ) -> Result<Outcome, OpError>;
}

/// The default [`GroupApi::prepare_create`]: a resumed create adopts what
/// [`GroupApi::find_existing`] finds; otherwise nothing is looked up.
pub async fn adopt_on_resume<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    resume: bool,
) -> Result<Prepared, OpError> {
    if resume && let Some(id) = api.find_existing(group).await? {
        tracing::info!(sink = %api.sink_name(), group = %group.name, id, "adopted the group an interrupted run created");
        return Ok(Prepared::Adopt(id));
    }
    Ok(Prepared::Create(None))
}

/// Member changes recorded without a request, for the one log line per run.
#[derive(Default)]
struct Skipped {
    members: u64,
    groups: HashSet<String>,
}

/// Executes `plan` on the target behind `api`, recording every success in `recorder`.
pub async fn apply<A: GroupApi + ?Sized>(
    api: &A,
    plan: &Plan,
    recorder: &mut Recorder<'_>,
) -> Result<(), SinkError> {
    let mut skipped = Skipped::default();
    for op in &plan.operations {
        let failures_before = recorder.report.failures.len();
        match op {
            Operation::Create { group, resume } => create(api, group, *resume, recorder).await?,
            Operation::Update { group, previous } => update(api, group, previous, recorder).await?,
            Operation::MemberAdd { group, members }
            | Operation::MemberRemove { group, members } => {
                change_members(api, op.kind(), group, members, recorder, &mut skipped).await?
            }
            Operation::Delete { group } => delete(api, group, recorder).await?,
        }
        if let Some(failure) = recorder.report.failures[failures_before..]
            .iter()
            .find(|f| is_auth_failure(&f.error))
        {
            return Err(SinkError::Target {
                sink: api.sink_name().to_string(),
                message: format!(
                    "authentication rejected ({}); {}",
                    failure.error,
                    api.auth_hint()
                ),
            });
        }
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

/// A rejected credential: the sink cannot go on.
fn is_auth_failure(error: &str) -> bool {
    error.contains("HTTP 401") || error.contains("token request")
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

/// Creates (or adopts) one group.
pub async fn create<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    resume: bool,
    recorder: &mut Recorder<'_>,
) -> Result<(), SinkError> {
    let ticket = match api.prepare_create(group, resume).await {
        Ok(Prepared::Adopt(id)) => return recorder.created(group, &id),
        Ok(Prepared::Create(ticket)) => ticket,
        Err(e) => {
            recorder.failed(OpKind::Create, group, e, 1);
            return Ok(());
        }
    };
    recorder.intent(group)?;
    let error = match api.create(group, ticket).await {
        Ok(Created::Id(id)) => return recorder.created(group, &id),
        Ok(Created::Conflict(conflict)) => match api.find_existing(group).await {
            Ok(Some(id)) => {
                tracing::info!(sink = %api.sink_name(), group = %group.name, id, "the group already exists in {}; adopted it", api.target_label());
                return recorder.created(group, &id);
            }
            Ok(None) => conflict,
            Err(e) => e,
        },
        Err(e) => e,
    };
    recorder.failed(OpKind::Create, group, error, 1);
    Ok(())
}

async fn update<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    previous: &GroupSpec,
    recorder: &mut Recorder<'_>,
) -> Result<(), SinkError> {
    let Some(id) = recorder.target_id(group) else {
        recorder.failed(OpKind::Update, group, "no target id recorded", 1);
        return Ok(());
    };
    match api.update(&id, group, previous).await {
        Ok(Outcome::Done) => recorder.updated(group, &id),
        Ok(Outcome::NotFound) => {
            recorder.failed(OpKind::Update, group, gone(api, OpKind::Update), 1);
            recorder.forget(group)
        }
        Ok(Outcome::Refused(e)) | Err(e) => {
            recorder.failed(OpKind::Update, group, e, 1);
            Ok(())
        }
    }
}

async fn delete<A: GroupApi + ?Sized>(
    api: &A,
    group: &GroupSpec,
    recorder: &mut Recorder<'_>,
) -> Result<(), SinkError> {
    let id = match recorder.target_id(group) {
        Some(id) => Some(id),
        // An unconfirmed create: delete what it may have created.
        None => match api.find_existing(group).await {
            Ok(found) => found,
            Err(e) => {
                recorder.failed(OpKind::Delete, group, e, 1);
                return Ok(());
            }
        },
    };
    let Some(id) = id else {
        return recorder.deleted(group);
    };
    match api.delete(&id).await {
        Ok(Outcome::Done | Outcome::NotFound) => recorder.deleted(group),
        Ok(Outcome::Refused(e)) | Err(e) => {
            recorder.failed(OpKind::Delete, group, e, 1);
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
    match kind {
        OpKind::MemberRemove => recorder.members_removed(group, &members),
        _ => recorder.members_added(group, &members),
    }
}

async fn change_members<A: GroupApi + ?Sized>(
    api: &A,
    kind: OpKind,
    group: &GroupSpec,
    members: &[MemberRef],
    recorder: &mut Recorder<'_>,
    skipped: &mut Skipped,
) -> Result<(), SinkError> {
    let adding = kind == OpKind::MemberAdd;
    let count = members.len() as u64;
    let Some(id) = recorder.target_id(group) else {
        let why = if adding {
            "the group was not created"
        } else {
            "no target id recorded"
        };
        recorder.failed(kind, group, why, count);
        return Ok(());
    };
    let current = match api.members(kind, &id, group).await {
        Ok(Membership::Managed(current)) => current,
        Ok(Membership::Provider) => {
            recorder.members_skipped(kind, group, members)?;
            skipped.members += count;
            skipped.groups.insert(group.source_id.clone());
            return Ok(());
        }
        Ok(Membership::Gone) => {
            recorder.failed(kind, group, gone(api, kind), count);
            return recorder.forget(group);
        }
        Err(e) => {
            recorder.failed(kind, group, e, count);
            return Ok(());
        }
    };
    // Map every member to its target user; a removal already knows it from the ledger.
    let mut done = Vec::new();
    let mut mapped = Vec::with_capacity(members.len());
    for member in members {
        let known = member.target_id.clone().filter(|_| !adding);
        let found = match known {
            Some(target_id) => Ok(Some(target_id)),
            None => api.user_id(member).await,
        };
        match found {
            Ok(Some(target_id)) => mapped.push(MemberRef {
                target_id: Some(target_id),
                ..member.clone()
            }),
            Ok(None) if adding => recorder.unmapped(group, member),
            // Not in the target at all, so not in the group: nothing to remove.
            Ok(None) => done.push(member.clone()),
            Err(e) => recorder.failed(kind, group, format!("{}: {e}", member.username), 1),
        }
    }
    let mut left = mapped.len() as u64;
    for chunk in mapped.chunks(api.member_chunk_size().max(1)) {
        let answer = if adding {
            api.add_members(&id, group, &current, chunk).await
        } else {
            api.remove_members(&id, group, &current, chunk).await
        };
        match answer {
            Ok(Outcome::Done) => {
                done.extend_from_slice(chunk);
                if done.len() >= RECORD_BATCH {
                    record(recorder, kind, group, &mut done)?;
                }
            }
            Ok(Outcome::NotFound) => {
                record(recorder, kind, group, &mut done)?;
                recorder.failed(kind, group, gone(api, kind), left);
                return recorder.forget(group);
            }
            Ok(Outcome::Refused(e)) => {
                record(recorder, kind, group, &mut done)?;
                recorder.failed(kind, group, e, left);
                return Ok(());
            }
            Err(e) => match chunk {
                [one] => recorder.failed(kind, group, format!("{}: {e}", one.username), 1),
                _ => recorder.failed(kind, group, e, chunk.len() as u64),
            },
        }
        left -= chunk.len() as u64;
    }
    record(recorder, kind, group, &mut done)
}

/// The usual answer of a write: 2xx done, 404 gone, anything else an error.
pub fn outcome(response: Response) -> Result<Outcome, OpError> {
    if response.is_success() {
        Ok(Outcome::Done)
    } else if response.status.as_u16() == 404 {
        Ok(Outcome::NotFound)
    } else {
        Err(response.into_error().into())
    }
}

/// Target user ids by match attribute and value: positive answers only, so a user created in
/// the target later is found on the next run.
#[derive(Debug, Default)]
pub struct UserCache(Mutex<HashMap<String, String>>);

impl UserCache {
    /// The one target user whose `attribute` is `value`; `find` (every matching id) runs on a
    /// cache miss. No match, or several, is `None` (the member is counted as unmapped).
    pub async fn lookup(
        &self,
        sink: &str,
        member: &MemberRef,
        (attribute, value): (&str, &str),
        find: impl Future<Output = Result<Vec<String>, HttpError>> + Send,
    ) -> Result<Option<String>, OpError> {
        let key = format!("{attribute}\u{0}{value}");
        if let Some(id) = self.0.lock().await.get(&key) {
            return Ok(Some(id.clone()));
        }
        match find.await?.as_slice() {
            [id] => {
                self.0.lock().await.insert(key, id.clone());
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
    use crate::model::User;
    use crate::sinks::ApplyReport;
    use crate::store::Store;

    /// A target that answers from fixed tables and logs every call.
    #[derive(Default)]
    struct Fake {
        existing: HashMap<String, String>,
        conflict: bool,
        update_gone: bool,
        unauthorized: bool,
        users: HashMap<String, String>,
        calls: StdMutex<Vec<String>>,
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
        fn sink_name(&self) -> &str {
            "fake"
        }
        fn auth_hint(&self) -> &str {
            "check the fake"
        }
        fn member_chunk_size(&self) -> usize {
            2
        }
        async fn find_existing(&self, group: &GroupSpec) -> Result<Option<String>, OpError> {
            self.log(format!("find {}", group.name));
            Ok(self.existing.get(&group.name).cloned())
        }
        async fn create(&self, group: &GroupSpec, _: Option<String>) -> Result<Created, OpError> {
            self.log(format!("create {}", group.name));
            if self.unauthorized {
                return Err("POST /groups: HTTP 401: no".into());
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
        async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, OpError> {
            Ok(self.users.get(&member.username).cloned())
        }
        async fn add_members(
            &self,
            id: &str,
            _: &GroupSpec,
            _: &(),
            chunk: &[MemberRef],
        ) -> Result<Outcome, OpError> {
            let ids: Vec<_> = chunk.iter().filter_map(|m| m.target_id.clone()).collect();
            self.log(format!("add {id} {}", ids.join(",")));
            Ok(Outcome::Done)
        }
        async fn remove_members(
            &self,
            id: &str,
            _: &GroupSpec,
            _: &(),
            chunk: &[MemberRef],
        ) -> Result<Outcome, OpError> {
            self.log(format!("remove {id} {}", chunk.len()));
            Ok(Outcome::Done)
        }
    }

    fn group(name: &str, target_id: Option<&str>) -> GroupSpec {
        GroupSpec {
            source_id: format!("s-{name}"),
            name: name.into(),
            description: None,
            dn: format!("cn={name},dc=x"),
            target_id: target_id.map(str::to_string),
        }
    }

    fn member(name: &str) -> MemberRef {
        MemberRef::new(Arc::new(User {
            source_id: format!("u-{name}"),
            dn: format!("uid={name},dc=x"),
            username: name.into(),
            email: None,
        }))
    }

    async fn run(api: &Fake, operations: Vec<Operation>) -> (Result<(), SinkError>, ApplyReport) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let mut writer = store.ledger_writer("fake");
        let mut recorder = Recorder::new(&mut writer, "fake");
        let plan = Plan {
            operations,
            full: false,
        };
        let result = apply(api, &plan, &mut recorder).await;
        (result, recorder.report.clone())
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

    #[tokio::test]
    async fn a_rejected_credential_stops_the_sink() {
        let api = Fake {
            unauthorized: true,
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
}
