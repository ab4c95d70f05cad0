//! End to end: a real slapd → the `ldapsync` binary → the PingOne emulator (tests/emulators/pingone.py),
//! for both `pingone_provisioning_sync` and `pingone_groups`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const ENV_ID: &str = "11111111-2222-3333-4444-555555555555";
const SYNC_ID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const CLIENT_ID: &str = "ldapsync-client";
const CLIENT_SECRET: &str = "s3cret-client";
const POP_1: &str = "99999999-8888-7777-6666-000000000001";
const POP_2: &str = "99999999-8888-7777-6666-000000000002";

/// slapd + the PingOne emulator + a config with one sink `p1`; derefs to the [`EmulatorWorld`].
struct World {
    w: EmulatorWorld,
    config: PathBuf,
}

impl std::ops::Deref for World {
    type Target = EmulatorWorld;
    fn deref(&self) -> &EmulatorWorld {
        &self.w
    }
}

impl World {
    /// slapd + emulator (with `emu_args`) + a config whose only sink is `sink` (TOML lines
    /// after `name`/`type`, the connection keys are added).
    fn new(emu_args: &[&str], sink_type: &str, sink: &str) -> World {
        let w = EmulatorWorld::start("pingone", emu_args);
        let secret = write_file(w.dir.path(), "client-secret", format!("{CLIENT_SECRET}\n"));
        let config = w.write_config(
            100,
            &format!(
                r#"name = "p1"
type = "{sink_type}"
api_url = "{base}/v1"
auth_url = "{base}"
environment_id = "{ENV_ID}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
{sink}"#,
                base = w.emu.base_url(),
                secret = secret.display(),
            ),
        );
        World { w, config }
    }

    fn sync(&self, args: &[&str]) -> std::process::Output {
        sync(&self.config, args)
    }

    fn sync_ok(&self) {
        let out = self.sync(&[]);
        assert_eq!(
            out.code(),
            0,
            "{}\nemulator:\n{}",
            out.describe(),
            self.emu.stderr_tail(20)
        );
    }

    fn entry_uuid(&self, dn: &str) -> String {
        self.slapd
            .attr_values(dn, "entryUUID")
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no entryUUID on {dn}"))
    }

    fn imports(&self) -> Vec<Value> {
        self.emu.state_list("imports")
    }

    fn stored_token(&self) -> Option<String> {
        self.emu.state()["provisioning_tokens"][SYNC_ID]
            .as_str()
            .map(str::to_string)
    }

    fn requests(&self) -> Vec<Value> {
        self.emu.requests()
    }

    /// The statuses of the requests to the provisioning sync (`…/provisioningSyncs/…`), from
    /// index `from` of the log.
    fn provisioning_statuses(&self, from: usize) -> Vec<Value> {
        self.requests()
            .into_iter()
            .skip(from)
            .filter(|r| {
                r["path"]
                    .as_str()
                    .unwrap_or("")
                    .contains("provisioningSyncs")
            })
            .map(|r| r["status"].clone())
            .collect()
    }
}

fn sorted(values: &Value) -> Vec<String> {
    let mut v: Vec<String> = values
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {values}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

fn group_in<'a>(import: &'a Value, unique_id: &str) -> &'a Value {
    import["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["uniqueId"] == unique_id))
        .unwrap_or_else(|| panic!("{unique_id} not in import {import}"))
}

fn provisioning_world(extra: &str, emu_args: &[&str]) -> World {
    World::new(
        emu_args,
        "pingone_provisioning_sync",
        &format!("provisioning_sync_id = \"{SYNC_ID}\"\n{extra}"),
    )
}

// ------------------------------------------------------------------ pingone_provisioning_sync

