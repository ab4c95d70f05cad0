//! End-to-end tests of the `forgerock` sink: a real slapd, the real `ldapsync` binary and the
//! ForgeRock AIC / PingIDM emulator (`tests/emulators/forgerock.py`). Assertions are on the
//! emulator's state and request log.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

emulator_env!(Env, "forgerock");

/// A request to IDM (under /openidm), not to the AM token endpoint.
fn is_idm(request: &Value) -> bool {
    request["path"]
        .as_str()
        .unwrap_or("")
        .starts_with("/openidm")
}

impl Env {
    /// Client-credentials auth against the emulator's default client.
    fn client_auth(&self) -> String {
        format!(
            "token_url = \"{}/am/oauth2/realms/root/realms/alpha/access_token\"\nclient_id = \"idm-provisioning\"\nclient_secret = \"idm-provisioning-secret\"\ntoken_auth_method = \"post\"",
            self.emu.base_url()
        )
    }

    fn config(&self, sink_extra: &str) -> PathBuf {
        self.write_config(
            1000,
            &format!(
                "name = \"idm\"\ntype = \"forgerock\"\nbase_url = \"{}\"\nmax_retries = 3\n{sink_extra}\n",
                self.emu.base_url()
            ),
        )
    }

    /// userNames of the group's relationships, sorted, duplicates kept.
    fn member_names(&self, name: &str) -> Vec<String> {
        self.member_names_in(name, "members", |m| m["userName"].as_str())
    }

    /// IDM requests (under /openidm) that change something, from index `from` of the log.
    fn writes_since(&self, from: usize) -> Vec<String> {
        self.0.writes_since(from, is_idm)
    }

    /// A rerun of `sync` exits 0 and sends no IDM write.
    #[track_caller]
    fn assert_converged(&self, config: &Path) {
        self.assert_sync_writes_nothing(config, is_idm);
    }

    fn add_idm_users(&self, names: &[&str]) {
        let users: Vec<Value> = names
            .iter()
            .map(|n| json!({"userName": n, "mail": format!("{n}@example.com")}))
            .collect();
        self.emu.admin_post("/users", &Value::Array(users));
    }
}

/// Create, member add/remove, rename (modrdn), delete, dry run; OAuth client credentials; the
/// `Accept-API-Version` header on every IDM request; a converged rerun writes nothing.
#[test]
fn lifecycle_with_client_credentials() {
    let env = Env::start(&[]);
    env.add_idm_users(&["alice", "bob"]);
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let bob = env.slapd.add_user("bob", "bob@example.com");
    let carol = env.slapd.add_user("carol", "carol@example.com");
    let devs = env.slapd.add_group("devs", &[&alice, &bob, &carol]);
    let ops = env.slapd.add_group("ops", &[&bob]);
    let config = env.config(&env.client_auth());

    let out = sync(&config, &["--dry-run"]);
    assert_code(&out, 0);
    assert_eq!(env.writes_since(0), Vec::<String>::new());
    assert!(env.groups().is_empty());

    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert_eq!(env.member_names("devs"), vec!["alice", "bob"]);
    assert_eq!(env.member_names("ops"), vec!["bob"]);
    assert!(
        out.stdout_str().contains("1 unmapped"),
        "{}",
        out.stdout_str()
    );
    let devs_id = env.group("devs").unwrap()["_id"].clone();
    let requests = env.emu.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r["path"].as_str().unwrap().starts_with("/openidm"))
            .all(|r| r["accept_api_version"] == "resource=1.0"),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r["path"] == "/openidm/managed/alpha_group" && r["query"] == "_action=create"),
        "{requests:#?}"
    );

    env.slapd.remove_member(&devs, &bob);
    env.slapd.add_member(&ops, &alice);
    assert_code(&sync(&config, &[]), 0);
    assert_eq!(env.member_names("devs"), vec!["alice"]);
    assert_eq!(env.member_names("ops"), vec!["alice", "bob"]);

    env.slapd.rename(&devs, "cn=developers");
    assert_code(&sync(&config, &[]), 0);
    let renamed = env.group("developers").expect("renamed");
    assert_eq!(renamed["_id"], devs_id);
    assert_eq!(env.member_names("developers"), vec!["alice"]);
    let patch = env
        .emu
        .requests()
        .into_iter()
        .rfind(|r| r["method"] == "PATCH")
        .expect("a PATCH");
    assert!(
        patch["if_match"].as_str().is_some_and(|m| !m.is_empty()),
        "{patch}"
    );

    env.slapd.delete(&[&ops]);
    assert_code(&sync(&config, &[]), 0);
    assert!(env.group("ops").is_none());

    env.assert_converged(&config);
}

