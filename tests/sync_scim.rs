//! End to end: a real slapd → ldapsync → a real scim2-server, through the binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A config for `slapd` → `scim`, written into `dir`.
fn write_config(dir: &Path, slapd: &Slapd, scim: &ScimServer, safety: &str) -> PathBuf {
    let password = format!(
        "bind_password = \"{}\"\npage_size = 50",
        slapd.admin_password()
    );
    let text = format!(
        "{ldap}\n{safety}\n{sink}",
        ldap = ldap_config_toml_with(slapd, &dir.join("state.db"), &password),
        sink = scim.sink_toml(
            &scim.base_url(),
            "user_match = \"userName\"\nmember_chunk_size = 7"
        ),
    );
    write_file(dir, "config.toml", text)
}

/// Group display name → member userNames, as the SCIM server holds them.
/// Panics when two groups share a name.
fn scim_state(scim: &ScimServer) -> BTreeMap<String, BTreeSet<String>> {
    let groups = scim.groups_by_name();
    groups
        .into_iter()
        .map(|(name, mut same_name)| {
            assert_eq!(same_name.len(), 1, "duplicate group {name} in SCIM");
            (name, same_name.remove(0))
        })
        .collect()
}

fn expect(groups: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    groups
        .iter()
        .map(|(g, ms)| (g.to_string(), ms.iter().map(|m| m.to_string()).collect()))
        .collect()
}

fn dry_run_json(config: &Path) -> (i32, Value) {
    let out = sync(config, &["--dry-run", "--output", "json"]);
    let json: Value = serde_json::from_str(&out.stdout_str())
        .unwrap_or_else(|e| panic!("dry-run output is not JSON ({e}):\n{}", out.describe()));
    (out.code(), json)
}

struct World {
    dir: tempfile::TempDir,
    slapd: Slapd,
    scim: ScimServer,
    config: PathBuf,
}

fn world(unique_names: bool, safety: &str, users: &[&str]) -> World {
    World::new(
        Slapd::start(),
        ScimServer::start(unique_names),
        safety,
        users,
    )
}

impl World {
    /// `users` in both slapd and `scim` (mail NAME@example.com), and the config.
    fn new(slapd: Slapd, scim: ScimServer, safety: &str, users: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        for user in users {
            let mail = format!(
                "{}@example.com",
                user.replace(|c: char| !c.is_ascii_alphanumeric(), "x")
            );
            slapd.add_user(user, &mail);
            scim.create_user(user, &mail);
        }
        let config = write_config(dir.path(), &slapd, &scim, safety);
        World {
            dir,
            slapd,
            scim,
            config,
        }
    }

    /// Runs `sync`, expecting success, then checks the SCIM groups and their members.
    fn sync_to(&self, groups: &[(&str, &[&str])]) {
        assert_code(&sync(&self.config, &[]), 0);
        assert_eq!(scim_state(&self.scim), expect(groups));
    }

