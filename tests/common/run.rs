//! Running the `ldapsync` binary: its path, config TOML builders, running it and checking its
//! exit code, and editing its state file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::process::{OutputExt, run_with_timeout};
use super::slapd::Slapd;

/// The `ldapsync` binary built by cargo for these tests.
pub fn ldapsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ldapsync"))
}

/// The `[ldap]`, `[groups]`, `[users]` and `[state]` sections of a config reading `slapd` (its
/// admin password inline) with the state file at `state`.
pub fn ldap_config_toml(slapd: &Slapd, state: &Path) -> String {
    let password = format!("bind_password = \"{}\"", slapd.admin_password());
    ldap_config_toml_with(slapd, state, &password)
}

/// [`ldap_config_toml`] with another password line (e.g. `bind_password_file = "…"`).
pub fn ldap_config_toml_with(slapd: &Slapd, state: &Path, password_line: &str) -> String {
    format!(
        "[ldap]\nurl = \"{url}\"\nbind_dn = \"{bind_dn}\"\n{password_line}\n\n\
         [groups]\nbase_dn = \"{groups}\"\n\n[users]\nbase_dn = \"{people}\"\n\n\
         [state]\npath = \"{state}\"\n",
        url = slapd.url(),
        bind_dn = slapd.admin_dn(),
        groups = slapd.groups_dn(),
        people = slapd.people_dn(),
        state = state.display(),
    )
}

/// A `[safety]` section that holds back nothing a test does.
pub const LENIENT_SAFETY: &str = "[safety]\nmax_group_deletes = 1000\nmax_group_delete_percent = 100\nmax_member_removes = 100000\nmax_member_remove_percent = 100\n";

/// A `[safety]` section that holds nothing back in a test (`max_member_removes` as given).
pub fn permissive_safety_toml(max_member_removes: u32) -> String {
    format!(
        "[safety]\nmax_group_deletes = 100\nmax_group_delete_percent = 100.0\n\
         max_member_removes = {max_member_removes}\nmax_member_remove_percent = 100.0\n"
    )
}

/// A `[[sinks]]` table: a file sink `name` writing one JSON line per operation to `path`
/// (`-`: stdout).
pub fn file_sink_toml(name: &str, path: &Path) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\ntype = \"file\"\npath = \"{}\"\n",
        path.display()
    )
}

/// Runs `ldapsync --config CONFIG ARGS…` to completion (killed after 5 minutes) and captures its
/// output. `LDAPSYNC_CONFIG` is removed from its environment.
pub fn run_ldapsync(config: &Path, args: &[&str]) -> Output {
    run_ldapsync_env(config, args, &[])
}

/// [`run_ldapsync`] with extra environment variables.
pub fn run_ldapsync_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let config = config.to_str().expect("a UTF-8 config path");
    run_ldapsync_in(&[&["--config", config][..], args].concat(), None, env)
}

/// [`run_ldapsync`] with `hosts` (address, name) added to the `/etc/hosts` that this one process
/// sees: it runs in a private mount namespace (`unshare -m`, as root) over which a copy of
/// `/etc/hosts` with those lines is bind-mounted. For servers whose certificate names a host
/// that does not resolve (Samba's generated one); the machine's own file is never changed.
pub fn run_ldapsync_with_hosts(config: &Path, args: &[&str], hosts: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for (address, name) in hosts {
        text.push_str(&format!("\n{address} {name}\n"));
    }
    let file = super::process::write_file(dir.path(), "hosts", text);
    let mut cmd = Command::new("unshare");
    cmd.env_remove("LDAPSYNC_CONFIG")
        .args([
            "-m",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ])
        .arg(&file)
        .arg(ldapsync_bin())
        .arg("--config")
        .arg(config)
        .args(args);
    run_with_timeout(&mut cmd, None, Duration::from_secs(300))
}

