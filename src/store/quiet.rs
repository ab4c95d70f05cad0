//! What the no-change fast path of a run reads instead of the snapshot and the ledgers: the last run's basis, the stored cookies, pending intents.
//!
//! A run may skip loading the snapshot and the ledgers only when the state file vouches for
//! them: the last real run succeeded for every sink with nothing planned, applied, failed or
//! unmapped, under the same configuration, and no create is unconfirmed. These are a few indexed
//! queries; anything missing or unexpected answers `None` (the normal path).

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now, parse_summary};
use crate::model::Summary;

/// What the last real run left for a run that finds nothing changed in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietBasis {
    /// Entries the last run read (the report's counts).
    pub users: u64,
    pub groups: u64,
    /// The stored snapshot's identity and cookies.
    pub identity: String,
    pub users_cookie: Vec<u8>,
    pub groups_cookie: Vec<u8>,
}

/// The last real run: id, result, configuration fingerprint, users and groups read.
type LastRun = (
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

impl Store {
    /// Records, with a run, the configuration fingerprint it ran under and the entries it read.
    pub fn set_run_basis(
        &self,
        run_id: i64,
        config_fingerprint: &str,
        users: u64,
        groups: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET config_fingerprint = ?2, read_users = ?3, read_groups = ?4 WHERE id = ?1",
                params![run_id, config_fingerprint, users as i64, groups as i64],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The basis of a no-change run over `sinks` under `config_fingerprint`, when the state file
    /// vouches that such a run has nothing to do; `None` whenever it does not.
    pub fn quiet_basis(
        &self,
        sinks: &[&str],
        config_fingerprint: &str,
    ) -> Result<Option<QuietBasis>, StoreError> {
        // The one ledger table read here (for unconfirmed creates).
        self.check_tables(&["ledger_groups"])?;
        let err = self.err();
        // The last real run (dry runs are not recorded), whatever its mode: an interrupted or
        // crashed one may have applied part of a plan.
        let last: Option<LastRun> = self
            .conn
            .query_row(
                "SELECT id, result, config_fingerprint, read_users, read_groups FROM runs
                 WHERE mode != 'dry-run' ORDER BY id DESC LIMIT 1",
                [],
                |row| row.try_into(),
            )
            .optional()
            .map_err(&err)?;
        let Some((run_id, Some(result), Some(fingerprint), Some(users), Some(groups))) = last
        else {
            return Ok(None);
        };
        if result != "success" || fingerprint != config_fingerprint || sinks.is_empty() {
            return Ok(None);
        }
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT result, planned, applied, failed, unmapped FROM run_sinks WHERE run_id = ?1 AND sink = ?2",
            )
            .map_err(&err)?;
        let mut pending = self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM ledger_groups WHERE sink = ?1 AND target_id IS NULL)",
            )
            .map_err(&err)?;
        for sink in sinks {
            let record: Option<(String, String, String, i64, i64)> = statement
                .query_row(params![run_id, sink], |row| row.try_into())
                .optional()
                .map_err(&err)?;
            let Some((result, planned, applied, failed, unmapped)) = record else {
                return Ok(None);
            };
            let nothing = Summary::default();
            if result != "success"
                || parse_summary(&planned) != nothing
                || parse_summary(&applied) != nothing
                || failed != 0
                || unmapped != 0
            {
                return Ok(None);
            }
            let intents: bool = pending.query_row([sink], |row| row.get(0)).map_err(&err)?;
            if intents {
                return Ok(None);
            }
        }
        let Some((identity, users_cookie, groups_cookie)) = self.snapshot_source()? else {
            return Ok(None);
        };
        Ok(Some(QuietBasis {
            users: users as u64,
            groups: groups as u64,
            identity,
            users_cookie,
            groups_cookie,
        }))
    }

    /// Stores the cookies of a refresh that changed nothing (the snapshot stays as it is, so
    /// the cursor still moves only with it); `None` keeps a scope's cookie.
    pub fn update_snapshot_cookies(
        &self,
        users_cookie: Option<&[u8]>,
        groups_cookie: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        if users_cookie.is_none() && groups_cookie.is_none() {
            return Ok(());
        }
        self.conn
            .execute(
                "UPDATE snapshot_source SET users_cookie = COALESCE(?1, users_cookie),
                   groups_cookie = COALESCE(?2, groups_cookie), read_at = ?3 WHERE id = 1",
                params![users_cookie, groups_cookie, now()],
            )
            .map_err(self.err())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SinkRunRecord;

    fn record(sink: &str, result: &str, planned: Summary) -> SinkRunRecord {
        SinkRunRecord {
            sink: sink.into(),
            result: result.into(),
            planned,
            applied: Summary::default(),
            failed: 0,
            unmapped: 0,
            error: None,
            unmapped_members: Vec::new(),
        }
    }

    fn store_with_snapshot() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .conn
            .execute(
                "INSERT INTO snapshot_source (id, identity, users_cookie, groups_cookie, read_at)
                 VALUES (1, 'ident', X'01', X'02', 'now')",
                [],
            )
            .unwrap();
        (dir, store)
    }

    fn run(store: &mut Store, fingerprint: &str, result: &str, sinks: &[SinkRunRecord]) {
        let id = store.begin_run("sync").unwrap();
        store.set_run_basis(id, fingerprint, 3, 2).unwrap();
        store.finish_run(id, result, None, sinks).unwrap();
    }

    /// A finished run under fingerprint `f` of the one sink `s`.
    fn run_s(store: &mut Store, result: &str, sink_result: &str, planned: Summary) {
        run(store, "f", result, &[record("s", sink_result, planned)]);
    }

    #[test]
    fn only_a_quiet_successful_last_run_under_the_same_config_vouches() {
        let (_dir, mut store) = store_with_snapshot();
        assert_eq!(store.quiet_basis(&["s"], "f").unwrap(), None, "no run yet");
        run_s(&mut store, "success", "success", Summary::default());
        let basis = store.quiet_basis(&["s"], "f").unwrap().unwrap();
        assert_eq!((basis.users, basis.groups), (3, 2));
        assert_eq!(basis.users_cookie, vec![1]);
        assert_eq!(store.quiet_basis(&["s"], "other").unwrap(), None);
        assert_eq!(
            store.quiet_basis(&["s", "t"], "f").unwrap(),
            None,
            "t did not run"
        );

        // Something planned last time, a failure, or a run that never finished: no.
        let planned = Summary {
            member_add: 1,
            ..Summary::default()
        };
        run_s(&mut store, "success", "success", planned);
        assert_eq!(store.quiet_basis(&["s"], "f").unwrap(), None);
        run_s(&mut store, "failure", "failed", Summary::default());
        assert_eq!(store.quiet_basis(&["s"], "f").unwrap(), None);
        run_s(&mut store, "success", "success", Summary::default());
        assert!(store.quiet_basis(&["s"], "f").unwrap().is_some());
        store.begin_run("sync").unwrap();
        assert_eq!(store.quiet_basis(&["s"], "f").unwrap(), None, "unfinished");
        run_s(&mut store, "success", "success", Summary::default());

        // A pending create intent: no.
        store
            .record_intent("s", &crate::model::GroupSpec::for_test("g1", "a"))
            .unwrap();
        assert_eq!(store.quiet_basis(&["s"], "f").unwrap(), None);
        store
            .record_group("s", &crate::model::GroupSpec::for_test("g1", "a"), "T1")
            .unwrap();
        assert!(store.quiet_basis(&["s"], "f").unwrap().is_some());

        store.update_snapshot_cookies(None, Some(&[9])).unwrap();
        let basis = store.quiet_basis(&["s"], "f").unwrap().unwrap();
        assert_eq!(
            (basis.users_cookie, basis.groups_cookie),
            (vec![1], vec![9])
        );
    }
}
