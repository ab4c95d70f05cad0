//! End-to-end tests of the `connect` sink: a real slapd, the real `ldapsync` binary and the Posit
//! Connect emulator (`tests/emulators/connect.py`) in LDAP ("remote"), password, SAML and
//! misconfigured modes. Assertions are on the emulator's state and request log.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "connect-key-123";

emulator_env!(Env, "connect");

impl Env {
    /// Writes the config with this `[[sinks]]` body (after `type = "connect"`).
    fn config(&self, sink_extra: &str) -> PathBuf {
        self.write_config(
            1000,
            &format!(
                "name = \"connect\"\ntype = \"connect\"\nbase_url = \"{}\"\napi_key = \"{KEY}\"\nmax_retries = 2\n{sink_extra}\n",
                self.emu.base_url()
            ),
        )
    }

    fn member_names(&self, name: &str) -> Vec<String> {
        self.member_names_in(name, "member_usernames", Value::as_str)
    }

    /// API requests that change something (not GET), from index `from` of the log.
    fn writes_since(&self, from: usize) -> Vec<String> {
        self.0.writes_since(from, |_| true)
    }
}

/// LDAP-authenticated Connect: groups are imported from the directory by ticket, the exact name
/// is picked among fuzzy matches, an existing Connect group is adopted, membership is left to
/// Connect (skipped and reported, not failed), a rename is not sent, a delete is.
#[test]
fn remote_mode_imports_by_ticket_adopts_and_skips_membership() {
    let env = Env::start(&["--provider", "ldap"]);
    env.emu.admin_post(
        "/users",
        &json!([{"username": "alice", "dn": "uid=alice,ou=People,dc=example,dc=com"},
                {"username": "bob", "remote_only": true}]),
    );
    env.emu.admin_post(
        "/groups",
        &json!([
            {"name": "devs", "remote_only": true, "members": ["alice", "bob"]},
            {"name": "devs-ops", "remote_only": true},
            {"name": "Data Science", "remote_only": true},
            {"name": "ops"}
        ]),
    );
    let ops_guid = env.group("ops").unwrap()["guid"].clone();
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let bob = env.slapd.add_user("bob", "bob@example.com");
    env.slapd.add_group("devs", &[&alice, &bob]);
    let ds = env.slapd.add_group("Data Science", &[&alice]);
    env.slapd.add_group("ops", &[&bob]);
    let config = env.config(r#"group_mode = "auto""#);

    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert!(
        out.stderr_str().contains("manages group membership itself"),
        "the skipped membership is reported once:\n{}",
        out.stderr_str()
    );
    let stdout = out.stdout_str();
    assert!(stdout.contains("skipped"), "{stdout}");
    let names: Vec<String> = env
        .groups()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"devs".to_string()), "{names:?}");
    assert!(names.contains(&"Data Science".to_string()), "{names:?}");
    assert!(
        !names.contains(&"devs-ops".to_string()),
        "only the exact name is imported: {names:?}"
    );
    assert_eq!(
        env.group("ops").unwrap()["guid"],
        ops_guid,
        "existing group adopted"
    );
    // Members came from the directory (Connect users only), not from ldapsync.
    assert_eq!(env.member_names("devs"), vec!["alice"]);
    let writes = env.writes_since(0);
    assert_eq!(
        writes
            .iter()
            .filter(|w| w.starts_with("\"PUT\" \"/__api__/v1/groups\""))
            .count(),
        2,
        "{writes:?}"
    );
    assert!(
        !writes.iter().any(|w| w.contains("members")),
        "no member request on an LDAP server: {writes:?}"
    );

    // Rerun: nothing to do, nothing written.
    env.assert_sync_writes_nothing(&config, |_| true);

    // A membership change is not sent to an LDAP server; the run succeeds.
    env.slapd.add_member(&ds, &bob);
    let before = env.emu.requests().len();
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert_eq!(env.writes_since(before), Vec::<String>::new());

    // Delete: the LDAP group is gone, so is the Connect group.
    env.slapd.delete(&[&ds]);
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert!(env.group("Data Science").is_none(), "{:#?}", env.groups());
    assert!(env.group("devs").is_some());
}

