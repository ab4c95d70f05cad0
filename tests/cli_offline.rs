//! The binary with no server at all: the LDIF source, the file sink, the quick start, and bad configuration.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn ldif_config(dir: &Path, ldif: &str, out: &str, extra: &str) -> std::path::PathBuf {
    let ldif_path = write_file(dir, "dir.ldif", ldif);
    write_file(
        dir,
        "config.toml",
        format!(
            r#"[ldap]
ldif_file = "{ldif}"

[groups]
base_dn = "ou=Groups,dc=example,dc=com"
filter = "(|(objectClass=groupOfNames)(objectClass=posixGroup))"
{extra}
[users]
base_dn = "ou=People,dc=example,dc=com"

[state]
path = "{state}"

[[sinks]]
name = "audit"
type = "file"
path = "{out}"
"#,
            ldif = ldif_path.display(),
            state = dir.join("state.db").display(),
        ),
    )
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn quick_start_runs_on_the_embedded_example_then_has_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("examples/quickstart.toml"))
        .unwrap()
        .replace(
            "examples/directory.ldif",
            &repo_root()
                .join("examples/directory.ldif")
                .display()
                .to_string(),
        )
        .replace(
            "target/quickstart-state.db",
            &dir.path().join("state.db").display().to_string(),
        );
    let config = write_file(dir.path(), "quickstart.toml", text);
    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let stdout = out.stdout_str();
    let ops: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        ops.iter().filter(|o| o["op"] == "create").count(),
        3,
        "{stdout}"
    );
    let engineering = ops
        .iter()
        .find(|o| o["op"] == "member_add" && o["group"] == "engineering")
        .unwrap();
    assert_eq!(
        engineering["members"],
        serde_json::json!(["alice", "bob", "smith, john"]),
        "nested platform members are flattened into engineering"
    );
    assert!(
        stdout.contains("+ member_add    engineering: alice, bob, \"smith, john\""),
        "the text plan quotes names that contain the separator: {stdout}"
    );
    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    out.assert_stdout_has("nothing to do");
}

#[test]
fn file_sink_writes_one_json_line_per_applied_operation_and_keeps_a_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("ops.jsonl");
    let ldif = "dn: uid=a,ou=People,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: a\nentryUUID: u-a\n\n\
                dn: uid=b,ou=People,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: b\nentryUUID: u-b\n\n\
                dn: cn=g,ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: g\nmember: uid=a,ou=People,dc=example,dc=com\nentryUUID: g-1\n";
    // No floor under the percentage limits: one membership of one is a mass change here.
    let config = ldif_config(
        dir.path(),
        ldif,
        &out_path.display().to_string(),
        "\n[safety]\npercent_floor = 0\n",
    );
    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let ops = lines(&out_path);
    assert_eq!(ops.len(), 2);
    assert_eq!(
        (
            ops[0]["op"].as_str(),
            ops[0]["group"].as_str(),
            ops[0]["source_id"].as_str()
        ),
        (Some("create"), Some("g"), Some("g-1"))
    );
    assert_eq!(ops[1]["members"], serde_json::json!(["a"]));

    // Change membership: exactly the delta is appended.
    std::fs::write(
        dir.path().join("dir.ldif"),
        ldif.replace("member: uid=a,", "member: uid=b,"),
    )
    .unwrap();
    // Removing the only membership is 100% of what the ledger holds: held by default.
    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 3, "{}", out.describe());
    assert_eq!(lines(&out_path).len(), 2, "a held run writes nothing");
    let out = run_ldapsync(&config, &["sync", "--allow-deletes"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let ops = lines(&out_path);
    let new: Vec<(&str, &Value)> = ops[2..]
        .iter()
        .map(|o| (o["op"].as_str().unwrap(), &o["members"]))
        .collect();
    assert_eq!(
        new,
        [
            ("member_add", &serde_json::json!(["b"])),
            ("member_remove", &serde_json::json!(["a"]))
        ]
    );
}

#[test]
fn non_utf8_values_and_posix_groups_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("ops.jsonl");
    // cn:: is base64 of the bytes 0xff 'b' 'a' 'd' — not UTF-8.
    let ldif = "dn: uid=a,ou=People,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: a\nentryUUID: u-a\n\n\
                dn: cn=bad,ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn:: /2JhZA==\nmember:: /w==\nentryUUID: g-1\n\n\
                dn: cn=posix,ou=Groups,dc=example,dc=com\nobjectClass: posixGroup\ncn: posix\nmemberUid: A\nmemberUid: zed\nentryUUID: g-2\n";
    let config = ldif_config(
        dir.path(),
        ldif,
        &out_path.display().to_string(),
        "member_attribute = \"memberUid\"\n",
    );
    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    out.assert_stderr_has("not valid UTF-8");
    let ops = lines(&out_path);
    assert!(ops.iter().any(|o| o["group"] == "\u{fffd}bad"));
    let posix = ops.iter().find(|o| o["op"] == "member_add").unwrap();
    assert_eq!(
        posix["members"],
        serde_json::json!(["a"]),
        "memberUid matches user names case-insensitively"
    );
    out.assert_stderr_has("\"zed\"");
}

