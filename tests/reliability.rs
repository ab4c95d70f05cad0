//! Faults and hostile inputs (docs/reliability.md): a target that echoes credentials, empty
//! reads, endless Retry-After, interruptions, state files from the future, plaintext, control
//! characters, and the fault matrix (`common::drive_fault_matrix`) for every sink type. A real
//! slapd, the real binary, the real scim2-server, the emulators of `tests/emulators/` behind the
//! fault proxy.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

const KEY: &str = "connect-key-123";

/// slapd with two groups + the Connect emulator (password provider: ldapsync creates groups).
fn connect_world() -> EmulatorWorld {
    let world = EmulatorWorld::start("connect", &["--provider", "password", "--api-key", KEY]);
    let alice = world.slapd.add_user("alice", "alice@example.com");
    world.slapd.add_group("devs", &[&alice]);
    world.slapd.add_group("ops", &[&alice]);
    world
}

fn connect_sink(world: &EmulatorWorld, extra: &str) -> String {
    format!(
        "name = \"connect\"\ntype = \"connect\"\nbase_url = \"{}\"\napi_key = \"{KEY}\"\n{extra}\n",
        world.emu.base_url()
    )
}

/// Every byte of the state file and its WAL.
fn state_bytes(state: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-journal"] {
        let path = PathBuf::from(format!("{}{suffix}", state.display()));
        bytes.extend(std::fs::read(path).unwrap_or_default());
    }
    bytes
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(KEY),
        "{what} leaks the API key echoed by the target:\n{text}"
    );
}

