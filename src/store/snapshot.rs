//! The directory snapshot in the state file, compact: one row per entry, its attributes packed in one blob, long values (DNs) interned.
//!
//! A million memberships are a million member DNs, most of them the DN of one of a hundred
//! thousand users: each distinct long value is stored once in `snapshot_strings` and an entry's
//! blob refers to it by a varint id. A full read replaces the snapshot (and drops strings no
//! longer used); an incremental one writes only the entries it changed. The cookies and the
//! entries are written in one transaction, so the cursor never moves without the snapshot.

use rustc_hash::{FxHashMap as HashMap, FxHashSet};

use rusqlite::{OptionalExtension, Transaction, params};

use super::{SNAPSHOT_TABLES, Store, StoreError, now};
use crate::source::RawEntry;
use crate::source::incremental::{ScopeSnapshot, Snapshot};

/// Values at least this long are interned (DNs); shorter ones (ids, names) are stored inline.
const INTERN_MIN: usize = 24;

const USERS: i64 = 0;
const GROUPS: i64 = 1;

/// The stored snapshot's (identity, users cookie, groups cookie).
pub(super) type SnapshotSource = (String, Vec<u8>, Vec<u8>);

impl Store {
    /// What the stored snapshot was read from, and its cookies; `None` when no snapshot is
    /// stored.
    pub(super) fn snapshot_source(&self) -> Result<Option<SnapshotSource>, StoreError> {
        self.conn
            .query_row(
                "SELECT identity, users_cookie, groups_cookie FROM snapshot_source WHERE id = 1",
                [],
                |row| row.try_into(),
            )
            .optional()
            .map_err(self.err())
    }

    /// The stored snapshot, if there is one. An entry whose blob cannot be decoded is ignored
    /// with a warning (the next read is a full one and replaces it); a damaged page (SQLite's
    /// check) is an error, like a damaged ledger.
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        self.check_tables(SNAPSHOT_TABLES)?;
        let err = self.err();
        let Some((identity, users_cookie, groups_cookie)) = self.snapshot_source()? else {
            return Ok(None);
        };
        let mut strings: HashMap<i64, Vec<u8>> = HashMap::default();
        let mut statement = self
            .conn
            .prepare("SELECT id, value FROM snapshot_strings")
            .map_err(&err)?;
        let mut rows = statement.query([]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            strings.insert(row.get(0).map_err(&err)?, row.get(1).map_err(&err)?);
        }
        let mut snapshot = Snapshot {
            identity,
            users: ScopeSnapshot {
                cookie: users_cookie,
                ..ScopeSnapshot::default()
            },
            groups: ScopeSnapshot {
                cookie: groups_cookie,
                ..ScopeSnapshot::default()
            },
        };
        let mut statement = self
            .conn
            .prepare("SELECT scope, key, dn, attrs FROM snapshot_entries")
            .map_err(&err)?;
        let mut rows = statement.query([]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let scope: i64 = row.get(0).map_err(&err)?;
            let key: String = row.get(1).map_err(&err)?;
            let dn: i64 = row.get(2).map_err(&err)?;
            let attrs = row.get_ref(3).map_err(&err)?;
            let entry = attrs
                .as_blob()
                .ok()
                .and_then(|blob| unpack(dn, blob, &strings));
            let Some(entry) = entry else {
                tracing::warn!(
                    key,
                    "the stored directory snapshot is damaged; this run reads the whole directory"
                );
                return Ok(None);
            };
            let target = if scope == USERS {
                &mut snapshot.users
            } else {
                &mut snapshot.groups
            };
            target.entries.insert(key, entry);
        }
        Ok(Some(snapshot))
    }

    /// Stores `snapshot` with its cookies in one transaction: the whole of a replaced scope, the
    /// changed entries of a refreshed one. `None` forgets any stored snapshot (the next run
    /// reads in full).
    pub fn save_snapshot(&mut self, snapshot: Option<&Snapshot>) -> Result<(), StoreError> {
        self.check_tables(SNAPSHOT_TABLES)?;
        self.in_transaction(|tx| {
            let Some(snapshot) = snapshot else {
                tx.execute_batch(
                    "DELETE FROM snapshot_source; DELETE FROM snapshot_entries; DELETE FROM snapshot_strings;",
                )?;
                return Ok(());
            };
            tx.execute(
                "INSERT INTO snapshot_source (id, identity, users_cookie, groups_cookie, read_at)
                 VALUES (1, ?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET identity = excluded.identity,
                   users_cookie = excluded.users_cookie, groups_cookie = excluded.groups_cookie,
                   read_at = excluded.read_at",
                params![
                    snapshot.identity,
                    snapshot.users.cookie,
                    snapshot.groups.cookie,
                    now()
                ],
            )?;
            let replaced = snapshot.users.replaced && snapshot.groups.replaced;
            let mut interner = Interner {
                tx,
                ids: None,
                used: FxHashSet::default(),
            };
            for (code, scope) in [(USERS, &snapshot.users), (GROUPS, &snapshot.groups)] {
                write_scope(&mut interner, code, scope)?;
            }
            if replaced && interner.ids.is_none() {
                // Nothing was interned: no entry refers to any string.
                tx.execute_batch("DELETE FROM snapshot_strings;")?;
            }
            let stored = interner.ids.as_ref().map_or(0, HashMap::len);
            if replaced && stored > interner.used.len() {
                // Strings no entry refers to any more (old DNs, removed values).
                tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS snapshot_used (id INTEGER PRIMARY KEY); DELETE FROM snapshot_used;")?;
                {
                    let mut insert = tx.prepare_cached("INSERT INTO snapshot_used (id) VALUES (?1)")?;
                    for id in &interner.used {
                        insert.execute([id])?;
                    }
                }
                tx.execute_batch("DELETE FROM snapshot_strings WHERE id NOT IN (SELECT id FROM snapshot_used); DELETE FROM snapshot_used;")?;
            }
            Ok(())
        })
    }
}

