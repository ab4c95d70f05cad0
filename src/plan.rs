//! The planner (pure): Directory × ledger → Plan, and the safety guard that holds mass changes.
//!
//! Plans are deterministic: operations come in a fixed order (create, update, member_add,
//! member_remove, delete) and, within a kind, sorted by group name then source id, so two runs
//! over the same data print the same plan.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::directory::{Directory, Group};
use crate::ledger::{Ledger, LedgerGroup, LedgerMember};
use crate::model::{
    ActualGroup, ExistingGroup, GroupSpec, MemberRef, Operation, Plan, Resync, TargetView,
    Unmapped, User,
};

/// The mass-change limits a plan is checked against: absolute counts and percentages of what
/// the ledger holds (the `[safety]` section maps onto this).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub max_group_deletes: u64,
    pub max_group_delete_percent: f64,
    pub max_member_removes: u64,
    pub max_member_remove_percent: f64,
    /// The percentage limits apply only to counts above this floor: removing 2 of 7
    /// memberships in a small directory is not a mass change (the absolute limits still apply).
    pub percent_floor: u64,
}

fn spec_of_group(group: &Group, target_id: Option<String>) -> GroupSpec {
    GroupSpec {
        source_id: group.id.clone(),
        name: group.name.clone(),
        description: group.description.clone(),
        dn: group.dn.clone(),
        target_id,
    }
}

impl From<&LedgerGroup> for GroupSpec {
    /// The group as last recorded in a sink's ledger.
    fn from(group: &LedgerGroup) -> GroupSpec {
        GroupSpec {
            source_id: group.source_id.clone(),
            name: group.name.clone(),
            description: group.description.clone(),
            dn: group.dn.clone(),
            target_id: group.target_id.clone(),
        }
    }
}

fn member_of_ledger(member: &LedgerMember) -> MemberRef {
    MemberRef {
        user: Arc::clone(&member.user),
        target_id: member.target_id.as_deref().map(str::to_string),
    }
}

/// Diffs the directory against a sink's ledger and what the sink found in its target before
/// planning (`view`; [`TargetView::default`] when it resolves nothing). Pure and deterministic.
///
/// With a view, a group the ledger does not hold but the target has is planned as `adopt` (with
/// member adds and removes that make the target group's members equal to the directory's), and
/// members without a target user are listed in [`Plan::unmapped`] instead of `member_add`.
pub fn plan(directory: &Directory, ledger: &Ledger, view: &TargetView) -> Plan {
    let mut creates = Vec::new();
    let mut updates = Vec::new();
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    let mut deletes = Vec::new();
    let mut unmapped = Vec::new();
    let mut resync = Vec::new();
    let empty = BTreeMap::new();
    // Target user id → directory user, to name the members an adopted group has.
    let by_target_id: HashMap<&str, &Arc<User>> = match &view.users {
        Some(users) => directory
            .users
            .iter()
            .filter_map(|u| users.get(&u.source_id).map(|id| (id.as_str(), u)))
            .collect(),
        None => HashMap::new(),
    };

    for group in &directory.groups {
        let recorded = ledger.groups.get(&group.id);
        let target_id = recorded.and_then(|r| r.target_id.clone());
        let mut lost = Vec::new();
        if target_id.is_none()
            && let Some(existing) = view.existing.get(&group.id)
        {
            let spec = spec_of_group(group, Some(existing.target_id.clone()));
            let (add, present, remove, missing) =
                adopted_members(directory, group, existing, view, &by_target_id);
            creates.push(op(Operation::Adopt {
                group: spec.clone(),
                by: existing.by,
                present,
            }));
            if !add.is_empty() {
                adds.push(op(Operation::MemberAdd {
                    group: spec.clone(),
                    members: add,
                }));
            }
            if !remove.is_empty() {
                removes.push(op(Operation::MemberRemove {
                    group: spec.clone(),
                    members: remove,
                }));
            }
            push_unmapped(&mut unmapped, group, missing);
            continue;
        }
        if let (Some(recorded), Some(id), Some(actual)) = (recorded, &target_id, &view.actual)
            && let Some(state) = actual.get(&group.id)
        {
            let batches = Batches {
                creates: &mut creates,
                updates: &mut updates,
                adds: &mut adds,
                removes: &mut removes,
            };
            let missing = reconcile(
                directory,
                group,
                recorded,
                id,
                state.as_ref(),
                view,
                &by_target_id,
                batches,
                &mut resync,
            );
            push_unmapped(&mut unmapped, group, missing);
            continue;
        }
        let spec = spec_of_group(group, target_id.clone());
        let recorded_members = match recorded {
            None => {
                creates.push(op(Operation::Create {
                    group: spec.clone(),
                    resume: false,
                }));
                &empty
            }
            Some(recorded) if recorded.target_id.is_none() => {
                creates.push(op(Operation::Create {
                    group: spec.clone(),
                    resume: true,
                }));
                &recorded.members
            }
            Some(recorded) => {
                if recorded.name != group.name
                    || recorded.description != group.description
                    || recorded.dn != group.dn
                {
                    updates.push(op(Operation::Update {
                        group: spec.clone(),
                        previous: GroupSpec::from(recorded),
                    }));
                }
                &recorded.members
            }
        };
        let mut added = Vec::new();
        for &index in &group.members {
            let user = directory.user(index);
            if !recorded_members.contains_key(user.source_id.as_str()) {
                match mapped(view, user) {
                    Some(member) => added.push(member),
                    None => lost.push(user.username.clone()),
                }
            }
        }
        push_unmapped(&mut unmapped, group, lost);
        if !added.is_empty() {
            adds.push(op(Operation::MemberAdd {
                group: spec.clone(),
                members: added,
            }));
        }
        if !recorded_members.is_empty() {
            let current: HashSet<&str> = group
                .members
                .iter()
                .map(|&i| directory.user(i).source_id.as_str())
                .collect();
            let removed: Vec<MemberRef> = recorded_members
                .iter()
                .filter(|(id, _)| !current.contains(id.as_ref()))
                .map(|(_, m)| member_of_ledger(m))
                .collect();
            if !removed.is_empty() {
                removes.push(op(Operation::MemberRemove {
                    group: spec,
                    members: removed,
                }));
            }
        }
    }

    let present: HashSet<&str> = directory.groups.iter().map(|g| g.id.as_str()).collect();
    for recorded in ledger.groups.values() {
        if !present.contains(recorded.source_id.as_str()) {
            deletes.push(op(Operation::Delete {
                group: GroupSpec::from(recorded),
            }));
        }
    }

    if view.plans_user_ops {
        user_ops(directory, ledger, view, &mut creates, &mut deletes);
    }

    let mut operations = Vec::new();
    let mut drift = BTreeSet::new();
    for mut batch in [creates, updates, adds, removes, deletes] {
        batch.sort_by(|(a, da), (b, db)| {
            (&a.group().name, &a.group().source_id, da).cmp(&(
                &b.group().name,
                &b.group().source_id,
                db,
            ))
        });
        for (op, repairs) in batch {
            if repairs {
                drift.insert(operations.len());
            }
            operations.push(op);
        }
    }
    unmapped.sort_by(|a, b| (&a.group, &a.source_id).cmp(&(&b.group, &b.source_id)));
    resync.sort_by(|a: &Resync, b: &Resync| a.group.source_id.cmp(&b.group.source_id));
    Plan {
        operations,
        full: false,
        unmapped,
        drift,
        resync,
    }
}