#[test]
fn an_entry_without_its_id_attribute_fails_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let ldif =
        "dn: cn=g,ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: g\nmember: uid=a\n";
    let config = ldif_config(dir.path(), ldif, "-", "");
    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 1, "{}", out.describe());
    out.assert_stderr_has("has no \"entryUUID\"");
    assert!(!dir.path().join("ops.jsonl").exists());
}

#[test]
fn bad_configuration_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(ldif_config(dir.path(), "", "-", "")).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace("[users]\n", "[users]\nbind_pw = \"x\"\n"),
            ":9: unknown key \"bind_pw\" in [users]",
        ),
        (
            good.replace("[[sinks]]\n", "[[sinks]]\ncolour = 1\n"),
            "unknown key \"colour\" in [[sinks]]",
        ),
        (
            good.replace("[ldap]\n", "[ldap]\npage_size = \"many\"\n"),
            ":2:",
        ),
        (
            good.replace("[ldap]\n", "[ldap]\npage_size = 0\n"),
            "invalid value for \"page_size\"",
        ),
        (
            good.replace("type = \"file\"", "type = \"carrier-pigeon\""),
            "carrier-pigeon",
        ),
        (
            good.replace("[state]\npath", "[state]\n#path"),
            "missing key \"path\"",
        ),
        (good.replace("[[sinks]]", "[[nope]]"), "nope"),
        (
            good.replace(
                "[ldap]\n",
                "[ldap]\nbind_password_file = \"/nonexistent/pw\"\n",
            ),
            "cannot read secret file /nonexistent/pw",
        ),
        (
            good.replace(
                "[ldap]\n",
                "[ldap]\nbind_password = \"env:LDAPSYNC_TEST_UNSET\"\n",
            ),
            "LDAPSYNC_TEST_UNSET",
        ),
    ];
    for (text, expected) in cases {
        let config = write_file(dir.path(), "bad.toml", &text);
        let out = run_ldapsync(&config, &["sync", "--dry-run"]);
        assert_eq!(out.code(), 2, "{expected}: {}", out.describe());
        let stderr = out.stderr_str();
        assert!(stderr.contains("bad.toml"), "names the file: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let config = write_file(dir.path(), "good.toml", &good);
    let out = run_ldapsync(&config, &["sync", "--sink", "nope"]);
    assert_eq!(out.code(), 2, "{}", out.describe());
    assert!(out.stderr_str().contains("no sink named \"nope\""));
    let out = run_ldapsync(&dir.path().join("missing.toml"), &["check"]);
    assert_eq!(out.code(), 2, "{}", out.describe());
}

#[test]
fn secrets_from_files_and_env_never_reach_output() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "Sup3r-Secret-Value-42";
    write_file(dir.path(), "token", format!("{secret}\n"));
    let text = std::fs::read_to_string(ldif_config(dir.path(), "", "-", "")).unwrap()
        + &format!(
            "\n[[sinks]]\nname = \"scim\"\ntype = \"scim\"\nbase_url = \"http://127.0.0.1:9/v2\"\ntoken_file = \"{}\"\n",
            dir.path().join("token").display()
        );
    let config = write_file(dir.path(), "c.toml", &text);
    let out = run_ldapsync(&config, &["check", "--connect"]);
    assert_eq!(
        out.code(),
        1,
        "the SCIM target is unreachable: {}",
        out.describe()
    );
    assert!(!out.describe().contains(secret));
    let env_config = write_file(
        dir.path(),
        "env.toml",
        text.replace(
            &format!("token_file = \"{}\"", dir.path().join("token").display()),
            "token = \"env:SCIM_TOKEN\"",
        ),
    );
    let out = run_ldapsync_env(
        &env_config,
        &["check", "--connect"],
        &[("SCIM_TOKEN", secret), ("RUST_LOG", "trace")],
    );
    assert_eq!(out.code(), 1, "{}", out.describe());
    assert!(!out.describe().contains(secret), "{}", out.describe());
}
