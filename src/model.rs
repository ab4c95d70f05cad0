//! The plan model shared by every rung above the directory: users, the groups and operations a plan holds, and their counts.
//!
//! Plain data with no I/O: the planner produces it, sinks consume it, the store records it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A directory user, shared (`Arc`) by the directory, plans and ledgers so a million
/// memberships never copy user data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub source_id: String,
    pub dn: String,
    pub username: String,
    pub email: Option<String>,
}

/// The group an operation concerns, with everything a sink needs to write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub source_id: String,
    pub name: String,
    pub description: Option<String>,
    pub dn: String,
    /// The target's id from the ledger, when known at plan time.
    pub target_id: Option<String>,
}

/// A user in a membership operation: the shared directory user (its fields are reachable
/// directly, `member.username`) plus the target's user id when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    pub user: Arc<User>,
    /// The target's user id recorded in the ledger, if any.
    pub target_id: Option<String>,
}

#[cfg(test)]
impl User {
    /// A user `username` with id `source_id` under `ou=People,dc=example,dc=com`, no email.
    pub(crate) fn for_test(source_id: impl Into<String>, username: &str) -> User {
        User {
            source_id: source_id.into(),
            dn: format!("uid={username},ou=People,dc=example,dc=com"),
            username: username.into(),
            email: None,
        }
    }
}

#[cfg(test)]
impl GroupSpec {
    /// A group `name` with id `source_id` under `ou=Groups,dc=example,dc=com`, no description,
    /// not yet in the target.
    pub(crate) fn for_test(source_id: impl Into<String>, name: &str) -> GroupSpec {
        GroupSpec {
            source_id: source_id.into(),
            name: name.into(),
            description: None,
            dn: format!("cn={name},ou=Groups,dc=example,dc=com"),
            target_id: None,
        }
    }
}

impl MemberRef {
    pub fn new(user: Arc<User>) -> Self {
        MemberRef {
            user,
            target_id: None,
        }
    }
}

impl std::ops::Deref for MemberRef {
    type Target = User;
    fn deref(&self) -> &User {
        &self.user
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Create,
    Adopt,
    Update,
    MemberAdd,
    MemberRemove,
    Delete,
    UserCreate,
    UserDeactivate,
    UserReactivate,
}

impl OpKind {
    pub const ALL: [OpKind; 9] = [
        OpKind::Create,
        OpKind::Adopt,
        OpKind::Update,
        OpKind::Delete,
        OpKind::MemberAdd,
        OpKind::MemberRemove,
        OpKind::UserCreate,
        OpKind::UserDeactivate,
        OpKind::UserReactivate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Adopt => "adopt",
            OpKind::Update => "update",
            OpKind::MemberAdd => "member_add",
            OpKind::MemberRemove => "member_remove",
            OpKind::Delete => "delete",
            OpKind::UserCreate => "user_create",
            OpKind::UserDeactivate => "user_deactivate",
            OpKind::UserReactivate => "user_reactivate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Create the group. `resume` means an earlier create was started but never confirmed:
    /// the sink must look the object up (externalId, then name) before creating it.
    Create { group: GroupSpec, resume: bool },
    /// Take over a group that already exists in the target (`group.target_id` is set), found
    /// before planning and checked on the client side; `present` are the members it already has
    /// that the directory wants there (recorded in the ledger as in sync).
    Adopt {
        group: GroupSpec,
        by: AdoptedBy,
        present: Vec<MemberRef>,
    },
    /// Rename and/or change the description or DN.
    Update {
        group: GroupSpec,
        previous: GroupSpec,
    },
    MemberAdd {
        group: GroupSpec,
        members: Vec<MemberRef>,
    },
    MemberRemove {
        group: GroupSpec,
        members: Vec<MemberRef>,
    },
    /// Delete; `group` holds the last known attributes from the ledger.
    Delete { group: GroupSpec },
    /// Create the target user of `user` (`provision_users`), for `group`, the first group that
    /// needs it.
    UserCreate { group: GroupSpec, user: MemberRef },
    /// Deactivate a user the sink created (`user.target_id`), which left the scope: no longer a
    /// member of any synced group. `group` is empty (no group is concerned).
    UserDeactivate { group: GroupSpec, user: MemberRef },
    /// Reactivate a user the sink created and deactivated (`user.target_id`), which is back in
    /// the scope: a member of `group`, the first group that needs it.
    UserReactivate { group: GroupSpec, user: MemberRef },
}

impl Operation {
    pub fn kind(&self) -> OpKind {
        match self {
            Operation::Create { .. } => OpKind::Create,
            Operation::Adopt { .. } => OpKind::Adopt,
            Operation::Update { .. } => OpKind::Update,
            Operation::MemberAdd { .. } => OpKind::MemberAdd,
            Operation::MemberRemove { .. } => OpKind::MemberRemove,
            Operation::Delete { .. } => OpKind::Delete,
            Operation::UserCreate { .. } => OpKind::UserCreate,
            Operation::UserDeactivate { .. } => OpKind::UserDeactivate,
            Operation::UserReactivate { .. } => OpKind::UserReactivate,
        }
    }