/// `provision_users`: a `user_create` for each member with no target user (for the first group,
/// by name, that needs it), a `user_reactivate` for each member whose user the sink created and
/// deactivated (it is back in the scope), and a `user_deactivate` for each active user the sink
/// created that is no longer a member of any group (it left the scope). Users the sink did not
/// create are never deactivated.
fn user_ops(
    directory: &Directory,
    ledger: &Ledger,
    view: &TargetView,
    creates: &mut Vec<(Operation, bool)>,
    deletes: &mut Vec<(Operation, bool)>,
) {
    let mut groups: Vec<&Group> = directory.groups.iter().collect();
    groups.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    let mut in_scope = HashSet::new();
    for group in groups {
        for &index in &group.members {
            let user = directory.user(index);
            let fresh = in_scope.insert(user.source_id.as_str());
            let mapped = view
                .users
                .as_ref()
                .is_some_and(|users| users.contains_key(&user.source_id));
            if !fresh {
                continue;
            }
            let spec = || {
                let known = ledger.groups.get(&group.id);
                spec_of_group(group, known.and_then(|g| g.target_id.clone()))
            };
            let deactivated = ledger
                .owned_users
                .get(&user.source_id)
                .filter(|owned| !owned.active);
            if !mapped {
                creates.push(op(Operation::UserCreate {
                    group: spec(),
                    user: MemberRef::new(Arc::clone(user)),
                }));
            } else if let Some(owned) = deactivated {
                creates.push(op(Operation::UserReactivate {
                    group: spec(),
                    user: MemberRef {
                        user: Arc::clone(user),
                        target_id: Some(owned.target_id.clone()),
                    },
                }));
            }
        }
    }
    for (source_id, owned) in &ledger.owned_users {
        if owned.active && !in_scope.contains(source_id.as_str()) {
            deletes.push(op(Operation::UserDeactivate {
                group: GroupSpec {
                    source_id: String::new(),
                    name: String::new(),
                    description: None,
                    dn: String::new(),
                    target_id: None,
                },
                user: MemberRef {
                    user: Arc::clone(&owned.user),
                    target_id: Some(owned.target_id.clone()),
                },
            }));
        }
    }
}

/// A planned operation, and whether it repairs drift.
fn op(operation: Operation) -> (Operation, bool) {
    (operation, false)
}

/// The operation batches [`reconcile`] adds to (each operation with its drift flag).
struct Batches<'b> {
    creates: &'b mut Vec<(Operation, bool)>,
    updates: &'b mut Vec<(Operation, bool)>,
    adds: &'b mut Vec<(Operation, bool)>,
    removes: &'b mut Vec<(Operation, bool)>,
}

