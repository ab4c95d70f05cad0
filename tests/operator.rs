//! The operator's day with no server at all (an LDIF directory, file sinks): saved plans applied
//! exactly or refused, the ledger on screen, read-only commands beside the state file's owner,
//! the threshold floor, `check` on the files a configuration names, and errors printed once.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const PEOPLE: &str = "ou=People,dc=example,dc=com";

/// An LDIF directory: users `a`–`e`, and per group its id, name and member uids.
fn ldif(groups: &[(&str, &str, &[&str])]) -> String {
    let mut text = String::new();
    for uid in ["a", "b", "c", "d", "e"] {
        text.push_str(&format!(
            "dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\nentryUUID: u-{uid}\n\n"
        ));
    }
    for (id, name, members) in groups {
        text.push_str(&format!(
            "dn: cn={name},ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: {name}\nentryUUID: {id}\n"
        ));
        for uid in *members {
            text.push_str(&format!("member: uid={uid},{PEOPLE}\n"));
        }
        text.push('\n');
    }
    text
}

const THREE_GROUPS: &[(&str, &str, &[&str])] = &[
    ("g-1", "one", &["a", "b", "c"]),
    ("g-2", "two", &["a", "b"]),
    ("g-3", "three", &["a", "c"]),
];

/// A directory in `dir/dir.ldif`, a state file and one file sink per name (`NAME.jsonl`).
struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    fn new(groups: &[(&str, &str, &[&str])], safety: &str, sinks: &[&str]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            config: dir.path().join("config.toml"),
            dir,
        };
        env.set_directory(groups);
        let mut text = format!(
            "[ldap]\nldif_file = \"{}\"\n\n[groups]\nbase_dn = \"ou=Groups,dc=example,dc=com\"\n\n\
             [users]\nbase_dn = \"{PEOPLE}\"\n\n[state]\npath = \"{}\"\n\n{safety}\n",
            env.path("dir.ldif").display(),
            env.path("state.db").display()
        );
        for sink in sinks {
            text.push_str(&format!(
                "[[sinks]]\nname = \"{sink}\"\ntype = \"file\"\npath = \"{}\"\n\n",
                env.path(&format!("{sink}.jsonl")).display()
            ));
        }
        std::fs::write(&env.config, text).unwrap();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn set_directory(&self, groups: &[(&str, &str, &[&str])]) {
        write_file(self.dir.path(), "dir.ldif", ldif(groups));
    }

    /// `ldapsync -c CONFIG ARGS…` (the short flag).
    fn run(&self, args: &[&str]) -> std::process::Output {
        let config = self.config.display().to_string();
        run_ldapsync_in(&[&["-c", config.as_str()], args].concat(), None, &[])
    }

    /// The operations a file sink has written.
    fn ops(&self, sink: &str) -> Vec<Value> {
        std::fs::read_to_string(self.path(&format!("{sink}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// How many runs the history holds.
    fn runs(&self) -> usize {
        let out = self.run(&["status", "-o", "json"]);
        assert_code(&out, 0);
        let status: Value = serde_json::from_str(&out.stdout_str()).unwrap();
        status["runs"].as_array().unwrap().len()
    }
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&out.stdout_str())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", out.describe()))
}

/// Asserts that a command run with `-o json` ended with exit `code` and printed
/// `{"error", "exit_code"}` with an error that contains `needle`.
#[track_caller]
fn assert_json_error(out: &std::process::Output, code: i32, needle: &str) {
    assert_code(out, code);
    let error = json(out);
    let message = error["error"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{error}");
    assert_eq!(error["exit_code"], code, "{error}");
}

#[test]
fn a_saved_plan_is_applied_exactly_or_refused_when_anything_changed() {
    let env = Env::new(
        THREE_GROUPS,
        "[safety]\nmax_group_deletes = 0\n",
        &["audit", "mirror"],
    );
    assert_code(&env.run(&["sync", "-q"]), 0);
    assert_eq!(env.ops("audit").len(), 6);

    // "three" leaves the directory: held, and the dry run's hold message does not ask for a
    // dry run.
    env.set_directory(&THREE_GROUPS[..2]);
    let out = env.run(&["sync", "-n"]);
    assert_code(&out, 3);
    let text = out.stdout_str();
    assert!(
        text.contains("HELD: held by the safety thresholds"),
        "{text}"
    );
    assert!(!text.contains("--dry-run"), "{text}");
    let plan_file = env.path("plan.json");
    let plan_arg = plan_file.display().to_string();
    let out = env.run(&["sync", "-n", "--save-plan", &plan_arg, "-o", "json"]);
    assert_code(&out, 3);
    let dry = json(&out);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    let fingerprint = saved["fingerprint"].as_str().unwrap().to_string();
    assert!(fingerprint.starts_with("sha256:"), "{saved:#}");
    assert_eq!(dry["plan_fingerprint"], fingerprint.as_str(), "{dry}");
    assert_eq!(saved["sinks"][0]["held"], true, "{saved:#}");
    assert_eq!(
        saved["sinks"][0]["operations"][0]["op"], "delete",
        "{saved:#}"
    );

    // The directory changes: refused, nothing written anywhere.
    env.set_directory(&[THREE_GROUPS[0], ("g-2", "two", &["a", "b", "d"])]);
    let runs = env.runs();
    let out = env.run(&["sync", "--plan", &plan_arg]);
    assert_code(&out, 1);
    assert!(
        out.stderr_str()
            .contains("the directory changed since the plan"),
        "{}",
        out.describe()
    );
    assert_eq!(env.ops("audit").len(), 6, "nothing written to the sink");
    assert_eq!(env.runs(), runs, "nothing written to the state file");

    // Back to the reviewed directory, but another run changed one ledger: refused.
    env.set_directory(&THREE_GROUPS[..2]);
    assert_code(
        &env.run(&["sync", "-s", "mirror", "--allow-deletes", "-q"]),
        0,
    );
    let out = env.run(&["sync", "--plan", &plan_arg, "-o", "json"]);
    assert_json_error(&out, 1, "the ledger of sink \"mirror\" changed");
    assert_eq!(env.ops("audit").len(), 6);

    // A fresh plan is applied exactly, its held delete included.
    let out = env.run(&["sync", "-n", "--save-plan", &plan_arg, "-s", "audit"]);
    assert_code(&out, 3);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    let fingerprint = saved["fingerprint"].as_str().unwrap();
    assert!(
        out.stdout_str()
            .contains(&format!("Plan saved: {fingerprint}")),
        "{}",
        out.describe()
    );
    let out = env.run(&["sync", "--plan", &plan_arg]);
    assert_code(&out, 0);
    assert!(
        out.stdout_str()
            .contains(&format!("Plan applied: {fingerprint}")),
        "{}",
        out.describe()
    );
    let ops = env.ops("audit");
    assert_eq!(ops.len(), 7);
    assert_eq!(
        (&ops[6]["op"], &ops[6]["group"]),
        (&Value::from("delete"), &Value::from("three"))
    );

    // Applied once: the ledger moved on, so the same plan is refused the second time.
    assert_code(&env.run(&["sync", "--plan", &plan_arg]), 1);
    // An edited plan is refused.
    let edited = std::fs::read_to_string(&plan_file)
        .unwrap()
        .replace("\"three\"", "\"four\"");
    std::fs::write(&plan_file, edited).unwrap();
    let out = env.run(&["sync", "--plan", &plan_arg]);
    assert_code(&out, 1);
    out.assert_stderr_has("does not match its content");
}

#[test]
fn percentage_thresholds_wait_for_the_floor() {
    let env = Env::new(THREE_GROUPS, "", &["audit"]);
    assert_code(&env.run(&["sync", "-q"]), 0);
    // User c leaves both its groups: 2 of 7 memberships (29%), under the floor of 10.
    env.set_directory(&[
        ("g-1", "one", &["a", "b"]),
        ("g-2", "two", &["a", "b"]),
        ("g-3", "three", &["a"]),
    ]);
    let out = env.run(&["sync", "-o", "summary"]);
    assert_code(&out, 0);
    assert_eq!(
        out.stdout_str(),
        "sink \"audit\" (file): 0 create, 0 update, 0 delete, 0 member_add, 2 member_remove, 0 adopt, 0 unmapped: success\n"
    );
    // With no floor the percentage applies again.
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[[sinks]]", "[safety]\npercent_floor = 0\n\n[[sinks]]");
    std::fs::write(&env.config, text).unwrap();
    env.set_directory(&[
        ("g-1", "one", &["a"]),
        ("g-2", "two", &["a", "b"]),
        ("g-3", "three", &["a"]),
    ]);
    assert_code(&env.run(&["sync", "-n"]), 3);
}

#[test]
fn the_ledger_command_shows_what_each_sink_owns() {
    let env = Env::new(THREE_GROUPS, "", &["audit", "mirror"]);
    let out = env.run(&["ledger"]);
    assert_code(&out, 0);
    out.assert_stdout_has("no ledger yet");
    assert_code(&env.run(&["sync", "-q"]), 0);

    let out = env.run(&["ledger", "-s", "audit", "-o", "json"]);
    assert_code(&out, 0);
    let ledger = json(&out);
    let sinks = ledger["sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 1, "{ledger}");
    assert_eq!(sinks[0]["sink"], "audit");
    let groups: Vec<(&str, &str, u64, &str)> = sinks[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap(),
                g["source_id"].as_str().unwrap(),
                g["members"].as_u64().unwrap(),
                g["origin"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("one", "g-1", 3, "created"),
            ("three", "g-3", 2, "created"),
            ("two", "g-2", 2, "created")
        ]
    );
    assert!(sinks[0]["groups"][0]["recorded_at"].is_string(), "{ledger}");
    assert_eq!(sinks[0]["pending_intents"], 0);

    // An unconfirmed create shows as a pending intent.
    forget_confirmed_creates(&env.path("state.db"), "mirror");
    let out = env.run(&["ledger", "--sink", "mirror"]);
    assert_code(&out, 0);
    let text = out.stdout_str();
    assert!(
        text.contains("sink \"mirror\": 0 group(s), 3 pending intent(s)"),
        "{text}"
    );
    assert!(text.contains("pending"), "{text}");
    assert!(!text.contains("sink \"audit\""), "{text}");

    // status --sink and unknown sinks.
    let out = env.run(&["status", "-s", "mirror", "-o", "json"]);
    assert_code(&out, 0);
    let status = json(&out);
    assert_eq!(status["sinks"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(
        status["runs"][0]["sinks"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    let out = env.run(&["ledger", "-s", "nope", "-o", "json"]);
    assert_json_error(&out, 2, "no sink named \"nope\"");
}

#[test]
fn read_only_commands_work_while_another_process_owns_the_state_file() {
    let env = Env::new(THREE_GROUPS, "", &["audit"]);
    assert_code(&env.run(&["sync", "-q"]), 0);
    env.set_directory(&THREE_GROUPS[..2]);
    let _lock = StateLock::hold(&env.path("state.db"));
    let out = env.run(&["sync", "--dry-run", "--output", "json"]);
    assert_code(&out, 0);
    assert_eq!(json(&out)["sinks"][0]["summary"]["delete"], 1);
    assert_code(&env.run(&["status"]), 0);
    assert_code(&env.run(&["ledger"]), 0);
    // A real run still needs the file to itself, and says so in JSON too.
    let out = env.run(&["sync", "-o", "json"]);
    assert_json_error(&out, 1, "in use by another ldapsync process");
    assert_eq!(
        out.stderr_str()
            .matches("in use by another ldapsync process")
            .count(),
        1,
        "{}",
        out.describe()
    );
}

#[test]
fn check_opens_every_file_the_configuration_names() {
    let env = Env::new(THREE_GROUPS, "", &["audit"]);
    let text = std::fs::read_to_string(&env.config).unwrap();
    let relative = text.replace(&env.path("dir.ldif").display().to_string(), "dir.ldif");
    write_file(env.dir.path(), "relative.toml", &relative);
    // From the configuration's directory the relative path resolves: valid.
    let out = run_ldapsync_in(&["-c", "relative.toml", "check"], Some(env.dir.path()), &[]);
    assert_code(&out, 0);
    // From elsewhere it does not, as `sync` would find: check says which file and key.
    let config = env.path("relative.toml").display().to_string();
    let out = run_ldapsync_in(&["-c", config.as_str(), "check"], Some(Path::new("/")), &[]);
    assert_code(&out, 2);
    let stderr = out.stderr_str();
    assert!(
        stderr.contains("[ldap] ldif_file: cannot read dir.ldif"),
        "{stderr}"
    );
    assert!(
        stderr.contains("relative to the current directory /"),
        "{stderr}"
    );

    let ca = text.replace(
        &format!("ldif_file = \"{}\"", env.path("dir.ldif").display()),
        "url = \"ldaps://127.0.0.1:1\"\nca_file = \"/nonexistent/ca.pem\"",
    );
    let config = write_file(env.dir.path(), "ca.toml", ca);
    let out = run_ldapsync(&config, &["check"]);
    assert_code(&out, 2);
    assert!(
        out.stderr_str()
            .contains("[ldap] ca_file: cannot read /nonexistent/ca.pem"),
        "{}",
        out.describe()
    );
}

#[test]
fn errors_are_printed_once_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(THREE_GROUPS, "", &["audit"]);
    // A failed first read: one error, no ERROR log line, and no state file left behind.
    write_file(
        env.dir.path(),
        "dir.ldif",
        "dn: cn=g,ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: g\n",
    );
    let out = env.run(&["sync"]);
    assert_code(&out, 1);
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert_eq!(
        all.matches("has no \"entryUUID\"").count(),
        1,
        "{}",
        out.describe()
    );
    assert!(!all.contains("ERROR"), "{}", out.describe());
    assert!(
        !env.path("state.db").exists(),
        "the failed read created the state file"
    );

    // The first good run: no library chatter at the default log level.
    env.set_directory(THREE_GROUPS);
    let out = env.run(&["sync", "-q"]);
    assert_code(&out, 0);
    assert!(
        !out.stderr_str().contains("rusqlite_migration"),
        "{}",
        out.describe()
    );

    // A five-field cron expression: shown in its six-field form, once.
    let text =
        std::fs::read_to_string(&env.config).unwrap() + "\n[schedule]\ncron = \"*/5 * * * *\"\n";
    let config = write_file(dir.path(), "cron.toml", text);
    let out = run_ldapsync(&config, &["daemon"]);
    assert_code(&out, 2);
    let all = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert_eq!(
        all.matches("\"0 */5 * * * *\"").count(),
        1,
        "{}",
        out.describe()
    );
    assert_eq!(all.lines().count(), 1, "{}", out.describe());

    // A misspelt key: the likely one is suggested.
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[state]\npath", "[state]\npaht");
    let config = write_file(dir.path(), "typo.toml", text);
    let out = run_ldapsync(&config, &["check"]);
    assert_code(&out, 2);
    assert!(
        out.stderr_str()
            .contains("unknown key \"paht\" in [state]; did you mean \"path\"?"),
        "{}",
        out.describe()
    );
}