    pub fn group(&self) -> &GroupSpec {
        match self {
            Operation::Create { group, .. }
            | Operation::Adopt { group, .. }
            | Operation::Update { group, .. }
            | Operation::MemberAdd { group, .. }
            | Operation::MemberRemove { group, .. }
            | Operation::Delete { group }
            | Operation::UserCreate { group, .. }
            | Operation::UserDeactivate { group, .. }
            | Operation::UserReactivate { group, .. } => group,
        }
    }

    /// How many things this operation counts for in a summary (memberships for member ops).
    pub fn weight(&self) -> u64 {
        match self {
            Operation::MemberAdd { members, .. } | Operation::MemberRemove { members, .. } => {
                members.len() as u64
            }
            _ => 1,
        }
    }
}

/// Counts per operation kind; member kinds count memberships.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: u64,
    pub adopt: u64,
    pub update: u64,
    pub delete: u64,
    pub member_add: u64,
    pub member_remove: u64,
    /// Memberships whose user has no counterpart in the target (see [`Plan::unmapped`]).
    pub unmapped: u64,
    /// Users created (sinks with `provision_users`); shown only when not zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub user_create: u64,
    /// Users deactivated because they left the scope; shown only when not zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub user_deactivate: u64,
    /// Users the sink deactivated that came back into the scope; shown only when not zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub user_reactivate: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl Summary {
    pub fn add(&mut self, kind: OpKind, count: u64) {
        match kind {
            OpKind::Create => self.create += count,
            OpKind::Adopt => self.adopt += count,
            OpKind::Update => self.update += count,
            OpKind::Delete => self.delete += count,
            OpKind::MemberAdd => self.member_add += count,
            OpKind::MemberRemove => self.member_remove += count,
            OpKind::UserCreate => self.user_create += count,
            OpKind::UserDeactivate => self.user_deactivate += count,
            OpKind::UserReactivate => self.user_reactivate += count,
        }
    }
    pub fn get(&self, kind: OpKind) -> u64 {
        match kind {
            OpKind::Create => self.create,
            OpKind::Adopt => self.adopt,
            OpKind::Update => self.update,
            OpKind::Delete => self.delete,
            OpKind::MemberAdd => self.member_add,
            OpKind::MemberRemove => self.member_remove,
            OpKind::UserCreate => self.user_create,
            OpKind::UserDeactivate => self.user_deactivate,
            OpKind::UserReactivate => self.user_reactivate,
        }
    }
}

/// Everything one sink must do to match the Directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub operations: Vec<Operation>,
    /// A full reconcile was asked for (`sync --full`): sinks with cursors resend everything.
    pub full: bool,
    /// Per group, the members that map to no user in the target (not planned as `member_add`).
    pub unmapped: Vec<Unmapped>,
    /// Indexes into `operations` of the operations that repair a change made in the target
    /// (found by a full reconcile, `sync --full`).
    pub drift: std::collections::BTreeSet<usize>,
    /// Full reconcile: the owned groups as read from the target, for the ledger to be rewritten
    /// from before anything is applied.
    pub resync: Vec<Resync>,
}

/// An owned group as a full reconcile read it: the ledger is rewritten to this before the plan
/// is applied (a ledger that drifted from the target, e.g. a lost write, is repaired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    /// As read (name, description; the target id recorded), or the ledger's when the group is
    /// gone from the target.
    pub group: GroupSpec,
    /// `None`: the group is gone from the target (forgotten; the plan creates it again).
    /// Otherwise the members it has that the directory wants there.
    pub members: Option<Vec<MemberRef>>,
}

/// The members of one group that have no user in the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmapped {
    pub group: String,
    pub source_id: String,
    /// User names.
    pub members: Vec<String>,
}

/// How an existing target group was matched to a directory group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdoptedBy {
    /// Its externalId (or the target's equivalent) is the group's source id.
    ExternalId,
    /// Its name equals the group's name exactly, and it carries no other externalId.
    Name,
}

impl AdoptedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            AdoptedBy::ExternalId => "external_id",
            AdoptedBy::Name => "name",
        }
    }
}

