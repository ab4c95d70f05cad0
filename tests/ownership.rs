//! Ownership you can prove, against the real scim2-server behind the fault-injecting proxy:
//! checked adoption, creates that never duplicate, plans that know the target.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

/// slapd → fault proxy → scim2-server, with `users` in both and a config in `dir`.
struct World {
    dir: tempfile::TempDir,
    slapd: Slapd,
    scim: ScimServer,
    proxy: FaultProxy,
    config: PathBuf,
}

impl World {
    /// `unique_names`: the SCIM server answers 409 to a duplicate displayName (else RFC SCIM:
    /// duplicates allowed). `sink_lines` are added to the `[[sinks]]` table.
    fn new(unique_names: bool, users: &[&str], sink_lines: &str) -> World {
        let slapd = Slapd::start();
        let scim = ScimServer::start(unique_names);
        let proxy = FaultProxy::start(&scim.base_url());
        let dir = tempfile::tempdir().unwrap();
        for user in users {
            let mail = format!("{user}@example.com");
            slapd.add_user(user, &mail);
            scim.create_user(user, &mail);
        }
        let text = format!(
            "{ldap}\n{LENIENT_SAFETY}\n{sink}",
            ldap = ldap_config_toml(&slapd, &dir.path().join("state.db")),
            sink = scim.sink_toml(&proxy.url(), &format!("max_retries = 2\n{sink_lines}")),
        );
        let config = write_file(dir.path(), "config.toml", text);
        World {
            dir,
            slapd,
            scim,
            proxy,
            config,
        }
    }

    fn user_dn(&self, uid: &str) -> String {
        format!("uid={uid},ou=People,{}", self.slapd.base_dn())
    }

    /// Group display name → (ids, member userNames), duplicates kept apart.
    fn groups(&self) -> BTreeMap<String, Vec<BTreeSet<String>>> {
        self.scim.groups_by_name()
    }

    /// A group made by hand in the target: `external_id` when given, members by userName.
    fn hand_made(&self, name: &str, external_id: Option<&str>, members: &[&str]) -> String {
        let ids = self.scim.user_ids();
        let mut body = json!({
            "schemas": [GROUP_SCHEMA],
            "displayName": name,
            "members": members.iter().map(|m| json!({"value": ids[*m]})).collect::<Vec<_>>(),
        });
        if let Some(e) = external_id {
            body["externalId"] = json!(e);
        }
        let (status, answer) = self.scim.post_json("/Groups", &body);
        assert_eq!(status, 201, "{answer}");
        answer["id"].as_str().unwrap().to_string()
    }

