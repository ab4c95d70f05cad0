//! Ownership you can prove on Posit Connect (local groups, password provider), with the Connect
//! emulator behind the fault-injecting proxy: the cases `tests/ownership.rs` covers for SCIM.
//!
//! Connect groups carry no externalId; Connect refuses a second group of the same name (code
//! 15), so the exact name is the identity (`"by": "name"`). What cannot be proven by name is
//! never touched: an unconfirmed create whose LDAP group is gone is forgotten, not deleted, and
//! `adopt = "external_id"` adopts no same-name group.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "connect-key-123";

/// slapd + the Connect emulator (password provider) behind the fault proxy.
struct World {
    env: EmulatorWorld,
    proxy: FaultProxy,
    config: PathBuf,
}

impl World {
    /// Connect users `users` (also in LDAP) and a config whose `[[sinks]]` table ends with
    /// `sink_lines`.
    fn new(users: &[&str], sink_lines: &str) -> World {
        let env = EmulatorWorld::start("connect", &["--provider", "password"]);
        let proxy = FaultProxy::start(env.emu.base_url());
        let specs: Vec<Value> = users.iter().map(|u| json!({"username": u})).collect();
        if !specs.is_empty() {
            env.emu.admin_post("/users", &Value::Array(specs));
        }
        for user in users {
            env.slapd.add_user(user, &format!("{user}@example.com"));
        }
        let config = env.write_config(
            100_000,
            &format!(
                "name = \"connect\"\ntype = \"connect\"\nbase_url = \"{}\"\napi_key = \"{KEY}\"\nmax_retries = 2\n{sink_lines}\n",
                proxy.url()
            ),
        );
        World { env, proxy, config }
    }

    fn user_dn(&self, uid: &str) -> String {
        format!("uid={uid},ou=People,{}", self.env.slapd.base_dn())
    }

    /// A group made by hand in Connect, with these members (user names); its guid.
    fn hand_made(&self, name: &str, members: &[&str]) -> String {
        let made = self
            .env
            .emu
            .admin_post("/groups", &json!([{"name": name, "members": members}]));
        made[0]["guid"].as_str().unwrap().to_string()
    }

    /// Group name → the member user names of each Connect group of that name.
    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .env
            .groups()
            .iter()
            .map(|g| {
                let mut members: Vec<String> = g["member_usernames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect();
                members.sort();
                (g["name"].as_str().unwrap().to_string(), members)
            })
            .collect();
        out.sort();
        out
    }

    fn dry_run(&self) -> Value {
        dry_run_json(&self.config)
    }

    /// A dry run with zero operations; returns it.
    #[track_caller]
    fn assert_nothing_to_do(&self) -> Value {
        assert_nothing_to_do(&self.config)
    }
}

fn group(name: &str, members: &[&str]) -> (String, Vec<String>) {
    (
        name.to_string(),
        members.iter().map(|m| m.to_string()).collect(),
    )
}

/// Issue case 1: the create of `ops` fails with a 500 Connect never saw; `ops` is then deleted
/// in LDAP and someone makes an `ops` group by hand. Nothing proves that group is ldapsync's:
/// the intent is forgotten and no DELETE is sent.
#[test]
fn an_unprocessed_create_then_an_ldap_delete_never_deletes_a_same_name_group() {
    let w = World::new(&["alice"], "");
    let ops = w.env.slapd.add_group("ops", &[&w.user_dn("alice")]);
    w.proxy.rules(json!([
        {"method": "POST", "path": "/v1/groups$", "action": "status", "status": 500}
    ]));
    assert_code(&sync(&w.config, &[]), 1);
    assert!(w.env.groups().is_empty());
    w.proxy.clear();
    w.env.slapd.add_group("keep", &[&w.user_dn("alice")]);
    let hand_made = w.hand_made("ops", &["alice"]);
    w.env.slapd.delete(&[&ops]);
    assert_code(&sync(&w.config, &[]), 0);
    assert!(
        w.proxy.requests("DELETE", "").is_empty(),
        "no DELETE may reach Connect: {:?}",
        w.proxy.log()
    );
    assert_eq!(
        w.groups(),
        vec![group("keep", &["alice"]), group("ops", &["alice"])]
    );
    assert!(
        w.env
            .groups()
            .iter()
            .any(|g| g["guid"] == hand_made.as_str())
    );
    w.assert_nothing_to_do();
}