/// A target answering 401 with a body that echoes the `Authorization` header: the key appears
/// in no output (text and JSON), no log line, not in `status`, `check --connect`, the state file
/// or the daemon's `/readyz`; the error itself is still reported.
#[test]
fn secrets_echoed_by_a_target_are_scrubbed_everywhere() {
    let world = connect_world();
    world.emu.admin_post(
        "/faults",
        &json!({"fail_next": 100000, "fail_status": 401, "fail_body": "echo"}),
    );
    let config = world.write_config(1000, &connect_sink(&world, "max_retries = 1"));

    let text = sync(&config, &[]);
    assert_eq!(text.code(), 1, "{}", text.describe());
    assert!(
        text.stdout_str().contains("401") || text.stderr_str().contains("401"),
        "the failure is still reported: {}",
        text.describe()
    );
    let json_run = sync(&config, &["--output", "json"]);
    let dry = sync(&config, &["--dry-run", "--output", "json"]);
    let check = run_ldapsync(&config, &["check", "--connect"]);
    assert_ne!(check.code(), 0, "{}", check.describe());
    let status_text = run_ldapsync(&config, &["status"]);
    let status_json = run_ldapsync(&config, &["status", "--output", "json"]);
    for (what, out) in [
        ("sync", &text),
        ("sync --output json", &json_run),
        ("sync --dry-run", &dry),
        ("check --connect", &check),
        ("status", &status_text),
        ("status --output json", &status_json),
    ] {
        assert_no_secret(&format!("{what} stdout"), &out.stdout_str());
        assert_no_secret(&format!("{what} stderr"), &out.stderr_str());
    }
    status_text.assert_stdout_has("401");
    assert_no_secret(
        "the state file",
        &String::from_utf8_lossy(&state_bytes(&world.state_path())),
    );

    // The daemon: its log and the unauthenticated /readyz.
    let port = free_port();
    let daemon_config = write_file(
        world.dir.path(),
        "daemon.toml",
        format!(
            "{}\n[schedule]\ncron = \"0 0 0 1 1 *\"\nrun_on_start = true\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    );
    let log = world.dir.path().join("daemon.log");
    let mut child = Command::new(ldapsync_bin())
        .env_remove("LDAPSYNC_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "debug")
        .arg("--config")
        .arg(&daemon_config)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(world.dir.path().join("daemon.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn the daemon");
    let ready = wait_for(
        Duration::from_secs(60),
        "/readyz naming the failure",
        || {
            if !port_open(port) {
                return None;
            }
            let r = http_request("GET", &format!("http://127.0.0.1:{port}/readyz"), &[], None);
            (r.status == 503 && r.body.contains("401")).then_some(r)
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_no_secret("/readyz", &ready.body);
    assert_no_secret("the daemon log", &std::fs::read_to_string(&log).unwrap());
    assert_no_secret(
        "the state file after the daemon",
        &String::from_utf8_lossy(&state_bytes(&world.state_path())),
    );
}

/// Credentials written into a sink URL are a configuration error naming the key; the URL's
/// password is not printed.
#[test]
fn credentials_in_a_sink_url_are_a_configuration_error() {
    let world = connect_world();
    let url = world
        .emu
        .base_url()
        .replace("http://", "http://admin:url-password-77@");
    let config = world.write_config(
        1000,
        &format!(
            "name = \"connect\"\ntype = \"connect\"\nbase_url = \"{url}\"\napi_key = \"{KEY}\"\n"
        ),
    );
    for args in [&["check"][..], &["sync"], &["sync", "--dry-run"]] {
        let out = run_ldapsync(&config, args);
        assert_code(&out, 2);
        out.assert_stderr_has("base_url");
        assert!(
            !out.stderr_str().contains("url-password-77")
                && !out.stdout_str().contains("url-password-77"),
            "{}",
            out.describe()
        );
    }
}

/// An LDIF-and-file-sink configuration in `dir` (no server): the example directory, the groups
/// read under `groups_base`, `safety` open.
fn offline_config(dir: &Path, groups_base: &str, extra_ldap: &str) -> PathBuf {
    write_file(
        dir,
        "config.toml",
        format!(
            "[ldap]\nldif_file = \"{ldif}\"\n{extra_ldap}\n[groups]\nbase_dn = \"{groups_base}\"\n\n\
             [users]\nbase_dn = \"ou=People,dc=example,dc=com\"\n\n[state]\npath = \"{state}\"\n\n{safety}\n\
             [[sinks]]\nname = \"audit\"\ntype = \"file\"\npath = \"{out}\"\n",
            ldif = repo_root().join("examples/directory.ldif").display(),
            state = dir.join("state.db").display(),
            safety = permissive_safety_toml(100000),
            out = dir.join("ops.jsonl").display(),
        ),
    )
}

/// Ledger rows of the `audit` sink.
fn ledger_groups(state: &Path) -> i64 {
    count_ledger_groups(state, "sink = 'audit'")
}

/// Ledger group rows of the state file `state` that match the SQL condition `condition`.
fn count_ledger_groups(state: &Path, condition: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM ledger_groups WHERE {condition}");
    let state = rusqlite::Connection::open(state).unwrap();
    state.query_row(&sql, [], |r| r.get(0)).unwrap()
}

/// A read with zero groups fails the run while a ledger holds groups, whatever scope earlier
/// runs used (the scope memory cannot be overwritten by a run with another base DN); only
/// `--allow-empty-scope`, shown in the plan, accepts it for one run.
#[test]
fn an_empty_scope_never_deletes_while_a_ledger_holds_groups() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let config = offline_config(dir.path(), "ou=Groups,dc=example,dc=com", "");
    assert_code(&sync(&config, &[]), 0);
    let held = ledger_groups(&state);
    assert!(held > 0);

    // Another base DN (a new scope identity) that reads nothing: refused, nothing written.
    let config = offline_config(dir.path(), "ou=Elsewhere,dc=example,dc=com", "");
    for args in [&[][..], &["--dry-run"], &["--output", "json"]] {
        let out = sync(&config, args);
        assert_code(&out, 1);
        assert!(
            out.describe().contains("--allow-empty-scope"),
            "the error says what to do: {}",
            out.describe()
        );
    }
    assert_eq!(ledger_groups(&state), held, "nothing was deleted");

    // The operator accepts the empty scope for one run: shown in the plan, then applied.
    let dry = sync(
        &config,
        &["--dry-run", "--allow-empty-scope", "--output", "json"],
    );
    assert_code(&dry, 0);
    let plan: serde_json::Value = serde_json::from_str(&dry.stdout_str()).unwrap();
    assert_eq!(plan["allow_empty_scope"], true, "{plan}");
    assert_eq!(plan["sinks"][0]["summary"]["delete"], held, "{plan}");
    let text = sync(&config, &["--allow-empty-scope"]);
    assert_code(&text, 0);
    text.assert_stdout_has("--allow-empty-scope");
    assert_eq!(ledger_groups(&state), 0);
}

/// The Connect groups the emulator holds, by name.
fn connect_group_names(world: &EmulatorWorld) -> Vec<String> {
    let mut names: Vec<String> = world
        .groups()
        .iter()
        .filter_map(|g| g["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Confirmed ledger rows of the `connect` sink.
fn confirmed_ledger_groups(state: &Path) -> i64 {
    count_ledger_groups(state, "sink = 'connect' AND target_id IS NOT NULL")
}

/// A target answering `429 Retry-After: 86400` fails the request at once (longer than
/// `max_retry_after_secs`), and a target that keeps the run busy is stopped at
/// `run_timeout_secs`; the ledger holds exactly what the target accepted and a rerun converges.
#[test]
fn runs_end_long_retry_after_and_run_timeout() {
    let world = connect_world();
    let creates = json!({"path_prefix": "/__api__/v1/groups", "method": "POST"});
    let with = |extra: serde_json::Value| {
        let mut spec = creates.clone();
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };

    // Retry-After of a day: the request fails at once. Retry-After 1 on every create, a
    // thousand retries: the sink stops at run_timeout_secs. Either way the run ends (no
    // 24-hour wait) naming the key, and the ledger holds exactly the groups the target has.
    let mut config = PathBuf::new();
    for (retry_after, sink_extra, named_key) in [
        (86400, "max_retries = 1000", "max_retry_after_secs"),
        (
            1,
            "max_retries = 1000\nrun_timeout_secs = 3",
            "run_timeout_secs",
        ),
    ] {
        let fault = json!({"rate_limit_next": 100000, "retry_after": retry_after});
        world.emu.admin_post("/faults", &with(fault));
        config = world.write_config(1000, &connect_sink(&world, sink_extra));
        let started = std::time::Instant::now();
        let out = sync(&config, &[]);
        assert_code(&out, 1);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(60), "the run ended: {took:?}");
        assert!(out.describe().contains(named_key), "{}", out.describe());
        assert_eq!(
            confirmed_ledger_groups(&world.state_path()),
            connect_group_names(&world).len() as i64
        );
    }

    // The target recovers: the next run converges, without duplicates.
    world.emu.admin_post("/faults", &json!({}));
    assert_code(&sync(&config, &[]), 0);
    assert_eq!(connect_group_names(&world), ["devs", "ops"]);
    assert_eq!(confirmed_ledger_groups(&world.state_path()), 2);
    let again = sync(&config, &["--dry-run", "--output", "json"]);
    assert_code(&again, 0);
}

/// `sync --dry-run` and `status` refuse what `sync` refuses: a state file from a newer
/// ldapsync (`user_version` 99) and a garbled page, with a clear error and exit 1.
#[test]
fn read_only_commands_check_the_state_file_like_sync() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let config = offline_config(dir.path(), "ou=Groups,dc=example,dc=com", "");
    assert_code(&sync(&config, &[]), 0);
    let pristine = std::fs::read(&state).unwrap();

    rusqlite::Connection::open(&state)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    for args in [
        &["sync"][..],
        &["sync", "--dry-run"],
        &["status"],
        &["status", "--output", "json"],
    ] {
        let out = run_ldapsync(&config, args);
        assert_code(&out, 1);
        out.assert_stderr_has("newer");
    }

    // Garble the second page (a table's b-tree page) of the pristine file.
    let mut garbled = pristine.clone();
    assert!(garbled.len() >= 3 * 4096, "{} bytes", garbled.len());
    for byte in &mut garbled[4096 + 8..4096 + 3000] {
        *byte = 0xA5;
    }
    std::fs::write(&state, &garbled).unwrap();
    for args in [&["sync", "--dry-run"][..], &["status"], &["sync"]] {
        let out = run_ldapsync(&config, args);
        assert_code(&out, 1);
        assert!(
            out.stderr_str().contains("damaged") || out.stderr_str().contains("malformed"),
            "{args:?}: {}",
            out.describe()
        );
    }
}

/// Starts `ldapsync --config CONFIG sync` in the background, stdout and stderr to files.
fn spawn_sync(config: &Path, out: &Path) -> std::process::Child {
    Command::new(ldapsync_bin())
        .env_remove("LDAPSYNC_CONFIG")
        .arg("--config")
        .arg(config)
        .arg("sync")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .expect("spawn ldapsync sync")
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    wait_for(timeout, "ldapsync to exit", || child.try_wait().unwrap())
}

fn run_results(config: &Path) -> Vec<String> {
    let out = run_ldapsync(config, &["status", "--output", "json"]);
    assert_code(&out, 0);
    let status: serde_json::Value = serde_json::from_str(&out.stdout_str()).unwrap();
    status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap_or("running").to_string())
        .collect()
}

/// A one-shot sync stopped by SIGINT stops after the request in flight, prints what it applied,
/// records the run as interrupted and exits 130; a run left "running" by a SIGKILLed process
/// is marked interrupted when the state file is next opened by a writer; the next run converges.
#[test]
fn interrupted_runs_are_recorded_and_converge() {
    let world = EmulatorWorld::start("connect", &["--provider", "password", "--api-key", KEY]);
    let alice = world.slapd.add_user("alice", "alice@example.com");
    let names: Vec<String> = (0..16).map(|i| format!("team-{i:02}")).collect();
    for name in &names {
        world.slapd.add_group(name, &[&alice]);
    }
    let config = world.write_config(1000, &connect_sink(&world, "rate_limit_per_second = 2"));
    let logs = world.dir.path().join("run");

    // SIGKILL: nothing can be recorded by the dying process.
    let mut killed = spawn_sync(&config, &logs);
    std::thread::sleep(Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    killed.wait().unwrap();
    assert_eq!(
        run_results(&config),
        ["running"],
        "status reads, never repairs"
    );

    // SIGINT: the writer first closes the dead run, then stops after the request in flight.
    let mut child = spawn_sync(&config, &logs);
    std::thread::sleep(Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let stdout = std::fs::read_to_string(logs.with_extension("out")).unwrap();
    let stderr = std::fs::read_to_string(logs.with_extension("err")).unwrap();
    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stdout.contains("INTERRUPTED"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("applied before the interruption"),
        "{stdout}"
    );
    assert_eq!(run_results(&config), ["interrupted", "interrupted"]);
    let held = world.groups().len() as i64;
    assert!(held < names.len() as i64, "stopped early: {held} groups");
    assert_eq!(confirmed_ledger_groups(&world.state_path()), held);

    // The next run converges, without duplicates.
    let config = world.write_config(1000, &connect_sink(&world, ""));
    assert_code(&sync(&config, &[]), 0);
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(connect_group_names(&world), expected);
    assert_eq!(run_results(&config)[0], "success");
}

/// Control characters in names never reach the output raw: such groups and users are skipped
/// with a warning (deterministically), and nothing in the text plan carries ESC, CR or NUL.
#[test]
fn control_characters_in_names_are_skipped_and_never_printed_raw() {
    let dir = tempfile::tempdir().unwrap();
    let mut ldif = std::fs::read_to_string(repo_root().join("examples/directory.ldif")).unwrap();
    ldif.push_str(
        "\ndn: cn=evil,ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\n\
         cn:: ZXZpbAogICsgY3JlYXRlICAgICBmb3JnZWQbWzMxbQ==\n\
         member: uid=alice,ou=People,dc=example,dc=com\n\
         entryUUID: 0e0e0e0e-0000-4000-8000-00000000e1e1\n\
         \ndn: cn=nul,ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\n\
         cn:: bnVsAG5hbWU=\nmember: uid=alice,ou=People,dc=example,dc=com\n\
         entryUUID: 0e0e0e0e-0000-4000-8000-00000000e1e2\n",
    );
    let ldif_path = write_file(dir.path(), "dir.ldif", ldif);
    let config = offline_config(dir.path(), "ou=Groups,dc=example,dc=com", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &repo_root()
            .join("examples/directory.ldif")
            .display()
            .to_string(),
        &ldif_path.display().to_string(),
    );
    let config = write_file(dir.path(), "config.toml", text);
    for _ in 0..2 {
        let out = sync(&config, &["--dry-run"]);
        assert_code(&out, 0);
        let stdout = out.stdout_str();
        assert!(
            !stdout.contains(['\u{1b}', '\0', '\r']) && !stdout.contains("forged"),
            "{stdout}"
        );
        assert!(
            out.stderr_str().matches("control characters").count() >= 2,
            "{}",
            out.describe()
        );
    }
    assert_code(&sync(&config, &[]), 0);
    let written = std::fs::read_to_string(dir.path().join("ops.jsonl")).unwrap();
    assert!(
        !written.contains("evil") && !written.contains("\\u0000"),
        "{written}"
    );
}

/// The HTTP settings of a sink under the fault matrix: a short request timeout (the slow
/// answers are held past it) and a few retries.
fn matrix_http() -> String {
    format!("timeout_secs = {FAULT_TIMEOUT_SECS}\nmax_retries = 4\n")
}

/// The string values of `list` (missing: none).
fn strings(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// An emulated target's groups as the matrix compares them: `members` reads a group's members.
fn emulated_groups(
    world: &EmulatorWorld,
    members: impl Fn(&serde_json::Value) -> Vec<String>,
) -> Vec<(String, Vec<String>)> {
    world
        .groups()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap_or_default().to_string(),
                members(g),
            )
        })
        .collect()
}

#[test]
fn connect_converges_through_the_fault_matrix() {
    let world = EmulatorWorld::start("connect", &["--provider", "password", "--api-key", KEY]);
    world.emu.admin_post(
        "/users",
        &json!([{"username": "alice", "email": "alice@example.com"}]),
    );
    let proxy = FaultProxy::start(world.emu.base_url());
    let config = world.write_config(
        1000,
        &format!(
            "name = \"connect\"\ntype = \"connect\"\nbase_url = \"{}\"\napi_key = \"{KEY}\"\n{}",
            proxy.url(),
            matrix_http()
        ),
    );
    drive_fault_matrix(&FaultMatrix {
        slapd: &world.slapd,
        proxy: &proxy,
        config: &config,
        state: &world.state_path(),
        sink: "connect",
        create_path: "/v1/groups$",
        read_path: Some("/v1/(groups|users)$"),
        looks_up_unanswered: true,
        target_groups: &|| emulated_groups(&world, |g| strings(&g["member_usernames"])),
    });
}

#[test]
fn forgerock_converges_through_the_fault_matrix() {
    let world = EmulatorWorld::start("forgerock", &[]);
    world.emu.admin_post(
        "/users",
        &json!([{"userName": "alice", "mail": "alice@example.com"}]),
    );
    let proxy = FaultProxy::start(world.emu.base_url());
    let config = world.write_config(
        1000,
        &format!(
            "name = \"idm\"\ntype = \"forgerock\"\nbase_url = \"{proxied}\"\n{http}\
             token_url = \"{base}/am/oauth2/realms/root/realms/alpha/access_token\"\n\
             client_id = \"idm-provisioning\"\nclient_secret = \"idm-provisioning-secret\"\ntoken_auth_method = \"post\"\n",
            proxied = proxy.url(),
            http = matrix_http(),
            base = world.emu.base_url()
        ),
    );
    drive_fault_matrix(&FaultMatrix {
        slapd: &world.slapd,
        proxy: &proxy,
        config: &config,
        state: &world.state_path(),
        sink: "idm",
        create_path: "/managed/[a-z_]*group$",
        read_path: Some("/managed/[a-z_]*group$"),
        looks_up_unanswered: true,
        target_groups: &|| {
            emulated_groups(&world, |g| {
                g["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["userName"].as_str().map(str::to_string))
                    .collect()
            })
        },
    });
}

/// The PingOne emulator with the user alice, a fault proxy in front of its API (the token
/// endpoint is reached directly), and a config for one PingOne sink of `sink_type`.
fn pingone_matrix_world(
    name: &str,
    sink_type: &str,
    extra: &str,
) -> (EmulatorWorld, FaultProxy, PathBuf) {
    let world = EmulatorWorld::start("pingone", &[]);
    world.emu.admin_post(
        "/users",
        &json!([{"username": "alice", "email": "alice@example.com"}]),
    );
    let proxy = FaultProxy::start(&format!("{}/v1", world.emu.base_url()));
    let secret = write_file(world.dir.path(), "client-secret", "s3cret-client\n");
    let config = world.write_config(
        1000,
        &format!(
            "name = \"{name}\"\ntype = \"{sink_type}\"\napi_url = \"{api}\"\nauth_url = \"{base}\"\n\
             environment_id = \"11111111-2222-3333-4444-555555555555\"\nclient_id = \"ldapsync-client\"\n\
             client_secret_file = \"{secret}\"\n{http}{extra}\n",
            api = proxy.url(),
            base = world.emu.base_url(),
            secret = secret.display(),
            http = matrix_http(),
        ),
    );
    (world, proxy, config)
}

#[test]
fn pingone_groups_converges_through_the_fault_matrix() {
    let (world, proxy, config) = pingone_matrix_world("p1", "pingone_groups", "");
    drive_fault_matrix(&FaultMatrix {
        slapd: &world.slapd,
        proxy: &proxy,
        config: &config,
        state: &world.state_path(),
        sink: "p1",
        create_path: "/groups$",
        read_path: Some("/groups$"),
        looks_up_unanswered: true,
        target_groups: &|| {
            let state = world.emu.state();
            let usernames: std::collections::HashMap<&str, &str> = state["users"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| Some((u["id"].as_str()?, u["username"].as_str()?)))
                .collect();
            state["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| {
                    let gid = g["id"].as_str().unwrap_or_default();
                    let members = strings(&state["memberships"][gid])
                        .iter()
                        .filter_map(|uid| usernames.get(uid.as_str()).map(|n| n.to_string()))
                        .collect();
                    (g["name"].as_str().unwrap_or_default().to_string(), members)
                })
                .collect()
        },
    });
}

/// The provisioning-sync import: what PingOne accepted is its external groups (keyed by
/// uniqueId, so a resent batch never makes a second one); members are the sent DNs.
#[test]
fn pingone_import_converges_through_the_fault_matrix() {
    let sync_id = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    let (world, proxy, config) = pingone_matrix_world(
        "import",
        "pingone_provisioning_sync",
        &format!("provisioning_sync_id = \"{sync_id}\"\nbatch_size = 1"),
    );
    drive_fault_matrix(&FaultMatrix {
        slapd: &world.slapd,
        proxy: &proxy,
        config: &config,
        state: &world.state_path(),
        sink: "import",
        create_path: "/provisioningSyncs/",
        read_path: None,
        looks_up_unanswered: false,
        target_groups: &|| {
            let state = world.emu.state();
            state["external_groups"][sync_id]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, g)| g["deleted"] != true)
                .map(|(_, g)| {
                    let members = strings(&g["member"])
                        .iter()
                        .filter_map(|dn| {
                            dn.strip_prefix("uid=")?
                                .split(',')
                                .next()
                                .map(str::to_string)
                        })
                        .collect();
                    (g["name"].as_str().unwrap_or_default().to_string(), members)
                })
                .collect()
        },
    });
}

/// The real scim2-server, which accepts duplicate group names: a create resent blindly would
/// show up as a second group.
#[test]
fn scim_converges_through_the_fault_matrix() {
    let slapd = Slapd::start();
    let scim = ScimServer::start(false);
    scim.create_user("alice", "alice@example.com");
    let proxy = FaultProxy::start(&scim.base_url());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let config = write_file(
        dir.path(),
        "config.toml",
        format!(
            "{ldap}\n{safety}\n{sink}",
            ldap = ldap_config_toml(&slapd, &state),
            safety = permissive_safety_toml(1000),
            sink = scim.sink_toml(
                &proxy.url(),
                &format!("user_match = \"userName\"\n{}", matrix_http())
            ),
        ),
    );
    drive_fault_matrix(&FaultMatrix {
        slapd: &slapd,
        proxy: &proxy,
        config: &config,
        state: &state,
        sink: "scim",
        create_path: "/Groups$",
        read_path: Some("/Groups$"),
        looks_up_unanswered: true,
        target_groups: &|| {
            let users: std::collections::HashMap<String, String> =
                text_pairs(&scim.users(), "id", "userName");
            scim.groups()
                .iter()
                .map(|g| {
                    let members = g["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| users.get(m["value"].as_str()?).cloned())
                        .collect();
                    (
                        g["displayName"].as_str().unwrap_or_default().to_string(),
                        members,
                    )
                })
                .collect()
        },
    });
}
