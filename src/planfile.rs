//! Saved plans (`sync --dry-run --save-plan FILE`, `sync --plan FILE`): the exact operations an operator reviewed, with fingerprints of what they were planned from.
//!
//! A saved plan holds, per sink, the operations of the dry run (held ones included) and a
//! fingerprint of the sink's ledger, plus one fingerprint of the directory read. Applying it
//! first reads the directory and loads the ledgers again: when any fingerprint differs, the plan
//! no longer describes the state it would change, and nothing is written. The plan's own
//! fingerprint covers all of it, so an edited file is refused too. Pure data and hashing: the
//! file itself is read and written by the command line.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::directory::Directory;
use crate::ledger::Ledger;
use crate::model::{AdoptedBy, GroupSpec, MemberRef, Operation, Plan, User};

/// The `format` value of a saved plan, and the version this ldapsync writes and reads.
const FORMAT: &str = "ldapsync-plan";
const VERSION: u32 = 1;

/// A plan saved by a dry run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: String,
    pub version: u32,
    /// When the dry run was made (RFC 3339), for people.
    pub created_at: String,
    /// Fingerprint of the directory read the plan was made from.
    pub directory: String,
    pub sinks: Vec<SavedSink>,
    /// Fingerprint of everything above but `created_at` (see [`SavedPlan::compute_fingerprint`]).
    pub fingerprint: String,
}

/// One sink's part of a saved plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSink {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// Fingerprint of the sink's ledger when the plan was made.
    pub ledger: String,
    /// The dry run held this plan; applying the saved plan is the operator's approval.
    pub held: bool,
    /// A full reconcile (`--full`) was planned.
    pub full: bool,
    pub operations: Vec<SavedOperation>,
}

/// An operation as saved: the plan's [`Operation`] with its users written out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SavedOperation {
    Create {
        group: GroupSpec,
        resume: bool,
    },
    Adopt {
        group: GroupSpec,
        by: AdoptedBy,
        present: Vec<SavedMember>,
    },
    Update {
        group: GroupSpec,
        previous: GroupSpec,
    },
    MemberAdd {
        group: GroupSpec,
        members: Vec<SavedMember>,
    },
    MemberRemove {
        group: GroupSpec,
        members: Vec<SavedMember>,
    },
    Delete {
        group: GroupSpec,
    },
    UserCreate {
        group: GroupSpec,
        user: SavedMember,
    },
    UserDeactivate {
        group: GroupSpec,
        user: SavedMember,
    },
    UserReactivate {
        group: GroupSpec,
        user: SavedMember,
    },
}

/// A member of a saved membership operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedMember {
    pub user: User,
    pub target_id: Option<String>,
}

/// Why a saved plan cannot be applied; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error(
        "{path}: not a plan saved by `ldapsync sync --dry-run --save-plan` ({message}); save the plan again"
    )]
    Unreadable { path: String, message: String },
    #[error(
        "{path}: the plan's fingerprint does not match its content (the file was edited or cut short); save the plan again"
    )]
    Tampered { path: String },
    #[error(
        "the directory changed since the plan {fingerprint} was saved; nothing was written. Review the new plan with `sync --dry-run --save-plan FILE` and apply that one"
    )]
    DirectoryChanged { fingerprint: String },
    #[error(
        "the ledger of sink \"{sink}\" changed since the plan {fingerprint} was saved (another run applied changes); nothing was written. Review the new plan with `sync --dry-run --save-plan FILE` and apply that one"
    )]
    LedgerChanged { sink: String, fingerprint: String },
}

/// A running SHA-256 over length-prefixed fields, so that no two different inputs hash alike.
struct Hasher(Sha256);