/// Issue case 2: a Connect that ignores `prefix=` (and paging) answers every group to every
/// lookup; the resumed create of `g03` adopts nothing unrelated.
#[test]
fn a_target_that_ignores_filters_never_makes_ldapsync_adopt_an_unrelated_group() {
    let w = World::new(&["alice", "bob"], "");
    w.hand_made("AAA-finance-admins", &["bob"]);
    w.env
        .slapd
        .add_group("g03", &[&w.user_dn("alice"), &w.user_dn("bob")]);
    w.proxy.rules(json!([
        {"method": "POST", "path": "/v1/groups$", "action": "status", "status": 500}
    ]));
    assert_code(&sync(&w.config, &[]), 1);
    w.proxy.rules(json!([
        {"method": "GET", "path": "/v1/groups$", "action": "strip_query"}
    ]));
    assert_code(&sync(&w.config, &[]), 0);
    assert_eq!(
        w.groups(),
        vec![
            group("AAA-finance-admins", &["bob"]),
            group("g03", &["alice", "bob"])
        ]
    );
    w.assert_nothing_to_do();
}

/// Issue case 3: Connect commits the create but the connection is reset before the answer;
/// the group is found by name, not created again.
#[test]
fn a_create_whose_connection_was_reset_after_sending_is_found_not_resent() {
    let w = World::new(&["alice"], "");
    w.env.slapd.add_group("ops", &[&w.user_dn("alice")]);
    w.proxy.rules(json!([
        {"method": "POST", "path": "/v1/groups$", "action": "reset", "times": 1}
    ]));
    assert_code(&sync(&w.config, &[]), 0);
    assert_eq!(w.groups(), vec![group("ops", &["alice"])]);
    assert_eq!(w.proxy.requests("POST", "/v1/groups").len(), 1);
    w.assert_nothing_to_do();
}

/// Issue case 4: with the state file lost, the dry run adopts every group by its unique name
/// and the run sends no create.
#[test]
fn a_lost_state_file_adopts_every_group_and_makes_no_duplicates() {
    let w = World::new(&["alice", "bob"], "");
    w.env.slapd.add_group("ops", &[&w.user_dn("alice")]);
    w.env
        .slapd
        .add_group("dev", &[&w.user_dn("alice"), &w.user_dn("bob")]);
    assert_code(&sync(&w.config, &[]), 0);
    let before = w.groups();
    let state = w.env.state_path();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
    }
    let plan = w.dry_run();
    let sink = &plan["sinks"][0];
    assert_eq!(
        sink["summary"],
        json!({"create":0,"adopt":2,"update":0,"delete":0,"member_add":0,"member_remove":0,"unmapped":0}),
        "{plan}"
    );
    assert!(
        sink["operations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|op| op["by"] == "name"),
        "{plan}"
    );
    let posts = w.proxy.requests("POST", "/v1/groups").len();
    assert_code(&sync(&w.config, &[]), 0);
    assert_eq!(w.proxy.requests("POST", "/v1/groups").len(), posts);
    assert_eq!(w.groups(), before);
    w.assert_nothing_to_do();
}

/// Issue case 5: members with no Connect user are listed as unmapped, not planned, so an
/// unchanged directory plans nothing; a user who appears in Connect later is added.
#[test]
fn unmapped_members_leave_nothing_to_do_and_are_added_once_they_exist() {
    let w = World::new(&["alice"], "");
    w.env.slapd.add_user("newcomer", "newcomer@example.com");
    w.env
        .slapd
        .add_group("ops", &[&w.user_dn("alice"), &w.user_dn("newcomer")]);
    assert_code(&sync(&w.config, &[]), 0);
    let plan = w.assert_nothing_to_do();
    assert_eq!(plan["sinks"][0]["summary"]["unmapped"], 1, "{plan}");
    assert_eq!(
        plan["sinks"][0]["unmapped"][0]["members"],
        json!(["newcomer"])
    );
    w.env
        .emu
        .admin_post("/users", &json!([{"username": "newcomer"}]));
    assert_code(&sync(&w.config, &[]), 0);
    assert_eq!(w.groups(), vec![group("ops", &["alice", "newcomer"])]);
    w.assert_nothing_to_do();
}

/// A hand-made group of the same name is adopted by name, and its members are made equal to
/// LDAP's (carol, whom LDAP does not list, is removed).
#[test]
fn a_hand_made_group_is_adopted_by_name_and_its_members_converge() {
    let w = World::new(&["alice", "bob", "carol"], "");
    let hand_made = w.hand_made("ops", &["bob", "carol"]);
    w.env
        .slapd
        .add_group("ops", &[&w.user_dn("alice"), &w.user_dn("bob")]);
    let plan = w.dry_run();
    let ops = plan["sinks"][0]["operations"].as_array().unwrap().clone();
    assert_eq!(
        (&ops[0]["op"], &ops[0]["by"], &ops[0]["target_id"]),
        (&json!("adopt"), &json!("name"), &json!(hand_made)),
        "{plan}"
    );
    assert_eq!(
        (&ops[1]["op"], &ops[1]["members"]),
        (&json!("member_add"), &json!(["alice"]))
    );
    assert_eq!(
        (&ops[2]["op"], &ops[2]["members"]),
        (&json!("member_remove"), &json!(["carol"]))
    );
    assert_code(&sync(&w.config, &[]), 0);
    assert_eq!(w.groups(), vec![group("ops", &["alice", "bob"])]);
    assert!(w.proxy.requests("POST", "/v1/groups").is_empty());
    w.assert_nothing_to_do();
}