/// Self-managed IDM: empty realm → `managed/group` / `managed/user`; a bearer token from a file.
#[test]
fn empty_realm_and_access_token_file() {
    let env = Env::start(&["--realm", "", "--static-token", "static-token-xyz"]);
    env.add_idm_users(&["alice"]);
    let alice = env.slapd.add_user("alice", "alice@example.com");
    env.slapd.add_group("devs", &[&alice]);
    let token = write_file(env.dir.path(), "token", "static-token-xyz\n");
    let config = env.config(&format!(
        "realm = \"\"\naccess_token_file = \"{}\"\nuser_match = \"mail\"",
        token.display()
    ));
    assert_code(&sync(&config, &[]), 0);
    assert_eq!(env.member_names("devs"), vec!["alice"]);
    let requests = env.emu.requests();
    assert!(
        requests
            .iter()
            .any(|r| r["path"] == "/openidm/managed/group" && r["method"] == "POST"),
        "{requests:#?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r["path"].as_str().unwrap().contains("access_token"))
    );
}

/// An existing group with the same name (412 on create) is adopted, not duplicated; a rename
/// that meets a stale `_rev` (412) re-reads and succeeds.
#[test]
fn adopt_on_conflict_and_stale_rev_retry() {
    let env = Env::start(&[]);
    env.add_idm_users(&["alice", "mallory"]);
    // A hand-made group with a member LDAP does not list: adopted, its members made equal.
    env.emu.admin_post(
        "/groups",
        &json!([{"name": "devs", "description": "pre-existing", "members": ["mallory"]}]),
    );
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let devs = env.slapd.add_group("devs", &[&alice]);
    let config = env.config(&env.client_auth());

    let out = sync(&config, &["--dry-run", "--output", "json"]);
    assert_code(&out, 0);
    let plan: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let summary = &plan["sinks"][0]["summary"];
    assert_eq!(
        (&summary["adopt"], &summary["create"]),
        (&json!(1), &json!(0)),
        "{plan}"
    );
    assert_eq!(
        (&summary["member_add"], &summary["member_remove"]),
        (&json!(1), &json!(1)),
        "{plan}"
    );
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert_eq!(env.groups_named("devs").len(), 1, "{:#?}", env.groups());
    assert_eq!(env.member_names("devs"), vec!["alice"]);
    assert!(out.stderr_str().contains("adopted"), "{}", out.stderr_str());

    // The next PATCH answers 412, as when another writer changed the group since our read.
    env.emu.admin_post(
        "/faults",
        &json!({"fail_next": 1, "fail_status": 412, "method": "PATCH"}),
    );
    env.slapd.rename(&devs, "cn=developers");
    let before = env.emu.requests().len();
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert!(env.group("developers").is_some(), "{:#?}", env.groups());
    let patches: Vec<Value> = env
        .emu
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| r["method"] == "PATCH")
        .collect();
    assert_eq!(patches.len(), 2, "{patches:#?}");
    assert_eq!(patches[0]["status"], 412);
    assert_eq!(patches[1]["status"], 200);
    let reads = env
        .emu
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| r["method"] == "GET" && r["path"].as_str().unwrap().ends_with("/devs"))
        .count();
    assert_eq!(reads, 2, "the group is re-read after the 412");
}

/// A group with a `condition` never gets static members: the clash is reported as a failure
/// with an explanation, and nothing is written to its members.
#[test]
fn conditional_group_is_never_given_static_members() {
    let env = Env::start(&[]);
    env.emu.admin_post(
        "/users",
        &json!([{"userName": "alice", "country": "FR"}, {"userName": "bob", "country": "US"}]),
    );
    env.emu.admin_post(
        "/groups",
        &json!([{"name": "devs", "condition": "/country eq \"FR\""}]),
    );
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let bob = env.slapd.add_user("bob", "bob@example.com");
    env.slapd.add_group("devs", &[&alice, &bob]);
    let out = sync(&env.config(&env.client_auth()), &[]);
    assert_code(&out, 1);
    let text = out.stdout_str() + &out.stderr_str();
    assert!(text.contains("has a condition"), "{text}");
    assert_eq!(env.groups_named("devs").len(), 1);
    assert!(
        !env.emu
            .requests()
            .iter()
            .any(|r| r["method"] == "POST" && r["path"].as_str().unwrap().ends_with("/members")),
        "no static member request"
    );
    // Only the conditional member, computed by the target.
    assert_eq!(env.member_names("devs"), vec!["alice"]);
}