/// What a sink found in its target before planning (read-only): plain data the pure planner
/// takes. `TargetView::default()` (nothing resolved) plans as if the target were unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetView {
    /// User source id → target user id, for every directory member the target has; `None` when
    /// the sink does not resolve users (every member is planned).
    pub users: Option<std::collections::HashMap<String, String>>,
    /// Group source id → the existing target group to adopt (only groups the ledger does not
    /// hold with a target id).
    pub existing: std::collections::BTreeMap<String, ExistingGroup>,
    /// The sink creates missing users (`provision_users`): members without a target user are
    /// planned as `member_add` (without a target id) instead of listed as unmapped.
    pub provisions_users: bool,
    /// User source id → mappings this resolve looked up in the target (cache misses), for the
    /// state file's user map (written on real runs only).
    pub learned: std::collections::BTreeMap<String, UserMapping>,
    /// The sink plans `user_create` / `user_deactivate` operations (SCIM `provision_users`).
    pub plans_user_ops: bool,
    /// Full reconcile only (`Some`): group source id → the real state of each group the ledger
    /// holds with a target id (`None`: gone from the target). The plan is made against it.
    pub actual: Option<std::collections::BTreeMap<String, Option<ActualGroup>>>,
}

/// An owned group's real state in the target, read by a full reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActualGroup {
    pub name: String,
    /// `None` when the target (or this sink) does not carry descriptions.
    pub description: Option<Option<String>>,
    /// Target user id and a display name of each member.
    pub members: Vec<(String, String)>,
}

/// A directory user's target user id, with the lookup key it was found by (e.g.
/// `userName=alice`): a cached mapping holds only while the key is the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMapping {
    pub key: String,
    pub target_id: String,
}

/// A target group to adopt, with its current members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingGroup {
    pub target_id: String,
    pub by: AdoptedBy,
    /// Its members' target user ids, with a display name (user name where the target says).
    pub members: Vec<(String, String)>,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for op in &self.operations {
            summary.add(op.kind(), op.weight());
        }
        summary.unmapped = self.unmapped.iter().map(|u| u.members.len() as u64).sum();
        summary
    }
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
    /// Whether operation `index` repairs a change made in the target.
    pub fn is_drift(&self, index: usize) -> bool {
        self.drift.contains(&index)
    }
    /// Counts of the operations that repair drift, per kind.
    pub fn drift_summary(&self) -> Summary {
        let mut summary = Summary::default();
        for &index in &self.drift {
            if let Some(op) = self.operations.get(index) {
                summary.add(op.kind(), op.weight());
            }
        }
        summary
    }
}

/// An operation as the JSON plan and the file sink print it (one object per operation).
/// Fields are declared in alphabetical order, the order the JSON has always had.
#[derive(Debug, Serialize)]
pub struct OperationView<'a> {
    /// How an adopted group was matched (`adopt` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'static str>,
    /// Present (possibly `null`) on `create` and `update`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Option<&'a str>>,
    pub dn: &'a str,
    /// The operation repairs a change made in the target (`sync --full`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drift: bool,
    pub group: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_ids: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<&'a str>>,
    pub op: OpKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_description: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_dn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_name: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
    pub source_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<&'a str>,
}

impl<'a> From<&'a Operation> for OperationView<'a> {
    fn from(op: &'a Operation) -> Self {
        let group = op.group();
        let mut view = OperationView {
            by: None,
            description: None,
            dn: &group.dn,
            drift: false,
            group: &group.name,
            member_ids: None,
            members: None,
            op: op.kind(),
            previous_description: None,
            previous_dn: None,
            previous_name: None,
            resume: false,
            source_id: &group.source_id,
            target_id: group.target_id.as_deref(),
        };
        match op {
            Operation::Create { resume, .. } => {
                view.description = Some(group.description.as_deref());
                view.resume = *resume;
            }
            Operation::Update { previous, .. } => {
                view.description = Some(group.description.as_deref());
                view.previous_name = Some(&previous.name);
                view.previous_description = Some(previous.description.as_deref());
                view.previous_dn = Some(&previous.dn);
            }
            Operation::MemberAdd { members, .. } | Operation::MemberRemove { members, .. } => {
                view.members = Some(members.iter().map(|m| m.username.as_str()).collect());
                view.member_ids = Some(members.iter().map(|m| m.source_id.as_str()).collect());
            }
            Operation::Adopt { by, .. } => view.by = Some(by.as_str()),
            Operation::UserCreate { user, .. }
            | Operation::UserDeactivate { user, .. }
            | Operation::UserReactivate { user, .. } => {
                view.members = Some(vec![user.username.as_str()]);
                view.member_ids = Some(vec![user.source_id.as_str()]);
            }
            Operation::Delete { .. } => {}
        }
        view
    }
}