/// Password-authenticated Connect: local groups, members added and removed, unmapped members
/// skipped, rename (modrdn) keeps the guid, delete, and a dry run that writes nothing.
#[test]
fn local_mode_full_lifecycle() {
    let env = Env::start(&["--provider", "password"]);
    env.emu.admin_post(
        "/users",
        &json!([{"username": "alice", "email": "alice@example.com"},
                {"username": "bob", "email": "bob@example.com"}]),
    );
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let bob = env.slapd.add_user("bob", "bob@example.com");
    let carol = env.slapd.add_user("carol", "carol@example.com");
    let devs = env.slapd.add_group("devs", &[&alice, &bob, &carol]);
    let ops = env.slapd.add_group("ops", &[&bob]);
    let config = env.config("");

    // Dry run first: only reads, no state file.
    let out = sync(&config, &["--dry-run", "--output", "json"]);
    assert_code(&out, 0);
    let plan: Value = serde_json::from_str(&out.stdout_str()).expect("json");
    assert_eq!(plan["sinks"][0]["summary"]["create"], 2);
    assert_eq!(env.writes_since(0), Vec::<String>::new());
    assert!(env.group("devs").is_none());

    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert_eq!(env.member_names("devs"), vec!["alice", "bob"]);
    assert_eq!(env.member_names("ops"), vec!["bob"]);
    assert!(
        out.stdout_str().contains("1 unmapped"),
        "{}",
        out.stdout_str()
    );
    // Connect finds unmapped users while applying: one WARN line for the run names them.
    let stderr = out.stderr_str();
    let about_carol: Vec<&str> = stderr.lines().filter(|l| l.contains("carol")).collect();
    assert_eq!(about_carol.len(), 1, "{}", out.describe());
    assert!(
        about_carol[0].contains("WARN") && about_carol[0].contains("connect: carol"),
        "{}",
        out.describe()
    );
    let devs_guid = env.group("devs").unwrap()["guid"].clone();

    // Member removed and added.
    env.slapd.remove_member(&devs, &bob);
    env.slapd.add_member(&ops, &alice);
    assert_code(&sync(&config, &[]), 0);
    assert_eq!(env.member_names("devs"), vec!["alice"]);
    assert_eq!(env.member_names("ops"), vec!["alice", "bob"]);

    // Rename through modrdn: same group, new name.
    env.slapd.rename(&devs, "cn=developers");
    assert_code(&sync(&config, &[]), 0);
    let renamed = env.group("developers").expect("renamed group");
    assert_eq!(renamed["guid"], devs_guid);
    assert!(env.group("devs").is_none());

    // Delete.
    env.slapd.delete(&[&ops]);
    assert_code(&sync(&config, &[]), 0);
    assert!(env.group("ops").is_none());
    assert!(env.group("developers").is_some());

    // Converged: a rerun writes nothing.
    env.assert_sync_writes_nothing(&config, |_| true);
}

/// A local group that already exists (409 code 15) is adopted, never duplicated; missing users
/// are provisioned with POST /v1/users when `provision_users` is on; users are matched by email.
#[test]
fn local_mode_adopts_and_provisions_users() {
    let env = Env::start(&["--provider", "password"]);
    env.emu.admin_post(
        "/users",
        &json!([{"username": "alice-connect", "email": "Alice@Example.com"}]),
    );
    env.emu
        .admin_post("/groups", &json!([{"name": "devs", "members": []}]));
    let existing = env.group("devs").unwrap()["guid"].clone();
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let carol = env.slapd.add_user("carol", "carol@example.com");
    env.slapd.add_group("devs", &[&alice, &carol]);
    let config = env.config("user_match = \"email\"\nprovision_users = true");

    let out = sync(&config, &[]);
    assert_code(&out, 0);
    let devs: Vec<Value> = env
        .groups()
        .into_iter()
        .filter(|g| g["name"] == "devs")
        .collect();
    assert_eq!(devs.len(), 1, "no duplicate group: {devs:#?}");
    assert_eq!(devs[0]["guid"], existing);
    assert_eq!(env.member_names("devs"), vec!["alice-connect", "carol"]);
    let users = env.emu.state()["users"].clone();
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["username"] == "carol" && u["email"] == "carol@example.com"),
        "{users:#?}"
    );
}

