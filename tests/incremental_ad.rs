//! Incremental reads against a real Samba AD DC: `uSNChanged` polling pinned to the DC's
//! invocationId, with the snapshot in the state file. An incremental run must store what a full
//! read stores after adds, membership changes, renames, moves, deletions and an entry leaving
//! the filter; a cursor from another DC or from the future must give a full read.
//!
//! Provisioning a DC takes seconds, so everything runs in one test on one DC.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;
use serde_json::Value;

/// Users, not computer accounts (in AD, `computer` is a subclass of `user`).
const AD_USERS: &str = "(&(objectClass=user)(!(objectClass=computer)))";
/// Groups, except retired ones: a group given that description leaves the scope.
const AD_GROUPS: &str = "(&(objectClass=group)(!(description=retired)))";

struct World {
    dc: SambaDc,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl World {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// `sync ARGS… --output json`, asserting the exit code; the JSON report and stderr.
    fn sync(&self, args: &[&str], code: i32) -> (Value, String) {
        let out = sync(&self.config, &[args, &["--output", "json"]].concat());
        assert_code(&out, code);
        let report = serde_json::from_str(&out.stdout_str())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.describe()));
        (report, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Rewrites the stored AD cursor (`adusn1:<invocationId>:<usn>:<time>`) with `edit`.
    fn tamper_cursor(&self, edit: impl Fn(&mut Vec<String>)) {
        let db = rusqlite::Connection::open(self.state()).unwrap();
        let cookie: Vec<u8> = db
            .query_row("SELECT users_cookie FROM snapshot_source", [], |r| r.get(0))
            .unwrap();
        let mut parts: Vec<String> = String::from_utf8(cookie)
            .unwrap()
            .split(':')
            .map(String::from)
            .collect();
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert_eq!(parts[0], "adusn1");
        edit(&mut parts);
        let cookie = parts.join(":").into_bytes();
        db.execute(
            "UPDATE snapshot_source SET users_cookie = ?1, groups_cookie = ?1",
            [cookie],
        )
        .unwrap();
    }
}

/// The planned operations, one (op, group, member) per member ("" for none).
fn operations(report: &Value) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for op in report["sinks"][0]["operations"].as_array().unwrap() {
        let kind = op["op"].as_str().unwrap().to_string();
        let group = op["group"].as_str().unwrap().to_string();
        let members: Vec<String> = op["members"]
            .as_array()
            .map(|m| m.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        if members.is_empty() {
            set.insert((kind.clone(), group.clone(), String::new()));
        }
        for member in members {
            set.insert((kind.clone(), group.clone(), member));
        }
    }
    set
}

fn op(kind: &str, group: &str, member: &str) -> (String, String, String) {
    (kind.into(), group.into(), member.into())
}

#[test]
fn ad_incremental_runs_follow_every_change_and_match_a_full_read() {
    let dc = SambaDc::start();
    let inc = dc.add_ou("Inc");
    let elsewhere = dc.add_ou("Elsewhere");
    let people = format!("OU=People,{inc}");
    let teams = format!("OU=Teams,{inc}");
    dc.add(&format!(
        "dn: {people}\nobjectClass: organizationalUnit\n\ndn: {teams}\nobjectClass: organizationalUnit\n"
    ));
    let [alice, bob, carol, erin] = dc
        .add_users(&people, &["alice", "bob", "carol", "erin"])
        .try_into()
        .unwrap();
    // Members outside the users base: not users of the sync, but DNs in groups.
    let [frank, gina, hank] = dc
        .add_users(&elsewhere, &["frank", "gina", "hank"])
        .try_into()
        .unwrap();
    let eng = dc.add_group(&teams, "eng", &[&alice, &bob, &erin, &frank]);
    let ops = dc.add_group(&teams, "ops", &[&carol]);
    let qa = dc.add_group(&teams, "qa", &[&bob]);
    let old = dc.add_group(&teams, "old", &[&alice]);
    // Groups that are never written: only their members are renamed or deleted (one way each).
    dc.add_group(&teams, "ext", &[&frank]);
    dc.add_group(&teams, "far", &[&gina]);
    dc.add_group(&teams, "edge", &[&hank]);
    dc.add_group(&teams, "support", &[&alice, &bob]);

    // Deletions are followed through tombstones, and a bind DN that lists none cannot be told
    // from one that may not see them: the domain needs one deletion before reads go incremental.
    let [tmp] = dc.add_users(&elsewhere, &["tmp"]).try_into().unwrap();
    dc.delete(&[&tmp]);

    let dir = tempfile::tempdir().unwrap();
    let (state, audit) = (dir.path().join("state.db"), dir.path().join("audit.jsonl"));
    let scopes = ((teams.as_str(), AD_GROUPS), (people.as_str(), AD_USERS));
    let ad = ad_config_toml(&dc, &dc.ldaps_url(), &state, scopes.0, scopes.1);
    let sink = file_sink_toml("audit", &audit);
    let config = write_file(
        dir.path(),
        "config.toml",
        format!("{ad}\n{LENIENT_SAFETY}\n{sink}"),
    );
    let w = World { dc, dir, config };
    let dc = &w.dc;

    let (first, _) = w.sync(&[], 0);
    assert_eq!(read_mode(&first), "full", "no snapshot yet: {first}");
    assert_eq!(read_counts(&first), (4, 8), "{first}");
    assert!(
        operations(&first).contains(&op("member_add", "eng", "erin")),
        "{first}"
    );

    // Nothing changed in the scopes: an incremental read that changes nothing.
    let (quiet, _) = w.sync(&[], 0);
    assert_eq!(read_mode(&quiet), "incremental", "{quiet}");
    assert_eq!(quiet["read"]["changes"], 0, "{quiet}");
    assert_eq!(read_counts(&quiet), (4, 8));
    assert!(operations(&quiet).is_empty(), "{quiet}");

    // Adds, a modification, membership changes, renames and moves (AD rewrites the member
    // values of groups without changing their uSNChanged), deletions (AD drops the deleted
    // member from groups, again without a uSNChanged), a group leaving the filter.
    let [dave] = dc.add_users(&people, &["dave"]).try_into().unwrap();
    dc.add_member(&eng, &dave);
    dc.remove_member(&eng, &bob);
    dc.modify(&format!(
        "dn: {alice}\nchangetype: modify\nreplace: mail\nmail: alice@new.example.com\n"
    ));
    dc.rename(&carol, "CN=caroline");
    dc.rename(&frank, "CN=franklin");
    dc.delete(&[&bob, &gina]);
    // Renamed, deleted (its tombstone knows only the new name), and its old DN taken by a new
    // entry: edge's stored member value now names another object.
    dc.rename(&hank, "CN=hank2");
    dc.delete(&[&format!("CN=hank2,{elsewhere}")]);
    dc.add_users(&elsewhere, &["hank"]);
    dc.modify(&format!(
        "dn: {erin}\nchangetype: modrdn\nnewrdn: CN=erin\ndeleteoldrdn: 1\nnewsuperior: {elsewhere}\n"
    ));
    dc.rename(&ops, "CN=operations");
    dc.modify(&format!(
        "dn: {qa}\nchangetype: modify\nreplace: description\ndescription: retired\n"
    ));
    dc.delete(&[&old]);
    dc.add_group(&teams, "data", &[&format!("CN=caroline,{people}")]);
    // The server's own view, independently of ldapsync: eng names the renamed member by its new DN.
    let eng_members = dc.search(&eng, "base", "(objectClass=*)", &["member"]);
    assert!(eng_members.contains("CN=franklin,"), "{eng_members}");

    let (changed, _) = w.sync(&[], 0);
    assert_eq!(read_mode(&changed), "incremental", "{changed}");
    assert_eq!(
        read_counts(&changed),
        (3, 7),
        "alice, caroline, dave; eng, operations, data, ext, far, edge, support: {changed}"
    );
    assert!(
        changed["read"]["changes"].as_u64().unwrap() > 0,
        "{changed}"
    );
    let planned = operations(&changed);
    for expected in [
        op("create", "data", ""),
        op("member_add", "data", "carol"),
        op("member_add", "eng", "dave"),
        op("member_remove", "eng", "bob"),
        op("member_remove", "eng", "erin"),
        op("member_remove", "support", "bob"),
        op("delete", "qa", ""),
        op("delete", "old", ""),
    ] {
        assert!(planned.contains(&expected), "{expected:?} in {changed}");
    }
    let incremental = snapshot_dump(&w.state());
    assert_eq!(incremental.len(), 10, "{incremental:?}");
    let members = |group: &str| {
        incremental
            .values()
            .find(|(dn, _)| dn.starts_with(&format!("CN={group},")))
            .unwrap_or_else(|| panic!("no {group} in {incremental:?}"))
            .1
            .get("member")
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        members("operations"),
        vec![format!("CN=caroline,{people}").into_bytes()],
        "the renamed member's new DN"
    );
    assert_eq!(
        members("ext"),
        vec![format!("CN=franklin,{elsewhere}").into_bytes()],
        "a member renamed outside the scopes"
    );
    assert!(
        members("far").is_empty(),
        "a member deleted outside the scopes"
    );
    assert!(
        members("edge").is_empty(),
        "a member renamed then deleted, its old DN reused"
    );

    // A full read of the same directory stores the same snapshot and plans nothing.
    let (full, _) = w.sync(&["--full"], 0);
    assert_eq!(read_mode(&full), "full", "{full}");
    assert!(operations(&full).is_empty(), "{full}");
    assert_eq!(snapshot_dump(&w.state()), incremental);
    let (again, _) = w.sync(&[], 0);
    assert_eq!(read_mode(&again), "incremental", "{again}");
    assert_eq!(again["read"]["changes"], 0, "{again}");

    // A cursor from another DC (or this one restored: a new invocationId) → a full read.
    w.tamper_cursor(|parts| parts[1] = "00000000-0000-0000-0000-000000000001".into());
    dc.remove_member(&eng, &dave);
    let (other_dc, stderr) = w.sync(&[], 0);
    assert_eq!(read_mode(&other_dc), "full", "{other_dc}");
    assert!(stderr.contains("invocationId"), "{stderr}");
    assert_eq!(
        operations(&other_dc),
        BTreeSet::from([op("member_remove", "eng", "dave")]),
        "{other_dc}"
    );
    assert_eq!(read_mode(&w.sync(&[], 0).0), "incremental");

    // A stored USN above the DC's highestCommittedUSN → a full read.
    w.tamper_cursor(|parts| parts[2] = "999999999".into());
    let (future, stderr) = w.sync(&[], 0);
    assert_eq!(read_mode(&future), "full", "{future}");
    assert!(stderr.contains("highestCommittedUSN"), "{stderr}");
    assert!(operations(&future).is_empty(), "{future}");
    assert_eq!(read_mode(&w.sync(&[], 0).0), "incremental");

    // A filter on memberOf: AD changes it without changing the user's uSNChanged, so such a
    // scope is read in full every time.
    let text = std::fs::read_to_string(&w.config).unwrap().replace(
        AD_USERS,
        &format!("(&{AD_USERS}(!(memberOf=CN=nobody,{teams})))"),
    );
    std::fs::write(&w.config, text).unwrap();
    for _ in 0..2 {
        let (run, _) = w.sync(&[], 0);
        assert_eq!(read_mode(&run), "full", "{run}");
        assert!(operations(&run).is_empty(), "{run}");
    }

    // A bind DN that is not an administrator: Samba shows it CN=Deleted Objects but none of the
    // tombstones in it, so deletions could go unseen and every run reads in full.
    let svc = samba_plain_user(dc, "svc-sync", "Svc-Secret1!");
    let text = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace(
            &format!("(&{AD_USERS}(!(memberOf=CN=nobody,{teams})))"),
            AD_USERS,
        )
        .replace(dc.admin_dn(), &svc)
        .replace(dc.admin_password(), "Svc-Secret1!");
    std::fs::write(&w.config, text).unwrap();
    let (first_plain, _) = w.sync(&[], 0);
    assert_eq!(
        read_mode(&first_plain),
        "full",
        "the bind DN changed: {first_plain}"
    );
    assert!(operations(&first_plain).is_empty(), "{first_plain}");
    let (plain, stderr) = w.sync(&[], 0);
    assert_eq!(read_mode(&plain), "full", "{plain}");
    assert!(stderr.contains("sees no deleted object"), "{stderr}");
    assert!(
        snapshot_dump(&w.state()).is_empty(),
        "no cursor, no snapshot: {stderr}"
    );
}