/// An expired token (401) is refreshed once and the request replayed; a 429 with Retry-After is
/// waited out and retried.
#[test]
fn token_refresh_and_rate_limit() {
    let env = Env::start(&[]);
    env.add_idm_users(&["alice", "bob"]);
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let bob = env.slapd.add_user("bob", "bob@example.com");
    let devs = env.slapd.add_group("devs", &[&alice]);
    let config = env.config(&env.client_auth());

    env.emu.admin_post(
        "/faults",
        &json!({"rate_limit_next": 1, "retry_after": 1, "path_prefix": "/openidm"}),
    );
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert_eq!(env.member_names("devs"), vec!["alice"]);
    let requests = env.emu.requests();
    let limited = requests
        .iter()
        .position(|r| r["status"] == 429)
        .expect("a 429");
    assert_eq!(
        requests[limited + 1]["path"],
        requests[limited]["path"],
        "the rate-limited request is retried"
    );

    let token_calls = |reqs: &[Value]| {
        reqs.iter()
            .filter(|r| r["path"].as_str().unwrap().ends_with("/access_token"))
            .count()
    };
    // A token the target no longer accepts: expire every issued token, and make the next IDM
    // call of the new run answer 401 as an expired token does (the run fetched its own token at
    // start, so the 401 has to come mid-run to exercise the refresh).
    assert_eq!(token_calls(&requests), 1);
    env.emu.admin_post("/expire_tokens", &json!({}));
    env.emu.admin_post(
        "/faults",
        &json!({"fail_next": 1, "fail_status": 401, "path_prefix": "/openidm"}),
    );
    env.slapd.add_member(&devs, &bob);
    let before = env.emu.requests().len();
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert_eq!(env.member_names("devs"), vec!["alice", "bob"]);
    let run: Vec<Value> = env.emu.requests().into_iter().skip(before).collect();
    let rejected = run
        .iter()
        .position(|r| r["status"] == 401)
        .expect("a 401 in the run");
    assert!(
        run[rejected + 1]["path"]
            .as_str()
            .unwrap()
            .ends_with("/access_token"),
        "a new token is fetched after the 401: {run:#?}"
    );
    assert_eq!(
        run[rejected + 2]["path"],
        run[rejected]["path"],
        "then the request is replayed"
    );
    assert_eq!(token_calls(&run), 2, "one token at start, one refresh");
}

/// A failed member add (500 on POST is not retried) leaves the run failed; the rerun completes it
/// without duplicate relationships. A create that was sent but never recorded (the ledger holds
/// only the intent) is adopted on the rerun, not duplicated.
#[test]
fn crash_and_rerun_converge_without_duplicates() {
    // The emulator creates a second relationship when a member is added twice: duplicates
    // would show.
    let env = Env::start(&[
        "--duplicate-member",
        "duplicate",
        "--group-id-mode",
        "uuid",
        "--duplicate-status",
        "allow",
    ]);
    env.add_idm_users(&["alice", "bob"]);
    let alice = env.slapd.add_user("alice", "alice@example.com");
    let bob = env.slapd.add_user("bob", "bob@example.com");
    env.slapd.add_group("devs", &[&alice, &bob]);
    let config = env.config(&env.client_auth());

    env.emu.admin_post(
        "/faults",
        &json!({"fail_next": 1, "fail_status": 500, "method": "POST",
                "path_prefix": "/openidm/managed/alpha_group/"}),
    );
    let out = sync(&config, &[]);
    assert_code(&out, 1);
    assert_eq!(env.member_names("devs").len(), 1);
    assert_code(&sync(&config, &[]), 0);
    assert_eq!(env.member_names("devs"), vec!["alice", "bob"]);

    forget_confirmed_creates(&env.state_path(), "idm");
    assert_code(&sync(&config, &[]), 0);
    assert_eq!(env.groups_named("devs").len(), 1, "{:#?}", env.groups());
    assert_eq!(env.member_names("devs"), vec!["alice", "bob"]);
}

