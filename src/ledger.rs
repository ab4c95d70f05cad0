//! The ledger: what ldapsync has recorded as present in one sink's target (plain data; `store` persists it).
//!
//! Only groups in a sink's ledger are ever updated or deleted there (docs/safety.md rule 3). A group
//! whose `target_id` is `None` is a recorded *intent*: a create was started but not confirmed, so
//! the next run must look the object up before creating it again (§4.4).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::{GroupSpec, MemberRef, User, UserMapping};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Keyed by group source id.
    pub groups: BTreeMap<String, LedgerGroup>,
    /// The sink's cursor/token after its last complete apply (e.g. PingOne's nextToken).
    pub cursor: Option<String>,
    /// The user map: user source id → the target user found for it on an earlier run (a cache:
    /// a hit saves a lookup; a miss is looked up again on every run).
    pub users: HashMap<String, UserMapping>,
    /// Users the sink created (`provision_users`), keyed by user source id: only these are ever
    /// deactivated.
    pub owned_users: BTreeMap<String, OwnedUser>,
}

/// A target user the sink created for a directory user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedUser {
    pub user: Arc<User>,
    pub target_id: String,
    /// `false` once deactivated (it left the scope).
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerGroup {
    pub source_id: String,
    /// The target's id; `None` while a create is unconfirmed.
    pub target_id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub dn: String,
    /// Keyed by user source id.
    pub members: BTreeMap<Arc<str>, LedgerMember>,
}

/// A recorded membership: the user as last written (shared between all the groups the user is
/// in, so a million memberships do not copy user data; its fields read as `member.username`)
/// and the target's user id when the sink has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerMember {
    pub user: Arc<User>,
    pub target_id: Option<Arc<str>>,
}

impl std::ops::Deref for LedgerMember {
    type Target = User;
    fn deref(&self) -> &User {
        &self.user
    }
}

impl Ledger {
    pub fn membership_count(&self) -> usize {
        self.groups.values().map(|g| g.members.len()).sum()
    }
}

/// Where one sink's applied operations are recorded as they happen: the store implements it on
/// the state file. Sinks see only this trait, never SQLite.
pub trait LedgerWriter: Send {
    /// Records that a create is about to be sent, unless the group is recorded already.
    fn record_intent(&mut self, group: &GroupSpec) -> Result<(), LedgerWriteError>;
    /// Records a group as present in the target with `target_id` and the spec's attributes.
    fn record_group(&mut self, group: &GroupSpec, target_id: &str) -> Result<(), LedgerWriteError>;
    /// Records how a group recorded with [`LedgerWriter::record_group`] entered the ledger
    /// (shown by `ldapsync ledger`); writers that keep no such history ignore it.
    fn record_origin(&mut self, _source_id: &str, _origin: Origin) -> Result<(), LedgerWriteError> {
        Ok(())
    }
    /// Forgets a group and its members.
    fn record_deleted(&mut self, source_id: &str) -> Result<(), LedgerWriteError>;
    /// Records members (with their target ids) as present in a group.
    fn record_members_added(
        &mut self,
        group_source_id: &str,
        members: &[MemberRef],
    ) -> Result<(), LedgerWriteError>;
    /// Records a target user the sink created (active).
    fn record_user_created(
        &mut self,
        user: &MemberRef,
        target_id: &str,
    ) -> Result<(), LedgerWriteError>;
    /// Records that a user the sink created was deactivated (`active` false) or reactivated.
    fn record_user_active(&mut self, source_id: &str, active: bool)
    -> Result<(), LedgerWriteError>;
    /// Records members as gone from a group.
    fn record_members_removed(
        &mut self,
        group_source_id: &str,
        user_source_ids: &[&str],
    ) -> Result<(), LedgerWriteError>;
}

/// How a group entered a sink's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// ldapsync created it (the target confirmed the create).
    Created,
    /// It existed in the target and was adopted after the identity check.
    Adopted,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Created => "created",
            Origin::Adopted => "adopted",
        }
    }
}

/// A ledger write that failed (the state file could not be written).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LedgerWriteError(pub Box<dyn std::error::Error + Send + Sync>);
