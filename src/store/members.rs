//! The ledger's memberships, compact: each group row holds its members as one blob of ids into `ledger_users`, where each distinct recorded user is stored once.
//!
//! A million memberships were a million rows repeating each user's name, e-mail and DN; now they
//! are four bytes each (a big-endian id, sorted) in their group's row, and a user in a hundred
//! groups is one `ledger_users` row. A row of `ledger_users` is immutable: a member recorded
//! with other attributes (a new DN, another target id) gets a row of its own, so every group
//! keeps exactly what was recorded for it. The table is keyed by (sink, user source id, id), so
//! finding a user's rows needs no separate index; ids come from the one-row `ledger_user_ids`
//! counter (they are never reused). Writing a group's members rewrites its blob (and
//! `member_count`, which `ledger` and `status` show without decoding) in one transaction.

use std::collections::BTreeSet;
use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};
use rustc_hash::{FxHashMap as HashMap, FxHashSet};

use super::{Store, StoreError};
use crate::ledger::LedgerMember;
use crate::model::{GroupSpec, MemberRef, User};

/// Bytes per member in a group's blob.
const ID_BYTES: usize = 4;

/// The member ids of a blob (trailing bytes of a damaged blob are ignored).
pub(super) fn unpack(blob: &[u8]) -> impl Iterator<Item = i64> + '_ {
    blob.chunks_exact(ID_BYTES)
        .map(|c| i64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
}

fn pack(ids: &BTreeSet<i64>) -> rusqlite::Result<Option<Vec<u8>>> {
    if ids.is_empty() {
        return Ok(None);
    }
    let mut blob = Vec::with_capacity(ids.len() * ID_BYTES);
    for &id in ids {
        let id = u32::try_from(id).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, id))?;
        blob.extend_from_slice(&id.to_be_bytes());
    }
    Ok(Some(blob))
}

/// A group's recorded member ids; `None` when the ledger does not hold the group.
fn group_ids(
    tx: &Transaction<'_>,
    sink: &str,
    group: &str,
) -> rusqlite::Result<Option<BTreeSet<i64>>> {
    let blob: Option<Option<Vec<u8>>> = tx
        .prepare_cached("SELECT members FROM ledger_groups WHERE sink = ?1 AND source_id = ?2")?
        .query_row(params![sink, group], |row| row.get(0))
        .optional()?;
    Ok(blob.map(|blob| unpack(blob.as_deref().unwrap_or_default()).collect()))
}

fn store_ids(
    tx: &Transaction<'_>,
    sink: &str,
    group: &str,
    ids: &BTreeSet<i64>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE ledger_groups SET members = ?3, member_count = ?4 WHERE sink = ?1 AND source_id = ?2",
    )?
    .execute(params![sink, group, pack(ids)?, ids.len() as i64])?;
    Ok(())
}

/// Every `ledger_users` row of a user: (id, username, email, dn, target_id).
type UserRow = (i64, String, Option<String>, String, Option<String>);

fn user_rows(tx: &Transaction<'_>, sink: &str, user: &str) -> rusqlite::Result<Vec<UserRow>> {
    tx.prepare_cached(
        "SELECT id, username, email, dn, target_id FROM ledger_users WHERE sink = ?1 AND user_source_id = ?2",
    )?
    .query_map(params![sink, user], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
    })?
    .collect()
}