/// SAML with group provisioning: auto mode creates the groups and leaves membership to the
/// provider; forcing local mode makes Connect refuse member changes (code 132), reported
/// clearly; remote mode on a SAML server and local mode on an LDAP server are refused with a hint.
#[test]
fn provider_modes_and_refusals() {
    let env = Env::start(&["--provider", "saml", "--groups-auto-provision"]);
    env.emu.admin_post(
        "/users",
        &json!([{"username": "alice", "unique_id": "alice"}]),
    );
    let alice = env.slapd.add_user("alice", "alice@example.com");
    env.slapd.add_group("devs", &[&alice]);

    let out = sync(&env.config(r#"group_mode = "auto""#), &[]);
    assert_code(&out, 0);
    assert!(env.group("devs").is_some());
    assert_eq!(env.member_names("devs"), Vec::<String>::new());
    assert!(!env.writes_since(0).iter().any(|w| w.contains("members")));

    // Forced local mode on a fresh state: member changes are refused by the provider.
    std::fs::remove_file(env.state_path()).unwrap();
    let out = sync(&env.config(r#"group_mode = "local""#), &[]);
    assert_code(&out, 1);
    let text = out.stdout_str() + &out.stderr_str();
    assert!(text.contains("manages this group's members"), "{text}");
    assert!(text.contains("code=132"), "{text}");

    // Remote mode on a SAML server: the remote search is refused (code 132), no group created.
    std::fs::remove_file(env.state_path()).unwrap();
    env.emu.admin_post("/reset", &json!({}));
    let out = sync(&env.config(r#"group_mode = "remote""#), &[]);
    assert_code(&out, 1);
    let text = out.stdout_str() + &out.stderr_str();
    assert!(text.contains("code=132"), "{text}");
    assert!(env.group("devs").is_none());

    // Local mode on an LDAP server: POST /v1/groups is refused (code 120) with a hint.
    let ldap = Env::start(&["--provider", "ldap"]);
    ldap.slapd.add_group("devs", &[]);
    let out = sync(&ldap.config(r#"group_mode = "local""#), &[]);
    assert_code(&out, 1);
    let text = out.stdout_str() + &out.stderr_str();
    assert!(text.contains("code=120"), "{text}");
    assert!(
        text.contains("group_mode = \\\"remote\\\"") || text.contains("group_mode = \"remote\""),
        "{text}"
    );
}

/// A run that fails midway (member adds answered 500) and a run whose create was never
/// confirmed (the ledger holds only the intent) are both repaired by a rerun, with no duplicate
/// group and no duplicate member.
#[test]
fn crash_and_rerun_converge_without_duplicates() {
    let env = Env::start(&["--provider", "password"]);
    env.emu.admin_post(
        "/users",
        &json!([{"username": "alice"}, {"username": "bob"}]),
    );
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let bob = env.slapd.add_user("bob", "bob@example.com");
    env.slapd.add_group("devs", &[&alice, &bob]);
    let config = env.config("");

    // Member adds fail with 500 (a POST is not retried on 500): the run fails after the create.
    env.emu.admin_post(
        "/faults",
        &json!({"fail_next": 10, "fail_status": 500, "method": "POST",
                "path_prefix": "/__api__/v1/groups/"}),
    );
    let out = sync(&config, &[]);
    assert_code(&out, 1);
    assert!(env.group("devs").is_some());
    assert_eq!(env.member_names("devs"), Vec::<String>::new());
    env.emu.admin_post("/faults", &json!({}));
    assert_code(&sync(&config, &[]), 0);
    assert_eq!(env.member_names("devs"), vec!["alice", "bob"]);

    // Crash between the create request and its record: only the intent is in the ledger.
    forget_confirmed_creates(&env.state_path(), "connect");
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    let devs = env
        .groups()
        .into_iter()
        .filter(|g| g["name"] == "devs")
        .count();
    assert_eq!(devs, 1, "no duplicate group: {:#?}", env.groups());
    assert_eq!(env.member_names("devs"), vec!["alice", "bob"]);
}

/// Connect before 2025.04 ignores page_number with a prefix: the page repeats forever. Here the
/// server even claims a fixed version; the lookup must still stop, and find the group.
#[test]
fn repeating_prefix_pages_never_loop() {
    let env = Env::start(&[
        "--provider",
        "password",
        "--page-size",
        "1",
        "--groups-prefix-paging",
        "buggy",
        "--version",
        "2025.05.0",
    ]);
    env.emu.admin_post(
        "/users",
        &json!([{"username": "alice"}, {"username": "bob"}, {"username": "carol"}]),
    );
    env.emu.admin_post(
        "/groups",
        &json!([{"name": "eng-b"}, {"name": "eng-b2"}, {"name": "eng-b3"}]),
    );
    let existing = env.group("eng-b").unwrap()["guid"].clone();
    let users: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| env.slapd.add_user(u, &format!("{u}@example.com")))
        .collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    env.slapd.add_group("eng-b", &refs);
    let out = sync(&env.config(""), &[]);
    assert_code(&out, 0);
    assert!(
        out.stderr_str().contains("repeats earlier results"),
        "{}",
        out.stderr_str()
    );
    assert_eq!(env.group("eng-b").unwrap()["guid"], existing);
    assert_eq!(env.member_names("eng-b"), vec!["alice", "bob", "carol"]);
    let prefix_pages = env
        .emu
        .requests()
        .iter()
        .filter(|r| {
            r["path"] == "/__api__/v1/groups"
                && r["query"].as_str().unwrap_or("").contains("prefix")
        })
        .count();
    assert!(
        prefix_pages <= 4,
        "the repeating page stopped the listing: {prefix_pages}"
    );
}

/// `check --connect` verifies the key with GET /v1/user (server_settings needs none).
#[test]
fn check_connect_verifies_the_key() {
    let env = Env::start(&["--provider", "ldap"]);
    let out = run_ldapsync(&env.config(""), &["check", "--connect"]);
    assert_code(&out, 0);
    let bad = env.config("").display().to_string();
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace(KEY, "wrong-key");
    let bad = write_file(env.dir.path(), "bad.toml", text);
    let out = run_ldapsync(&bad, &["check", "--connect"]);
    assert_ne!(out.code(), 0, "{}", out.describe());
    let text = out.stdout_str() + &out.stderr_str();
    assert!(text.contains("API key was rejected"), "{text}");
    assert!(!text.contains("wrong-key"), "never print the key: {text}");
}

/// Behind the fault proxy: Connect commits a user create (`POST /v1/users`) and a group create
/// (`POST /v1/groups`) but answers 503. Neither is sent twice: ldapsync looks them up, finds
/// them and goes on, so Connect ends with one user and one group.
#[test]
fn creates_committed_then_answered_503_are_found_not_sent_twice() {
    let env = Env::start(&["--provider", "password"]);
    let proxy = FaultProxy::start(env.emu.base_url());
    let carol = env.slapd.add_user("carol", "carol@example.com");
    env.slapd.add_group("devs", &[&carol]);
    let config = env.write_config(
        1000,
        &format!(
            "name = \"connect\"\ntype = \"connect\"\nbase_url = \"{}\"\napi_key = \"{KEY}\"\nmax_retries = 2\nprovision_users = true\n",
            proxy.url()
        ),
    );
    proxy.rules(json!([
        {"method": "POST", "path": "/v1/users$", "action": "forward_status", "status": 503, "times": 1},
        {"method": "POST", "path": "/v1/groups$", "action": "forward_status", "status": 503, "times": 1}
    ]));
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    let state = env.emu.state();
    let carols = state["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["username"] == "carol")
        .count();
    assert_eq!(carols, 1, "{state:#}");
    assert_eq!(
        env.groups().iter().filter(|g| g["name"] == "devs").count(),
        1
    );
    assert_eq!(env.member_names("devs"), vec!["carol"]);
    assert_eq!(proxy.requests("POST", "/v1/users").len(), 1);
    assert_eq!(proxy.requests("POST", "/v1/groups").len(), 1);
}