/// The removals an adoption plans count against `[safety]`: held (exit 3), nothing written.
#[test]
fn removals_from_an_adopted_group_are_held_by_the_thresholds() {
    let w = World::new(&["alice", "bob", "carol"], "");
    w.hand_made("ops", &["bob", "carol"]);
    w.env.slapd.add_group("ops", &[&w.user_dn("alice")]);
    let strict = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace("max_member_removes = 100000", "max_member_removes = 1");
    let config = write_file(w.env.dir.path(), "strict.toml", strict);
    assert_code(&sync(&config, &[]), 3);
    assert_eq!(w.groups(), vec![group("ops", &["bob", "carol"])]);
}

/// Connect has no externalId: with `adopt = "external_id"` nothing proves a same-name group is
/// ldapsync's, so it is refused (the create conflicts, that group's operation fails clearly)
/// and left unchanged.
#[test]
fn with_adopt_external_id_a_same_name_group_is_refused() {
    let w = World::new(&["alice", "bob"], "adopt = \"external_id\"");
    w.hand_made("ops", &["bob"]);
    w.env.slapd.add_group("ops", &[&w.user_dn("alice")]);
    let plan = w.dry_run();
    assert_eq!(plan["sinks"][0]["summary"]["adopt"], 0, "{plan}");
    assert_eq!(plan["sinks"][0]["summary"]["create"], 1, "{plan}");
    assert_failed(&sync_failures(&w.config), "create", "ops", "409");
    assert_eq!(w.groups(), vec![group("ops", &["bob"])]);
    assert!(w.proxy.requests("POST", "/members").is_empty());
}

/// `adopt = "never"`: the create conflict fails that group's operation with a clear error; the
/// other groups are created.
#[test]
fn with_adopt_never_a_create_conflict_fails_that_group_only() {
    let w = World::new(&["alice"], "adopt = \"never\"");
    w.hand_made("ops", &[]);
    w.env.slapd.add_group("ops", &[&w.user_dn("alice")]);
    w.env.slapd.add_group("dev", &[&w.user_dn("alice")]);
    assert_eq!(w.dry_run()["sinks"][0]["summary"]["adopt"], 0);
    assert_failed(
        &sync_failures(&w.config),
        "create",
        "ops",
        "adopt = \"never\"",
    );
    assert_eq!(
        w.groups(),
        vec![group("dev", &["alice"]), group("ops", &[])]
    );
}

impl World {
    /// A Connect API request made by hand (an administrator's change), expecting 2xx.
    fn by_hand(&self, method: &str, path: &str, body: Option<&Value>) {
        let key = format!("Key {KEY}");
        let r = self.env.emu.request(
            method,
            &format!("/__api__{path}"),
            &[("Authorization", key.as_str())],
            body,
        );
        assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    }

    fn guid_of_group(&self, name: &str) -> String {
        self.env.group(name).unwrap()["guid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn guid_of_user(&self, username: &str) -> String {
        self.env
            .emu
            .state_list("users")
            .iter()
            .find(|u| u["username"] == username)
            .map(|u| u["guid"].as_str().unwrap().to_string())
            .unwrap()
    }
}

/// Issue 11 on Connect (local groups): a member added by hand and one removed, a group renamed
/// and one deleted are repaired by `sync --full`, each repair flagged as drift.
#[test]
fn a_full_sync_repairs_what_was_changed_by_hand_in_connect() {
    let w = World::new(&["alice", "bob", "carol"], "");
    let (alice, bob) = (w.user_dn("alice"), w.user_dn("bob"));
    w.env.slapd.add_drift_groups(&alice, &bob);
    assert_code(&sync(&w.config, &[]), 0);

    let ops = w.guid_of_group("ops");
    let carol = json!({"user_guid": w.guid_of_user("carol")});
    w.by_hand("POST", &format!("/v1/groups/{ops}/members"), Some(&carol));
    let bob_guid = w.guid_of_user("bob");
    w.by_hand(
        "DELETE",
        &format!("/v1/groups/{ops}/members/{bob_guid}"),
        None,
    );
    let dev = w.guid_of_group("dev");
    w.by_hand(
        "PATCH",
        &format!("/v1/groups/{dev}"),
        Some(&json!({"name": "dev-renamed"})),
    );
    let gone = w.guid_of_group("gone");
    w.by_hand("DELETE", &format!("/v1/groups/{gone}"), None);
    w.assert_nothing_to_do();

    assert_drift_repairs_planned(&w.config);
    assert_code(&sync(&w.config, &["--full"]), 0);
    assert_eq!(
        w.groups(),
        vec![
            group("dev", &["alice"]),
            group("gone", &["bob"]),
            group("ops", &["alice", "bob"])
        ]
    );
    assert_converged_even_in_full(&w.config);
}
