//! Directories as they really are, against a real OpenLDAP slapd: groups of several classes in
//! one scope (groupOfNames, groupOfUniqueNames, posixGroup), LDAP result codes by name, and
//! continuation references counted in the report's warnings.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// A config reading `slapd` into a file sink, with `extra` appended to `[groups]`.
fn write_config(dir: &Path, slapd: &Slapd, groups_extra: &str) -> PathBuf {
    let text = ldap_config_toml(slapd, &dir.join("state.db")).replace(
        &format!("[groups]\nbase_dn = \"{}\"\n", slapd.groups_dn()),
        &format!(
            "[groups]\nbase_dn = \"{}\"\n{groups_extra}",
            slapd.groups_dn()
        ),
    );
    write_file(
        dir,
        "config.toml",
        format!("{text}\n[[sinks]]\nname = \"audit\"\ntype = \"file\"\npath = \"-\"\n"),
    )
}

/// Group name → members, from the planned `create` and `member_add` operations.
fn planned_members(plan: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for op in plan["sinks"][0]["operations"].as_array().unwrap() {
        let entry = groups
            .entry(op["group"].as_str().unwrap().to_string())
            .or_default();
        if op["op"] == "member_add" {
            entry.extend(
                op["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_string()),
            );
        }
    }
    groups
}

fn warnings(plan: &Value) -> Vec<String> {
    plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The default group filter matches three classes; without `member_attribute` each group's
/// members come from the attribute its class uses (a `uniqueMember` `#'…'B` suffix stripped,
/// `memberUid` names resolved to users). With `member_attribute` set, the groups whose members
/// sit elsewhere are named in the plan's warnings.
#[test]
fn groups_of_every_class_keep_their_members() {
    let slapd = Slapd::start();
    let dns: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| slapd.add_user(u, &format!("{u}@example.com")))
        .collect();
    slapd.add_group("names", &[&dns[0], &dns[1]]);
    let groups = slapd.groups_dn();
    slapd.add(&format!(
        "dn: cn=unique,{groups}\nobjectClass: groupOfUniqueNames\ncn: unique\n\
         uniqueMember: {}#'0101'B\nuniqueMember: {}\n\n\
         dn: cn=posix,{groups}\nobjectClass: posixGroup\ncn: posix\ngidNumber: 5000\n\
         memberUid: carol\nmemberUid: Alice\n",
        dns[1], dns[2]
    ));
    let dir = tempfile::tempdir().unwrap();

    let plan = dry_run_ok(&write_config(dir.path(), &slapd, ""));
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("names", names(&["alice", "bob"])),
        ("unique", names(&["bob", "carol"])),
        ("posix", names(&["alice", "carol"])),
    ]
    .into_iter()
    .map(|(g, m)| (g.to_string(), m))
    .collect();
    assert_eq!(planned_members(&plan), expected, "{plan:#}");
    assert_eq!(warnings(&plan), Vec::<String>::new(), "{plan:#}");

    // An explicit attribute reads only that one, and says which groups it leaves empty.
    let plan = dry_run_ok(&write_config(
        dir.path(),
        &slapd,
        "member_attribute = \"uniqueMember\"\n",
    ));
    let members = planned_members(&plan);
    assert_eq!(members["unique"], names(&["bob", "carol"]));
    assert!(members["names"].is_empty() && members["posix"].is_empty());
    let warned = warnings(&plan);
    for (group, attribute) in [("names", "\"member\""), ("posix", "\"memberUid\"")] {
        assert!(
            warned
                .iter()
                .any(|w| w.contains(&format!("group \"{group}\""))
                    && w.contains(attribute)
                    && w.contains("no members")),
            "no warning for {group}: {warned:?}"
        );
    }
    assert_eq!(warned.len(), 2, "{warned:?}");
}

/// A wrong bind password and a server size limit are named, with what to do; the numeric code
/// stays in the message.
#[test]
fn ldap_result_codes_are_named_with_a_hint() {
    let slapd = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &slapd, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("bind_password = \"{}\"", slapd.admin_password()),
        "bind_password = \"Wr0ng-Pa55\"",
    );
    let config = write_file(dir.path(), "wrong.toml", text);
    let out = sync(&config, &["--dry-run"]);
    assert_code(&out, 1);
    let err = out.stderr_str();
    assert!(
        err.contains("invalidCredentials (result code 49)")
            && err.contains("Check [ldap] bind_dn and the bind password"),
        "{}",
        out.describe()
    );
    assert!(!err.contains("Wr0ng-Pa55"), "the password is never printed");
}

/// Referral objects under the groups base: the search answers with continuation references,
/// which are skipped and counted in the report's warnings, one line for the base.
#[test]
fn continuation_references_are_counted_in_the_warnings() {
    let slapd = Slapd::start();
    let alice = slapd.add_user("alice", "alice@example.com");
    slapd.add_group("ops", &[&alice]);
    let groups = slapd.groups_dn();
    let mut ldif = String::new();
    for ou in ["emea", "apac"] {
        ldif.push_str(&format!(
            "dn: ou={ou},{groups}\nobjectClass: referral\nobjectClass: extensibleObject\n\
             ou: {ou}\nref: ldap://{ou}.example.com/ou={ou},{groups}\n\n"
        ));
    }
    // -M (ManageDsaIT): add the referral objects themselves.
    slapd.run_tool("ldapadd", &["-M"], &ldif);

    let dir = tempfile::tempdir().unwrap();
    let plan = dry_run_ok(&write_config(dir.path(), &slapd, ""));
    assert_eq!(planned_members(&plan)["ops"], names(&["alice"]), "{plan:#}");
    let warned = warnings(&plan);
    let lines: Vec<&String> = warned
        .iter()
        .filter(|w| w.contains("continuation reference"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per base: {warned:?}");
    assert!(
        lines[0].contains(&groups)
            && lines[0].contains("2 continuation reference(s)")
            && lines[0].contains("ldap://emea.example.com")
            && lines[0].contains("ldap://apac.example.com"),
        "{}",
        lines[0]
    );
}