#[test]
fn provisioning_sync_full_cycle_then_incremental_operations() {
    let w = provisioning_world("", &["--enforce-start-token"]);
    let alice = w.slapd.add_user("alice", "alice@example.com");
    let bob = w.slapd.add_user("bob", "bob@example.com");
    let carol = w.slapd.add_user("carol", "carol@example.com");
    let eng = w.slapd.add_group("eng", &[&alice, &bob]);
    let ops = w.slapd.add_group("ops", &[&carol]);
    let (eng_id, ops_id) = (w.entry_uuid(&eng), w.entry_uuid(&ops));

    // Initial cycle: no startToken, every group without operation, nextToken on the last batch.
    w.sync_ok();
    let imports = w.imports();
    assert_eq!(imports.len(), 1, "{imports:?}");
    let first = &imports[0];
    assert!(first.get("startToken").is_none(), "{first}");
    let t1 = first["nextToken"].as_str().expect("nextToken").to_string();
    assert_eq!(w.stored_token().as_deref(), Some(t1.as_str()));
    let e = group_in(first, &eng_id);
    assert!(e.get("operation").is_none(), "{e}");
    assert_eq!(e["attributes"]["name"], "eng");
    assert_eq!(e["attributes"]["dn"], eng);
    assert_eq!(e["attributes"]["active"], true);
    assert_eq!(
        sorted(&e["attributes"]["member"]),
        sorted(&json!([alice, bob]))
    );
    assert_eq!(
        w.emu.state()["external_groups"][SYNC_ID][&ops_id]["name"],
        "ops"
    );

    // Nothing changed: nothing sent.
    w.sync_ok();
    assert_eq!(w.imports().len(), 1);

    // Create.
    let qa = w.slapd.add_group("qa", &[&alice]);
    let qa_id = w.entry_uuid(&qa);
    w.sync_ok();
    let imports = w.imports();
    assert_eq!(imports.len(), 2);
    let created = &imports[1];
    assert_eq!(created["startToken"], t1.as_str());
    let t2 = created["nextToken"]
        .as_str()
        .expect("nextToken")
        .to_string();
    assert_ne!(t1, t2);
    assert_eq!(created["groups"].as_array().map(Vec::len), Some(1));
    let q = group_in(created, &qa_id);
    assert_eq!(q["operation"], "CREATED");
    assert_eq!(sorted(&q["attributes"]["member"]), vec![alice.clone()]);

    // Rename (modrdn) → UPDATED with the new name and DN, full member list.
    w.slapd.modify(&format!(
        "dn: {eng}\nchangetype: modrdn\nnewrdn: cn=platform\ndeleteoldrdn: 1\n"
    ));
    let platform = format!("cn=platform,{}", w.slapd.groups_dn());
    w.sync_ok();
    let imports = w.imports();
    let renamed = &imports[2];
    assert_eq!(renamed["startToken"], t2.as_str());
    let p = group_in(renamed, &eng_id);
    assert_eq!(p["operation"], "UPDATED");
    assert_eq!(p["attributes"]["name"], "platform");
    assert_eq!(p["attributes"]["dn"], platform);
    assert_eq!(
        sorted(&p["attributes"]["member"]),
        sorted(&json!([alice, bob]))
    );

    // Member add → UPDATED with the whole new list.
    w.slapd.add_member(&platform, &carol);
    w.sync_ok();
    let imports = w.imports();
    let p = group_in(&imports[3], &eng_id);
    assert_eq!(p["operation"], "UPDATED");
    assert_eq!(
        sorted(&p["attributes"]["member"]),
        sorted(&json!([alice, bob, carol]))
    );

    // Member remove → UPDATED with the whole new list.
    w.slapd.remove_member(&platform, &alice);
    w.sync_ok();
    let imports = w.imports();
    let p = group_in(&imports[4], &eng_id);
    assert_eq!(p["operation"], "UPDATED");
    assert_eq!(
        sorted(&p["attributes"]["member"]),
        sorted(&json!([bob, carol]))
    );
    assert_eq!(
        sorted(&w.emu.state()["external_groups"][SYNC_ID][&eng_id]["member"]),
        sorted(&json!([bob, carol]))
    );

    // Delete → DELETED with the last known attributes.
    w.slapd.delete(&[&qa]);
    w.sync_ok();
    let imports = w.imports();
    assert_eq!(imports.len(), 6);
    let d = group_in(&imports[5], &qa_id);
    assert_eq!(d["operation"], "DELETED");
    assert_eq!(d["attributes"]["name"], "qa");
    assert_eq!(d["attributes"]["dn"], qa);
    assert_eq!(sorted(&d["attributes"]["member"]), vec![alice.clone()]);
    let state = w.emu.state();
    assert_eq!(state["external_groups"][SYNC_ID][&qa_id]["deleted"], true);
    assert_eq!(
        state["provisioning_tokens"][SYNC_ID],
        imports[5]["nextToken"]
    );

    // --full: every current group again, no operation, no startToken.
    let out = w.sync(&["--full"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let imports = w.imports();
    let full = &imports[6];
    assert!(full.get("startToken").is_none(), "{full}");
    assert!(full["nextToken"].is_string());
    let ids: Vec<&str> = full["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            assert!(g.get("operation").is_none(), "{g}");
            g["uniqueId"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&eng_id.as_str()) && ids.contains(&ops_id.as_str()));
}

#[test]
fn provisioning_sync_failed_cycle_keeps_the_token_and_the_next_run_resends() {
    let w = provisioning_world("batch_size = 1\n", &["--enforce-start-token"]);
    let users: Vec<String> = (0..4)
        .map(|i| {
            w.slapd
                .add_user(&format!("u{i}"), &format!("u{i}@example.com"))
        })
        .collect();
    let groups: Vec<String> = (0..3)
        .map(|i| w.slapd.add_group(&format!("g{i}"), &[&users[0]]))
        .collect();
    w.sync_ok();
    assert_eq!(w.imports().len(), 3, "one group per batch");
    let t1 = w.stored_token().expect("token after the first cycle");

    // Change every group, then let only the first import of the next cycle through.
    for g in &groups {
        w.slapd.add_member(g, &users[1]);
    }
    w.emu.admin_post(
        "/faults",
        &json!({"fail_imports_after": 1, "fail_status": 500}),
    );
    let out = w.sync(&[]);
    assert_ne!(out.code(), 0, "{}", out.describe());
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(all.contains("sink \"p1\""), "{all}");
    assert!(all.contains("batch 2 of 3"), "{all}");
    assert_eq!(
        w.stored_token().as_deref(),
        Some(t1.as_str()),
        "token not advanced"
    );
    let imports = w.imports();
    assert_eq!(imports.len(), 4);
    assert_eq!(imports[3]["startToken"], t1.as_str());
    assert!(imports[3].get("nextToken").is_none());

    // Next run: resends from the old token, finishes the cycle, converges.
    w.emu.admin_post("/faults", &json!({}));
    w.sync_ok();
    let imports = w.imports();
    let retry = &imports[4..];
    assert_eq!(retry.len(), 2, "the two groups not yet accepted: {retry:?}");
    for import in retry {
        assert_eq!(import["startToken"], t1.as_str());
    }
    assert!(retry[0].get("nextToken").is_none());
    let t2 = retry[1]["nextToken"]
        .as_str()
        .expect("nextToken")
        .to_string();
    assert_eq!(w.stored_token().as_deref(), Some(t2.as_str()));
    let state = w.emu.state();
    for g in &groups {
        let id = w.entry_uuid(g);
        assert_eq!(
            sorted(&state["external_groups"][SYNC_ID][&id]["member"]),
            sorted(&json!([users[0], users[1]])),
            "{g}"
        );
    }
    w.sync_ok();
    assert_eq!(w.imports().len(), 6, "converged: nothing more to send");
}

#[test]
fn provisioning_sync_dry_run_shows_batches_and_sends_nothing() {
    let w = provisioning_world("batch_size = 2\n", &[]);
    let alice = w.slapd.add_user("alice", "alice@example.com");
    for name in ["a", "b", "c"] {
        w.slapd.add_group(name, &[&alice]);
    }
    let out = w.sync(&["--dry-run", "--output", "json"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let report: Value = serde_json::from_str(&out.stdout_str()).expect("JSON report");
    let preview = &report["sinks"][0]["preview"];
    let batches = preview["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 2, "{preview}");
    assert_eq!(
        batches[0]["body"]["groups"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(batches[0]["body"].get("nextToken").is_none());
    assert!(batches[1]["body"]["nextToken"].is_string());
    assert_eq!(
        batches[1]["content_type"],
        "application/vnd.pingidentity.propagation.provisioningsync.groupimport+json"
    );
    assert_eq!(batches[0]["body"]["groups"][0]["attributes"]["name"], "a");
    assert_eq!(preview["full"], true);
    let state = w.emu.state();
    assert_eq!(state["requests"], json!([]), "a dry run contacts nothing");
    assert_eq!(state["tokens_issued"], 0);
    assert_eq!(state["imports"], json!([]));
}

#[test]
fn provisioning_sync_retries_429_and_refreshes_an_expired_token() {
    let w = provisioning_world("", &[]);
    let alice = w.slapd.add_user("alice", "alice@example.com");
    w.slapd.add_group("eng", &[&alice]);

    // Three 429s with Retry-After: 1 → waited for, then accepted.
    w.emu
        .admin_post("/faults", &json!({"rate_limit_next": 3, "retry_after": 1}));
    let started = Instant::now();
    w.sync_ok();
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "Retry-After honoured"
    );
    assert_eq!(
        w.provisioning_statuses(0),
        vec![json!(429), json!(429), json!(429), json!(200)]
    );
    assert!(w.stored_token().is_some());

    // A token that expires while the run waits out a 429 → 401 → one refresh → accepted.
    w.slapd.add_group("ops", &[&alice]);
    w.emu
        .admin_post("/faults", &json!({"rate_limit_next": 1, "retry_after": 3}));
    let issued_before = w.emu.state()["tokens_issued"].as_u64().unwrap();
    let requests_before = w.requests().len();
    let config = w.config.clone();
    let run = std::thread::spawn(move || run_ldapsync(&config, &["sync"]));
    wait_until(Duration::from_secs(30), "the run to meet the 429", || {
        w.requests()
            .iter()
            .skip(requests_before)
            .any(|r| r["status"] == 429)
    });
    w.emu.admin_post("/faults", &json!({"expire_tokens": true}));
    let out = run.join().expect("ldapsync thread");
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(
        w.provisioning_statuses(requests_before),
        vec![json!(429), json!(401), json!(200)]
    );
    assert_eq!(
        w.emu.state()["tokens_issued"].as_u64().unwrap(),
        issued_before + 2,
        "one token for the run, one refresh"
    );
}

#[test]
fn provisioning_sync_unknown_sync_id_and_415_are_clear_errors() {
    let w = World::new(
        &[],
        "pingone_provisioning_sync",
        "provisioning_sync_id = \"no-such-sync\"\n",
    );
    let alice = w.slapd.add_user("alice", "alice@example.com");
    w.slapd.add_group("eng", &[&alice]);
    let out = w.sync(&[]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(all.contains("sink \"p1\""), "{all}");
    assert!(all.contains("HTTP 404"), "{all}");
    assert!(all.contains("provisioning_sync_id"), "{all}");
    assert!(!all.contains(CLIENT_SECRET), "no secrets in output");

    let w = provisioning_world("", &[]);
    let alice = w.slapd.add_user("alice", "alice@example.com");
    w.slapd.add_group("eng", &[&alice]);
    w.emu
        .admin_post("/faults", &json!({"fail_next": 1, "fail_status": 415}));
    let out = w.sync(&["--output", "json"]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    let report: Value = serde_json::from_str(&out.stdout_str()).expect("JSON report");
    let error = report["sinks"][0]["error"]
        .as_str()
        .expect("error")
        .to_string();
    assert!(error.contains("sink \"p1\""), "{error}");
    assert!(error.contains("HTTP 415"), "{error}");
    assert!(error.contains("content type"), "{error}");
    assert_eq!(w.stored_token(), None);
}

// ------------------------------------------------------------------ pingone_groups

fn token(emu: &Emulator) -> String {
    let response = ureq::post(format!("{}/{ENV_ID}/as/token", emu.base_url()))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!(
            "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
        ))
        .expect("token request");
    let body: Value = response
        .into_body()
        .read_json()
        .expect("token response JSON");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// POSTs `body` to the environment's `path` with a fresh access token, expecting 201; the
/// response's JSON.
fn api_create(emu: &Emulator, path: &str, body: Value) -> Value {
    let bearer = format!("Bearer {}", token(emu));
    let r = emu.request(
        "POST",
        &format!("/v1/environments/{ENV_ID}{path}"),
        &[("Authorization", bearer.as_str())],
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn create_group(emu: &Emulator, body: Value) -> String {
    api_create(emu, "/groups", body)["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Creates PingOne users (username, email) and returns their ids by username.
fn add_users(emu: &Emulator, names: &[&str]) -> std::collections::HashMap<String, String> {
    let users: Vec<Value> = names
        .iter()
        .map(|n| json!({"username": n, "email": format!("{n}@example.com")}))
        .collect();
    let created = emu.admin_post("/users", &json!(users));
    created
        .as_array()
        .expect("users")
        .iter()
        .map(|u| {
            (
                u["username"].as_str().unwrap().to_string(),
                u["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn groups_named(state: &Value, name: &str) -> Vec<Value> {
    state["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["name"] == name)
        .cloned()
        .collect()
}

fn members(state: &Value, gid: &str) -> Vec<String> {
    let mut v: Vec<String> = state["memberships"][gid]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn ids(users: &std::collections::HashMap<String, String>, names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|n| users[*n].clone()).collect();
    v.sort();
    v
}

#[test]
fn groups_sink_create_rename_members_and_delete() {
    let w = World::new(&[], "pingone_groups", "user_match = \"username\"\n");
    let pingone_users = add_users(&w.emu, &["alice", "bob", "carol"]);
    let alice = w.slapd.add_user("alice", "alice@example.com");
    let bob = w.slapd.add_user("bob", "bob@example.com");
    let carol = w.slapd.add_user("carol", "carol@example.com");
    let dave = w.slapd.add_user("dave", "dave@example.com"); // not in PingOne
    let eng = w.slapd.add_group("eng", &[&alice, &bob, &dave]);
    let eng_id = w.entry_uuid(&eng);
    // A second group, so that deleting eng later does not empty the scope (docs/safety.md rule 1).
    w.slapd.add_group("staff", &[&bob]);

    // Create with externalId = source id; memberships; dave is unmapped, not fatal.
    let out = w.sync(&["--output", "json"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let report: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    // Plans know the target: dave is listed as unmapped, not planned.
    assert_eq!(report["sinks"][0]["summary"]["unmapped"], 1, "{report}");
    let state = w.emu.state();
    let found = groups_named(&state, "eng");
    assert_eq!(found.len(), 1);
    let gid = found[0]["id"].as_str().unwrap().to_string();
    assert_eq!(found[0]["externalId"], eng_id.as_str());
    assert_eq!(
        members(&state, &gid),
        ids(&pingone_users, &["alice", "bob"])
    );

    // Rename (modrdn) → PUT on the same group.
    w.slapd.modify(&format!(
        "dn: {eng}\nchangetype: modrdn\nnewrdn: cn=platform\ndeleteoldrdn: 1\n"
    ));
    let platform = format!("cn=platform,{}", w.slapd.groups_dn());
    w.sync_ok();
    let state = w.emu.state();
    assert!(groups_named(&state, "eng").is_empty());
    let renamed = groups_named(&state, "platform");
    assert_eq!(renamed.len(), 1);
    assert_eq!(renamed[0]["id"], gid.as_str());
    assert_eq!(renamed[0]["externalId"], eng_id.as_str());

    // Member add and remove in one run.
    w.slapd.modify(&format!(
        "dn: {platform}\nadd: member\nmember: {carol}\n-\ndelete: member\nmember: {alice}\n"
    ));
    w.sync_ok();
    let state = w.emu.state();
    assert_eq!(
        members(&state, &gid),
        ids(&pingone_users, &["bob", "carol"])
    );

    // Delete.
    w.slapd.delete(&[&platform]);
    w.sync_ok();
    let state = w.emu.state();
    assert!(
        state["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["id"] != gid.as_str()),
        "{state}"
    );
    assert!(state["memberships"].get(&gid).is_none());
    assert_eq!(groups_named(&state, "staff").len(), 1);
}

#[test]
fn groups_sink_adopts_on_uniqueness_conflict_following_pages() {
    // Page size 1 and two populations: the name lookup returns the other population's "eng"
    // first, so adopting the right one needs page 2 (via _links.next).
    let w = World::new(
        &[
            "--page-size",
            "1",
            "--population-id",
            POP_1,
            "--population-id",
            POP_2,
        ],
        "pingone_groups",
        &format!("population_id = \"{POP_2}\"\npage_size = 1\n"),
    );
    let pingone_users = add_users(&w.emu, &["alice"]);
    let other = create_group(&w.emu, json!({"name": "eng", "population": {"id": POP_1}}));
    let existing = create_group(&w.emu, json!({"name": "eng", "population": {"id": POP_2}}));
    let alice = w.slapd.add_user("alice", "alice@example.com");
    w.slapd.add_group("eng", &[&alice]);

    let before = w.requests().len();
    w.sync_ok();
    let state = w.emu.state();
    assert_eq!(groups_named(&state, "eng").len(), 2, "no duplicate created");
    assert_eq!(members(&state, &existing), ids(&pingone_users, &["alice"]));
    assert!(members(&state, &other).is_empty());
    let paged = w.requests().iter().any(|r| {
        r["path"].as_str().unwrap_or("").ends_with("/groups")
            && r["query"].as_str().unwrap_or("").contains("cursor=")
    });
    assert!(paged, "followed _links.next");
    // Plans know the target: the group is adopted before any create is sent.
    let created = w.requests()[before..]
        .iter()
        .any(|r| r["method"] == "POST" && r["path"].as_str().unwrap_or("").ends_with("/groups"));
    assert!(!created, "adopted without a create request");

    // Adopted: a second run has nothing to do and later changes go to the adopted group.
    w.sync_ok();
    assert_eq!(groups_named(&w.emu.state(), "eng").len(), 2);
}

#[test]
fn groups_sink_adopts_on_409_and_treats_duplicate_memberships_as_done() {
    let w = World::new(
        &[
            "--uniqueness-status",
            "409",
            "--duplicate-membership",
            "409",
        ],
        "pingone_groups",
        "user_match = \"email\"\n",
    );
    let pingone_users = add_users(&w.emu, &["alice", "mallory"]);
    let existing = create_group(&w.emu, json!({"name": "eng"}));
    // alice is already a member of the group we will adopt; mallory (not in LDAP's group) is
    // removed: an adopted group's members are made equal to LDAP's.
    for user in ["alice", "mallory"] {
        api_create(
            &w.emu,
            &format!("/users/{}/memberOfGroups", pingone_users[user]),
            json!({"id": existing}),
        );
    }
    let alice = w.slapd.add_user("alice", "alice@example.com");
    w.slapd.add_group("eng", &[&alice]);
    let plan: Value =
        serde_json::from_str(&w.sync(&["--dry-run", "--output", "json"]).stdout_str()).unwrap();
    let summary = &plan["sinks"][0]["summary"];
    assert_eq!(
        (
            &summary["adopt"],
            &summary["member_add"],
            &summary["member_remove"]
        ),
        (&json!(1), &json!(0), &json!(1)),
        "{plan}"
    );
    assert_eq!(
        plan["sinks"][0]["operations"][1]["members"],
        json!(["mallory"])
    );
    w.sync_ok();
    let state = w.emu.state();
    assert_eq!(groups_named(&state, "eng").len(), 1);
    assert_eq!(members(&state, &existing), ids(&pingone_users, &["alice"]));
    w.sync_ok();
}

#[test]
fn groups_sink_resumes_an_unconfirmed_create_by_external_id() {
    let w = World::new(&[], "pingone_groups", "");
    let pingone_users = add_users(&w.emu, &["alice"]);
    let alice = w.slapd.add_user("alice", "alice@example.com");
    let eng = w.slapd.add_group("eng", &[&alice]);
    let eng_id = w.entry_uuid(&eng);

    // The create fails (500 on a POST is not retried) and so does the lookup that follows it
    // (a create is sent again only after a lookup showed it absent): only the intent remains.
    w.emu
        .admin_post("/faults", &json!({"fail_next": 20, "fail_status": 500}));
    let out = w.sync(&[]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    w.emu.admin_post("/faults", &json!({}));
    assert!(groups_named(&w.emu.state(), "eng").is_empty());

    // As if the create had reached PingOne and only its answer was lost.
    let gid = create_group(&w.emu, json!({"name": "eng", "externalId": eng_id}));
    let before = w.requests().len();
    w.sync_ok();
    let requests = w.requests();
    assert!(
        !requests[before..]
            .iter()
            .any(|r| r["method"] == "POST" && r["path"].as_str().unwrap_or("").ends_with("/groups")),
        "looked the group up instead of creating it again: {requests:?}"
    );
    let state = w.emu.state();
    assert_eq!(groups_named(&state, "eng").len(), 1);
    assert_eq!(members(&state, &gid), ids(&pingone_users, &["alice"]));
}

/// Behind the fault proxy: an interrupted create (a 500 PingOne never processed), then a PingOne
/// whose group listings ignore the filter and answer every group, and whose next create is
/// committed but answered 503. The unrelated group the listing answers first is never adopted
/// (every answer is checked on the client side), and g03 ends up created exactly once.
#[test]
fn groups_sink_behind_a_target_that_ignores_filters_adopts_nothing_unrelated() {
    let w = World::new(&[], "pingone_groups", "");
    let pingone_users = add_users(&w.emu, &["alice", "bob"]);
    let finance = create_group(&w.emu, json!({"name": "AAA-finance-admins"}));
    let proxy = FaultProxy::start(w.emu.base_url());
    let secret = w.dir.path().join("client-secret");
    let config = w.write_config(
        100,
        &format!(
            "name = \"p1\"\ntype = \"pingone_groups\"\napi_url = \"{proxy}/v1\"\nauth_url = \"{base}\"\nenvironment_id = \"{ENV_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{secret}\"\nmax_retries = 1\n",
            proxy = proxy.url(),
            base = w.emu.base_url(),
            secret = secret.display(),
        ),
    );
    let alice = w.slapd.add_user("alice", "alice@example.com");
    w.slapd.add_group("g03", &[&alice]);
    proxy.rules(json!([
        {"method": "POST", "path": "/groups$", "action": "status", "status": 500}
    ]));
    assert_eq!(sync(&config, &[]).code(), 1);
    proxy.rules(json!([
        {"method": "GET", "path": "/groups$", "action": "strip_query"},
        {"method": "POST", "path": "/groups$", "action": "forward_status", "status": 503, "times": 1}
    ]));
    let out = sync(&config, &[]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let state = w.emu.state();
    assert!(members(&state, &finance).is_empty(), "{state}");
    let g03 = groups_named(&state, "g03");
    assert_eq!(g03.len(), 1, "{state}");
    let gid = g03[0]["id"].as_str().unwrap();
    assert_eq!(members(&state, gid), ids(&pingone_users, &["alice"]));
}

/// A PingOne API request made by hand (an administrator's change), expecting 2xx.
fn by_hand(emu: &Emulator, method: &str, path: &str, body: Option<Value>) {
    let bearer = format!("Bearer {}", token(emu));
    let r = emu.request(
        method,
        &format!("/v1/environments/{ENV_ID}{path}"),
        &[("Authorization", bearer.as_str())],
        body.as_ref(),
    );
    assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
}

/// Issue 11 on the Groups API: a member added by hand and one removed, a group renamed and one
/// deleted are repaired by `sync --full`, each repair flagged as drift; then nothing to do.
#[test]
fn groups_sink_full_sync_repairs_what_was_changed_by_hand() {
    let w = World::new(&[], "pingone_groups", "");
    let users = add_users(&w.emu, &["alice", "bob", "carol"]);
    w.slapd.add_drift_directory();
    w.sync_ok();
    let state = w.emu.state();
    let id = |name: &str| {
        groups_named(&state, name)[0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (ops, dev, gone) = (id("ops"), id("dev"), id("gone"));
    by_hand(
        &w.emu,
        "POST",
        &format!("/users/{}/memberOfGroups", users["carol"]),
        Some(json!({"id": ops})),
    );
    by_hand(
        &w.emu,
        "DELETE",
        &format!("/users/{}/memberOfGroups/{ops}", users["bob"]),
        None,
    );
    by_hand(
        &w.emu,
        "PUT",
        &format!("/groups/{dev}"),
        Some(json!({"name": "dev-renamed"})),
    );
    by_hand(&w.emu, "DELETE", &format!("/groups/{gone}"), None);

    assert_drift_repairs_planned(&w.config);
    assert_eq!(w.sync(&["--full"]).code(), 0);
    let state = w.emu.state();
    assert_eq!(members(&state, &ops), ids(&users, &["alice", "bob"]));
    assert_eq!(groups_named(&state, "dev")[0]["id"], dev.as_str());
    assert!(groups_named(&state, "dev-renamed").is_empty());
    let recreated = groups_named(&state, "gone");
    assert_eq!(recreated.len(), 1);
    let recreated = recreated[0]["id"].as_str().unwrap();
    assert_ne!(recreated, gone);
    assert_eq!(members(&state, recreated), ids(&users, &["bob"]));
    assert_converged_even_in_full(&w.config);
}