impl Store {
    /// Every user recorded in `sink`'s ledger by id, with its key (user source id) shared.
    pub(super) fn ledger_users(
        &self,
        sink: &str,
    ) -> Result<HashMap<i64, (Arc<str>, LedgerMember)>, StoreError> {
        let err = self.err();
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, user_source_id, username, email, dn, target_id FROM ledger_users WHERE sink = ?1",
            )
            .map_err(&err)?;
        let mut rows = statement.query([sink]).map_err(&err)?;
        let mut users = HashMap::default();
        while let Some(row) = rows.next().map_err(&err)? {
            let source_id: String = row.get(1).map_err(&err)?;
            let user = Arc::new(User {
                username: row.get(2).map_err(&err)?,
                email: row.get(3).map_err(&err)?,
                dn: row.get(4).map_err(&err)?,
                source_id: source_id.clone(),
            });
            let target_id: Option<String> = row.get(5).map_err(&err)?;
            users.insert(
                row.get(0).map_err(&err)?,
                (
                    Arc::from(source_id),
                    LedgerMember {
                        user,
                        target_id: target_id.map(Arc::from),
                    },
                ),
            );
        }
        Ok(users)
    }

    /// Records members as present in a group (replacing what was recorded for the same users),
    /// in one transaction. Members of a group the ledger does not hold are not recorded.
    pub fn record_members_added(
        &mut self,
        sink: &str,
        group_source_id: &str,
        members: &[MemberRef],
    ) -> Result<(), StoreError> {
        self.in_transaction(|tx| {
            let Some(mut ids) = group_ids(tx, sink, group_source_id)? else {
                return Ok(());
            };
            for m in members {
                let rows = user_rows(tx, sink, &m.source_id)?;
                for row in &rows {
                    ids.remove(&row.0);
                }
                let same = rows.iter().find(|(_, username, email, dn, target_id)| {
                    *username == m.username
                        && *email == m.email
                        && *dn == m.dn
                        && *target_id == m.target_id
                });
                let id = match same {
                    Some(row) => row.0,
                    None => {
                        let id: i64 = tx
                            .prepare_cached(
                                "UPDATE ledger_user_ids SET last = last + 1 WHERE id = 1 RETURNING last",
                            )?
                            .query_row([], |row| row.get(0))?;
                        tx.prepare_cached(
                            "INSERT INTO ledger_users (sink, user_source_id, id, username, email, dn, target_id)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        )?
                        .execute(params![sink, m.source_id, id, m.username, m.email, m.dn, m.target_id])?;
                        id
                    }
                };
                ids.insert(id);
            }
            store_ids(tx, sink, group_source_id, &ids)
        })
    }

    /// Records members as gone from a group, in one transaction.
    pub fn record_members_removed(
        &mut self,
        sink: &str,
        group_source_id: &str,
        user_source_ids: &[&str],
    ) -> Result<(), StoreError> {
        self.in_transaction(|tx| {
            let Some(mut ids) = group_ids(tx, sink, group_source_id)? else {
                return Ok(());
            };
            for user in user_source_ids {
                for row in user_rows(tx, sink, user)? {
                    ids.remove(&row.0);
                }
            }
            store_ids(tx, sink, group_source_id, &ids)
        })
    }

    /// Drops the `ledger_users` rows of `sink` that no group's members refer to any more (a
    /// member recorded again with other attributes, or gone from every group, leaves its old
    /// row behind); how many. One pass over the sink's member blobs and users, in one
    /// transaction: done after a full reconcile, which rewrote every group.
    pub(super) fn prune_ledger_users(&self, sink: &str) -> Result<usize, StoreError> {
        let err = self.err();
        // `&self` as the callers hold it; this connection is used by one thread at a time.
        let tx = self.conn.unchecked_transaction().map_err(&err)?;
        let mut used = FxHashSet::default();
        {
            let mut statement = tx
                .prepare("SELECT members FROM ledger_groups WHERE sink = ?1")
                .map_err(&err)?;
            let mut rows = statement.query([sink]).map_err(&err)?;
            while let Some(row) = rows.next().map_err(&err)? {
                if let Ok(Some(blob)) = row.get_ref(0).map_err(&err)?.as_blob_or_null() {
                    used.extend(unpack(blob));
                }
            }
        }
        let stale: Vec<(String, i64)> = tx
            .prepare("SELECT user_source_id, id FROM ledger_users WHERE sink = ?1")
            .and_then(|mut statement| {
                statement
                    .query_map([sink], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .filter(|row| row.as_ref().map_or(true, |(_, id)| !used.contains(id)))
                    .collect()
            })
            .map_err(&err)?;
        {
            let mut delete = tx
                .prepare(
                    "DELETE FROM ledger_users WHERE sink = ?1 AND user_source_id = ?2 AND id = ?3",
                )
                .map_err(&err)?;
            for (user, id) in &stale {
                delete.execute(params![sink, user, id]).map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)?;
        Ok(stale.len())
    }

    /// Rewrites one group of a sink's ledger from what a full reconcile read in the target: the
    /// group as read and exactly `members` (`None`: the group is gone, forgotten).
    pub fn rewrite_group(
        &mut self,
        sink: &str,
        group: &GroupSpec,
        members: Option<&[MemberRef]>,
    ) -> Result<(), StoreError> {
        let Some(members) = members else {
            return self.record_deleted(sink, &group.source_id);
        };
        let target_id = group.target_id.clone().unwrap_or_default();
        self.record_group(sink, group, &target_id)?;
        self.in_transaction(|tx| store_ids(tx, sink, &group.source_id, &BTreeSet::new()))?;
        self.record_members_added(sink, &group.source_id, members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, dn: &str, target: Option<&str>) -> MemberRef {
        MemberRef {
            user: Arc::new(User {
                source_id: id.into(),
                username: id.into(),
                email: None,
                dn: dn.into(),
            }),
            target_id: target.map(str::to_string),
        }
    }

    #[test]
    fn members_are_packed_per_group_and_users_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        for g in ["g1", "g2"] {
            store
                .record_group("s", &GroupSpec::for_test(g, g), g)
                .unwrap();
        }
        let (a, b) = (member("a", "uid=a", Some("TA")), member("b", "uid=b", None));
        store
            .record_members_added("s", "g1", &[a.clone(), b.clone()])
            .unwrap();
        store
            .record_members_added("s", "g2", std::slice::from_ref(&a))
            .unwrap();
        // Members of a group not in the ledger are not recorded.
        store
            .record_members_added("s", "nope", std::slice::from_ref(&a))
            .unwrap();
        let users: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM ledger_users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 2, "a is stored once");
        let ledger = store.load_ledger("s").unwrap();
        assert_eq!(ledger.groups["g1"].members.len(), 2);
        assert_eq!(
            ledger.groups["g1"].members["a"].target_id.as_deref(),
            Some("TA")
        );
        assert!(Arc::ptr_eq(
            &ledger.groups["g1"].members["a"].user,
            &ledger.groups["g2"].members["a"].user
        ));

        // A member recorded again with a new DN replaces the old record in that group only.
        store
            .record_members_added("s", "g1", &[member("a", "uid=a2", Some("TA"))])
            .unwrap();
        let ledger = store.load_ledger("s").unwrap();
        assert_eq!(ledger.groups["g1"].members["a"].dn, "uid=a2");
        assert_eq!(ledger.groups["g2"].members["a"].dn, "uid=a");
        assert_eq!(ledger.groups["g1"].members.len(), 2);

        store
            .record_members_removed("s", "g1", &["a", "zz"])
            .unwrap();
        let counts = store.ledger_counts().unwrap();
        assert_eq!(counts[0].memberships, 2, "b in g1, a in g2");
        let listing = store.ledger_listing(&[]).unwrap();
        let g1 = listing[0]
            .groups
            .iter()
            .find(|g| g.source_id == "g1")
            .unwrap();
        assert_eq!(g1.members, 1);

        store
            .rewrite_group(
                "s",
                &GroupSpec::for_test("g2", "g2"),
                Some(std::slice::from_ref(&b)),
            )
            .unwrap();
        let ledger = store.load_ledger("s").unwrap();
        assert_eq!(
            ledger.groups["g2"]
                .members
                .keys()
                .map(|k| &**k)
                .collect::<Vec<_>>(),
            ["b"]
        );
        store.record_deleted("s", "g1").unwrap();
        assert_eq!(store.ledger_counts().unwrap()[0].memberships, 1);

        // A full reconcile drops the rows no group refers to: a (TA, uid=a), a (uid=a2), and
        // b's is the only one left.
        let before = store.load_ledger("s").unwrap().groups;
        store.set_reconciled("s").unwrap();
        let users: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM ledger_users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 1);
        assert_eq!(store.load_ledger("s").unwrap().groups, before);
        assert_eq!(store.prune_ledger_users("s").unwrap(), 0);
    }

    #[test]
    fn the_migration_packs_membership_rows() {
        let dir = tempfile::tempdir().unwrap();
        // The schema before members were packed (the eighth migration).
        let (path, conn) = super::super::state_file_at_version(dir.path(), 7);
        conn.execute_batch(
            "INSERT INTO ledger_groups (sink, source_id, target_id, name, dn, updated_at) VALUES
               ('s', 'g1', 'T1', 'one', 'cn=one', 'now'), ('s', 'g2', 'T2', 'two', 'cn=two', 'now'),
               ('t', 'g1', NULL, 'one', 'cn=one', 'now');
             INSERT INTO ledger_members (sink, group_source_id, user_source_id, username, email, dn, target_id) VALUES
               ('s', 'g1', 'a', 'alice', 'a@x', 'uid=alice', 'TA'), ('s', 'g1', 'b', 'bob', NULL, 'uid=bob', NULL),
               ('s', 'g2', 'a', 'alice', 'a@x', 'uid=alice', 'TA'), ('t', 'g1', 'a', 'alice', NULL, 'uid=alice', NULL),
               ('s', 'orphan', 'a', 'alice', 'a@x', 'uid=alice', 'TA');",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        let s = store.load_ledger("s").unwrap();
        assert_eq!(s.groups["g1"].members.len(), 2);
        assert_eq!(s.groups["g1"].members["a"].email.as_deref(), Some("a@x"));
        assert_eq!(s.groups["g1"].members["a"].target_id.as_deref(), Some("TA"));
        assert_eq!(s.groups["g1"].members["b"].target_id, None);
        assert_eq!(s.groups["g2"].members.len(), 1);
        let t = store.load_ledger("t").unwrap();
        assert_eq!(t.groups["g1"].members["a"].email, None);
        let counts = store.ledger_counts().unwrap();
        assert_eq!((counts[0].memberships, counts[1].memberships), (3, 1));
    }
}