/// Runs `ldapsync ARGS…` exactly as given (no `--config` added), from `cwd` when given, with
/// extra environment variables (see [`run_ldapsync`]).
pub fn run_ldapsync_in(args: &[&str], cwd: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(ldapsync_bin());
    cmd.env_remove("LDAPSYNC_CONFIG").args(args);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(&mut cmd, None, Duration::from_secs(300))
}

/// Another process holding the state file's lock, as a running daemon does (`flock(1)`);
/// released when dropped.
pub struct StateLock(std::process::Child);

impl StateLock {
    /// Locks `state` (created empty if missing) and waits until the lock is held.
    pub fn hold(state: &Path) -> StateLock {
        if !state.exists() {
            std::fs::write(state, b"").expect("create the state file");
        }
        let holder = Command::new("flock")
            .args(["-x"])
            .arg(state)
            .args(["sleep", "120"])
            .spawn()
            .expect("flock(1) from util-linux");
        super::process::wait_until(
            Duration::from_secs(10),
            "flock to hold the state file",
            || {
                Command::new("flock")
                    .args(["-n", "-x"])
                    .arg(state)
                    .arg("true")
                    .status()
                    .is_ok_and(|s| !s.success())
            },
        );
        StateLock(holder)
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ldapsync --config CONFIG sync ARGS…` (see [`run_ldapsync`]).
pub fn sync(config: &Path, args: &[&str]) -> Output {
    run_ldapsync(config, &[&["sync"], args].concat())
}

/// Asserts a finished process's exit code, showing its whole output when it differs.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.code(), code, "{}", out.describe());
}

/// Makes the state file forget that the creates of `sink` were confirmed, as after a crash
/// between a create request and its record: its ledger keeps only the intents (no target id,
/// no members).
pub fn forget_confirmed_creates(state: &Path, sink: &str) {
    let db = rusqlite::Connection::open(state)
        .unwrap_or_else(|e| panic!("open {}: {e}", state.display()));
    db.execute(
        "UPDATE ledger_groups SET target_id = NULL WHERE sink = ?1",
        [sink],
    )
    .expect("clear the target ids");
    db.execute(
        "UPDATE ledger_groups SET members = NULL, member_count = 0 WHERE sink = ?1",
        [sink],
    )
    .expect("forget the ledger members");
}

/// What the drift tests change by hand after a first sync of `ops` (alice, bob), `dev` (alice)
/// and `gone` (bob) — carol added to `ops`, bob removed from it, `dev` renamed, `gone` deleted —
/// and what `sync --dry-run --full` must then plan, in order: (op, group, flagged as drift).
pub const DRIFT_REPAIRS: [(&str, &str, bool); 5] = [
    ("create", "gone", true),
    ("update", "dev", true),
    ("member_add", "gone", true),
    ("member_add", "ops", true),
    ("member_remove", "ops", true),
];

/// `sync --dry-run --output json` and its JSON plan (panics, showing the output, when stdout is
/// not JSON), whatever the exit code.
pub fn dry_run_json(config: &Path) -> serde_json::Value {
    dry_run_output(config).1
}

/// [`dry_run_json`], asserting that it exits 0.
#[track_caller]
pub fn dry_run_ok(config: &Path) -> serde_json::Value {
    let (out, plan) = dry_run_output(config);
    assert_code(&out, 0);
    plan
}

fn dry_run_output(config: &Path) -> (Output, serde_json::Value) {
    let out = sync(config, &["--dry-run", "--output", "json"]);
    let plan = serde_json::from_str(&out.stdout_str())
        .unwrap_or_else(|e| panic!("dry-run output is not JSON ({e}):\n{}", out.describe()));
    (out, plan)
}

/// [`dry_run_json`], asserting that it plans no operation (a converged target).
#[track_caller]
pub fn assert_nothing_to_do(config: &Path) -> serde_json::Value {
    let plan = dry_run_json(config);
    let operations = &plan["sinks"][0]["operations"];
    assert_eq!(
        operations,
        &serde_json::json!([]),
        "a converged target plans nothing: {plan}"
    );
    plan
}

/// One operation of a JSON plan, as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedOp {
    pub op: String,
    pub group: String,
    /// The member names of a member operation; empty for the others.
    pub members: Vec<String>,
    pub drift: bool,
}

/// The operations of the first sink of a JSON plan (`sync --output json`).
pub fn planned_operations(plan: &serde_json::Value) -> Vec<PlannedOp> {
    let operations = plan["sinks"][0]["operations"].as_array();
    operations
        .into_iter()
        .flatten()
        .map(|o| PlannedOp {
            op: text(o, "op"),
            group: text(o, "group"),
            members: o["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect(),
            drift: o["drift"] == true,
        })
        .collect()
}

/// `(op, group, drift)` of each operation of the first sink of a JSON plan.
pub fn planned_ops(plan: &serde_json::Value) -> Vec<(String, String, bool)> {
    let operations = planned_operations(plan).into_iter();
    operations.map(|o| (o.op, o.group, o.drift)).collect()
}

/// `value[key]` as text; empty when it is missing or not a string.
pub fn text(value: &serde_json::Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_string()
}

/// `(item[a], item[b])` as text, for each item of a JSON list.
pub fn text_pairs<C: FromIterator<(String, String)>>(
    items: &[serde_json::Value],
    a: &str,
    b: &str,
) -> C {
    items
        .iter()
        .map(|item| (text(item, a), text(item, b)))
        .collect()
}

/// Runs `sync --dry-run --full --output json` and asserts it plans exactly [`DRIFT_REPAIRS`].
#[track_caller]
pub fn assert_drift_repairs_planned(config: &Path) {
    let out = sync(config, &["--dry-run", "--full", "--output", "json"]);
    assert_code(&out, 0);
    let plan: serde_json::Value = serde_json::from_str(&out.stdout_str()).expect("JSON plan");
    let expected: Vec<(String, String, bool)> = DRIFT_REPAIRS
        .iter()
        .map(|(op, group, drift)| (op.to_string(), group.to_string(), *drift))
        .collect();
    assert_eq!(planned_ops(&plan), expected, "{plan}");
}

/// Asserts that a dry run, and a full one, both plan nothing.
#[track_caller]
pub fn assert_converged_even_in_full(config: &Path) {
    for args in [
        &["--dry-run", "--output", "json"][..],
        &["--dry-run", "--full", "--output", "json"],
    ] {
        let out = sync(config, args);
        let plan: serde_json::Value = serde_json::from_str(&out.stdout_str()).expect("JSON plan");
        assert_eq!(
            plan["sinks"][0]["operations"],
            serde_json::json!([]),
            "{plan}"
        );
    }
}

/// Runs `sync --output json`, expects exit 1 (some operations failed), and returns the first
/// sink's `failures` (each with `op`, `group` and `error`).
pub fn sync_failures(config: &Path) -> Vec<serde_json::Value> {
    let out = sync(config, &["--output", "json"]);
    assert_code(&out, 1);
    let report: serde_json::Value = serde_json::from_str(&out.stdout_str())
        .unwrap_or_else(|e| panic!("sync --output json: {e}\n{}", out.describe()));
    report["sinks"][0]["failures"]
        .as_array()
        .unwrap_or_else(|| panic!("no failures in {report}"))
        .clone()
}

/// Asserts that `failures` hold a failed `op` on `group` whose error contains `text`.
pub fn assert_failed(failures: &[serde_json::Value], op: &str, group: &str, text: &str) {
    assert!(
        failures.iter().any(|f| f["op"] == op
            && f["group"] == group
            && f["error"].as_str().is_some_and(|e| e.contains(text))),
        "no failed {op} of {group} containing {text:?} in {failures:#?}"
    );
}
