//! Incremental reads against a real OpenLDAP slapd with the `syncprov` overlay: RFC 4533
//! refreshOnly with the cookie and snapshot stored in the state file. An incremental run must
//! give what a full read gives, and anything it cannot vouch for must fall back to a full read
//! or fail, never delete.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const FILTERS: &str = "[groups]\nfilter = \"(objectClass=groupOfNames)\"\n";

/// A slapd with three users and two groups, and a config syncing it into a file sink.
struct World {
    slapd: Slapd,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl World {
    fn new() -> World {
        let slapd = Slapd::start();
        let alice = slapd.add_user("alice", "alice@example.com");
        let bob = slapd.add_user("bob", "bob@example.com");
        let carol = slapd.add_user("carol", "carol@example.com");
        slapd.add_group("eng", &[&alice, &bob]);
        slapd.add_group("ops", &[&carol]);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let world = World { slapd, dir, config };
        world.write_config("");
        world
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Writes the config; `ldap_extra` is appended to `[ldap]` (e.g. `incremental = "off"`).
    fn write_config(&self, ldap_extra: &str) {
        let base = ldap_config_toml(&self.slapd, &self.state());
        let text = base
            .replacen("\n\n[groups]\n", &format!("\n{ldap_extra}\n\n{FILTERS}"), 1)
            .replacen(
                "[users]\n",
                "[users]\nfilter = \"(objectClass=inetOrgPerson)\"\n",
                1,
            );
        let sink = file_sink_toml("audit", &self.dir.path().join("audit.jsonl"));
        let text = format!("{text}\n{LENIENT_SAFETY}\n{sink}");
        std::fs::write(&self.config, text).unwrap();
    }

    /// `sync ARGS… --output json`, asserting the exit code; the JSON report.
    fn sync(&self, args: &[&str], code: i32) -> Value {
        let out = sync(&self.config, &[args, &["--output", "json"]].concat());
        assert_code(&out, code);
        serde_json::from_str(&out.stdout_str())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.describe()))
    }
}

fn operations(report: &Value) -> Vec<(String, String, Vec<String>)> {
    let operations = planned_operations(report).into_iter();
    operations.map(|o| (o.op, o.group, o.members)).collect()
}

#[test]
fn incremental_runs_read_only_changes_and_match_a_full_read() {
    let w = World::new();
    let slapd = &w.slapd;
    let first = w.sync(&[], 0);
    assert_eq!(read_mode(&first), "full", "no snapshot yet: {first}");
    assert_eq!(first["read"]["users"], 3);
    assert_eq!(operations(&first).len(), 4, "{first}"); // 2 creates, 2 member_adds

    // Nothing changed: an incremental read that reads nothing.
    let quiet = w.sync(&[], 0);
    assert_eq!(read_mode(&quiet), "incremental", "{quiet}");
    assert_eq!(quiet["read"]["changes"], 0, "{quiet}");
    assert_eq!(read_counts(&quiet), (3, 2));
    assert!(operations(&quiet).is_empty(), "{quiet}");

    // Adds, modifications, a rename, a membership removal and deletions.
    let people = slapd.people_dn();
    let groups = slapd.groups_dn();
    let dave = slapd.add_user("dave", "dave@example.com");
    let eng = format!("cn=eng,{groups}");
    slapd.add_member(&eng, &dave);
    slapd.remove_member(&eng, &format!("uid=bob,{people}"));
    slapd.modify(&format!(
        "dn: uid=alice,{people}\nchangetype: modify\nreplace: mail\nmail: alice@new.example.com\n"
    ));
    slapd.rename(&format!("cn=ops,{groups}"), "cn=operations");
    slapd.delete(&[&format!("uid=bob,{people}")]);
    slapd.add_group("data", &[&format!("uid=carol,{people}")]);

    let changed = w.sync(&[], 0);
    assert_eq!(read_mode(&changed), "incremental", "{changed}");
    assert_eq!(changed["read"]["users"], 3, "alice, carol, dave: {changed}");
    assert_eq!(changed["read"]["groups"], 3, "{changed}");
    let mut ops = operations(&changed);
    ops.sort();
    assert_eq!(
        ops,
        vec![
            ("create".into(), "data".into(), vec![]),
            ("member_add".into(), "data".into(), vec!["carol".into()]),
            ("member_add".into(), "eng".into(), vec!["dave".into()]),
            ("member_remove".into(), "eng".into(), vec!["bob".into()]),
            ("update".into(), "operations".into(), vec![]),
        ],
        "{changed}"
    );
    let incremental = snapshot_dump(&w.state());
    assert_eq!(incremental.len(), 6, "{incremental:?}");

    // A full read of the same directory stores the same snapshot and plans nothing.
    let full = w.sync(&["--full"], 0);
    assert_eq!(read_mode(&full), "full", "{full}");
    assert!(operations(&full).is_empty(), "{full}");
    assert_eq!(snapshot_dump(&w.state()), incremental);

    // The text header says how the directory was read.
    let text = sync(&w.config, &[]);
    assert_code(&text, 0);
    assert!(
        text.stdout_str()
            .starts_with("Sync: read 3 users and 3 groups in ")
            && text
                .stdout_str()
                .contains("s (incremental read: 0 changed entries)"),
        "{}",
        text.describe()
    );

    // A dry run reads incrementally too and writes nothing.
    let before = std::fs::read(w.state()).unwrap();
    let dry = w.sync(&["--dry-run"], 0);
    assert_eq!(read_mode(&dry), "incremental", "{dry}");
    assert_eq!(std::fs::read(w.state()).unwrap(), before);
}