impl Hasher {
    fn new(domain: &str) -> Hasher {
        let mut hasher = Hasher(Sha256::new());
        hasher.field(domain);
        hasher
    }
    fn field(&mut self, text: &str) {
        self.0.update((text.len() as u64).to_le_bytes());
        self.0.update(text.as_bytes());
    }
    fn optional(&mut self, text: Option<&str>) {
        match text {
            None => self.0.update([0]),
            Some(text) => {
                self.0.update([1]);
                self.field(text);
            }
        }
    }
    fn user(&mut self, user: &User) {
        self.field(&user.source_id);
        self.field(&user.dn);
        self.field(&user.username);
        self.optional(user.email.as_deref());
    }
    fn finish(self) -> String {
        let digest = self.0.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

/// The fingerprint of a directory read: every user and group with their members, in the
/// directory's (sorted) order.
pub fn directory_fingerprint(directory: &Directory) -> String {
    let mut h = Hasher::new("directory");
    h.field(&directory.users.len().to_string());
    for user in &directory.users {
        h.user(user);
    }
    h.field(&directory.groups.len().to_string());
    for group in &directory.groups {
        h.field(&group.id);
        h.field(&group.dn);
        h.field(&group.name);
        h.optional(group.description.as_deref());
        h.field(&group.members.len().to_string());
        for &index in &group.members {
            h.field(&directory.user(index).source_id);
        }
    }
    h.finish()
}

/// The fingerprint of a sink's ledger: its groups (intents included), members and cursor.
pub fn ledger_fingerprint(ledger: &Ledger) -> String {
    let mut h = Hasher::new("ledger");
    h.optional(ledger.cursor.as_deref());
    for group in ledger.groups.values() {
        h.field(&group.source_id);
        h.optional(group.target_id.as_deref());
        h.field(&group.name);
        h.optional(group.description.as_deref());
        h.field(&group.dn);
        h.field(&group.members.len().to_string());
        for member in group.members.values() {
            h.user(&member.user);
            h.optional(member.target_id.as_deref());
        }
    }
    h.finish()
}

fn saved_member(member: &MemberRef) -> SavedMember {
    SavedMember {
        user: User::clone(&member.user),
        target_id: member.target_id.clone(),
    }
}

fn plan_member(member: &SavedMember) -> MemberRef {
    MemberRef {
        user: Arc::new(member.user.clone()),
        target_id: member.target_id.clone(),
    }
}

fn saved_members(members: &[MemberRef]) -> Vec<SavedMember> {
    members.iter().map(saved_member).collect()
}

fn plan_members(members: &[SavedMember]) -> Vec<MemberRef> {
    members.iter().map(plan_member).collect()
}

impl From<&Operation> for SavedOperation {
    fn from(op: &Operation) -> Self {
        match op {
            Operation::Create { group, resume } => SavedOperation::Create {
                group: group.clone(),
                resume: *resume,
            },
            Operation::Adopt { group, by, present } => SavedOperation::Adopt {
                group: group.clone(),
                by: *by,
                present: saved_members(present),
            },
            Operation::Update { group, previous } => SavedOperation::Update {
                group: group.clone(),
                previous: previous.clone(),
            },
            Operation::MemberAdd { group, members } => SavedOperation::MemberAdd {
                group: group.clone(),
                members: saved_members(members),
            },
            Operation::MemberRemove { group, members } => SavedOperation::MemberRemove {
                group: group.clone(),
                members: saved_members(members),
            },
            Operation::Delete { group } => SavedOperation::Delete {
                group: group.clone(),
            },
            Operation::UserCreate { group, user } => SavedOperation::UserCreate {
                group: group.clone(),
                user: saved_member(user),
            },
            Operation::UserDeactivate { group, user } => SavedOperation::UserDeactivate {
                group: group.clone(),
                user: saved_member(user),
            },
            Operation::UserReactivate { group, user } => SavedOperation::UserReactivate {
                group: group.clone(),
                user: saved_member(user),
            },
        }
    }
}

impl From<&SavedOperation> for Operation {
    fn from(op: &SavedOperation) -> Self {
        match op {
            SavedOperation::Create { group, resume } => Operation::Create {
                group: group.clone(),
                resume: *resume,
            },
            SavedOperation::Adopt { group, by, present } => Operation::Adopt {
                group: group.clone(),
                by: *by,
                present: plan_members(present),
            },
            SavedOperation::Update { group, previous } => Operation::Update {
                group: group.clone(),
                previous: previous.clone(),
            },
            SavedOperation::MemberAdd { group, members } => Operation::MemberAdd {
                group: group.clone(),
                members: plan_members(members),
            },
            SavedOperation::MemberRemove { group, members } => Operation::MemberRemove {
                group: group.clone(),
                members: plan_members(members),
            },
            SavedOperation::Delete { group } => Operation::Delete {
                group: group.clone(),
            },
            SavedOperation::UserCreate { group, user } => Operation::UserCreate {
                group: group.clone(),
                user: plan_member(user),
            },
            SavedOperation::UserDeactivate { group, user } => Operation::UserDeactivate {
                group: group.clone(),
                user: plan_member(user),
            },
            SavedOperation::UserReactivate { group, user } => Operation::UserReactivate {
                group: group.clone(),
                user: plan_member(user),
            },
        }
    }
}

impl SavedSink {
    /// One sink's dry-run plan, to save.
    pub fn new(name: &str, type_name: &str, ledger: String, held: bool, plan: &Plan) -> SavedSink {
        SavedSink {
            name: name.to_string(),
            type_name: type_name.to_string(),
            ledger,
            held,
            full: plan.full,
            operations: plan.operations.iter().map(SavedOperation::from).collect(),
        }
    }

    /// The plan to apply: exactly the saved operations.
    pub fn plan(&self) -> Plan {
        Plan {
            operations: self.operations.iter().map(Operation::from).collect(),
            full: self.full,
            ..Plan::default()
        }
    }
}

impl SavedPlan {
    /// A plan to save, fingerprinted.
    pub fn new(directory: String, sinks: Vec<SavedSink>, created_at: String) -> SavedPlan {
        let mut plan = SavedPlan {
            format: FORMAT.to_string(),
            version: VERSION,
            created_at,
            directory,
            sinks,
            fingerprint: String::new(),
        };
        plan.fingerprint = plan.compute_fingerprint();
        plan
    }

    /// The fingerprint of the plan's content: format, directory, and each sink's ledger
    /// fingerprint and operations.
    pub fn compute_fingerprint(&self) -> String {
        let mut h = Hasher::new(FORMAT);
        h.field(&self.version.to_string());
        h.field(&self.directory);
        for sink in &self.sinks {
            h.field(&sink.name);
            h.field(&sink.type_name);
            h.field(&sink.ledger);
            h.field(if sink.held { "held" } else { "not held" });
            h.field(if sink.full { "full" } else { "incremental" });
            // serde_json writes struct fields in declaration order: a stable encoding.
            let operations = serde_json::to_string(&sink.operations).unwrap_or_default();
            h.field(&operations);
        }
        h.finish()
    }

    /// Parses a saved plan and checks its fingerprint; `path` only names the file in errors.
    pub fn parse(text: &str, path: &str) -> Result<SavedPlan, PlanFileError> {
        let unreadable = |message: String| PlanFileError::Unreadable {
            path: path.to_string(),
            message,
        };
        let plan: SavedPlan = serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
        if plan.format != FORMAT || plan.version != VERSION {
            return Err(unreadable(format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                plan.format, plan.version
            )));
        }
        if plan.compute_fingerprint() != plan.fingerprint {
            return Err(PlanFileError::Tampered {
                path: path.to_string(),
            });
        }
        Ok(plan)
    }

    /// The saved plan as the file holds it (pretty JSON, one trailing newline).
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a saved plan always serializes");
        text.push('\n');
        text
    }