    /// The ids of the SCIM groups, sorted.
    fn group_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .scim
            .groups()
            .iter()
            .map(|g| g["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }
}

/// Asserts that a dry run succeeds with nothing to do; returns its JSON report.
fn assert_converged(config: &Path) -> Value {
    let (code, plan) = dry_run_json(config);
    assert_eq!(
        (
            code,
            plan["sinks"][0]["operations"].as_array().unwrap().len()
        ),
        (0, 0),
        "{plan}"
    );
    plan
}

fn user_dn(slapd: &Slapd, uid: &str) -> String {
    format!("uid={uid},ou=People,{}", slapd.base_dn())
}

#[test]
fn lifecycle_converges_after_every_change_and_reruns_are_empty() {
    let w = world(true, LENIENT_SAFETY, &["alice", "bob", "carol", "dave"]);
    let (alice, bob, carol) = (
        user_dn(&w.slapd, "alice"),
        user_dn(&w.slapd, "bob"),
        user_dn(&w.slapd, "carol"),
    );
    let eng = w.slapd.add_group("engineering", &[&alice, &bob]);
    w.slapd.add_group("sales", &[&carol]);

    w.sync_to(&[("engineering", &["alice", "bob"]), ("sales", &["carol"])]);

    // No-op rerun: the plan is empty.
    let (code, plan) = dry_run_json(&w.config);
    assert_eq!(code, 0);
    assert_eq!(
        plan["sinks"][0]["summary"],
        serde_json::json!({"create":0,"adopt":0,"update":0,"delete":0,"member_add":0,"member_remove":0,"unmapped":0})
    );
    assert_eq!(plan["sinks"][0]["operations"], serde_json::json!([]));

    // Member add and remove.
    w.slapd.modify(&format!(
        "dn: {eng}\nchangetype: modify\nadd: member\nmember: {carol}\n-\ndelete: member\nmember: {bob}\n"
    ));
    w.sync_to(&[("engineering", &["alice", "carol"]), ("sales", &["carol"])]);

    // Rename (modrdn) keeps the SCIM group id: an update, not delete+create.
    let id_before = w.group_ids();
    w.slapd.rename(&eng, "cn=platform");
    let (_, plan) = dry_run_json(&w.config);
    assert_eq!(plan["sinks"][0]["summary"]["update"], 1, "{plan}");
    assert_eq!(
        plan["sinks"][0]["operations"][0]["previous_name"],
        "engineering"
    );
    w.sync_to(&[("platform", &["alice", "carol"]), ("sales", &["carol"])]);
    assert_eq!(id_before, w.group_ids(), "rename must keep the target ids");

    // Delete a group, add another.
    w.slapd
        .delete(&[&format!("cn=sales,ou=Groups,{}", w.slapd.base_dn())]);
    w.slapd.add_group("support", &[&user_dn(&w.slapd, "dave")]);
    w.sync_to(&[("platform", &["alice", "carol"]), ("support", &["dave"])]);
    assert_converged(&w.config);

    // status reads the history.
    let out = run_ldapsync(&w.config, &["status", "--output", "json"]);
    assert_code(&out, 0);
    let status: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    assert_eq!(status["runs"].as_array().unwrap().len(), 4);
    assert_eq!(status["sinks"][0]["groups"], 2);
    assert_eq!(status["sinks"][0]["memberships"], 3);
}

#[test]
fn mass_delete_is_held_with_exit_3_and_nothing_written_until_allowed() {
    // Default limits, but no floor under the percentages: 3 of 4 groups is a mass delete.
    let w = world(false, "[safety]\npercent_floor = 0\n", &["alice"]);
    let alice = user_dn(&w.slapd, "alice");
    let names = ["g1", "g2", "g3", "g4"];
    for name in names {
        w.slapd.add_group(name, &[&alice]);
    }
    assert_eq!(sync(&w.config, &[]).code(), 0);
    let before = w.scim.groups();
    for name in &names[1..] {
        w.slapd
            .delete(&[&format!("cn={name},ou=Groups,{}", w.slapd.base_dn())]);
    }
    let (code, plan) = dry_run_json(&w.config);
    assert_eq!(
        code, 3,
        "a dry run whose plan would be held exits 3: {plan}"
    );
    assert_eq!(plan["sinks"][0]["held"], true);
    assert_eq!(plan["sinks"][0]["summary"]["delete"], 3);

    let out = sync(&w.config, &[]);
    assert_eq!(out.code(), 3, "{}", out.describe());
    out.assert_stdout_has("HELD");
    assert_eq!(w.scim.groups(), before, "a held run writes nothing");

    let out = sync(&w.config, &["--allow-deletes"]);
    assert_code(&out, 0);
    assert_eq!(scim_state(&w.scim), expect(&[("g1", &["alice"])]));
}

#[test]
fn dry_run_leaves_the_target_and_the_state_file_byte_identical() {
    let w = world(false, LENIENT_SAFETY, &["alice", "bob"]);
    let (alice, bob) = (user_dn(&w.slapd, "alice"), user_dn(&w.slapd, "bob"));
    let g = w.slapd.add_group("ops", &[&alice]);
    // Dry run before any state exists creates no state file.
    let (code, plan) = dry_run_json(&w.config);
    assert_eq!(code, 0);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["sinks"][0]["summary"]["create"], 1);
    assert_eq!(plan["sinks"][0]["operations"][0]["op"], "create");
    assert_eq!(plan["sinks"][0]["operations"][0]["group"], "ops");
    assert!(plan["sinks"][0]["operations"][0]["source_id"].is_string());
    assert!(
        !w.dir.path().join("state.db").exists(),
        "dry run must not create the state file"
    );
    assert!(w.scim.groups().is_empty());

    assert_eq!(sync(&w.config, &[]).code(), 0);
    w.slapd.add_member(&g, &bob);
    let state = std::fs::read(w.dir.path().join("state.db")).unwrap();
    let groups = w.scim.groups();
    let text = sync(&w.config, &["--dry-run"]);
    assert_eq!(text.code(), 0, "{}", text.describe());
    text.assert_stdout_has("+ member_add    ops: bob");
    assert!(text.stdout_str().contains(
        "sink \"scim\" (scim): 0 create, 0 update, 0 delete, 1 member_add, 0 member_remove"
    ));
    assert_eq!(std::fs::read(w.dir.path().join("state.db")).unwrap(), state);
    assert_eq!(w.scim.groups(), groups);
}

#[test]
fn sigkill_during_a_large_initial_sync_then_rerun_converges_without_duplicates() {
    let w = world(false, LENIENT_SAFETY, &["u1", "u2", "u3"]);
    let members: Vec<String> = ["u1", "u2", "u3"]
        .iter()
        .map(|u| user_dn(&w.slapd, u))
        .collect();
    let mut ldif = String::new();
    for i in 0..300 {
        ldif.push_str(&format!(
            "dn: cn=group-{i:03},ou=Groups,{base}\nobjectClass: groupOfNames\ncn: group-{i:03}\nmember: {}\nmember: {}\n\n",
            members[i % 3],
            members[(i + 1) % 3],
            base = w.slapd.base_dn()
        ));
    }
    w.slapd.add(&ldif);

    let mut child = Command::new(ldapsync_bin())
        .arg("--config")
        .arg(&w.config)
        .arg("sync")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "ldapsync to create 40 groups",
        || w.scim.groups().len() >= 40,
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = w.scim.groups().len();
    assert!(
        partial < 300,
        "the sync finished before it could be killed ({partial} groups)"
    );

    let out = sync(&w.config, &[]);
    assert_code(&out, 0);
    let state = scim_state(&w.scim); // panics on duplicate names
    assert_eq!(state.len(), 300);
    for (i, (name, members)) in state.iter().enumerate() {
        assert_eq!(name, &format!("group-{i:03}"));
        let expected: BTreeSet<String> =
            [format!("u{}", i % 3 + 1), format!("u{}", (i + 1) % 3 + 1)].into();
        assert_eq!(members, &expected, "{name}");
    }
    assert_converged(&w.config);
}

#[test]
fn a_name_taken_in_a_unique_target_is_adopted() {
    let w = world(true, LENIENT_SAFETY, &["alice"]);
    let existing = w.scim.create_group("ops", &[]);
    w.slapd.add_group("ops", &[&user_dn(&w.slapd, "alice")]);
    let out = sync(&w.config, &[]);
    assert_code(&out, 0);
    let groups = w.scim.groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["id"], existing.as_str());
    assert_eq!(scim_state(&w.scim), expect(&[("ops", &["alice"])]));
}