#[test]
fn incremental_reads_fall_back_to_full_reads_and_never_delete_on_doubt() {
    let w = World::new();
    let slapd = &w.slapd;
    assert_eq!(read_mode(&w.sync(&[], 0)), "full");

    // `incremental = "off"`, then a changed filter: full reads (the snapshot is pinned).
    w.write_config("incremental = \"off\"");
    assert_eq!(read_mode(&w.sync(&[], 0)), "full");
    assert!(
        snapshot_dump(&w.state()).is_empty(),
        "off forgets the snapshot"
    );
    w.write_config("");
    assert_eq!(read_mode(&w.sync(&[], 0)), "full");
    assert_eq!(read_mode(&w.sync(&[], 0)), "incremental");
    std::fs::write(
        &w.config,
        std::fs::read_to_string(&w.config).unwrap().replace(
            "(objectClass=groupOfNames)",
            "(&(objectClass=groupOfNames)(cn=*))",
        ),
    )
    .unwrap();
    assert_eq!(read_mode(&w.sync(&[], 0)), "full", "the filter changed");
    assert_eq!(read_mode(&w.sync(&[], 0)), "incremental");

    // A cookie the server rejects (newer than its own state, as after restoring the server
    // from a backup): the run reads in full and ends with the directory's true state.
    let db = rusqlite::Connection::open(w.state()).unwrap();
    db.execute(
        "UPDATE snapshot_source SET groups_cookie = CAST('rid=000,csn=29991231000000.000000Z#000000#000#000000' AS BLOB)",
        [],
    )
    .unwrap();
    drop(db);
    let groups = slapd.groups_dn();
    slapd.delete(&[&format!("cn=ops,{groups}")]);
    let after_bad_cookie = w.sync(&[], 0);
    assert_eq!(read_mode(&after_bad_cookie), "full", "{after_bad_cookie}");
    let ops = operations(&after_bad_cookie);
    assert_eq!(ops.len(), 1, "{after_bad_cookie}");
    assert_eq!(ops[0].0, "delete", "{after_bad_cookie}");
    assert!(operations(&w.sync(&["--dry-run", "--full"], 0)).is_empty());

    // Every group deleted: the incremental result would empty the scope, so the run reads in
    // full, which finds zero groups while the ledger holds one: exit 1, nothing deleted.
    slapd.delete(&[&format!("cn=eng,{groups}")]);
    let emptied = w.sync(&[], 1);
    assert!(
        emptied["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no entries"),
        "{emptied}"
    );
    let audit = std::fs::read_to_string(w.dir.path().join("audit.jsonl")).unwrap();
    let deletes = audit
        .lines()
        .filter(|l| l.contains("\"op\":\"delete\""))
        .count();
    assert_eq!(deletes, 1, "only ops was deleted:\n{audit}");
    // The snapshot did not move: the next run still sees the change, and refuses it again.
    assert_eq!(
        snapshot_dump(&w.state())
            .keys()
            .filter(|(scope, _)| *scope == 1)
            .count(),
        1
    );
    w.sync(&[], 1);
}