/// Full reconcile of one owned group (target id `id`) against its real state in the target
/// (`None`: gone). Plans what makes the target equal to the directory; an operation repairs
/// drift when the ledger already agreed with the directory (the change was made in the target).
/// Adds the ledger rewrite to `resync`; returns the members with no target user.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    directory: &Directory,
    group: &Group,
    recorded: &LedgerGroup,
    id: &str,
    state: Option<&ActualGroup>,
    view: &TargetView,
    by_target_id: &HashMap<&str, &Arc<User>>,
    batches: Batches<'_>,
    resync: &mut Vec<Resync>,
) -> Vec<String> {
    let Some(state) = state else {
        // Deleted in the target: forgotten, then created again with every member.
        resync.push(Resync {
            group: GroupSpec::from(recorded),
            members: None,
        });
        let spec = spec_of_group(group, None);
        batches.creates.push((
            Operation::Create {
                group: spec.clone(),
                resume: false,
            },
            true,
        ));
        let (mut add, mut missing) = (Vec::new(), Vec::new());
        for &index in &group.members {
            let user = directory.user(index);
            match mapped(view, user) {
                Some(member) => add.push(member),
                None => missing.push(user.username.clone()),
            }
        }
        if !add.is_empty() {
            batches.adds.push((
                Operation::MemberAdd {
                    group: spec,
                    members: add,
                },
                true,
            ));
        }
        return missing;
    };
    let spec = spec_of_group(group, Some(id.to_string()));
    let read = GroupSpec {
        name: state.name.clone(),
        description: state
            .description
            .clone()
            .unwrap_or_else(|| recorded.description.clone()),
        dn: recorded.dn.clone(),
        ..spec.clone()
    };
    let renamed = state.name != group.name;
    let redescribed = state
        .description
        .as_ref()
        .is_some_and(|d| *d != group.description);
    if renamed || redescribed || recorded.dn != group.dn {
        let ledger_agreed = recorded.name == group.name
            && (!redescribed || recorded.description == group.description);
        batches.updates.push((
            Operation::Update {
                group: spec.clone(),
                previous: read.clone(),
            },
            (renamed || redescribed) && ledger_agreed,
        ));
    }
    let existing = ExistingGroup {
        target_id: id.to_string(),
        by: crate::model::AdoptedBy::ExternalId,
        members: state.members.clone(),
    };
    let (add, present, remove, missing) =
        adopted_members(directory, group, &existing, view, by_target_id);
    let recorded_has = |m: &MemberRef| recorded.members.contains_key(m.source_id.as_str());
    // A member LDAP lists that the ledger recorded as added: removed in the target by hand.
    let (re_add, new_add): (Vec<MemberRef>, Vec<MemberRef>) =
        add.into_iter().partition(recorded_has);
    // A member LDAP does not list that the ledger never recorded: added in the target by hand.
    let (stale, hand_added): (Vec<MemberRef>, Vec<MemberRef>) =
        remove.into_iter().partition(recorded_has);
    for (members, repairs) in [(new_add, false), (re_add, true)] {
        if !members.is_empty() {
            let group = spec.clone();
            let add = Operation::MemberAdd { group, members };
            batches.adds.push((add, repairs));
        }
    }
    for (members, repairs) in [(stale, false), (hand_added, true)] {
        if !members.is_empty() {
            let group = spec.clone();
            let remove = Operation::MemberRemove { group, members };
            batches.removes.push((remove, repairs));
        }
    }
    resync.push(Resync {
        group: read,
        members: Some(present),
    });
    missing
}

/// The member to add for `user`: with its target id when the view resolves users, `None` when
/// the target has no such user (unless the sink provisions it: then without a target id).
fn mapped(view: &TargetView, user: &Arc<User>) -> Option<MemberRef> {
    match &view.users {
        None => Some(MemberRef::new(Arc::clone(user))),
        Some(users) => match users.get(&user.source_id) {
            Some(id) => Some(MemberRef {
                user: Arc::clone(user),
                target_id: Some(id.clone()),
            }),
            None if view.provisions_users => Some(MemberRef::new(Arc::clone(user))),
            None => None,
        },
    }
}