fn write_scope(
    interner: &mut Interner<'_, '_>,
    code: i64,
    scope: &ScopeSnapshot,
) -> rusqlite::Result<()> {
    let tx = interner.tx;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO snapshot_entries (scope, key, dn, attrs) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (scope, key) DO UPDATE SET dn = excluded.dn, attrs = excluded.attrs",
    )?;
    let mut delete =
        tx.prepare_cached("DELETE FROM snapshot_entries WHERE scope = ?1 AND key = ?2")?;
    let mut write = |key: &str, entry: &RawEntry, interner: &mut Interner<'_, '_>| {
        let dn = interner.intern(entry.dn.as_bytes())?;
        let attrs = pack(key, entry, interner)?;
        upsert.execute(params![code, key, dn, attrs]).map(|_| ())
    };
    if scope.replaced {
        // What is stored already: unchanged entries are left alone, vanished ones deleted.
        let mut stored: HashMap<String, (i64, Vec<u8>)> = HashMap::default();
        {
            let mut statement =
                tx.prepare("SELECT key, dn, attrs FROM snapshot_entries WHERE scope = ?1")?;
            let mut rows = statement.query([code])?;
            while let Some(row) = rows.next()? {
                stored.insert(row.get(0)?, (row.get(1)?, row.get(2)?));
            }
        }
        for (key, entry) in &scope.entries {
            let dn = interner.intern(entry.dn.as_bytes())?;
            let attrs = pack(key, entry, interner)?;
            if stored.remove(key.as_str()) != Some((dn, attrs.clone())) {
                upsert.execute(params![code, key, dn, attrs])?;
            }
        }
        for key in stored.keys() {
            delete.execute(params![code, key])?;
        }
        return Ok(());
    }
    for key in &scope.changed {
        match scope.entries.get(key) {
            Some(entry) => write(key, entry, interner)?,
            None => {
                delete.execute(params![code, key])?;
            }
        }
    }
    Ok(())
}

