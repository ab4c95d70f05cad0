//! The state file (SQLite): versioned migrations, the directory snapshot, one ledger per sink, cursors and run history.
//!
//! This is the only module that touches SQLite. The file is locked (flock) for the lifetime of
//! the process that opened it, so a second `sync` or `daemon` fails fast. Writes are batched:
//! one transaction per recorded operation or chunk, one for the whole snapshot.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

mod members;
mod quiet;
mod snapshot;

use crate::ledger::{Ledger, LedgerGroup, LedgerWriteError, LedgerWriter, Origin, OwnedUser};
use crate::model::{GroupSpec, MemberRef, Summary, Unmapped, User, UserMapping};

const MIGRATIONS: &[M<'static>] = &[
    M::up(
        r#"
CREATE TABLE snapshot_scope (
    scope TEXT PRIMARY KEY,
    entries INTEGER NOT NULL,
    source TEXT NOT NULL,
    read_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE snapshot_users (
    id TEXT PRIMARY KEY, dn TEXT NOT NULL, username TEXT NOT NULL, email TEXT
) WITHOUT ROWID;
CREATE TABLE snapshot_groups (
    id TEXT PRIMARY KEY, dn TEXT NOT NULL, name TEXT NOT NULL, description TEXT
) WITHOUT ROWID;
CREATE TABLE snapshot_members (
    group_id TEXT NOT NULL, user_id TEXT NOT NULL, PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE TABLE ledger_groups (
    sink TEXT NOT NULL,
    source_id TEXT NOT NULL,
    target_id TEXT,
    name TEXT NOT NULL,
    description TEXT,
    dn TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (sink, source_id)
) WITHOUT ROWID;
CREATE TABLE ledger_members (
    sink TEXT NOT NULL,
    group_source_id TEXT NOT NULL,
    user_source_id TEXT NOT NULL,
    username TEXT NOT NULL,
    email TEXT,
    dn TEXT NOT NULL,
    target_id TEXT,
    PRIMARY KEY (sink, group_source_id, user_source_id)
) WITHOUT ROWID;
CREATE TABLE sink_cursors (
    sink TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    mode TEXT NOT NULL,
    result TEXT,
    error TEXT
);
CREATE TABLE run_sinks (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    sink TEXT NOT NULL,
    result TEXT NOT NULL,
    planned TEXT NOT NULL,
    applied TEXT NOT NULL,
    failed INTEGER NOT NULL,
    unmapped INTEGER NOT NULL,
    error TEXT,
    PRIMARY KEY (run_id, sink)
);
"#,
    ),
    // The full snapshot was written on every run and never read; only the scope counts are.
    M::up("DROP TABLE snapshot_users; DROP TABLE snapshot_groups; DROP TABLE snapshot_members;"),
    // `ldapsync ledger`: how and when each group entered the ledger, and each sink run's
    // unmapped members by group (JSON). Rows from before stay NULL ("unknown").
    M::up(
        "ALTER TABLE ledger_groups ADD COLUMN origin TEXT;
         ALTER TABLE ledger_groups ADD COLUMN recorded_at TEXT;
         ALTER TABLE run_sinks ADD COLUMN unmapped_members TEXT;",
    ),
    // Each sink's user map (source user → target user, and the lookup key it was found by): a
    // cache of lookups, so a run looks up only the users it has not found before.
    M::up(
        r#"
CREATE TABLE user_map (
    sink TEXT NOT NULL,
    user_source_id TEXT NOT NULL,
    match_key TEXT NOT NULL,
    target_id TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (sink, user_source_id)
) WITHOUT ROWID;
"#,
    ),
    // When each sink was last fully reconciled (`sync --full` read and repaired its target).
    M::up(
        "CREATE TABLE sink_reconciles (sink TEXT PRIMARY KEY, reconciled_at TEXT NOT NULL) WITHOUT ROWID;",
    ),
    // The target users each sink created (`provision_users`): the only users it may deactivate.
    M::up(
        r#"
CREATE TABLE owned_users (
    sink TEXT NOT NULL,
    user_source_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    username TEXT NOT NULL,
    email TEXT,
    dn TEXT NOT NULL,
    active INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (sink, user_source_id)
) WITHOUT ROWID;
"#,
    ),
    // The compact directory snapshot incremental reads refresh (store/snapshot.rs).
    M::up(
        r#"
CREATE TABLE snapshot_source (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    identity TEXT NOT NULL,
    users_cookie BLOB NOT NULL,
    groups_cookie BLOB NOT NULL,
    read_at TEXT NOT NULL
);
CREATE TABLE snapshot_strings (id INTEGER PRIMARY KEY, value BLOB NOT NULL UNIQUE);
CREATE TABLE snapshot_entries (
    scope INTEGER NOT NULL, key TEXT NOT NULL, dn INTEGER NOT NULL, attrs BLOB NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
"#,
    ),
    // What a run that finds nothing changed relies on (store/quiet.rs): the configuration each
    // run ran under and the entries it read;
    // and the compact ledger (store/members.rs): each membership was a row repeating the user's
    // name, e-mail and DN; now each group holds its members as one blob of ids (4 bytes each,
    // big-endian) into `ledger_users`, where each distinct recorded user is stored once.
    M::up(
        r#"
ALTER TABLE runs ADD COLUMN config_fingerprint TEXT;
ALTER TABLE runs ADD COLUMN read_users INTEGER;
ALTER TABLE runs ADD COLUMN read_groups INTEGER;
CREATE TABLE ledger_users (
    id INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    user_source_id TEXT NOT NULL,
    username TEXT NOT NULL,
    email TEXT,
    dn TEXT NOT NULL,
    target_id TEXT
);
CREATE INDEX ledger_users_by_source ON ledger_users (sink, user_source_id);
ALTER TABLE ledger_groups ADD COLUMN members BLOB;
ALTER TABLE ledger_groups ADD COLUMN member_count INTEGER NOT NULL DEFAULT 0;
INSERT INTO ledger_users (sink, user_source_id, username, email, dn, target_id)
    SELECT DISTINCT sink, user_source_id, username, email, dn, target_id FROM ledger_members;
UPDATE ledger_groups SET (members, member_count) = (
    SELECT unhex(group_concat(printf('%08X', u.id), '' ORDER BY u.id)), COUNT(*)
    FROM ledger_members m JOIN ledger_users u
      ON u.sink = m.sink AND u.user_source_id = m.user_source_id AND u.username = m.username
         AND u.email IS m.email AND u.dn = m.dn AND u.target_id IS m.target_id
    WHERE m.sink = ledger_groups.sink AND m.group_source_id = ledger_groups.source_id
);
DROP TABLE ledger_members;
"#,
    ),
    // A smaller file (store/snapshot.rs, store/members.rs): interned strings lose their UNIQUE
    // index (a save finds existing ids in memory, and only this process writes), and
    // `ledger_users` is keyed by (sink, user source id) itself, so it needs no separate lookup
    // index; its ids (what member blobs hold) are handed out from `ledger_user_ids`. Ids,
    // blobs and every row are copied unchanged.
    M::up(
        r#"
CREATE TABLE snapshot_strings_new (id INTEGER PRIMARY KEY, value BLOB NOT NULL);
INSERT INTO snapshot_strings_new (id, value) SELECT id, value FROM snapshot_strings;
DROP TABLE snapshot_strings;
ALTER TABLE snapshot_strings_new RENAME TO snapshot_strings;
CREATE TABLE ledger_users_new (
    sink TEXT NOT NULL,
    user_source_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    username TEXT NOT NULL,
    email TEXT,
    dn TEXT NOT NULL,
    target_id TEXT,
    PRIMARY KEY (sink, user_source_id, id)
) WITHOUT ROWID;
INSERT INTO ledger_users_new (sink, user_source_id, id, username, email, dn, target_id)
    SELECT sink, user_source_id, id, username, email, dn, target_id FROM ledger_users;
CREATE TABLE ledger_user_ids (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
INSERT INTO ledger_user_ids (id, last) SELECT 1, COALESCE(MAX(id), 0) FROM ledger_users;
DROP TABLE ledger_users;
ALTER TABLE ledger_users_new RENAME TO ledger_users;
"#,
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state file {path} is in use by another ldapsync process (a running daemon or sync); only one may use it at a time"
    )]
    Locked { path: String },
    #[error("state file {path}: {message}")]
    Open { path: String, message: String },
    #[error("state file {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// How a sink fared in one run, as recorded in the history.
#[derive(Debug, Clone)]
pub struct SinkRunRecord {
    pub sink: String,
    pub result: String,
    pub planned: Summary,
    pub applied: Summary,
    pub failed: u64,
    pub unmapped: u64,
    pub error: Option<String>,
    /// Per group, the members that had no user in the target.
    pub unmapped_members: Vec<Unmapped>,
}

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub mode: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub sinks: Vec<SinkRunRecord>,
}

#[derive(Debug, Clone)]
pub struct LedgerCounts {
    pub sink: String,
    pub groups: u64,
    pub pending_creates: u64,
    pub memberships: u64,
    pub cursor_updated_at: Option<String>,
    /// When a full reconcile (`sync --full`) last succeeded for the sink.
    pub full_reconciled_at: Option<String>,
}

/// One group of a sink's ledger as `ldapsync ledger` shows it.
#[derive(Debug, Clone)]
pub struct LedgerEntry {
    pub source_id: String,
    pub name: String,
    /// `None` while the create is unconfirmed (a pending intent).
    pub target_id: Option<String>,
    /// `created`, `adopted`, or `None` when recorded by a version that did not keep it.
    pub origin: Option<String>,
    pub recorded_at: Option<String>,
    pub updated_at: String,
    pub members: u64,
}

/// What one sink's ledger holds, and the unmapped members of its last run.
#[derive(Debug, Clone)]
pub struct LedgerListing {
    pub sink: String,
    pub groups: Vec<LedgerEntry>,
    pub unmapped: Vec<Unmapped>,
}

/// Counts of the last complete read of a scope, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRecord {
    pub entries: u64,
    pub source: String,
}

pub struct Store {
    // Field order matters: the connection must close before the lock file descriptor.
    conn: Connection,
    _lock: File,
    path: PathBuf,
    /// The tables `quick_check` found intact since this open (each is checked once).
    checked: RefCell<BTreeSet<&'static str>>,
}

/// The tables every open reads (the run history, the scope counts, the snapshot's cookies and
/// the sinks' cursors): checked when the file is opened.
const HISTORY_TABLES: &[&str] = &[
    "runs",
    "run_sinks",
    "snapshot_scope",
    "snapshot_source",
    "sink_cursors",
    "sink_reconciles",
];
/// The directory snapshot: checked before it is loaded or replaced.
const SNAPSHOT_TABLES: &[&str] = &["snapshot_strings", "snapshot_entries"];
/// The sinks' ledgers: checked before one is loaded, listed, counted or written.
const LEDGER_TABLES: &[&str] = &[
    "ledger_groups",
    "ledger_users",
    "ledger_user_ids",
    "user_map",
    "owned_users",
];

fn damaged(shown: &str, what: &str) -> StoreError {
    StoreError::Open {
        path: shown.to_string(),
        message: format!(
            "the file is damaged ({what}); restore it from a backup, or move it away to rebuild the ledgers with `sync --full`"
        ),
    }
}

/// SQLite's `quick_check`, of the whole file (`table` `None`) or of one table and its indexes.
fn quick_check(conn: &Connection, shown: &str, table: Option<&str>) -> Result<(), StoreError> {
    let sql = match table {
        Some(table) => format!("PRAGMA quick_check({table})"),
        None => "PRAGMA quick_check".to_string(),
    };
    let problems: Vec<String> = conn
        .prepare(&sql)
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(|e| damaged(shown, &e.to_string()))?;
    match problems.iter().find(|p| *p != "ok") {
        Some(first) => Err(damaged(shown, &format!("integrity check: {first}"))),
        None => Ok(()),
    }
}

/// The checks every open makes, writer or reader: the schema is not newer than this ldapsync
/// knows (`user_version`), and what every open reads is intact (`PRAGMA quick_check` of the
/// history tables; of the whole file when a migration is due, since migrations rewrite tables).
/// The snapshot and the ledgers are checked when first read ([`Store::check_tables`]), so a run
/// that loads neither does not pay for reading every page of a large file.
fn check_readable(conn: &Connection, shown: &str) -> Result<(), StoreError> {
    let fail = |message: String| StoreError::Open {
        path: shown.to_string(),
        message,
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| fail(format!("cannot read the schema version: {e}")))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(fail(format!(
            "the schema version is {version}, newer than this ldapsync knows ({}): a newer ldapsync wrote this file. Run that version, or restore a state file written by this one",
            MIGRATIONS.len()
        )));
    }
    if version < MIGRATIONS.len() as i64 {
        return quick_check(conn, shown, None);
    }
    for table in HISTORY_TABLES {
        quick_check(conn, shown, Some(table))?;
    }
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Opens (creating if needed) and migrates the state file, holding it exclusively.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: shown.clone(),
                message: format!("cannot create directory {}: {e}", parent.display()),
            })?;
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        lock_exclusive(&lock, &shown)?;
        let mut conn = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        })?;
        let sql = |source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        };
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        check_readable(&conn, &shown)?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                message: format!("schema migration failed: {e}"),
            })?;
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Store {
            conn,
            _lock: lock,
            path: path.to_path_buf(),
            checked: RefCell::default(),
        };
        // This process holds the lock: a run still "running" belongs to a process that died.
        let closed = store.close_unfinished_runs(
            "interrupted: the process ended during the run (killed, crashed or power lost); found when the state file was next opened",
        )?;
        if closed > 0 {
            tracing::warn!(
                runs = closed,
                "the run history showed runs still running from a process that died; marked them interrupted"
            );
        }
        Ok(store)
    }

    /// Closes every run the history still shows as running as `interrupted`, with `reason`.
    pub fn close_unfinished_runs(&mut self, reason: &str) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?1, result = 'interrupted', error = ?2 WHERE result IS NULL",
                params![now(), reason],
            )
            .map_err(self.err())
    }

    /// Opens an existing state file to read it without writing (`sync --dry-run`, `status`,
    /// `ledger`), also while another process (a running daemon) owns it: no lock is taken, and
    /// SQLite's WAL gives each query a consistent view. Returns `None` when the file does not
    /// exist yet.
    pub fn open_read_only(path: &Path) -> Result<Option<Store>, StoreError> {
        let shown = path.display().to_string();
        let lock = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Open {
                    path: shown,
                    message: e.to_string(),
                });
            }
        };
        if lock.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| StoreError::Sqlite {
                path: shown.clone(),
                source,
            },
        )?;
        check_readable(&conn, &shown)?;
        let store = Store {
            conn,
            _lock: lock,
            path: path.to_path_buf(),
            checked: RefCell::default(),
        };
        let pending = Migrations::from_slice(MIGRATIONS)
            .pending_migrations(&store.conn)
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        if pending > 0 {
            return Err(StoreError::Open {
                path: shown,
                message:
                    "the schema is older than this ldapsync; run a real sync once to migrate it"
                        .into(),
            });
        }
        Ok(Some(store))
    }

    /// Checks `tables` (and their indexes) with `quick_check` before this process first reads
    /// them: a damaged page is refused before anything is planned from it or written next to it.
    fn check_tables(&self, tables: &[&'static str]) -> Result<(), StoreError> {
        for table in tables {
            if self.checked.borrow().contains(table) {
                continue;
            }
            quick_check(&self.conn, &self.path.display().to_string(), Some(table))?;
            self.checked.borrow_mut().insert(table);
        }
        Ok(())
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Runs `write` in one transaction; errors name the state file.
    fn in_transaction(
        &mut self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), StoreError> {
        let conn = &mut self.conn;
        let result = (|| {
            let tx = conn.transaction()?;
            write(&tx)?;
            tx.commit()
        })();
        result.map_err(|source| StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// Everything recorded for one sink.
    pub fn load_ledger(&self, sink: &str) -> Result<Ledger, StoreError> {
        self.check_tables(LEDGER_TABLES)?;
        let err = self.err();
        // Users are interned: a user in a hundred groups is loaded once.
        let users = self.ledger_users(sink)?;
        let mut groups: BTreeMap<String, LedgerGroup> = BTreeMap::new();
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT source_id, target_id, name, description, dn, members FROM ledger_groups WHERE sink = ?1",
            )
            .map_err(&err)?;
        let mut rows = statement.query([sink]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let mut group = LedgerGroup {
                source_id: row.get(0).map_err(&err)?,
                target_id: row.get(1).map_err(&err)?,
                name: row.get(2).map_err(&err)?,
                description: row.get(3).map_err(&err)?,
                dn: row.get(4).map_err(&err)?,
                members: BTreeMap::new(),
            };
            let blob = row
                .get_ref(5)
                .map_err(&err)?
                .as_blob_or_null()
                .ok()
                .flatten();
            for id in members::unpack(blob.unwrap_or_default()) {
                if let Some((key, member)) = users.get(&id) {
                    group.members.insert(Arc::clone(key), member.clone());
                }
            }
            groups.insert(group.source_id.clone(), group);
        }
        let cursor = self
            .conn
            .query_row(
                "SELECT cursor FROM sink_cursors WHERE sink = ?1",
                [sink],
                |row| row.get(0),
            )
            .optional()
            .map_err(&err)?;
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT user_source_id, match_key, target_id FROM user_map WHERE sink = ?1",
            )
            .map_err(&err)?;
        let users = statement
            .query_map([sink], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    UserMapping {
                        key: row.get(1)?,
                        target_id: row.get(2)?,
                    },
                ))
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT user_source_id, target_id, username, email, dn, active FROM owned_users WHERE sink = ?1",
            )
            .map_err(&err)?;
        let owned_users = statement
            .query_map([sink], |row| {
                let source_id: String = row.get(0)?;
                Ok((
                    source_id.clone(),
                    OwnedUser {
                        user: Arc::new(User {
                            source_id,
                            username: row.get(2)?,
                            email: row.get(3)?,
                            dn: row.get(4)?,
                        }),
                        target_id: row.get(1)?,
                        active: row.get::<_, i64>(5)? != 0,
                    },
                ))
            })
            .map_err(&err)?
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        Ok(Ledger {
            groups,
            cursor,
            users,
            owned_users,
        })
    }

    /// Records a target user the sink created (active).
    pub fn record_user_created(
        &self,
        sink: &str,
        user: &MemberRef,
        target_id: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO owned_users (sink, user_source_id, target_id, username, email, dn, active, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7) ON CONFLICT (sink, user_source_id) DO UPDATE SET
                 target_id = excluded.target_id, username = excluded.username, email = excluded.email,
                 dn = excluded.dn, active = 1, updated_at = excluded.updated_at",
                params![sink, user.source_id, target_id, user.username, user.email, user.dn, now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records that a user the sink created was deactivated (`active` false) or reactivated.
    pub fn record_user_active(
        &self,
        sink: &str,
        source_id: &str,
        active: bool,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE owned_users SET active = ?3, updated_at = ?4 WHERE sink = ?1 AND user_source_id = ?2",
                params![sink, source_id, active, now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Adds or replaces entries of a sink's user map, in one transaction.
    pub fn record_users(
        &mut self,
        sink: &str,
        users: &BTreeMap<String, UserMapping>,
    ) -> Result<(), StoreError> {
        let at = now();
        self.in_transaction(|tx| {
            {
                let mut statement = tx.prepare_cached(
                    "INSERT INTO user_map (sink, user_source_id, match_key, target_id, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sink, user_source_id) DO UPDATE SET
                     match_key = excluded.match_key, target_id = excluded.target_id, updated_at = excluded.updated_at",
                )?;
                for (source_id, mapping) in users {
                    statement.execute(params![sink, source_id, mapping.key, mapping.target_id, at])?;
                }
            }
            Ok(())
        })
    }

    /// Records that a create is about to be sent (docs/safety.md rule 4), unless the group is recorded already.
    pub fn record_intent(&self, sink: &str, group: &GroupSpec) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO ledger_groups (sink, source_id, target_id, name, description, dn, updated_at)
                 VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6) ON CONFLICT (sink, source_id) DO NOTHING",
                params![sink, group.source_id, group.name, group.description, group.dn, now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records a group as present in the target with `target_id` and the spec's attributes.
    pub fn record_group(
        &self,
        sink: &str,
        group: &GroupSpec,
        target_id: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO ledger_groups (sink, source_id, target_id, name, description, dn, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (sink, source_id) DO UPDATE SET target_id = excluded.target_id,
                   name = excluded.name, description = excluded.description, dn = excluded.dn,
                   updated_at = excluded.updated_at",
                params![sink, group.source_id, target_id, group.name, group.description, group.dn, now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records how a group entered the ledger (created or adopted) and when.
    pub fn record_origin(
        &self,
        sink: &str,
        source_id: &str,
        origin: Origin,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE ledger_groups SET origin = ?3, recorded_at = ?4 WHERE sink = ?1 AND source_id = ?2",
                params![sink, source_id, origin.as_str(), now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Forgets a group (and its members) after it was deleted in the target.
    pub fn record_deleted(&mut self, sink: &str, source_id: &str) -> Result<(), StoreError> {
        self.in_transaction(|tx| {
            tx.execute(
                "DELETE FROM ledger_groups WHERE sink = ?1 AND source_id = ?2",
                params![sink, source_id],
            )?;
            Ok(())
        })
    }

    /// Records that a full reconcile of `sink` succeeded now, and drops the ledger users no
    /// group refers to any more (the reconcile rewrote every group).
    pub fn set_reconciled(&self, sink: &str) -> Result<(), StoreError> {
        let pruned = self.prune_ledger_users(sink)?;
        if pruned > 0 {
            tracing::debug!(sink, pruned, "dropped ledger users no group refers to");
        }
        self.conn
            .execute(
                "INSERT INTO sink_reconciles (sink, reconciled_at) VALUES (?1, ?2)
                 ON CONFLICT (sink) DO UPDATE SET reconciled_at = excluded.reconciled_at",
                params![sink, now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Stores a sink's cursor/token; called only after its whole plan was applied.
    pub fn set_cursor(&self, sink: &str, cursor: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO sink_cursors (sink, cursor, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sink) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                params![sink, cursor, now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The last complete read of a scope (`users` / `groups`).
    pub fn scope(&self, scope: &str) -> Result<Option<ScopeRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT entries, source FROM snapshot_scope WHERE scope = ?1",
                [scope],
                |row| {
                    Ok(ScopeRecord {
                        entries: row.get::<_, i64>(0)? as u64,
                        source: row.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(self.err())
    }

    /// Remembers how many entries each scope (`users`, `groups`) held at a complete read, and
    /// from where (the empty-scope rule compares the next read with it).
    pub fn record_scopes(
        &mut self,
        scopes: &[(&str, u64)],
        source: &str,
    ) -> Result<(), StoreError> {
        self.in_transaction(|tx| {
            let mut scope = tx.prepare_cached(
                "INSERT INTO snapshot_scope (scope, entries, source, read_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope) DO UPDATE SET entries = excluded.entries, source = excluded.source,
                   read_at = excluded.read_at",
            )?;
            let read_at = now();
            for (name, entries) in scopes {
                scope.execute(params![name, *entries as i64, source, read_at])?;
            }
            Ok(())
        })
    }

    /// The ledger writer of one sink, for its [`LedgerWriter`] records during an apply.
    pub fn ledger_writer<'a>(&'a mut self, sink: &str) -> SinkLedgerWriter<'a> {
        SinkLedgerWriter {
            store: self,
            sink: sink.to_string(),
        }
    }

    /// Starts a run in the history and returns its id.
    pub fn begin_run(&self, mode: &str) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO runs (started_at, mode) VALUES (?1, ?2)",
                params![now(), mode],
            )
            .map_err(self.err())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Closes a run with its overall result and per-sink records.
    pub fn finish_run(
        &mut self,
        run_id: i64,
        result: &str,
        error: Option<&str>,
        sinks: &[SinkRunRecord],
    ) -> Result<(), StoreError> {
        self.in_transaction(|tx| {
            tx.execute(
                "UPDATE runs SET finished_at = ?2, result = ?3, error = ?4 WHERE id = ?1",
                params![run_id, now(), result, error],
            )
            ?;
            for s in sinks {
                tx.execute(
                    "INSERT OR REPLACE INTO run_sinks (run_id, sink, result, planned, applied, failed, unmapped, error, unmapped_members)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        run_id,
                        s.sink,
                        s.result,
                        serde_json::to_string(&s.planned).unwrap_or_default(),
                        serde_json::to_string(&s.applied).unwrap_or_default(),
                        s.failed as i64,
                        s.unmapped as i64,
                        s.error,
                        serde_json::to_string(&s.unmapped_members).unwrap_or_default()
                    ],
                )
                ?;
            }
            Ok(())
        })?;
        self.truncate_wal();
        Ok(())
    }

    /// Moves the write-ahead log into the file and truncates it, once a run is recorded: a full
    /// read writes the whole snapshot in one transaction, and the WAL would otherwise keep that
    /// size on disk until the next checkpoint. Best effort: a reader beside a daemon (`status`)
    /// can make it wait for the next run.
    fn truncate_wal(&self) {
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        if let Err(e) = result {
            tracing::debug!(error = %e, "the state file's WAL was not truncated");
        }
    }

    /// The most recent runs, newest first.
    pub fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let err = self.err();
        let mut statement = self
            .conn
            .prepare("SELECT id, started_at, finished_at, mode, result, error FROM runs ORDER BY id DESC LIMIT ?1")
            .map_err(&err)?;
        let runs = statement
            .query_map([limit as i64], |row| {
                Ok(RunRecord {
                    id: row.get(0)?,
                    started_at: row.get(1)?,
                    finished_at: row.get(2)?,
                    mode: row.get(3)?,
                    result: row.get(4)?,
                    error: row.get(5)?,
                    sinks: Vec::new(),
                })
            })
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)?;
        let mut statement = self
            .conn
            .prepare(
                "SELECT sink, result, planned, applied, failed, unmapped, error FROM run_sinks WHERE run_id = ?1 ORDER BY sink",
            )
            .map_err(&err)?;
        let mut out = Vec::with_capacity(runs.len());
        for mut run in runs {
            run.sinks = statement
                .query_map([run.id], |row| {
                    let planned: String = row.get(2)?;
                    let applied: String = row.get(3)?;
                    Ok(SinkRunRecord {
                        sink: row.get(0)?,
                        result: row.get(1)?,
                        planned: parse_summary(&planned),
                        applied: parse_summary(&applied),
                        failed: row.get::<_, i64>(4)? as u64,
                        unmapped: row.get::<_, i64>(5)? as u64,
                        error: row.get(6)?,
                        unmapped_members: Vec::new(),
                    })
                })
                .map_err(&err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            out.push(run);
        }
        Ok(out)
    }

    /// What the ledgers of `sinks` (every sink with a ledger or a run when empty) hold, group
    /// by group, with the unmapped members of each sink's latest recorded run.
    pub fn ledger_listing(&self, sinks: &[String]) -> Result<Vec<LedgerListing>, StoreError> {
        self.check_tables(LEDGER_TABLES)?;
        let err = self.err();
        let names: Vec<String> = if sinks.is_empty() {
            self.ledger_counts()?.into_iter().map(|c| c.sink).collect()
        } else {
            sinks.to_vec()
        };
        let mut groups = self
            .conn
            .prepare(
                "SELECT g.source_id, g.name, g.target_id, g.origin, g.recorded_at, g.updated_at,
                   g.member_count
                 FROM ledger_groups g WHERE g.sink = ?1 ORDER BY g.name, g.source_id",
            )
            .map_err(&err)?;
        let mut listing = Vec::with_capacity(names.len());
        for sink in names {
            let entries = groups
                .query_map([&sink], |row| {
                    Ok(LedgerEntry {
                        source_id: row.get(0)?,
                        name: row.get(1)?,
                        target_id: row.get(2)?,
                        origin: row.get(3)?,
                        recorded_at: row.get(4)?,
                        updated_at: row.get(5)?,
                        members: row.get::<_, i64>(6)? as u64,
                    })
                })
                .map_err(&err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&err)?;
            let unmapped: Option<String> = self
                .conn
                .query_row(
                    "SELECT s.unmapped_members FROM run_sinks s JOIN runs r ON r.id = s.run_id
                     WHERE s.sink = ?1 AND r.mode != 'dry-run' AND s.unmapped_members IS NOT NULL
                     ORDER BY s.run_id DESC LIMIT 1",
                    [&sink],
                    |row| row.get(0),
                )
                .optional()
                .map_err(&err)?;
            listing.push(LedgerListing {
                sink,
                groups: entries,
                unmapped: unmapped
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default(),
            });
        }
        Ok(listing)
    }

    /// Per-sink ledger sizes and cursor times.
    pub fn ledger_counts(&self) -> Result<Vec<LedgerCounts>, StoreError> {
        self.check_tables(&["ledger_groups"])?;
        let err = self.err();
        let mut statement = self
            .conn
            .prepare(
                "SELECT s.sink,
                   (SELECT COUNT(*) FROM ledger_groups g WHERE g.sink = s.sink AND g.target_id IS NOT NULL),
                   (SELECT COUNT(*) FROM ledger_groups g WHERE g.sink = s.sink AND g.target_id IS NULL),
                   (SELECT IFNULL(SUM(member_count), 0) FROM ledger_groups g WHERE g.sink = s.sink),
                   (SELECT updated_at FROM sink_cursors c WHERE c.sink = s.sink),
                   (SELECT reconciled_at FROM sink_reconciles r WHERE r.sink = s.sink)
                 FROM (SELECT sink FROM ledger_groups UNION SELECT sink FROM sink_cursors
                       UNION SELECT sink FROM run_sinks) s ORDER BY s.sink",
            )
            .map_err(&err)?;
        statement
            .query_map([], |row| {
                Ok(LedgerCounts {
                    sink: row.get(0)?,
                    groups: row.get::<_, i64>(1)? as u64,
                    pending_creates: row.get::<_, i64>(2)? as u64,
                    memberships: row.get::<_, i64>(3)? as u64,
                    cursor_updated_at: row.get(4)?,
                    full_reconciled_at: row.get(5)?,
                })
            })
            .map_err(&err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(&err)
    }
}

/// One sink's ledger in the state file, as a [`LedgerWriter`].
pub struct SinkLedgerWriter<'a> {
    store: &'a mut Store,
    sink: String,
}

impl From<StoreError> for LedgerWriteError {
    fn from(error: StoreError) -> Self {
        LedgerWriteError(Box::new(error))
    }
}

impl LedgerWriter for SinkLedgerWriter<'_> {
    fn record_intent(&mut self, group: &GroupSpec) -> Result<(), LedgerWriteError> {
        Ok(self.store.record_intent(&self.sink, group)?)
    }
    fn record_group(&mut self, group: &GroupSpec, target_id: &str) -> Result<(), LedgerWriteError> {
        Ok(self.store.record_group(&self.sink, group, target_id)?)
    }
    fn record_deleted(&mut self, source_id: &str) -> Result<(), LedgerWriteError> {
        Ok(self.store.record_deleted(&self.sink, source_id)?)
    }
    fn record_origin(&mut self, source_id: &str, origin: Origin) -> Result<(), LedgerWriteError> {
        Ok(self.store.record_origin(&self.sink, source_id, origin)?)
    }
    fn record_members_added(
        &mut self,
        group_source_id: &str,
        members: &[MemberRef],
    ) -> Result<(), LedgerWriteError> {
        Ok(self
            .store
            .record_members_added(&self.sink, group_source_id, members)?)
    }
    fn record_members_removed(
        &mut self,
        group_source_id: &str,
        user_source_ids: &[&str],
    ) -> Result<(), LedgerWriteError> {
        Ok(self
            .store
            .record_members_removed(&self.sink, group_source_id, user_source_ids)?)
    }
    fn record_user_created(
        &mut self,
        user: &MemberRef,
        target_id: &str,
    ) -> Result<(), LedgerWriteError> {
        Ok(self
            .store
            .record_user_created(&self.sink, user, target_id)?)
    }
    fn record_user_active(
        &mut self,
        source_id: &str,
        active: bool,
    ) -> Result<(), LedgerWriteError> {
        Ok(self
            .store
            .record_user_active(&self.sink, source_id, active)?)
    }
}

fn parse_summary(text: &str) -> Summary {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Stored {
        create: u64,
        update: u64,
        delete: u64,
        member_add: u64,
        member_remove: u64,
        adopt: u64,
        unmapped: u64,
        user_create: u64,
        user_deactivate: u64,
        user_reactivate: u64,
    }
    let s: Stored = serde_json::from_str(text).unwrap_or_default();
    Summary {
        create: s.create,
        update: s.update,
        delete: s.delete,
        member_add: s.member_add,
        member_remove: s.member_remove,
        adopt: s.adopt,
        unmapped: s.unmapped,
        user_create: s.user_create,
        user_deactivate: s.user_deactivate,
        user_reactivate: s.user_reactivate,
    }
}

fn lock_exclusive(file: &File, shown: &str) -> Result<(), StoreError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path: shown.into() }),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Open {
            path: shown.into(),
            message: format!("cannot lock: {e}"),
        }),
    }
}

/// A state file in `dir` migrated up to schema `version` only (what an older ldapsync wrote),
/// and a plain connection to fill it; migration tests then open it with [`Store::open`].
#[cfg(test)]
fn state_file_at_version(dir: &Path, version: usize) -> (PathBuf, Connection) {
    let path = dir.join("state.db");
    let mut conn = Connection::open(&path).unwrap();
    Migrations::from_slice(MIGRATIONS)
        .to_version(&mut conn, version)
        .unwrap();
    (path, conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, name: &str) -> GroupSpec {
        GroupSpec::for_test(id, name)
    }

    #[test]
    fn ledger_round_trip_and_intents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut store = Store::open(&path).unwrap();
        store.record_intent("s", &spec("g1", "a")).unwrap();
        assert_eq!(store.load_ledger("s").unwrap().groups["g1"].target_id, None);
        store.record_group("s", &spec("g1", "a"), "T1").unwrap();
        store.record_intent("s", &spec("g1", "a")).unwrap();
        let member = MemberRef {
            user: std::sync::Arc::new(crate::model::User {
                source_id: "u1".into(),
                username: "alice".into(),
                email: None,
                dn: "uid=alice".into(),
            }),
            target_id: Some("TU1".into()),
        };
        store.record_members_added("s", "g1", &[member]).unwrap();
        let ledger = store.load_ledger("s").unwrap();
        assert_eq!(ledger.groups["g1"].target_id.as_deref(), Some("T1"));
        assert_eq!(
            ledger.groups["g1"].members["u1"].target_id.as_deref(),
            Some("TU1")
        );
        assert!(store.load_ledger("other").unwrap().groups.is_empty());
        store.record_members_removed("s", "g1", &["u1"]).unwrap();
        store.set_cursor("s", "tok").unwrap();
        let ledger = store.load_ledger("s").unwrap();
        assert!(ledger.groups["g1"].members.is_empty());
        assert_eq!(ledger.cursor.as_deref(), Some("tok"));
        store.record_deleted("s", "g1").unwrap();
        assert!(store.load_ledger("s").unwrap().groups.is_empty());
    }

    /// A state file with a ledger (a group with a member), a snapshot and a run; its path.
    fn state_with_everything(dir: &Path) -> PathBuf {
        use crate::source::RawEntry;
        use crate::source::incremental::{ScopeSnapshot, Snapshot};
        let path = dir.join("state.db");
        let mut store = Store::open(&path).unwrap();
        store.record_group("s", &spec("g1", "a"), "T1").unwrap();
        let member = MemberRef {
            user: Arc::new(User::for_test("u1", "alice")),
            target_id: Some("TU1".into()),
        };
        store
            .record_members_added("s", "g1", std::slice::from_ref(&member))
            .unwrap();
        store.record_user_created("s", &member, "TU1").unwrap();
        let mapping = UserMapping {
            key: "userName=alice".into(),
            target_id: "TU1".into(),
        };
        store
            .record_users("s", &[("u1".to_string(), mapping)].into())
            .unwrap();
        let scope = |dn: &str| ScopeSnapshot {
            cookie: b"c".to_vec(),
            entries: [(
                "k".to_string(),
                RawEntry::for_test(
                    dn,
                    &[("member", &["uid=alice,ou=People,dc=example,dc=com"])],
                ),
            )]
            .into(),
            replaced: true,
            ..ScopeSnapshot::default()
        };
        let snapshot = Snapshot {
            identity: "i".into(),
            users: scope("uid=alice,ou=People,dc=example,dc=com"),
            groups: scope("cn=a,ou=Groups,dc=example,dc=com"),
        };
        store.save_snapshot(Some(&snapshot)).unwrap();
        let run = store.begin_run("sync").unwrap();
        store.finish_run(run, "success", None, &[]).unwrap();
        path
    }

    /// Overwrites the root page of `table` (which holds all of its rows in a small file).
    fn garble_root_page(path: &Path, table: &str) {
        let root: i64 = Connection::open(path)
            .unwrap()
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = ?1",
                [table],
                |row| row.get(0),
            )
            .unwrap();
        let mut bytes = std::fs::read(path).unwrap();
        let start = (root as usize - 1) * 4096;
        for byte in &mut bytes[start..start + 3000] {
            *byte = 0xA5;
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn each_table_is_checked_before_it_is_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let pristine = std::fs::read(state_with_everything(dir.path())).unwrap();
        let path = dir.path().join("state.db");
        let is_damaged = |result: Result<(), StoreError>, what: &str| match result {
            Err(e) => assert!(e.to_string().contains("the file is damaged"), "{what}: {e}"),
            Ok(()) => panic!("{what}: a damaged table was read without an error"),
        };
        // The history is checked on every open, writer or reader.
        garble_root_page(&path, "runs");
        is_damaged(Store::open(&path).map(drop), "open, runs damaged");
        is_damaged(
            Store::open_read_only(&path).map(drop),
            "read-only open, runs damaged",
        );
        for table in ["ledger_groups", "ledger_users", "user_map", "owned_users"] {
            std::fs::write(&path, &pristine).unwrap();
            garble_root_page(&path, table);
            // Opening, and what does not read the ledgers, still work: a no-change run never
            // pays for checking what it does not read.
            let store = Store::open(&path).unwrap();
            assert!(store.load_snapshot().unwrap().is_some(), "{table}");
            is_damaged(store.load_ledger("s").map(drop), table);
            is_damaged(store.load_ledger("s").map(drop), "a second load");
            is_damaged(store.ledger_listing(&[]).map(drop), table);
        }
        std::fs::write(&path, &pristine).unwrap();
        garble_root_page(&path, "ledger_groups");
        let store = Store::open_read_only(&path).unwrap().unwrap();
        is_damaged(store.quiet_basis(&["s"], "f").map(drop), "quiet basis");
        is_damaged(store.ledger_counts().map(drop), "counts");
        for table in ["snapshot_entries", "snapshot_strings"] {
            std::fs::write(&path, &pristine).unwrap();
            garble_root_page(&path, table);
            let mut store = Store::open(&path).unwrap();
            assert_eq!(store.load_ledger("s").unwrap().groups.len(), 1, "{table}");
            is_damaged(store.load_snapshot().map(drop), table);
            is_damaged(store.save_snapshot(None), table);
        }
        // An intact file passes every check; the open checked the history, the loads the rest.
        std::fs::write(&path, &pristine).unwrap();
        let store = Store::open(&path).unwrap();
        assert!(store.checked.borrow().is_empty());
        store.load_ledger("s").unwrap();
        store.load_snapshot().unwrap();
        assert_eq!(
            store.checked.borrow().len(),
            LEDGER_TABLES.len() + SNAPSHOT_TABLES.len()
        );
    }

    #[test]
    fn the_user_map_is_kept_per_sink_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let mapping = |key: &str, id: &str| UserMapping {
            key: key.into(),
            target_id: id.into(),
        };
        let mut users = BTreeMap::new();
        users.insert("u1".to_string(), mapping("userName=alice", "T1"));
        users.insert("u2".to_string(), mapping("userName=bob", "T2"));
        store.record_users("s", &users).unwrap();
        let mut again = BTreeMap::new();
        again.insert("u2".to_string(), mapping("userName=robert", "T3"));
        store.record_users("s", &again).unwrap();
        let ledger = store.load_ledger("s").unwrap();
        assert_eq!(ledger.users.len(), 2);
        assert_eq!(ledger.users["u1"], mapping("userName=alice", "T1"));
        assert_eq!(ledger.users["u2"], mapping("userName=robert", "T3"));
        assert!(store.load_ledger("other").unwrap().users.is_empty());
    }

    #[test]
    fn a_second_open_fails_fast_and_read_only_sees_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        assert!(Store::open_read_only(&path).unwrap().is_none());
        let first = Store::open(&path).unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("in use by another ldapsync process")
        );
        // Readers work beside the owner, and see what it records.
        first.record_group("s", &spec("g1", "a"), "T1").unwrap();
        first.record_origin("s", "g1", Origin::Adopted).unwrap();
        let reader = Store::open_read_only(&path).unwrap().unwrap();
        let listing = reader.ledger_listing(&[]).unwrap();
        assert_eq!(listing[0].sink, "s");
        let entry = &listing[0].groups[0];
        assert_eq!(
            (
                entry.target_id.as_deref(),
                entry.origin.as_deref(),
                entry.members
            ),
            (Some("T1"), Some("adopted"), 0)
        );
    }

    #[test]
    fn runs_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let id = store.begin_run("sync").unwrap();
        let record = SinkRunRecord {
            sink: "s".into(),
            result: "success".into(),
            planned: Summary {
                create: 2,
                ..Summary::default()
            },
            applied: Summary::default(),
            failed: 0,
            unmapped: 1,
            error: None,
            unmapped_members: Vec::new(),
        };
        store.finish_run(id, "success", None, &[record]).unwrap();
        let runs = store.recent_runs(5).unwrap();
        assert_eq!(runs[0].sinks[0].planned.create, 2);
        assert_eq!(store.ledger_counts().unwrap()[0].sink, "s");
    }
}
