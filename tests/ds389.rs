//! End to end against a real 389 Directory Server (Debian `389-ds-base`) with its default
//! settings, through the binary: `nsUniqueId` ids, `groupOfUniqueNames` members, a rename as an
//! update, and its 2,000-entry size limit (paging reads past it; a page larger than it fails).
//!
//! One server is shared by every test in this binary (dscreate takes seconds); each test works
//! in its own OU.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;

fn ds() -> &'static Ds389 {
    static DS: OnceLock<Ds389> = OnceLock::new();
    DS.get_or_init(Ds389::start)
}

/// Adds `ou=NAME,<suffix>` and returns its DN.
fn add_ou(name: &str) -> String {
    let dn = format!("ou={name},{}", ds().base_dn());
    ds().add(&format!(
        "dn: {dn}\nobjectClass: organizationalUnit\nou: {name}\n"
    ));
    dn
}

/// LDIF for the users `uid=NAME,<ou>`.
fn users_ldif(ou: &str, names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            format!("dn: uid={n},{ou}\nobjectClass: inetOrgPerson\nuid: {n}\ncn: {n}\nsn: {n}\n\n")
        })
        .collect()
}

/// A config reading `ou` (users and groups) as the service account, `nsUniqueId` ids, into a
/// file sink at `dir/ops.jsonl`.
fn write_config(dir: &Path, ou: &str, page_size: u32) -> PathBuf {
    let ds = ds();
    write_file(
        dir,
        "config.toml",
        format!(
            "[ldap]\nurl = \"{url}\"\nbind_dn = \"{bind}\"\nbind_password = \"{password}\"\n\
             page_size = {page_size}\n\n\
             [groups]\nbase_dn = \"{ou}\"\nid_attribute = \"nsUniqueId\"\n\n\
             [users]\nbase_dn = \"{ou}\"\nid_attribute = \"nsUniqueId\"\n\n\
             [state]\npath = \"{state}\"\n\n{safety}\n\
             [[sinks]]\nname = \"audit\"\ntype = \"file\"\npath = \"{ops}\"\n",
            url = ds.url(),
            bind = ds.service_dn(),
            password = ds.service_password(),
            state = dir.join("state.db").display(),
            safety = permissive_safety_toml(1000),
            ops = dir.join("ops.jsonl").display(),
        ),
    )
}

fn operations(plan: &Value) -> &Vec<Value> {
    plan["sinks"][0]["operations"].as_array().unwrap()
}

/// `nsUniqueId` as the id of users and groups, a groupOfUniqueNames' members (one with the
/// optional `#'…'B` suffix), and a modrdn planned as one update of the same id.
#[test]
fn nsuniqueid_ids_unique_members_and_a_rename() {
    let ds = ds();
    let ou = add_ou("ids");
    let names: Vec<String> = ["alice", "bob"].map(String::from).to_vec();
    ds.add(&users_ldif(&ou, &names));
    let group = format!("cn=team,{ou}");
    ds.add(&format!(
        "dn: {group}\nobjectClass: groupOfUniqueNames\ncn: team\n\
         uniqueMember: uid=alice,{ou}#'0101'B\nuniqueMember: uid=bob,{ou}\n"
    ));
    let id = ds
        .attr_values(&group, "nsUniqueId")
        .pop()
        .expect("nsUniqueId");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &ou, 500);

    let plan = dry_run_ok(&config);
    let ops = operations(&plan);
    assert_eq!(ops.len(), 2, "{plan:#}");
    assert_eq!(ops[0]["op"], "create");
    assert_eq!(ops[0]["source_id"], id.as_str(), "{plan:#}");
    let members: BTreeSet<&str> = ops[1]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(members, BTreeSet::from(["alice", "bob"]), "{plan:#}");
    assert_code(&sync(&config, &[]), 0);

    ds.rename(&group, "cn=squad");
    let renamed = format!("cn=squad,{ou}");
    assert_eq!(ds.attr_values(&renamed, "nsUniqueId"), vec![id.clone()]);
    let plan = dry_run_ok(&config);
    let ops = operations(&plan);
    assert_eq!(ops.len(), 1, "{plan:#}");
    assert_eq!(ops[0]["op"], "update");
    assert_eq!(ops[0]["group"], "squad");
    assert_eq!(ops[0]["previous_name"], "team");
    assert_eq!(ops[0]["source_id"], id.as_str());
}

/// 2,100 users, past the default 2,000-entry size limit: read whole through paging. A page size
/// above the limit fails the run (exit 1) with the result code named, and nothing is written.
#[test]
fn paging_reads_past_the_size_limit_and_a_larger_page_fails_clearly() {
    const N: usize = 2100;
    let ds = ds();
    let ou = add_ou("big");
    let names: Vec<String> = (0..N).map(|i| format!("big{i:04}")).collect();
    ds.add(&users_ldif(&ou, &names));
    ds.add(&format!(
        "dn: cn=few,{ou}\nobjectClass: groupOfUniqueNames\ncn: few\nuniqueMember: uid=big0001,{ou}\n"
    ));
    let dir = tempfile::tempdir().unwrap();

    let config = write_config(dir.path(), &ou, 2500);
    let out = sync(&config, &[]);
    assert_code(&out, 1);
    let err = out.stderr_str();
    assert!(
        err.contains("sizeLimitExceeded (result code 4)") && err.contains("lower [ldap] page_size"),
        "{}",
        out.describe()
    );
    assert!(
        std::fs::read_to_string(dir.path().join("ops.jsonl"))
            .unwrap_or_default()
            .is_empty(),
        "nothing is written after an incomplete read"
    );

    let config = write_config(dir.path(), &ou, 500);
    let plan = dry_run_ok(&config);
    assert_eq!(plan["read"]["users"], N as u64, "{}", plan["read"]);
    let out = sync(&config, &[]);
    assert_code(&out, 0);
    let ops = std::fs::read_to_string(dir.path().join("ops.jsonl")).unwrap();
    assert!(
        ops.contains("\"create\"") && ops.contains("big0001"),
        "{ops}"
    );
}