    /// Refuses the plan when the directory read now is not the one it was made from.
    pub fn check_directory(&self, directory: &Directory) -> Result<(), PlanFileError> {
        if directory_fingerprint(directory) != self.directory {
            return Err(PlanFileError::DirectoryChanged {
                fingerprint: self.fingerprint.clone(),
            });
        }
        Ok(())
    }

    /// Refuses the plan when a sink's ledger now is not the one it was made against.
    pub fn check_ledger(&self, sink: &SavedSink, ledger: &Ledger) -> Result<(), PlanFileError> {
        if ledger_fingerprint(ledger) != sink.ledger {
            return Err(PlanFileError::LedgerChanged {
                sink: sink.name.clone(),
                fingerprint: self.fingerprint.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Group;

    fn directory(name: &str) -> Directory {
        let user = Arc::new(User {
            source_id: "u1".into(),
            dn: "uid=a".into(),
            username: "a".into(),
            email: None,
        });
        Directory {
            users: vec![user],
            groups: vec![Group {
                id: "g1".into(),
                dn: format!("cn={name}"),
                name: name.into(),
                description: None,
                members: vec![0],
            }],
            ..Directory::default()
        }
    }

    #[test]
    fn a_saved_plan_round_trips_and_refuses_changes_and_edits() {
        let d = directory("a");
        let plan = crate::plan::plan(&d, &Ledger::default(), &Default::default());
        let sink = SavedSink::new(
            "s",
            "file",
            ledger_fingerprint(&Ledger::default()),
            false,
            &plan,
        );
        let saved = SavedPlan::new(directory_fingerprint(&d), vec![sink], "now".into());
        let parsed = SavedPlan::parse(&saved.to_json(), "p.json").unwrap();
        assert_eq!(parsed, saved);
        assert_eq!(parsed.sinks[0].plan(), plan);
        assert!(parsed.check_directory(&d).is_ok());
        assert!(matches!(
            parsed.check_directory(&directory("b")),
            Err(PlanFileError::DirectoryChanged { .. })
        ));
        let mut ledger = Ledger::default();
        crate::plan::apply_to_ledger(&mut ledger, &plan);
        assert!(matches!(
            parsed.check_ledger(&parsed.sinks[0], &ledger),
            Err(PlanFileError::LedgerChanged { .. })
        ));
        let edited = saved
            .to_json()
            .replace("\"resume\": false", "\"resume\": true");
        assert!(matches!(
            SavedPlan::parse(&edited, "p.json"),
            Err(PlanFileError::Tampered { .. })
        ));
    }
}
