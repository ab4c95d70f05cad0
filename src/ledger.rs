//! The ledger: what ldapsync has recorded as present in one sink's target (plain data; `store` persists it).
//!
//! Only groups in a sink's ledger are ever updated or deleted there (DESIGN.md §4.3). A group
//! whose `target_id` is `None` is a recorded *intent*: a create was started but not confirmed, so
//! the next run must look the object up before creating it again (§4.4).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::directory::{Directory, User};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Keyed by group source id.
    pub groups: BTreeMap<String, LedgerGroup>,
    /// The sink's cursor/token after its last complete apply (e.g. PingOne's nextToken).
    pub cursor: Option<String>,
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

    /// The ledger a sink would hold after a complete, successful apply of `directory`.
    pub fn mirroring(directory: &Directory) -> Ledger {
        let groups = directory
            .groups
            .iter()
            .map(|group| {
                let members = group
                    .members
                    .iter()
                    .map(|&index| {
                        let user = directory.user(index);
                        (
                            Arc::from(user.source_id.as_str()),
                            LedgerMember {
                                user: Arc::clone(user),
                                target_id: None,
                            },
                        )
                    })
                    .collect();
                (
                    group.id.clone(),
                    LedgerGroup {
                        source_id: group.id.clone(),
                        target_id: Some(group.id.clone()),
                        name: group.name.clone(),
                        description: group.description.clone(),
                        dn: group.dn.clone(),
                        members,
                    },
                )
            })
            .collect();
        Ledger {
            groups,
            cursor: None,
        }
    }
}