#[test]
fn odd_data_escaped_dns_unicode_unknown_members_empty_and_duplicate_groups() {
    let w = world(true, LENIENT_SAFETY, &["jürgen"]);
    let base = w.slapd.base_dn();
    w.slapd.add(&format!(
        "dn: uid=smith\\2C john,ou=People,{base}\nobjectClass: inetOrgPerson\nuid: smith, john\ncn: John Smith\nsn: Smith\n\n\
         dn: ou=Other,ou=Groups,{base}\nobjectClass: organizationalUnit\nou: Other\n"
    ));
    w.scim.create_user("smith, john", "john@example.com");
    w.slapd.add(&format!(
        "dn: cn=Sales\\2C EMEA,ou=Groups,{base}\nobjectClass: groupOfNames\ncn: Sales, EMEA\n\
         member: UID=Smith\\, John,OU=people,DC=example,DC=com\n\
         member: uid=J\\C3\\BCrgen,ou=People,{base}\n\
         member: uid=ghost,ou=People,{base}\n\n\
         dn: cn=Développeurs,ou=Groups,{base}\nobjectClass: groupOfNames\ncn: Développeurs\nmember: uid=jürgen,ou=People,{base}\n\n\
         dn: cn=empty,ou=Groups,{base}\nobjectClass: groupOfNames\ncn: empty\nmember: uid=nobody,ou=People,{base}\n\n\
         dn: cn=dup,ou=Groups,{base}\nobjectClass: groupOfNames\ncn: dup\nmember: uid=jürgen,ou=People,{base}\n\n\
         dn: cn=dup,ou=Other,ou=Groups,{base}\nobjectClass: groupOfNames\ncn: dup\nmember: uid=smith\\2C john,ou=People,{base}\n"
    ));
    let out = sync(&w.config, &[]);
    assert_code(&out, 0);
    let stderr = out.stderr_str();
    assert!(stderr.contains("duplicate group name \"dup\""), "{stderr}");
    assert!(
        stderr.contains("uid=ghost"),
        "unknown members are reported: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        scim_state(&w.scim),
        expect(&[
            ("Développeurs", &["jürgen"]),
            ("Sales, EMEA", &["jürgen", "smith, john"]),
            // cn=dup,ou=Groups sorts before cn=dup,ou=Other,ou=Groups: deterministic choice.
            ("dup", &["jürgen"]),
            ("empty", &[]),
        ])
    );
    let plan = assert_converged(&w.config);
    assert!(plan["warnings"].as_array().unwrap().len() >= 3, "{plan}");
}