/// Behind the fault proxy: an interrupted create (a 500 IDM never processed), then an IDM whose
/// group queries ignore `_queryFilter` and answer every group. ForgeRock groups have no
/// externalId (their unique name stands in for it): the unrelated group the query answers
/// first is never adopted, and a create answered 503 after IDM committed it leaves one group.
#[test]
fn a_target_that_ignores_query_filters_never_makes_ldapsync_adopt_an_unrelated_group() {
    let env = Env::start(&[]);
    env.add_idm_users(&["alice", "bob"]);
    env.emu.admin_post(
        "/groups",
        &json!([{"name": "AAA-finance-admins", "members": ["bob"]}]),
    );
    let proxy = FaultProxy::start(env.emu.base_url());
    let alice = env.slapd.add_user("alice", "alice@example.com");
    env.slapd.add_group("g03", &[&alice]);
    let config = env.write_config(
        1000,
        &format!(
            "name = \"idm\"\ntype = \"forgerock\"\nbase_url = \"{}\"\nmax_retries = 1\n{}\n",
            proxy.url(),
            env.client_auth()
        ),
    );
    proxy.rules(json!([
        {"method": "POST", "path": "/managed/alpha_group$", "action": "status", "status": 500}
    ]));
    assert_code(&sync(&config, &[]), 1);
    proxy.rules(json!([
        {"method": "GET", "path": "/managed/alpha_group$", "action": "set_query", "param": "_queryFilter", "value": "true"},
        {"method": "POST", "path": "/managed/alpha_group$", "action": "forward_status", "status": 503, "times": 1}
    ]));
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    assert_eq!(env.member_names("AAA-finance-admins"), vec!["bob"]);
    assert_eq!(env.groups_named("g03").len(), 1, "{:#?}", env.groups());
    assert_eq!(env.member_names("g03"), vec!["alice"]);
    let plan = sync(&config, &["--dry-run", "--output", "json"]);
    let plan: Value = serde_json::from_str(&plan.stdout_str()).unwrap();
    assert_eq!(plan["sinks"][0]["operations"], json!([]), "{plan}");
}

impl Env {
    /// An IDM request made by hand (an administrator's change) with a client-credentials token,
    /// expecting 2xx. `path` is under `/openidm/managed/alpha_`.
    fn by_hand(&self, method: &str, path: &str, body: Option<&Value>) {
        let token_url = format!(
            "{}/am/oauth2/realms/root/realms/alpha/access_token",
            self.emu.base_url()
        );
        let answer: Value = ureq::post(&token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send("grant_type=client_credentials&client_id=idm-provisioning&client_secret=idm-provisioning-secret")
            .expect("token request")
            .into_body()
            .read_json()
            .expect("token JSON");
        let bearer = format!("Bearer {}", answer["access_token"].as_str().unwrap());
        let r = self.emu.request(
            method,
            &format!("/openidm/managed/alpha_{path}"),
            &[
                ("Authorization", bearer.as_str()),
                ("Accept-API-Version", "resource=1.0"),
            ],
            body,
        );
        assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    }
}

/// Issue 11 on ForgeRock: a member added by hand and one removed, a group renamed and one
/// deleted are repaired by `sync --full`, each repair flagged as drift; then nothing to do.
#[test]
fn full_sync_repairs_what_was_changed_by_hand() {
    let env = Env::start(&[]);
    env.add_idm_users(&["alice", "bob", "carol"]);
    env.slapd.add_drift_directory();
    let config = env.config(&env.client_auth());
    assert_code(&sync(&config, &[]), 0);

    let id = |name: &str| {
        env.group(name).unwrap()["_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let user = |name: &str| {
        env.emu
            .state_list("users")
            .iter()
            .find(|u| u["userName"] == name)
            .map(|u| u["_id"].as_str().unwrap().to_string())
            .unwrap()
    };
    let (ops, dev, gone) = (id("ops"), id("dev"), id("gone"));
    env.by_hand(
        "POST",
        &format!("group/{ops}/members?_action=create"),
        Some(&json!({"_ref": format!("managed/alpha_user/{}", user("carol"))})),
    );
    let bob_rel = env.group("ops").unwrap()["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["userName"] == "bob")
        .map(|m| m["_id"].as_str().unwrap().to_string())
        .unwrap();
    env.by_hand("DELETE", &format!("group/{ops}/members/{bob_rel}"), None);
    env.by_hand(
        "PATCH",
        &format!("group/{dev}"),
        Some(&json!([{"operation": "replace", "field": "/name", "value": "dev-renamed"}])),
    );
    env.by_hand("DELETE", &format!("group/{gone}"), None);

    assert_drift_repairs_planned(&config);
    assert_code(&sync(&config, &["--full"]), 0);
    assert_eq!(env.member_names("ops"), vec!["alice", "bob"]);
    assert_eq!(env.member_names("dev"), vec!["alice"]);
    assert_eq!(env.member_names("gone"), vec!["bob"]);
    assert!(env.group("dev-renamed").is_none());
    assert_converged_even_in_full(&config);
}