/// What adopting `existing` for `group` means for members: (to add, already present, to remove,
/// unmapped user names).
fn adopted_members(
    directory: &Directory,
    group: &Group,
    existing: &ExistingGroup,
    view: &TargetView,
    by_target_id: &HashMap<&str, &Arc<User>>,
) -> (Vec<MemberRef>, Vec<MemberRef>, Vec<MemberRef>, Vec<String>) {
    let in_target: HashSet<&str> = existing.members.iter().map(|(id, _)| id.as_str()).collect();
    let (mut add, mut present, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    let mut wanted = HashSet::new();
    for &index in &group.members {
        let user = directory.user(index);
        match mapped(view, user) {
            Some(member) => {
                if let Some(id) = &member.target_id {
                    wanted.insert(id.clone());
                }
                match member.target_id.as_deref() {
                    Some(id) if in_target.contains(id) => present.push(member),
                    _ => add.push(member),
                }
            }
            None => missing.push(user.username.clone()),
        }
    }
    let mut remove = Vec::new();
    let mut seen = HashSet::new();
    for (id, display) in &existing.members {
        if wanted.contains(id) || !seen.insert(id.as_str()) {
            continue;
        }
        let user = match by_target_id.get(id.as_str()) {
            Some(user) => Arc::clone(user),
            None => Arc::new(User {
                source_id: format!("target:{id}"),
                dn: String::new(),
                username: display.clone(),
                email: None,
            }),
        };
        remove.push(MemberRef {
            user,
            target_id: Some(id.clone()),
        });
    }
    remove.sort_by(|a, b| a.username.cmp(&b.username));
    (add, present, remove, missing)
}

/// Applies a plan to a ledger the way a fully successful sink would record it (used by tests
/// and as the reference for what `store` records per operation).
pub fn apply_to_ledger(ledger: &mut Ledger, plan: &Plan) {
    for op in &plan.operations {
        let spec = op.group();
        match op {
            Operation::Create { .. } | Operation::Adopt { .. } | Operation::Update { .. } => {
                let entry = ledger
                    .groups
                    .entry(spec.source_id.clone())
                    .or_insert_with(|| LedgerGroup {
                        source_id: spec.source_id.clone(),
                        target_id: None,
                        name: String::new(),
                        description: None,
                        dn: String::new(),
                        members: BTreeMap::new(),
                    });
                entry.target_id = Some(
                    spec.target_id
                        .clone()
                        .unwrap_or_else(|| spec.source_id.clone()),
                );
                entry.name = spec.name.clone();
                entry.description = spec.description.clone();
                entry.dn = spec.dn.clone();
                if let Operation::Adopt { present, .. } = op {
                    add_ledger_members(entry, present);
                }
            }
            Operation::MemberAdd { members, .. } => {
                if let Some(entry) = ledger.groups.get_mut(&spec.source_id) {
                    add_ledger_members(entry, members);
                }
            }
            Operation::MemberRemove { members, .. } => {
                if let Some(entry) = ledger.groups.get_mut(&spec.source_id) {
                    for m in members {
                        entry.members.remove(m.source_id.as_str());
                    }
                }
            }
            Operation::Delete { .. } => {
                ledger.groups.remove(&spec.source_id);
            }
            Operation::UserCreate { user, .. } => {
                ledger.owned_users.insert(
                    user.source_id.clone(),
                    crate::ledger::OwnedUser {
                        user: Arc::clone(&user.user),
                        target_id: user.source_id.clone(),
                        active: true,
                    },
                );
            }
            Operation::UserDeactivate { user, .. } | Operation::UserReactivate { user, .. } => {
                if let Some(owned) = ledger.owned_users.get_mut(&user.source_id) {
                    owned.active = matches!(op, Operation::UserReactivate { .. });
                }
            }
        }
    }
}

/// Lists `group`'s members that map to no target user, if any.
fn push_unmapped(unmapped: &mut Vec<Unmapped>, group: &Group, members: Vec<String>) {
    if !members.is_empty() {
        unmapped.push(Unmapped {
            group: group.name.clone(),
            source_id: group.id.clone(),
            members,
        });
    }
}

fn add_ledger_members(group: &mut LedgerGroup, members: &[MemberRef]) {
    for m in members {
        group.members.insert(
            Arc::from(m.source_id.as_str()),
            LedgerMember {
                user: Arc::clone(&m.user),
                target_id: m.target_id.as_deref().map(Arc::from),
            },
        );
    }
}

/// Why a sink's plan is held instead of applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub reasons: Vec<String>,
}

impl Hold {
    /// What the operator reads: why, and what to do next. A dry run already shows the plan, so
    /// its message says how to apply exactly that plan rather than to run a dry run.
    pub fn message(&self, dry_run: bool) -> String {
        let next = if dry_run {
            "If this plan is right, add `--save-plan FILE` to this command and apply exactly this plan with `sync --plan FILE` (or run `sync --allow-deletes` once)"
        } else {
            "Review it with `sync --dry-run --save-plan FILE`; if it is right, apply exactly that plan with `sync --plan FILE` (or run `sync --allow-deletes` once)"
        };
        format!(
            "held by the safety thresholds: {}. {next}",
            self.reasons.join("; ")
        )
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message(false))
    }
}

/// Checks a plan against the thresholds; `allow_deletes` lifts both thresholds for one run.
pub fn guard(
    plan: &Plan,
    ledger: &Ledger,
    safety: &Thresholds,
    allow_deletes: bool,
) -> Option<Hold> {
    if allow_deletes {
        return None;
    }
    let summary = plan.summary();
    let mut reasons = Vec::new();
    check(
        &mut reasons,
        "group deletes",
        summary.delete,
        ledger.groups.len() as u64,
        safety.max_group_deletes,
        safety.max_group_delete_percent,
        safety.percent_floor,
    );
    check(
        &mut reasons,
        "membership removals",
        summary.member_remove,
        ledger.membership_count() as u64,
        safety.max_member_removes,
        safety.max_member_remove_percent,
        safety.percent_floor,
    );
    (!reasons.is_empty()).then_some(Hold { reasons })
}