#[test]
fn members_missing_in_the_target_are_skipped_counted_and_retried() {
    let w = world(false, LENIENT_SAFETY, &["alice"]);
    w.slapd.add_user("newcomer", "newcomer@example.com"); // not in SCIM yet
    w.slapd.add_group(
        "ops",
        &[&user_dn(&w.slapd, "alice"), &user_dn(&w.slapd, "newcomer")],
    );
    let out = sync(&w.config, &["--output", "json"]);
    assert_code(&out, 0);
    let report: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    // Plans know the target: the member without a target user is listed, not planned.
    assert_eq!(report["sinks"][0]["summary"]["unmapped"], 1, "{report}");
    assert_eq!(
        report["sinks"][0]["unmapped"][0]["members"],
        serde_json::json!(["newcomer"]),
        "{report}"
    );
    assert_eq!(scim_state(&w.scim), expect(&[("ops", &["alice"])]));
    w.scim.create_user("newcomer", "newcomer@example.com");
    assert_eq!(sync(&w.config, &[]).code(), 0);
    assert_eq!(
        scim_state(&w.scim),
        expect(&[("ops", &["alice", "newcomer"])])
    );
}

#[test]
fn an_incomplete_read_fails_every_sink_and_deletes_nothing() {
    let mut w = world(false, LENIENT_SAFETY, &["alice"]);
    let g = w.slapd.add_group("ops", &[&user_dn(&w.slapd, "alice")]);
    assert_eq!(sync(&w.config, &[]).code(), 0);
    let groups = w.scim.groups();

    // The whole groups scope disappears (e.g. an ACL or a moved OU): an error, not deletions.
    w.slapd.delete(&[&g]);
    let out = sync(&w.config, &["--allow-deletes"]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    out.assert_stderr_has("returned no entries");
    assert_eq!(w.scim.groups(), groups);

    // The server is down.
    w.slapd.stop();
    let out = sync(&w.config, &[]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    out.assert_stderr_has("cannot connect to LDAP server");
    assert_eq!(w.scim.groups(), groups);
}

#[test]
fn a_second_process_on_the_same_state_file_fails_fast() {
    let w = world(false, LENIENT_SAFETY, &[]);
    let state = w.dir.path().join("state.db");
    let holder = StateLock::hold(&state);
    let started = std::time::Instant::now();
    let out = sync(&w.config, &[]);
    drop(holder);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr_str()
            .contains("in use by another ldapsync process"),
        "{}",
        out.describe()
    );
    assert!(started.elapsed() < Duration::from_secs(5), "must fail fast");
}

#[test]
fn ldaps_and_starttls_with_a_ca_file() {
    let w = World::new(
        Slapd::start_tls(),
        ScimServer::start(false),
        LENIENT_SAFETY,
        &["alice"],
    );
    let (dir, slapd, scim) = (&w.dir, &w.slapd, &w.scim);
    slapd.add_group("tls", &[&user_dn(slapd, "alice")]);
    let plain = std::fs::read_to_string(&w.config).unwrap();
    let ca = format!("ca_file = \"{}\"\n", slapd.ca_file().display());

    let ldaps = plain.replace(
        &format!("url = \"{}\"", slapd.url()),
        &format!("url = \"{}\"\n{ca}", slapd.ldaps_url()),
    );
    let config = write_file(dir.path(), "ldaps.toml", &ldaps);
    let out = sync(&config, &["--dry-run", "--output", "json"]);
    assert_code(&out, 0);
    out.assert_stdout_has("\"create\":1");

    let starttls = plain.replace(
        &format!("url = \"{}\"", slapd.url()),
        &format!("url = \"{}\"\nstarttls = true\n{ca}", slapd.url()),
    );
    let config = write_file(dir.path(), "starttls.toml", &starttls);
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert_eq!(scim_state(scim), expect(&[("tls", &["alice"])]));

    // A certificate from an unknown CA is refused.
    let other = generate_test_pki(&dir.path().join("other"), &["localhost"], &["127.0.0.1"]);
    let wrong = ldaps.replace(
        &slapd.ca_file().display().to_string(),
        &other.ca_cert.display().to_string(),
    );
    let config = write_file(dir.path(), "wrong-ca.toml", &wrong);
    let out = sync(&config, &["--dry-run"]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    out.assert_stderr_has("cannot connect to LDAP server");
}

#[test]
fn check_validates_and_connects() {
    let w = world(false, LENIENT_SAFETY, &[]);
    let out = run_ldapsync(&w.config, &["check"]);
    assert_code(&out, 0);
    let out = run_ldapsync(&w.config, &["check", "--connect"]);
    assert_code(&out, 0);
    assert!(out.stdout_str().contains("ldap: connected and bound"));
    let text = std::fs::read_to_string(&w.config).unwrap();
    let bad_token = write_file(
        w.dir.path(),
        "bad-token.toml",
        text.replace(
            &format!("token = \"{}\"", w.scim.token()),
            "token = \"wrong\"",
        ),
    );
    let out = run_ldapsync(&bad_token, &["check", "--connect"]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    out.assert_stdout_has("HTTP 401");
    assert!(
        !out.describe().contains(w.scim.token()),
        "the token must never be printed"
    );
    let bad_password = write_file(
        w.dir.path(),
        "bad-password.toml",
        text.replace(w.slapd.admin_password(), "not-the-password"),
    );
    let out = run_ldapsync(&bad_password, &["check", "--connect"]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    out.assert_stdout_has("bind as");
    assert!(
        !out.describe().contains("not-the-password"),
        "the password must never be printed"
    );
}

#[test]
fn without_patch_support_members_and_renames_go_through_put() {
    // This server rejects PATCH, so converging proves the PUT path was used.
    let w = World::new(
        Slapd::start(),
        ScimServer::start_with(false, false),
        LENIENT_SAFETY,
        &["alice", "bob", "carol"],
    );
    let g = w.slapd.add_group(
        "ops",
        &[&user_dn(&w.slapd, "alice"), &user_dn(&w.slapd, "bob")],
    );
    w.sync_to(&[("ops", &["alice", "bob"])]);

    w.slapd.modify(&format!(
        "dn: {g}\nchangetype: modify\nadd: member\nmember: {}\n-\ndelete: member\nmember: {}\n",
        user_dn(&w.slapd, "carol"),
        user_dn(&w.slapd, "alice")
    ));
    w.slapd.rename(&g, "cn=operations");
    w.sync_to(&[("operations", &["bob", "carol"])]);
}

#[test]
fn a_group_already_deleted_in_the_target_counts_as_deleted() {
    let w = world(false, LENIENT_SAFETY, &["alice"]);
    let g = w.slapd.add_group("ops", &[&user_dn(&w.slapd, "alice")]);
    w.slapd.add_group("keep", &[&user_dn(&w.slapd, "alice")]);
    assert_eq!(sync(&w.config, &[]).code(), 0);
    let id = w
        .scim
        .groups()
        .into_iter()
        .find(|g| g["displayName"] == "ops")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        w.scim
            .request("DELETE", &format!("/Groups/{id}"), None)
            .status,
        204
    );
    w.slapd.delete(&[&g]);
    let out = sync(&w.config, &[]);
    assert_eq!(
        out.code(),
        0,
        "404 on delete means done: {}",
        out.describe()
    );
    assert_converged(&w.config);
    assert_eq!(scim_state(&w.scim), expect(&[("keep", &["alice"])]));
}

#[test]
fn a_server_size_limit_is_an_incomplete_read_not_a_shorter_list() {
    let w = world(false, LENIENT_SAFETY, &["alice"]);
    let base = w.slapd.base_dn();
    // A non-admin bind gets slapd's default size limit (500 entries).
    w.slapd.add(&format!(
        "dn: uid=reader,ou=People,{base}\nobjectClass: inetOrgPerson\nuid: reader\ncn: reader\nsn: reader\nuserPassword: reader-pw\n"
    ));
    let mut ldif = String::new();
    for i in 0..520 {
        ldif.push_str(&format!(
            "dn: uid=bulk{i},ou=People,{base}\nobjectClass: inetOrgPerson\nuid: bulk{i}\ncn: bulk{i}\nsn: bulk\n\n"
        ));
    }
    w.slapd.add(&ldif);
    w.slapd.add_group("ops", &[&user_dn(&w.slapd, "alice")]);
    let text = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace(w.slapd.admin_dn(), &format!("uid=reader,ou=People,{base}"))
        .replace(w.slapd.admin_password(), "reader-pw");
    let config = write_file(w.dir.path(), "reader.toml", text);
    let out = sync(&config, &[]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(
        out.stderr_str()
            .contains("sizeLimitExceeded (result code 4)")
            && out.stderr_str().contains("page_size"),
        "sizeLimitExceeded, with a hint: {}",
        out.describe()
    );
    assert!(
        w.scim.groups().is_empty(),
        "nothing is written after an incomplete read"
    );
}

#[test]
fn a_slow_target_shows_progress_unless_quiet_and_summary_prints_one_line_per_sink() {
    let w = world(false, LENIENT_SAFETY, &["alice", "bob"]);
    let proxy = FaultProxy::start(&w.scim.base_url());
    proxy.rules(serde_json::json!([{"action": "delay", "seconds": 0.1}]));
    let text = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace(&w.scim.base_url(), &proxy.url());
    let config = write_file(w.dir.path(), "slow.toml", text);
    let members = [user_dn(&w.slapd, "alice"), user_dn(&w.slapd, "bob")];
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    for g in 0..6 {
        w.slapd.add_group(&format!("slow{g}"), &refs);
    }
    // stderr is not a terminal here: plain lines, every 100 ms instead of every 30 s.
    let fast = [("LDAPSYNC_PROGRESS_INTERVAL_MS", "100")];
    let out = run_ldapsync_env(&config, &["sync", "-o", "summary"], &fast);
    assert_code(&out, 0);
    assert_eq!(
        out.stdout_str(),
        "sink \"scim\" (scim): 6 create, 0 update, 0 delete, 12 member_add, 0 member_remove, 0 adopt, 0 unmapped: success\n"
    );
    let stderr = out.stderr_str();
    let progress = lines_starting(&stderr, "progress: ");
    assert!(!progress.is_empty(), "{stderr}");
    assert!(
        progress.iter().all(|l| l.contains("/18 operations")
            && l.contains("/6 groups")
            && l.contains("requests")
            && l.contains("op/s")),
        "{stderr}"
    );

    // On a terminal (a pty from script(1)): a bar redrawn in place, no plain lines.
    for g in 0..6 {
        let group = format!("cn=slow{g},{}", w.slapd.groups_dn());
        w.slapd.remove_member(&group, &members[1]);
    }
    let command = format!(
        "stty cols 160 rows 40; exec {} --config {} sync",
        ldapsync_bin().display(),
        config.display()
    );
    let out = run_with_timeout(
        Command::new("script").args(["-qefc", &command, "/dev/null"]),
        None,
        Duration::from_secs(120),
    );
    assert_code(&out, 0);
    let terminal = out.stdout_str();
    assert!(
        terminal.contains(" operations  sink \"scim\": "),
        "{terminal}"
    );
    assert!(terminal.contains("/6 groups"), "{terminal}");
    assert!(!terminal.contains("progress: "), "{terminal}");

    // --quiet: no progress at all (the same slow apply shows it without the flag).
    for g in 0..6 {
        let group = format!("cn=slow{g},{}", w.slapd.groups_dn());
        w.slapd.add_member(&group, &members[1]);
    }
    let out = run_ldapsync_env(&config, &["sync", "--quiet"], &fast);
    assert_code(&out, 0);
    out.assert_stdout_has("6 member_add");
    assert!(
        !out.stderr_str().contains("progress: "),
        "{}",
        out.describe()
    );
}