/// Replaces every stored snapshot entry with bytes no reader accepts; returns what was there.
fn damage_snapshot(state: &Path) -> Vec<(i64, String, Vec<u8>)> {
    let db = rusqlite::Connection::open(state).unwrap();
    let saved: Vec<(i64, String, Vec<u8>)> = db
        .prepare("SELECT scope, key, attrs FROM snapshot_entries")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    db.execute("UPDATE snapshot_entries SET attrs = X'FFFFFFFF'", [])
        .unwrap();
    saved
}

fn restore_snapshot(state: &Path, saved: &[(i64, String, Vec<u8>)]) {
    let db = rusqlite::Connection::open(state).unwrap();
    for (scope, key, attrs) in saved {
        db.execute(
            "UPDATE snapshot_entries SET attrs = ?3 WHERE scope = ?1 AND key = ?2",
            rusqlite::params![scope, key, attrs],
        )
        .unwrap();
    }
}

#[test]
fn a_no_change_run_loads_nothing_and_a_change_or_a_failed_run_is_never_skipped() {
    let w = World::new();
    let slapd = &w.slapd;
    assert_eq!(operations(&w.sync(&[], 0)).len(), 4);
    // The last run planned something: this one reads and plans as usual (and finds nothing).
    let settled = w.sync(&[], 0);
    assert_eq!(
        (read_mode(&settled), settled["read"]["changes"].as_u64()),
        ("incremental", Some(0))
    );
    assert!(operations(&settled).is_empty(), "{settled}");

    // Nothing changed and the last run had nothing to do: the run does not even load the
    // snapshot (a damaged one would have made it read in full), and reports the same shape.
    let saved = damage_snapshot(&w.state());
    let quiet = w.sync(&[], 0);
    assert_eq!(read_mode(&quiet), "incremental", "{quiet}");
    assert_eq!(quiet["read"]["changes"], 0, "{quiet}");
    assert_eq!(
        (
            quiet["read"]["users"].clone(),
            quiet["read"]["groups"].clone()
        ),
        (3.into(), 2.into())
    );
    assert_eq!(quiet["sinks"][0]["result"], "success", "{quiet}");
    assert!(operations(&quiet).is_empty(), "{quiet}");
    // `--full` never takes it: the damaged snapshot is replaced by a full read.
    let full = w.sync(&["--full"], 0);
    assert_eq!(read_mode(&full), "full", "{full}");
    assert!(operations(&full).is_empty(), "{full}");
    restore_snapshot(&w.state(), &saved); // (a no-op for the keys --full rewrote)

    // A change in the directory is read and applied at the next run.
    let people = slapd.people_dn();
    let eng = format!("cn=eng,{}", slapd.groups_dn());
    slapd.add_member(&eng, &format!("uid=carol,{people}"));
    let changed = w.sync(&[], 0);
    assert_eq!(read_mode(&changed), "incremental", "{changed}");
    assert_eq!(
        operations(&changed),
        vec![("member_add".into(), "eng".into(), vec!["carol".into()])],
        "{changed}"
    );
    assert!(operations(&w.sync(&[], 0)).is_empty());

    // A sink run that fails: the snapshot and its cookie moved on, but the next run must not
    // take the fast path; it plans the change again and applies it.
    slapd.remove_member(&eng, &format!("uid=carol,{people}"));
    let audit = w.dir.path().join("audit.jsonl");
    let kept = std::fs::read(&audit).unwrap();
    std::fs::remove_file(&audit).unwrap();
    std::fs::create_dir(&audit).unwrap();
    let failed = w.sync(&[], 1);
    assert_eq!(failed["sinks"][0]["result"], "failed", "{failed}");
    std::fs::remove_dir(&audit).unwrap();
    std::fs::write(&audit, kept).unwrap();
    let retried = w.sync(&[], 0);
    assert_eq!(retried["read"]["changes"], 0, "{retried}");
    assert_eq!(
        operations(&retried),
        vec![("member_remove".into(), "eng".into(), vec!["carol".into()])],
        "{retried}"
    );
}