/// Gives each long value one row in `snapshot_strings`.
///
/// The table has no index on the value (it would be as large as the strings): the first value
/// a write interns reads every stored string into `ids`, and new ones are added there. Only
/// the process holding the state file's lock writes, so the map stays complete for the
/// transaction. A write that interns nothing (an incremental run that changed no entry) reads
/// nothing.
struct Interner<'a, 'c> {
    tx: &'a Transaction<'c>,
    ids: Option<HashMap<Vec<u8>, i64>>,
    /// Ids handed out by this write (a full write drops the others).
    used: FxHashSet<i64>,
}

impl Interner<'_, '_> {
    fn intern(&mut self, value: &[u8]) -> rusqlite::Result<i64> {
        let ids = match self.ids.take() {
            Some(ids) => ids,
            None => {
                let mut ids = HashMap::default();
                let mut statement = self.tx.prepare("SELECT id, value FROM snapshot_strings")?;
                let mut rows = statement.query([])?;
                while let Some(row) = rows.next()? {
                    ids.insert(row.get(1)?, row.get(0)?);
                }
                ids
            }
        };
        let ids = self.ids.insert(ids);
        let id = match ids.get(value) {
            Some(&id) => id,
            None => {
                self.tx
                    .prepare_cached("INSERT INTO snapshot_strings (value) VALUES (?1)")?
                    .execute([value])?;
                let id = self.tx.last_insert_rowid();
                ids.insert(value.to_vec(), id);
                id
            }
        };
        self.used.insert(id);
        Ok(id)
    }
}

/// `count (name-len name value-count (value-header value?)*)*` in LEB128 varints; a value
/// header is `len << 1` followed by the bytes, or `string-id << 1 | 1`. A value equal to the
/// entry's key (its entryUUID) is unique to the entry: it is stored inline, as interning it
/// would cost a string row besides.
fn pack(key: &str, entry: &RawEntry, interner: &mut Interner<'_, '_>) -> rusqlite::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    put(&mut out, entry.attrs.len() as u64);
    // Sorted, so that the same entry always packs the same way.
    let mut attrs: Vec<(&String, &Vec<Vec<u8>>)> = entry.attrs.iter().collect();
    attrs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (name, values) in attrs {
        put(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        put(&mut out, values.len() as u64);
        for value in values {
            if value.len() >= INTERN_MIN && value != key.as_bytes() {
                let id = interner.intern(value)?;
                put(&mut out, ((id as u64) << 1) | 1);
            } else {
                put(&mut out, (value.len() as u64) << 1);
                out.extend_from_slice(value);
            }
        }
    }
    Ok(out)
}

/// The inverse of [`pack`]; `None` on anything malformed (the state file is outside data too).
fn unpack(dn: i64, blob: &[u8], strings: &HashMap<i64, Vec<u8>>) -> Option<RawEntry> {
    let mut reader = blob;
    let dn = String::from_utf8_lossy(strings.get(&dn)?).into_owned();
    let count = get(&mut reader)?;
    let mut entry = RawEntry {
        dn,
        ..RawEntry::default()
    };
    for _ in 0..count {
        let name_len = get(&mut reader)?;
        let name = take(&mut reader, name_len)?;
        let name = String::from_utf8(name.to_vec()).ok()?;
        let values_count = get(&mut reader)?;
        let mut values = Vec::with_capacity(values_count.min(1 << 16) as usize);
        for _ in 0..values_count {
            let header = get(&mut reader)?;
            if header & 1 == 1 {
                values.push(strings.get(&((header >> 1) as i64))?.clone());
            } else {
                let len = header >> 1;
                values.push(take(&mut reader, len)?.to_vec());
            }
        }
        entry.attrs.insert(name, values);
    }
    reader.is_empty().then_some(entry)
}

fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get(reader: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = reader.split_first()?;
        *reader = rest;
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(n);
        }
    }
    None
}