    fn dry_run(&self) -> Value {
        dry_run_json(&self.config)
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn an_unprocessed_create_then_an_ldap_delete_never_deletes_a_same_name_group() {
    let w = World::new(false, &["alice"], "");
    let ops = w.slapd.add_group("ops", &[&w.user_dn("alice")]);
    // The create fails with a 500 the target never processed: an unconfirmed intent remains.
    w.proxy.rules(json!([
        {"method": "POST", "path": "/Groups$", "action": "status", "status": 500}
    ]));
    assert_code(&sync(&w.config, &[]), 1);
    assert!(w.scim.groups().is_empty());
    w.proxy.clear();
    // (another group keeps the groups scope from emptying, which would be an incomplete read)
    w.slapd.add_group("keep", &[&w.user_dn("alice")]);
    // Someone makes a group of the same name by hand; then the LDAP group goes away.
    let hand_made = w.hand_made("ops", None, &["alice"]);
    w.slapd.delete(&[&ops]);
    let out = sync(&w.config, &[]);
    assert_code(&out, 0);
    assert!(
        w.proxy.requests("DELETE", "").is_empty(),
        "no DELETE may reach the target: {:?}",
        w.proxy.log()
    );
    let groups = w.scim.groups();
    assert_eq!(groups.len(), 2);
    assert!(groups.iter().any(|g| g["id"] == hand_made.as_str()));
    assert_nothing_to_do(&w.config);
}

#[test]
fn a_target_that_ignores_filters_never_makes_ldapsync_adopt_an_unrelated_group() {
    let w = World::new(false, &["alice", "bob"], "");
    let finance = w.hand_made("AAA-finance-admins", None, &["bob"]);
    w.slapd
        .add_group("g03", &[&w.user_dn("alice"), &w.user_dn("bob")]);
    // An interrupted create of g03 (never processed), then a target whose group lookups
    // ignore the filter and answer every group.
    w.proxy.rules(json!([
        {"method": "POST", "path": "/Groups$", "action": "status", "status": 500}
    ]));
    assert_code(&sync(&w.config, &[]), 1);
    w.proxy.rules(json!([
        {"method": "GET", "path": "/Groups$", "action": "strip_query"}
    ]));
    let out = sync(&w.config, &[]);
    assert_code(&out, 0);
    let groups = w.groups();
    assert_eq!(
        groups["AAA-finance-admins"],
        vec![set(&["bob"])],
        "{groups:?}"
    );
    assert_eq!(groups["g03"], vec![set(&["alice", "bob"])], "{groups:?}");
    let finance_now = w.scim.get_json(&format!("/Groups/{finance}"));
    assert_eq!(finance_now["displayName"], "AAA-finance-admins");
    assert_nothing_to_do(&w.config);
}

#[test]
fn a_same_name_group_with_a_foreign_external_id_is_not_adopted() {
    let w = World::new(true, &["alice"], "");
    let foreign = w.hand_made("ops", Some("someone-elses-id"), &[]);
    w.slapd.add_group("ops", &[&w.user_dn("alice")]);
    let plan = w.dry_run();
    assert_eq!(plan["sinks"][0]["summary"]["adopt"], 0, "{plan}");
    assert_eq!(plan["sinks"][0]["summary"]["create"], 1, "{plan}");
    // The unique target refuses the create; the foreign group is neither adopted nor changed.
    assert_failed(&sync_failures(&w.config), "create", "ops", "409");
    let groups = w.groups();
    assert_eq!(groups["ops"], vec![set(&[])], "{groups:?}");
    assert_eq!(w.scim.groups()[0]["id"], foreign.as_str());
    assert!(w.proxy.requests("PATCH", "").is_empty());
}

#[test]
fn a_hand_made_group_is_adopted_by_name_and_its_members_converge() {
    let w = World::new(false, &["alice", "bob", "carol"], "");
    let hand_made = w.hand_made("ops", None, &["bob", "carol"]);
    w.slapd
        .add_group("ops", &[&w.user_dn("alice"), &w.user_dn("bob")]);
    let plan = w.dry_run();
    let sink = &plan["sinks"][0];
    assert_eq!(sink["summary"]["adopt"], 1, "{plan}");
    assert_eq!(sink["summary"]["create"], 0, "{plan}");
    assert_eq!(sink["summary"]["member_add"], 1, "{plan}");
    assert_eq!(sink["summary"]["member_remove"], 1, "{plan}");
    let ops = sink["operations"].as_array().unwrap();
    assert_eq!(ops[0]["op"], "adopt");
    assert_eq!(ops[0]["by"], "name");
    assert_eq!(ops[0]["target_id"], hand_made.as_str());
    assert_eq!(ops[1]["members"], json!(["alice"]));
    assert_eq!(ops[2]["members"], json!(["carol"]));
    let text = sync(&w.config, &["--dry-run"]).stdout_str();
    assert!(
        text.contains("= adopt") && text.contains(&format!("ops (id {hand_made}, by name)")),
        "{text}"
    );

    assert_code(&sync(&w.config, &[]), 0);
    let groups = w.groups();
    assert_eq!(groups["ops"], vec![set(&["alice", "bob"])], "{groups:?}");
    assert_eq!(w.scim.groups()[0]["id"], hand_made.as_str());
    assert!(w.proxy.requests("POST", "/Groups").is_empty());
    assert_nothing_to_do(&w.config);
}

#[test]
fn a_create_committed_then_answered_503_or_429_leaves_exactly_one_group() {
    let w = World::new(false, &["alice"], "");
    w.slapd.add_group("ops", &[&w.user_dn("alice")]);
    w.slapd.add_group("dev", &[&w.user_dn("alice")]);
    w.proxy.rules(json!([
        {"method": "POST", "path": "/Groups$", "action": "forward_status", "status": 503, "times": 1},
        {"method": "POST", "path": "/Groups$", "action": "forward_status", "status": 429, "times": 1}
    ]));
    let out = sync(&w.config, &[]);
    assert_code(&out, 0);
    let groups = w.groups();
    assert_eq!(groups["ops"], vec![set(&["alice"])], "{groups:?}");
    assert_eq!(groups["dev"], vec![set(&["alice"])], "{groups:?}");
    assert_eq!(
        w.proxy.requests("POST", "/Groups").len(),
        2,
        "one POST per group, never re-sent: {:?}",
        w.proxy.log()
    );
    assert_nothing_to_do(&w.config);
}

#[test]
fn a_create_whose_connection_was_reset_after_sending_is_found_not_resent() {
    let w = World::new(false, &["alice"], "");
    w.slapd.add_group("ops", &[&w.user_dn("alice")]);
    w.proxy.rules(json!([
        {"method": "POST", "path": "/Groups$", "action": "reset", "times": 1}
    ]));
    assert_code(&sync(&w.config, &[]), 0);
    let groups = w.groups();
    assert_eq!(groups["ops"], vec![set(&["alice"])], "{groups:?}");
    assert_eq!(w.proxy.requests("POST", "/Groups").len(), 1);
    assert_nothing_to_do(&w.config);
}

#[test]
fn a_lost_state_file_against_a_populated_target_adopts_and_makes_no_duplicates() {
    let w = World::new(false, &["alice", "bob"], "");
    w.slapd.add_group("ops", &[&w.user_dn("alice")]);
    w.slapd
        .add_group("dev", &[&w.user_dn("alice"), &w.user_dn("bob")]);
    w.slapd.add_group("empty", &[]);
    assert_code(&sync(&w.config, &[]), 0);
    let before = w.groups();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(w.state().join(f));
    }
    let plan = w.dry_run();
    let sink = &plan["sinks"][0];
    assert_eq!(
        sink["summary"],
        json!({"create":0,"adopt":3,"update":0,"delete":0,"member_add":0,"member_remove":0,"unmapped":0}),
        "{plan}"
    );
    for op in sink["operations"].as_array().unwrap() {
        assert_eq!(
            (&op["op"], &op["by"]),
            (&json!("adopt"), &json!("external_id"))
        );
    }
    let posts = w.proxy.requests("POST", "/Groups").len();
    assert_code(&sync(&w.config, &[]), 0);
    assert_eq!(
        w.proxy.requests("POST", "/Groups").len(),
        posts,
        "no create"
    );
    assert_eq!(w.groups(), before);
    assert_nothing_to_do(&w.config);
}

#[test]
fn unmapped_members_leave_a_dry_run_with_nothing_to_do_and_are_listed() {
    let w = World::new(false, &["alice"], "");
    w.slapd.add_user("newcomer", "newcomer@example.com"); // not in the target
    w.slapd.add_user("visitor", "visitor@example.com"); // not in the target
    w.slapd.add_group(
        "ops",
        &[
            &w.user_dn("alice"),
            &w.user_dn("newcomer"),
            &w.user_dn("visitor"),
        ],
    );
    w.slapd.add_group("dev", &[&w.user_dn("newcomer")]);
    let plan = w.dry_run();
    let sink = &plan["sinks"][0];
    assert_eq!(sink["summary"]["member_add"], 1, "{plan}");
    assert_eq!(sink["summary"]["unmapped"], 3, "{plan}");
    assert_code(&sync(&w.config, &[]), 0);
    assert_eq!(w.groups()["ops"], vec![set(&["alice"])]);
    // `ledger` shows the owned groups with their member counts and the run's unmapped members.
    let out = run_ldapsync(&w.config, &["ledger", "--output", "json"]);
    assert_code(&out, 0);
    let ledger: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let owned = &ledger["sinks"][0];
    let members: Vec<(&str, u64)> = owned["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), g["members"].as_u64().unwrap()))
        .collect();
    assert_eq!(members, [("dev", 0), ("ops", 1)], "{ledger}");
    assert_eq!(
        owned["unmapped"][1]["members"],
        json!(["newcomer", "visitor"]),
        "{ledger}"
    );

    // Unchanged directory: nothing to do, the unmapped users listed, one WARN naming them.
    // alice is in the state file's user map; only the misses are looked up, in one filter.
    let before = w.proxy.requests("GET", "/Users").len();
    let plan = assert_nothing_to_do(&w.config);
    let lookups: Vec<Value> = w.proxy.requests("GET", "/Users")[before..].to_vec();
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    let query = lookups[0]["query"].as_str().unwrap_or_default();
    assert!(
        query.contains("newcomer") && query.contains("visitor") && !query.contains("alice"),
        "{query}"
    );
    let sink = &plan["sinks"][0];
    assert_eq!(sink["summary"]["unmapped"], 3, "{plan}");
    assert_eq!(
        sink["unmapped"],
        json!([
            {"group": "dev", "source_id": sink["unmapped"][0]["source_id"], "members": ["newcomer"]},
            {"group": "ops", "source_id": sink["unmapped"][1]["source_id"], "members": ["newcomer", "visitor"]}
        ]),
        "{plan}"
    );
    let out = sync(&w.config, &["--dry-run"]);
    assert_code(&out, 0);
    let text = out.stdout_str();
    assert!(text.contains("nothing to do"), "{text}");
    assert!(text.contains("unmapped: ops: newcomer, visitor"), "{text}");
    let stderr = out.stderr_str();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("newcomer"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");

    // The user appears in the target: added on the next run.
    w.scim.create_user("newcomer", "newcomer@example.com");
    assert_code(&sync(&w.config, &[]), 0);
    let groups = w.groups();
    assert_eq!(groups["ops"], vec![set(&["alice", "newcomer"])]);
    assert_eq!(groups["dev"], vec![set(&["newcomer"])]);
}

#[test]
fn with_adopt_never_a_create_conflict_fails_that_group_only() {
    let w = World::new(true, &["alice"], "adopt = \"never\"");
    let hand_made = w.hand_made("ops", None, &[]);
    w.slapd.add_group("ops", &[&w.user_dn("alice")]);
    w.slapd.add_group("dev", &[&w.user_dn("alice")]);
    let plan = w.dry_run();
    assert_eq!(plan["sinks"][0]["summary"]["adopt"], 0, "{plan}");
    assert_failed(
        &sync_failures(&w.config),
        "create",
        "ops",
        "adopt = \"never\"",
    );
    let groups = w.groups();
    assert_eq!(groups["dev"], vec![set(&["alice"])], "{groups:?}");
    assert_eq!(groups["ops"], vec![set(&[])], "{groups:?}");
    assert!(
        w.scim
            .groups()
            .iter()
            .any(|g| g["id"] == hand_made.as_str())
    );
}

impl World {
    /// The SCIM group named `name` (the first one).
    fn group_named(&self, name: &str) -> Value {
        self.scim
            .groups()
            .into_iter()
            .find(|g| g["displayName"] == name)
            .unwrap_or_else(|| panic!("no group {name:?}: {:?}", self.groups()))
    }

    /// The SCIM user id of `user_name`.
    fn user_id(&self, user_name: &str) -> String {
        self.scim
            .users()
            .iter()
            .find(|u| u["userName"] == user_name)
            .map(|u| u["id"].as_str().unwrap().to_string())
            .unwrap()
    }

    /// Changes a group by hand in the target: a SCIM PATCH with these operations.
    fn patch_by_hand(&self, id: &str, operations: Value) {
        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations});
        let r = self
            .scim
            .request("PATCH", &format!("/Groups/{id}"), Some(&body));
        assert!(r.status < 300, "PATCH by hand: {} {}", r.status, r.body);
    }

    /// Drift made by hand after a first sync of ops (alice, bob), dev (alice), gone (bob):
    /// carol added to ops, bob removed from it, dev renamed, gone deleted.
    fn drift_by_hand(&self) {
        let ops = self.group_named("ops");
        let ops_id = ops["id"].as_str().unwrap();
        self.patch_by_hand(
            ops_id,
            json!([
                {"op": "add", "path": "members", "value": [{"value": self.user_id("carol")}]},
                {"op": "remove", "path": format!("members[value eq \"{}\"]", self.user_id("bob"))}
            ]),
        );
        let dev = self.group_named("dev");
        self.patch_by_hand(
            dev["id"].as_str().unwrap(),
            json!([{"op": "replace", "value": {"displayName": "dev-renamed"}}]),
        );
        let gone = self.group_named("gone");
        let r = self.scim.request(
            "DELETE",
            &format!("/Groups/{}", gone["id"].as_str().unwrap()),
            None,
        );
        assert!(r.status < 300, "{}", r.body);
    }
}

/// Issue 11: changes made by hand in the target are seen by `sync --full` only, planned as
/// ordinary operations flagged as drift, repaired, and the ledger rebuilt from what was read.
#[test]
fn a_full_sync_repairs_what_was_changed_by_hand_in_the_target() {
    let w = World::new(false, &["alice", "bob", "carol"], "");
    let (alice, bob) = (w.user_dn("alice"), w.user_dn("bob"));
    w.slapd.add_drift_groups(&alice, &bob);
    assert_code(&sync(&w.config, &[]), 0);
    w.drift_by_hand();
    // The ledger alone sees nothing.
    assert_nothing_to_do(&w.config);

    let out = sync(&w.config, &["--dry-run", "--full", "--output", "json"]);
    assert_code(&out, 0);
    let plan: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let sink = &plan["sinks"][0];
    assert_eq!(
        sink["summary"],
        json!({"create":1,"adopt":0,"update":1,"delete":0,"member_add":2,"member_remove":1,"unmapped":0}),
        "{plan}"
    );
    let shown = planned_operations(&plan);
    let expected = [
        ("create", "gone", vec![]),
        ("update", "dev", vec![]),
        ("member_add", "gone", vec!["bob"]),
        ("member_add", "ops", vec!["bob"]),
        ("member_remove", "ops", vec!["carol"]),
    ];
    assert_eq!(shown.len(), expected.len(), "{plan}");
    for (shown, (op, group, members)) in shown.iter().zip(expected) {
        assert_eq!((shown.op.as_str(), shown.group.as_str()), (op, group));
        assert_eq!(shown.members, members, "{op} {group}");
        assert!(shown.drift, "{op} {group} repairs drift: {plan}");
    }
    let text = sync(&w.config, &["--dry-run", "--full"]).stdout_str();
    assert!(
        text.contains("dev-renamed → dev  ~ drift"),
        "the text plan marks drift: {text}"
    );

    let out = sync(&w.config, &["--full"]);
    assert_code(&out, 0);
    let groups = w.groups();
    assert_eq!(groups["ops"], vec![set(&["alice", "bob"])], "{groups:?}");
    assert_eq!(groups["dev"], vec![set(&["alice"])], "{groups:?}");
    assert_eq!(groups["gone"], vec![set(&["bob"])], "{groups:?}");
    assert!(!groups.contains_key("dev-renamed"), "{groups:?}");
    assert_nothing_to_do(&w.config);
    let again = sync(&w.config, &["--dry-run", "--full", "--output", "json"]);
    let again: Value = serde_json::from_str(&again.stdout_str()).unwrap();
    assert_eq!(again["sinks"][0]["operations"], json!([]), "{again}");
    let status = run_ldapsync(&w.config, &["status"]).stdout_str();
    assert!(status.contains("last full reconcile 20"), "{status}");
}

/// A full reconcile whose repairs remove more members than `[safety]` allows is held (exit 3)
/// and writes nothing; groups the sink does not own are never read (only what adoption needs).
#[test]
fn a_full_sync_whose_repairs_exceed_a_threshold_is_held() {
    let w = World::new(false, &["alice", "bob", "carol"], "");
    let other = w.hand_made("not-ours", None, &["carol"]);
    w.slapd.add_group("ops", &[&w.user_dn("alice")]);
    assert_code(&sync(&w.config, &[]), 0);
    let ops = w.group_named("ops");
    w.patch_by_hand(
        ops["id"].as_str().unwrap(),
        json!([{"op": "add", "path": "members", "value": [
            {"value": w.user_id("bob")}, {"value": w.user_id("carol")}]}]),
    );
    let strict = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace("max_member_removes = 100000", "max_member_removes = 1");
    let config = write_file(w.state(), "strict.toml", strict);
    let before = w.proxy.log().len();
    let out = sync(&config, &["--full"]);
    assert_code(&out, 3);
    let groups = w.groups();
    assert_eq!(groups["ops"], vec![set(&["alice", "bob", "carol"])]);
    let log = w.proxy.log();
    assert!(
        log[before..].iter().all(|r| r["method"] == "GET"),
        "held: nothing written"
    );
    assert!(
        log[before..]
            .iter()
            .all(|r| !r["path"].as_str().unwrap_or("").contains(&other)),
        "a group the sink does not own is not read"
    );
    assert_code(&sync(&config, &["--full", "--allow-deletes"]), 0);
    assert_eq!(w.groups()["ops"], vec![set(&["alice"])]);
    assert_eq!(w.groups()["not-ours"], vec![set(&["carol"])]);
}

/// Issue 11, SCIM `provision_users`: two LDAP users missing in SCIM are created (externalId =
/// the LDAP id) and added, planned as `user_create`; one leaves the scope and is deactivated,
/// not deleted; a user created by hand is never touched.
#[test]
fn provision_users_creates_missing_users_and_deactivates_those_that_leave() {
    let w = World::new(false, &["alice"], "provision_users = true");
    w.scim.create_user("mallory", "mallory@example.com");
    let mallory_before = w
        .scim
        .users()
        .into_iter()
        .find(|u| u["userName"] == "mallory")
        .unwrap();
    let dave = w.slapd.add_user("dave", "dave@example.com");
    let erin = w.slapd.add_user("erin", "erin@example.com");
    let ops = w
        .slapd
        .add_group("ops", &[&w.user_dn("alice"), &dave, &erin]);

    let plan = w.dry_run();
    let sink = &plan["sinks"][0];
    assert_eq!(sink["summary"]["user_create"], 2, "{plan}");
    assert_eq!(sink["summary"]["member_add"], 3, "{plan}");
    assert_eq!(sink["summary"]["unmapped"], 0, "{plan}");
    let created: Vec<&Value> = sink["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["op"] == "user_create")
        .map(|o| &o["members"][0])
        .collect();
    assert_eq!(created, [&json!("dave"), &json!("erin")], "{plan}");
    assert!(w.scim.users().iter().all(|u| u["userName"] != "dave"));

    assert_code(&sync(&w.config, &[]), 0);
    let users = w.scim.users();
    for (name, dn) in [("dave", &dave), ("erin", &erin)] {
        let user = users.iter().find(|u| u["userName"] == name).unwrap();
        let uuid = w.slapd.attr_values(dn, "entryUUID").remove(0);
        assert_eq!(user["externalId"], uuid.as_str(), "{user}");
        assert_eq!(user["active"], true, "{user}");
    }
    assert_eq!(w.groups()["ops"], vec![set(&["alice", "dave", "erin"])]);
    assert_nothing_to_do(&w.config);

    // erin leaves the scope (no synced group lists her): deactivated, never deleted.
    w.slapd.remove_member(&ops, &erin);
    let plan = w.dry_run();
    assert_eq!(plan["sinks"][0]["summary"]["user_deactivate"], 1, "{plan}");
    assert_code(&sync(&w.config, &[]), 0);
    let users = w.scim.users();
    let erin_now = users.iter().find(|u| u["userName"] == "erin").unwrap();
    assert_eq!(erin_now["active"], false, "{erin_now}");
    assert!(w.proxy.requests("DELETE", "").is_empty());
    let mallory_after = users.iter().find(|u| u["userName"] == "mallory").unwrap();
    assert_eq!(
        mallory_after, &mallory_before,
        "a user made by hand is untouched"
    );
    assert_eq!(w.groups()["ops"], vec![set(&["alice", "dave"])]);
    assert_nothing_to_do(&w.config);

    // erin comes back: her deactivated user is reactivated (not created again) and re-added.
    w.slapd.add_member(&ops, &erin);
    let plan = w.dry_run();
    let summary = &plan["sinks"][0]["summary"];
    assert_eq!(summary["user_reactivate"], 1, "{plan}");
    assert_eq!(
        summary["user_create"],
        Value::Null,
        "no user_create: {plan}"
    );
    assert_code(&sync(&w.config, &[]), 0);
    let users = w.scim.users();
    let erins: Vec<&Value> = users.iter().filter(|u| u["userName"] == "erin").collect();
    assert_eq!(erins.len(), 1, "{users:?}");
    assert_eq!(erins[0]["active"], true, "{}", erins[0]);
    assert_eq!(w.groups()["ops"], vec![set(&["alice", "dave", "erin"])]);
    assert_nothing_to_do(&w.config);
}