fn check(
    reasons: &mut Vec<String>,
    what: &str,
    count: u64,
    total: u64,
    max: u64,
    max_percent: f64,
    percent_floor: u64,
) {
    if count == 0 {
        return;
    }
    if count > max {
        reasons.push(format!("{count} {what} exceed the limit of {max}"));
    }
    if count <= percent_floor {
        return;
    }
    let percent = if total == 0 {
        100.0
    } else {
        count as f64 * 100.0 / total as f64
    };
    if percent > max_percent {
        reasons.push(format!(
            "{count} {what} are {percent:.1}% of the {total} recorded, above the limit of {max_percent}%"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OpKind, OperationView};
    use proptest::prelude::*;
    use serde_json::json;

    /// The ledger a sink would hold after a complete, successful apply of `directory`.
    fn mirroring(directory: &Directory) -> Ledger {
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
            ..Ledger::default()
        }
    }

    fn directory(groups: &[(&str, &str, &[u32])], users: u32) -> Directory {
        Directory {
            users: (0..users)
                .map(|i| {
                    Arc::new(User {
                        source_id: format!("u{i:03}"),
                        dn: format!("uid=u{i},ou=p"),
                        username: format!("user{i}"),
                        email: None,
                    })
                })
                .collect(),
            groups: groups
                .iter()
                .map(|(id, name, members)| Group {
                    id: id.to_string(),
                    dn: format!("cn={name},ou=g"),
                    name: name.to_string(),
                    description: None,
                    members: members.to_vec(),
                })
                .collect(),
            ..Directory::default()
        }
    }

    #[test]
    fn first_plan_creates_then_adds_members() {
        let d = directory(&[("g1", "b", &[0, 1]), ("g2", "a", &[])], 2);
        let p = plan(&d, &Ledger::default(), &TargetView::default());
        let kinds: Vec<_> = p
            .operations
            .iter()
            .map(|o| (o.kind(), o.group().name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (OpKind::Create, "a"),
                (OpKind::Create, "b"),
                (OpKind::MemberAdd, "b")
            ]
        );
        assert_eq!(p.summary().member_add, 2);
    }

    #[test]
    fn rename_is_an_update_and_unconfirmed_create_resumes() {
        let d = directory(&[("g1", "old", &[0])], 1);
        let mut ledger = mirroring(&d);
        let renamed = directory(&[("g1", "new", &[0])], 1);
        let p = plan(&renamed, &ledger, &TargetView::default());
        assert_eq!(p.operations.len(), 1);
        assert!(
            matches!(&p.operations[0], Operation::Update { previous, .. } if previous.name == "old")
        );
        ledger.groups.get_mut("g1").unwrap().target_id = None;
        let p = plan(&d, &ledger, &TargetView::default());
        assert!(matches!(
            &p.operations[0],
            Operation::Create { resume: true, .. }
        ));
    }

    #[test]
    fn a_new_description_or_a_move_alone_is_an_update() {
        let d = directory(&[("g1", "a", &[0])], 1);
        let ledger = mirroring(&d);
        let mut described = d.clone();
        described.groups[0].description = Some("Sales".into());
        let mut moved = d.clone();
        moved.groups[0].dn = "cn=a,ou=elsewhere".into();
        for (changed, what) in [(described, "description"), (moved, "dn")] {
            let p = plan(&changed, &ledger, &TargetView::default());
            let kinds: Vec<_> = p.operations.iter().map(|o| o.kind()).collect();
            assert_eq!(kinds, [OpKind::Update], "a changed {what}");
        }
    }

    #[test]
    fn guard_holds_on_absolute_and_percent_and_allow_lifts() {
        let d = directory(
            &[("g1", "a", &[0, 1]), ("g2", "b", &[]), ("g3", "c", &[])],
            2,
        );
        let ledger = mirroring(&d);
        let gone = directory(&[("g1", "a", &[])], 2);
        let p = plan(&gone, &ledger, &TargetView::default());
        let safety = Thresholds {
            max_group_deletes: 1,
            max_group_delete_percent: 100.0,
            max_member_removes: 100,
            max_member_remove_percent: 100.0,
            percent_floor: 0,
        };
        let hold = guard(&p, &ledger, &safety, false).unwrap();
        assert_eq!(hold.reasons.len(), 1, "{hold:?}");
        assert!(hold.reasons[0].contains("2 group deletes"));
        let strict_percent = Thresholds {
            max_group_deletes: 10,
            max_member_remove_percent: 50.0,
            ..safety.clone()
        };
        let hold = guard(&p, &ledger, &strict_percent, false).unwrap();
        assert!(hold.reasons[0].contains("membership removals"), "{hold:?}");
        assert!(guard(&p, &ledger, &safety, true).is_none());
    }

    #[test]
    fn percent_limits_apply_only_above_the_floor() {
        // The quick start's edit: one user leaves, 2 of 7 memberships go (29%).
        let d = directory(
            &[
                ("g1", "a", &[0, 1, 2]),
                ("g2", "b", &[0, 1]),
                ("g3", "c", &[0, 2]),
            ],
            3,
        );
        let ledger = mirroring(&d);
        let edited = directory(
            &[("g1", "a", &[1, 2]), ("g2", "b", &[1]), ("g3", "c", &[2])],
            3,
        );
        let p = plan(&edited, &ledger, &TargetView::default());
        assert_eq!(p.summary().member_remove, 3);
        let safety = Thresholds {
            max_group_deletes: 50,
            max_group_delete_percent: 10.0,
            max_member_removes: 500,
            max_member_remove_percent: 10.0,
            percent_floor: 10,
        };
        assert_eq!(guard(&p, &ledger, &safety, false), None);
        // At or below the floor only the absolute limit holds a plan.
        let absolute = Thresholds {
            max_member_removes: 2,
            ..safety.clone()
        };
        let hold = guard(&p, &ledger, &absolute, false).unwrap();
        assert_eq!(
            hold.reasons,
            ["3 membership removals exceed the limit of 2"]
        );
        // Above the floor the percentage applies again.
        let low_floor = Thresholds {
            percent_floor: 2,
            ..safety
        };
        let hold = guard(&p, &ledger, &low_floor, false).unwrap();
        assert_eq!(
            hold.reasons,
            ["3 membership removals are 42.9% of the 7 recorded, above the limit of 10%"]
        );
        // Limits are inclusive: exactly the absolute limit, or a share below the percentage,
        // goes through.
        let at_the_limit = Thresholds {
            max_member_removes: 3,
            ..safety.clone()
        };
        assert_eq!(guard(&p, &ledger, &at_the_limit, false), None);
        let below_the_percentage = Thresholds {
            max_member_remove_percent: 43.0,
            ..low_floor
        };
        assert_eq!(guard(&p, &ledger, &below_the_percentage, false), None);
    }

    #[test]
    fn a_dry_run_hold_message_does_not_ask_for_a_dry_run() {
        let hold = Hold {
            reasons: vec!["2 group deletes exceed the limit of 1".into()],
        };
        let dry = hold.message(true);
        assert!(!dry.contains("--dry-run"), "{dry}");
        assert!(
            dry.contains("sync --plan FILE") && dry.contains("2 group deletes"),
            "{dry}"
        );
        let real = hold.message(false);
        assert!(real.contains("sync --dry-run --save-plan FILE"), "{real}");
        assert_eq!(
            hold.to_string(),
            real,
            "an error shows the real run's message"
        );
    }

    #[test]
    fn a_view_of_the_target_plans_adoptions_and_lists_unmapped_members() {
        use crate::model::{AdoptedBy, ExistingGroup};
        // g1 exists in the target with user0 and a stranger; user2 has no target user.
        let d = directory(&[("g1", "a", &[0, 1, 2]), ("g2", "b", &[2])], 3);
        let view = TargetView {
            users: Some(
                [("u000", "t0"), ("u001", "t1")]
                    .map(|(s, t)| (s.to_string(), t.to_string()))
                    .into_iter()
                    .collect(),
            ),
            existing: [(
                "g1".to_string(),
                ExistingGroup {
                    target_id: "T1".into(),
                    by: AdoptedBy::Name,
                    members: vec![("t0".into(), "t0".into()), ("tx".into(), "stranger".into())],
                },
            )]
            .into_iter()
            .collect(),
            ..TargetView::default()
        };
        let p = plan(&d, &Ledger::default(), &view);
        let shown: Vec<_> = p
            .operations
            .iter()
            .map(|o| serde_json::to_value(OperationView::from(o)).unwrap())
            .collect();
        assert_eq!(shown[0]["op"], "adopt");
        assert_eq!(
            (&shown[0]["by"], &shown[0]["target_id"]),
            (&json!("name"), &json!("T1"))
        );
        assert_eq!(shown[1]["op"], "create");
        assert_eq!(
            (&shown[2]["op"], &shown[2]["members"]),
            (&json!("member_add"), &json!(["user1"]))
        );
        assert_eq!(
            (&shown[3]["op"], &shown[3]["members"]),
            (&json!("member_remove"), &json!(["stranger"]))
        );
        assert_eq!(shown.len(), 4);
        let summary = p.summary();
        assert_eq!((summary.adopt, summary.unmapped), (1, 2));
        assert_eq!(p.unmapped[0].members, ["user2"]);
        // Applied, the ledger holds what the target has: the plan is empty, unmapped aside.
        let mut ledger = Ledger::default();
        apply_to_ledger(&mut ledger, &p);
        let again = plan(&d, &ledger, &view);
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(again.summary().unmapped, 2);

        // A sink that provisions users plans the member without a target id instead.
        let provisioning = TargetView {
            provisions_users: true,
            ..view
        };
        let p = plan(&d, &Ledger::default(), &provisioning);
        assert_eq!(p.summary().unmapped, 0);
        let adds: Vec<&MemberRef> = p
            .operations
            .iter()
            .filter_map(|o| match o {
                Operation::MemberAdd { members, .. } => Some(members),
                _ => None,
            })
            .flatten()
            .filter(|m| m.username == "user2")
            .collect();
        assert_eq!(adds.len(), 2);
        assert!(adds.iter().all(|m| m.target_id.is_none()));
    }

    #[test]
    fn a_full_reconcile_plans_against_the_target_and_flags_drift() {
        use crate::model::ActualGroup;
        // g1 (user0, user1) was renamed in the target, user1 removed and a stranger added by
        // hand; g2 was deleted by hand; g3 is in sync; user2 joined g3 in LDAP (not drift).
        let d = directory(
            &[
                ("g1", "a", &[0, 1]),
                ("g2", "b", &[0]),
                ("g3", "c", &[0, 2]),
            ],
            3,
        );
        let mut ledger = mirroring(&d);
        ledger.groups.get_mut("g3").unwrap().members.remove("u002");
        let users = [("u000", "t0"), ("u001", "t1"), ("u002", "t2")]
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .into_iter()
            .collect();
        let state = |name: &str, members: &[&str]| ActualGroup {
            name: name.into(),
            description: Some(None),
            members: members
                .iter()
                .map(|m| (m.to_string(), m.to_string()))
                .collect(),
        };
        let actual = [
            ("g1".to_string(), Some(state("renamed", &["t0", "tx"]))),
            ("g2".to_string(), None),
            ("g3".to_string(), Some(state("c", &["t0"]))),
        ]
        .into_iter()
        .collect();
        let view = TargetView {
            users: Some(users),
            actual: Some(actual),
            ..TargetView::default()
        };
        let p = plan(&d, &ledger, &view);
        let shown: Vec<(String, String, Vec<String>, bool)> = p
            .operations
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let v = serde_json::to_value(OperationView::from(o)).unwrap();
                let members = v["members"]
                    .as_array()
                    .map(|m| m.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default();
                (
                    v["op"].as_str().unwrap().to_string(),
                    v["group"].as_str().unwrap().to_string(),
                    members,
                    p.is_drift(i),
                )
            })
            .collect();
        let expected: Vec<(&str, &str, Vec<&str>, bool)> = vec![
            ("create", "b", vec![], true),
            ("update", "a", vec![], true),
            ("member_add", "a", vec!["user1"], true),
            ("member_add", "b", vec!["user0"], true),
            ("member_add", "c", vec!["user2"], false),
            ("member_remove", "a", vec!["tx"], true),
        ];
        assert_eq!(shown.len(), expected.len(), "{shown:?}");
        for (got, want) in shown.iter().zip(&expected) {
            assert_eq!(
                (got.0.as_str(), got.1.as_str(), &got.2, got.3),
                (
                    want.0,
                    want.1,
                    &want.2.iter().map(|s| s.to_string()).collect(),
                    want.3
                )
            );
        }
        assert_eq!(p.drift_summary().member_add, 2);
        // The ledger rewrite: g2 forgotten, g1 as read with the members it keeps.
        let g1 = p.resync.iter().find(|r| r.group.source_id == "g1").unwrap();
        assert_eq!(g1.group.name, "renamed");
        assert_eq!(g1.members.as_ref().unwrap().len(), 1);
        let g2 = p.resync.iter().find(|r| r.group.source_id == "g2").unwrap();
        assert!(g2.members.is_none());
    }

    #[test]
    fn a_full_reconcile_tells_drift_from_changes_made_in_ldap() {
        use crate::model::ActualGroup;
        let d = directory(
            &[
                ("g1", "a", &[]),
                ("g2", "b", &[]),
                ("g3", "c", &[]),
                ("g4", "d", &[]),
            ],
            0,
        );
        let mut ledger = mirroring(&d);
        let mut now = d.clone();
        // g1: its description was changed in the target by hand (drift).
        // g2: moved in LDAP (a new DN); its target does not report descriptions.
        ledger.groups.get_mut("g2").unwrap().dn = "cn=b,ou=old".into();
        ledger.groups.get_mut("g2").unwrap().description = Some("recorded".into());
        now.groups[1].description = Some("recorded".into());
        // g3: renamed in LDAP; the target still holds the old name (not drift).
        ledger.groups.get_mut("g3").unwrap().name = "c-old".into();
        // g4: renamed in the target by hand (drift) while LDAP gave it a description the
        // target does not report.
        now.groups[3].description = Some("new in ldap".into());
        let state = |name: &str, description| ActualGroup {
            name: name.into(),
            description,
            members: Vec::new(),
        };
        let actual = [
            ("g1", state("a", Some(Some("by hand".into())))),
            ("g2", state("b", None)),
            ("g3", state("c-old", Some(None))),
            ("g4", state("d-by-hand", None)),
        ]
        .into_iter()
        .map(|(id, state)| (id.to_string(), Some(state)))
        .collect();
        let view = TargetView {
            actual: Some(actual),
            ..TargetView::default()
        };
        let p = plan(&now, &ledger, &view);
        let updates: Vec<(&str, &str, Option<&str>, &str, bool)> = p
            .operations
            .iter()
            .enumerate()
            .map(|(i, o)| match o {
                Operation::Update { group, previous } => (
                    group.name.as_str(),
                    previous.name.as_str(),
                    previous.description.as_deref(),
                    previous.dn.as_str(),
                    p.is_drift(i),
                ),
                other => panic!("only updates expected, got {other:?}"),
            })
            .collect();
        assert_eq!(
            updates,
            [
                ("a", "a", Some("by hand"), "cn=a,ou=g", true),
                ("b", "b", Some("recorded"), "cn=b,ou=old", false),
                ("c", "c-old", None, "cn=c,ou=g", false),
                ("d", "d-by-hand", None, "cn=d,ou=g", true),
            ]
        );
        // The ledger is rewritten with what the target holds (and the recorded DN).
        let g1 = p.resync.iter().find(|r| r.group.source_id == "g1").unwrap();
        assert_eq!(g1.group.description.as_deref(), Some("by hand"));
        let g2 = p.resync.iter().find(|r| r.group.source_id == "g2").unwrap();
        assert_eq!(
            (g2.group.description.as_deref(), g2.group.dn.as_str()),
            (Some("recorded"), "cn=b,ou=old")
        );
    }

    #[test]
    fn provisioning_plans_each_missing_user_once_and_deactivates_only_owned_users() {
        use crate::ledger::OwnedUser;
        // user1 is in two groups and has no target user; user2 was created by the sink and left
        // the scope; user3 (in no group either) was not created by the sink; user0 was created
        // and deactivated by the sink, and is back in g1.
        let d = directory(&[("g1", "b", &[0, 1]), ("g2", "a", &[1])], 4);
        let mut ledger = mirroring(&d);
        let owned = |index: u32, target_id: &str, active: bool| OwnedUser {
            user: Arc::clone(d.user(index)),
            target_id: target_id.into(),
            active,
        };
        ledger
            .owned_users
            .insert("u002".into(), owned(2, "t2", true));
        ledger
            .owned_users
            .insert("u000".into(), owned(0, "t0", false));
        let view = TargetView {
            users: Some(
                [("u000".to_string(), "t0".to_string())]
                    .into_iter()
                    .collect(),
            ),
            provisions_users: true,
            plans_user_ops: true,
            ..TargetView::default()
        };
        let p = plan(&d, &ledger, &view);
        let user_ops: Vec<(&str, &str, &str)> = p
            .operations
            .iter()
            .filter_map(|o| match o {
                Operation::UserCreate { group, user } => {
                    Some(("create", group.name.as_str(), user.username.as_str()))
                }
                Operation::UserDeactivate { user, .. } => {
                    Some(("deactivate", "", user.username.as_str()))
                }
                Operation::UserReactivate { group, user } => {
                    assert_eq!(user.target_id.as_deref(), Some("t0"));
                    Some(("reactivate", group.name.as_str(), user.username.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            user_ops,
            [
                ("create", "a", "user1"),
                ("reactivate", "b", "user0"),
                ("deactivate", "", "user2")
            ]
        );
        let summary = p.summary();
        let users = (summary.user_create, summary.user_reactivate);
        assert_eq!((users, summary.user_deactivate), ((1, 1), 1));
        assert_eq!(summary.unmapped, 0);

        // Once applied, the ledger knows user0 active and user2 inactive: nothing more to do
        // with either (user1, created, is now mapped).
        apply_to_ledger(&mut ledger, &p);
        assert!(ledger.owned_users["u000"].active && !ledger.owned_users["u002"].active);
        let mut users = view.users.clone().unwrap();
        users.insert("u001".into(), "t1".into());
        let view = TargetView {
            users: Some(users),
            ..view
        };
        let again = plan(&d, &ledger, &view).summary();
        let user_ops = (
            again.user_create,
            again.user_reactivate,
            again.user_deactivate,
        );
        assert_eq!(user_ops, (0, 0, 0));
    }

    #[test]
    fn json_shape_follows_the_contract() {
        let d = directory(&[("g1", "a", &[0])], 1);
        let p = plan(&d, &Ledger::default(), &TargetView::default());
        let add = serde_json::to_value(OperationView::from(&p.operations[1])).unwrap();
        assert_eq!(add["op"], "member_add");
        assert_eq!(add["group"], "a");
        assert_eq!(add["source_id"], "g1");
        assert_eq!(add["members"], json!(["user0"]));
    }

    fn arb_directory() -> impl Strategy<Value = Directory> {
        (
            1u32..8,
            prop::collection::vec(
                (0u8..12, 0u8..4, prop::collection::btree_set(0u32..8, 0..8)),
                0..10,
            ),
        )
            .prop_map(|(users, groups)| {
                let mut seen = std::collections::BTreeSet::new();
                let groups: Vec<(String, String, Vec<u32>)> = groups
                    .into_iter()
                    .filter(|(id, _, _)| seen.insert(*id))
                    .map(|(id, name, members)| {
                        (
                            format!("g{id:02}"),
                            format!("name{name}-{id}"),
                            members.into_iter().filter(|&m| m < users).collect(),
                        )
                    })
                    .collect();
                let refs: Vec<(&str, &str, &[u32])> = groups
                    .iter()
                    .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_slice()))
                    .collect();
                let mut d = directory(&refs, users);
                d.groups.sort_by(|a, b| a.id.cmp(&b.id));
                d
            })
    }

    proptest! {
        #[test]
        fn plan_against_mirror_is_empty(d in arb_directory()) {
            prop_assert!(plan(&d, &mirroring(&d), &TargetView::default()).is_empty());
        }

        #[test]
        fn applying_a_plan_yields_the_directory(before in arb_directory(), after in arb_directory()) {
            let mut ledger = mirroring(&before);
            let p = plan(&after, &ledger, &TargetView::default());
            apply_to_ledger(&mut ledger, &p);
            let mut expected = mirroring(&after);
            // target ids are assigned by the target; compare everything else
            for g in ledger.groups.values_mut() { g.target_id = None; }
            for g in expected.groups.values_mut() { g.target_id = None; }
            prop_assert_eq!(ledger, expected);
            prop_assert_eq!(plan(&after, &mirroring(&after), &TargetView::default()), Plan::default());
        }

        #[test]
        fn plans_are_deterministic(d in arb_directory(), before in arb_directory()) {
            let ledger = mirroring(&before);
            prop_assert_eq!(plan(&d, &ledger, &TargetView::default()), plan(&d, &ledger, &TargetView::default()));
        }
    }
}