fn take<'a>(reader: &mut &'a [u8], len: u64) -> Option<&'a [u8]> {
    let len = usize::try_from(len).ok()?;
    if reader.len() < len {
        return None;
    }
    let (head, rest) = reader.split_at(len);
    *reader = rest;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> RawEntry {
        RawEntry::for_test(dn, attrs)
    }

    fn scope(entries: &[(&str, RawEntry)], cookie: &[u8]) -> ScopeSnapshot {
        ScopeSnapshot {
            cookie: cookie.to_vec(),
            entries: entries
                .iter()
                .map(|(k, e)| (k.to_string(), e.clone()))
                .collect(),
            replaced: true,
            ..ScopeSnapshot::default()
        }
    }

    #[test]
    fn snapshots_round_trip_and_refreshes_write_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        assert!(store.load_snapshot().unwrap().is_none());
        let alice_dn = "uid=alice,ou=People,dc=example,dc=com";
        let alice = entry(alice_dn, &[("entryuuid", &["u1"]), ("uid", &["alice"])]);
        let group = entry(
            "cn=g,ou=Groups,dc=example,dc=com",
            &[
                ("entryuuid", &["g1"]),
                ("cn", &["g"]),
                (
                    "member",
                    &[alice_dn, "uid=ghost,ou=People,dc=example,dc=com"],
                ),
                ("description", &["\u{0}binary\u{ff}"]),
            ],
        );
        let mut snapshot = Snapshot {
            identity: "ldap://x|…".into(),
            users: scope(&[("u1", alice.clone())], b"c1"),
            groups: scope(&[("g1", group.clone())], b"c2"),
        };
        store.save_snapshot(Some(&snapshot)).unwrap();
        let mut loaded = store.load_snapshot().unwrap().unwrap();
        for s in [&mut snapshot.users, &mut snapshot.groups] {
            s.replaced = false;
        }
        assert_eq!(loaded, snapshot);
        let count = |store: &Store, table: &str| -> i64 {
            store
                .conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(
            count(&store, "snapshot_strings"),
            3,
            "alice's DN once, the ghost, the group DN"
        );
        // The same full read again changes no row.
        for s in [&mut snapshot.users, &mut snapshot.groups] {
            s.replaced = true;
        }
        let changes_before: i64 = store
            .conn
            .query_row("SELECT total_changes()", [], |r| r.get(0))
            .unwrap();
        store.save_snapshot(Some(&snapshot)).unwrap();
        let changes_after: i64 = store
            .conn
            .query_row("SELECT total_changes()", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            changes_after - changes_before,
            1,
            "only the cookie row is written"
        );
        // A full read without the group drops it and the strings only it used.
        let mut smaller = snapshot.clone();
        smaller.groups.entries.clear();
        store.save_snapshot(Some(&smaller)).unwrap();
        assert_eq!(count(&store, "snapshot_strings"), 1, "alice's DN only");
        store.save_snapshot(Some(&snapshot)).unwrap();
        for s in [&mut snapshot.users, &mut snapshot.groups] {
            s.replaced = false;
        }

        // A refresh: bob added, the group gone; only those rows are written.
        let bob = entry(
            "uid=bob,ou=People,dc=example,dc=com",
            &[("entryuuid", &["u2"])],
        );
        loaded.users.entries.insert("u2".into(), bob);
        loaded.users.changed.insert("u2".into());
        loaded.groups.entries.remove("g1");
        loaded.groups.changed.insert("g1".into());
        loaded.users.cookie = b"c3".to_vec();
        store.save_snapshot(Some(&loaded)).unwrap();
        let again = store.load_snapshot().unwrap().unwrap();
        assert_eq!(again.users.entries.len(), 2);
        assert!(again.groups.entries.is_empty());
        assert_eq!(again.users.cookie, b"c3");

        store.save_snapshot(None).unwrap();
        assert!(store.load_snapshot().unwrap().is_none());
    }

    #[test]
    fn a_value_equal_to_the_key_is_stored_inline() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let uuid = "0f3a6c1e-5b7d-4e2a-9c8f-1d2e3f4a5b6c";
        let dn = "uid=alice,ou=People,dc=example,dc=com";
        let alice = entry(dn, &[("entryuuid", &[uuid]), ("uid", &["alice"])]);
        let snapshot = Snapshot {
            identity: "i".into(),
            users: scope(&[(uuid, alice)], b"c1"),
            groups: scope(&[], b"c2"),
        };
        store.save_snapshot(Some(&snapshot)).unwrap();
        let strings: Vec<Vec<u8>> = store
            .conn
            .prepare("SELECT value FROM snapshot_strings")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(strings, [dn.as_bytes()], "the DN only, not the entryUUID");
        let loaded = store.load_snapshot().unwrap().unwrap();
        assert_eq!(loaded.users.entries, snapshot.users.entries);
    }

    /// A state file written by the schema before this one (strings with a UNIQUE index, ledger
    /// users with a rowid and a lookup index) upgrades and reads back the same snapshot and
    /// ledger; writing continues from the ids it holds.
    #[test]
    fn the_migration_keeps_the_snapshot_and_the_ledger() {
        use crate::model::{GroupSpec, MemberRef, User};
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        // The schema before this file's compaction (the ninth migration).
        let (path, conn) = super::super::state_file_at_version(dir.path(), 8);
        let uuid = "0f3a6c1e-5b7d-4e2a-9c8f-1d2e3f4a5b6c";
        let alice_dn = "uid=alice,ou=People,dc=example,dc=com";
        let group_dn = "cn=g,ou=Groups,dc=example,dc=com";
        // What the previous version wrote: alice's entryUUID interned (string 3).
        let mut user_blob = Vec::new();
        for n in [2, 9] {
            put(&mut user_blob, n);
        }
        user_blob.extend_from_slice(b"entryuuid");
        for n in [1, (3 << 1) | 1, 3] {
            put(&mut user_blob, n);
        }
        user_blob.extend_from_slice(b"uid");
        for n in [1, 5 << 1] {
            put(&mut user_blob, n);
        }
        user_blob.extend_from_slice(b"alice");
        let mut group_blob = Vec::new();
        for n in [1, 6] {
            put(&mut group_blob, n);
        }
        group_blob.extend_from_slice(b"member");
        for n in [1, (1 << 1) | 1] {
            put(&mut group_blob, n);
        }
        conn.execute_batch(
            "INSERT INTO snapshot_source (id, identity, users_cookie, groups_cookie, read_at)
               VALUES (1, 'ident', x'6331', x'6332', 'now');
             INSERT INTO ledger_groups (sink, source_id, target_id, name, dn, updated_at, members, member_count)
               VALUES ('s', 'g1', 'T1', 'one', 'cn=one', 'now', x'0000000500000009', 2),
                      ('s', 'g2', 'T2', 'two', 'cn=two', 'now', x'00000007', 1);
             INSERT INTO ledger_users (id, sink, user_source_id, username, email, dn, target_id) VALUES
               (5, 's', 'a', 'alice', 'a@x', 'uid=alice', 'TA'),
               (7, 's', 'a', 'alice', 'a@x', 'uid=alice2', 'TA'),
               (9, 's', 'b', 'bob', NULL, 'uid=bob', NULL);",
        )
        .unwrap();
        for (id, value) in [(1, alice_dn), (2, group_dn), (3, uuid)] {
            conn.execute(
                "INSERT INTO snapshot_strings (id, value) VALUES (?1, ?2)",
                params![id, value.as_bytes()],
            )
            .unwrap();
        }
        for (scope, key, dn, blob) in [(USERS, uuid, 1, &user_blob), (GROUPS, "g1", 2, &group_blob)]
        {
            conn.execute(
                "INSERT INTO snapshot_entries (scope, key, dn, attrs) VALUES (?1, ?2, ?3, ?4)",
                params![scope, key, dn, blob],
            )
            .unwrap();
        }
        drop(conn);

        let mut store = Store::open(&path).unwrap();
        let expected = Snapshot {
            identity: "ident".into(),
            users: ScopeSnapshot {
                cookie: b"c1".to_vec(),
                entries: [(
                    uuid.to_string(),
                    entry(alice_dn, &[("entryuuid", &[uuid]), ("uid", &["alice"])]),
                )]
                .into(),
                ..ScopeSnapshot::default()
            },
            groups: ScopeSnapshot {
                cookie: b"c2".to_vec(),
                entries: [(
                    "g1".to_string(),
                    entry(group_dn, &[("member", &[alice_dn])]),
                )]
                .into(),
                ..ScopeSnapshot::default()
            },
        };
        assert_eq!(store.load_snapshot().unwrap().unwrap(), expected);
        let ledger = store.load_ledger("s").unwrap();
        let g1 = &ledger.groups["g1"];
        assert_eq!(g1.target_id.as_deref(), Some("T1"));
        assert_eq!(g1.members.len(), 2);
        assert_eq!(g1.members["a"].dn, "uid=alice");
        assert_eq!(g1.members["a"].target_id.as_deref(), Some("TA"));
        assert_eq!(g1.members["b"].email, None);
        assert_eq!(ledger.groups["g2"].members["a"].dn, "uid=alice2");

        // Writing goes on: a new user gets an id after the stored ones, a known one its row.
        let carol = MemberRef {
            user: Arc::new(User::for_test("c", "carol")),
            target_id: None,
        };
        store
            .record_members_added("s", "g2", std::slice::from_ref(&carol))
            .unwrap();
        let g2 = store.conn.query_row(
            "SELECT members FROM ledger_groups WHERE sink = 's' AND source_id = 'g2'",
            [],
            |r| r.get::<_, Vec<u8>>(0),
        );
        assert_eq!(g2.unwrap(), [0, 0, 0, 7, 0, 0, 0, 10]);
        store
            .record_group("s", &GroupSpec::for_test("g3", "g3"), "T3")
            .unwrap();
        store
            .record_members_added("s", "g3", std::slice::from_ref(&carol))
            .unwrap();
        let users: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM ledger_users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 4, "carol is stored once");
        // A full read of the same directory stores the entryUUID inline and drops it as a
        // string; the snapshot reads back the same.
        let mut full = expected.clone();
        for s in [&mut full.users, &mut full.groups] {
            s.replaced = true;
        }
        store.save_snapshot(Some(&full)).unwrap();
        let strings: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM snapshot_strings", [], |r| r.get(0))
            .unwrap();
        assert_eq!(strings, 2, "the two DNs");
        assert_eq!(store.load_snapshot().unwrap().unwrap(), expected);
    }

    proptest::proptest! {
        /// The state file is outside data too: any blob unpacks or is refused, never a panic.
        #[test]
        fn any_blob_unpacks_or_is_refused(blob in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let strings: HashMap<i64, Vec<u8>> = [(0, b"dn".to_vec()), (1, b"x".to_vec())].into_iter().collect();
            let _ = unpack(0, &blob, &strings);
        }
    }

    #[test]
    fn damaged_blobs_are_rejected_not_panicked_on() {
        let strings: HashMap<i64, Vec<u8>> = [(1, b"dn".to_vec())].into_iter().collect();
        assert!(unpack(1, &[0], &strings).is_some());
        for blob in [
            &[][..],
            &[1],
            &[1, 200],
            &[1, 1, b'a', 1, 5],
            &[1, 1, b'a', 1, 9],
            &[0xff; 12],
        ] {
            assert!(unpack(1, blob, &strings).is_none(), "{blob:?}");
        }
        assert!(unpack(2, &[0], &strings).is_none(), "unknown DN id");
    }
}
