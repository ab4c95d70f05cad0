//! End to end against a real Active Directory: a Samba AD DC (Debian `samba`) provisioned into a
//! temporary directory, reached over LDAPS with a test CA, through the binary; AD conventions in
//! the config (objectGUID ids, sAMAccountName user names, `(objectClass=group)`).
//!
//! One DC is shared by every test in this binary (provisioning takes seconds); each test works
//! in its own OU, so the tests run in parallel.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::Value;

use ldapsync::source::{RawEntry, SourceError};

/// Users, not computer accounts (in AD, `computer` is a subclass of `user`).
const AD_USERS: &str = "(&(objectClass=user)(!(objectClass=computer)))";

fn dc() -> &'static SambaDc {
    static DC: OnceLock<SambaDc> = OnceLock::new();
    DC.get_or_init(SambaDc::start)
}

/// A config reading `groups` (base DN, filter) and the users under `user_base` from the shared
/// DC over LDAPS into a file sink (JSON lines), plus a SCIM sink when given.
fn write_config(
    dir: &Path,
    groups: (&str, &str),
    user_base: &str,
    scim: Option<&ScimServer>,
) -> PathBuf {
    write_config_for(dc(), &dc().ldaps_url(), dir, groups, user_base, scim)
}

/// [`write_config`] for any DC, reached at `url`.
fn write_config_for(
    dc: &SambaDc,
    url: &str,
    dir: &Path,
    groups: (&str, &str),
    user_base: &str,
    scim: Option<&ScimServer>,
) -> PathBuf {
    let mut text = format!(
        "{ad}\n{safety}\n[[sinks]]\nname = \"audit\"\ntype = \"file\"\npath = \"{ops}\"\n",
        ad = ad_config_toml(
            dc,
            url,
            &dir.join("state.db"),
            groups,
            (user_base, AD_USERS)
        ),
        safety = permissive_safety_toml(100_000),
        ops = dir.join("ops.jsonl").display(),
    );
    if let Some(scim) = scim {
        text.push('\n');
        text.push_str(&scim.sink_toml(&scim.base_url(), "user_match = \"userName\""));
    }
    write_file(dir, "config.toml", text)
}

fn dry_run(config: &Path) -> (std::process::Output, Value) {
    let out = run_ldapsync(config, &["sync", "--dry-run", "--output", "json"]);
    assert_eq!(out.code(), 0, "dry run failed:\n{}", out.describe());
    let json = serde_json::from_str(&out.stdout_str())
        .unwrap_or_else(|e| panic!("dry-run output is not JSON ({e}):\n{}", out.describe()));
    (out, json)
}

/// The operations planned for sink `name`.
fn operations<'a>(json: &'a Value, name: &str) -> &'a Vec<Value> {
    json["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sink {name} in {json}"))["operations"]
        .as_array()
        .unwrap()
}

/// Group name → (source id, members added) from the `create` and `member_add` operations.
fn planned_groups(ops: &[Value]) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut groups: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for op in ops {
        let name = op["group"].as_str().unwrap().to_string();
        let id = op["source_id"].as_str().unwrap().to_string();
        let entry = groups
            .entry(name)
            .or_insert_with(|| (id.clone(), BTreeSet::new()));
        assert_eq!(entry.0, id, "one group, one source id: {op}");
        match op["op"].as_str().unwrap() {
            "create" => {}
            "member_add" => entry.1.extend(
                op["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_string()),
            ),
            other => panic!("unexpected {other} on a first run: {op}"),
        }
    }
    groups
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn is_canonical_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| {
            p.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}

/// objectGUID source ids in the Microsoft byte order, exactly as ldbsearch prints them; nested
/// groups flattened; a rename is an update keyed by objectGUID; everything reaches a real SCIM
/// server and the file sink.
#[test]
fn objectguid_ids_nesting_and_rename() {
    let dc = dc();
    let ou = dc.add_ou("ids");
    let users = ["ids-alice", "ids-bob", "ids-carol", "ids-dave"];
    let user_dns = dc.add_users(&ou, &users);
    let ops_dn = dc.add_group(&ou, "ids-ops", &[&user_dns[1], &user_dns[2]]);
    let oncall_dn = dc.add_group(&ou, "ids-oncall", &[&user_dns[3], &ops_dn]);
    let eng_dn = dc.add_group(&ou, "ids-eng", &[&user_dns[0], &oncall_dn]);

    let scim = ScimServer::start(true);
    for u in users {
        scim.create_user(u, &format!("{u}@ad.ldapsync.test"));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), (&ou, "(objectClass=group)"), &ou, Some(&scim));

    let (_, json) = dry_run(&config);
    let planned = planned_groups(operations(&json, "audit"));
    let expected: BTreeMap<String, (String, BTreeSet<String>)> = [
        (
            "ids-eng",
            &eng_dn,
            set(&["ids-alice", "ids-bob", "ids-carol", "ids-dave"]),
        ),
        (
            "ids-oncall",
            &oncall_dn,
            set(&["ids-bob", "ids-carol", "ids-dave"]),
        ),
        ("ids-ops", &ops_dn, set(&["ids-bob", "ids-carol"])),
    ]
    .into_iter()
    .map(|(name, dn, members)| (name.to_string(), (dc.object_guid(dn), members)))
    .collect();
    assert_eq!(planned, expected, "dry run:\n{json:#}");
    for (id, _) in expected.values() {
        assert!(is_canonical_guid(id), "ldbsearch printed {id}");
    }

    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 0, "sync:\n{}", out.describe());
    let lines = std::fs::read_to_string(dir.path().join("ops.jsonl")).unwrap();
    let file_ops: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(planned_groups(&file_ops), expected, "file sink:\n{lines}");
    let scim_groups: BTreeMap<String, String> =
        text_pairs(&scim.groups(), "displayName", "externalId");
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(name, (id, _))| (name.clone(), id.clone()))
        .collect();
    assert_eq!(scim_groups, want, "SCIM groups by externalId");

    // Rename with a modrdn: same objectGUID, new cn → one update per sink, nothing else.
    dc.modify(&format!(
        "dn: {eng_dn}\nchangetype: modrdn\nnewrdn: CN=ids-engineering\ndeleteoldrdn: 1\n"
    ));
    let renamed_dn = format!("CN=ids-engineering,{ou}");
    assert_eq!(dc.object_guid(&renamed_dn), expected["ids-eng"].0);
    let (_, json) = dry_run(&config);
    for sink in ["audit", "scim"] {
        let ops = operations(&json, sink);
        assert_eq!(ops.len(), 1, "{sink}: {json:#}");
        assert_eq!(ops[0]["op"], "update", "{json:#}");
        assert_eq!(ops[0]["group"], "ids-engineering");
        assert_eq!(ops[0]["previous_name"], "ids-eng");
        assert_eq!(ops[0]["source_id"], expected["ids-eng"].0.as_str());
    }
    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 0, "sync after rename:\n{}", out.describe());
    let renamed: Vec<Value> = scim
        .groups()
        .into_iter()
        .filter(|g| g["externalId"] == expected["ids-eng"].0.as_str())
        .collect();
    assert_eq!(renamed.len(), 1, "{renamed:?}");
    assert_eq!(renamed[0]["displayName"], "ids-engineering");
    assert_eq!(renamed[0]["members"].as_array().map(Vec::len), Some(4));
    let (_, json) = dry_run(&config);
    for sink in ["audit", "scim"] {
        assert!(operations(&json, sink).is_empty(), "converged: {json:#}");
    }
}

/// base_dn = the domain root: Samba answers with a continuation reference to
/// CN=Configuration (as Windows does for the application partitions); it is skipped and logged
/// with its count, never a panic and never a failed read. Users from the whole domain, computer
/// accounts excluded.
#[test]
fn domain_root_search_skips_continuation_references() {
    let dc = dc();
    let root = dc.base_dn();
    let direct = dc.search(root, "sub", "(cn=nobody-at-all)", &["1.1"]);
    assert!(
        direct.contains("ldaps://") && direct.contains("CN=Configuration"),
        "Samba no longer sends a continuation reference from the domain root:\n{direct}"
    );

    let ou = dc.add_ou("root");
    let users = dc.add_users(&ou, &["root-erin", "root-frank"]);
    dc.add_group(&ou, "root-team", &[&users[0], &users[1]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        (root, "(&(objectClass=group)(cn=root-*))"),
        root,
        None,
    );
    let (out, json) = dry_run(&config);
    let planned = planned_groups(operations(&json, "audit"));
    assert_eq!(
        planned["root-team"].1,
        set(&["root-erin", "root-frank"]),
        "{json:#}"
    );
    let log = out.stderr_str();
    let line = log
        .lines()
        .find(|l| l.contains("skipped continuation references"))
        .unwrap_or_else(|| panic!("no continuation reference logged:\n{log}"));
    assert!(
        line.contains("count=1") && line.contains("CN=Configuration"),
        "{line}"
    );
    // In the report: one line for the root, though users and groups were both searched there.
    let warned: Vec<&str> = json["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| w.contains("continuation reference"))
        .collect();
    assert_eq!(warned.len(), 1, "{json:#}");
    assert!(
        warned[0].starts_with(&format!("search of {root}: 1 continuation reference(s)"))
            && warned[0].contains("CN=Configuration"),
        "{}",
        warned[0]
    );
    assert!(!log.contains("panicked"), "{log}");

    // The DC's own computer account is a `user` too; the filter keeps it out.
    let users_dn_list = dc.search(root, "sub", AD_USERS, &["sAMAccountName"]);
    assert!(users_dn_list.contains("Administrator") && !users_dn_list.contains("DC1$"));
    let out = run_ldapsync(&config, &["sync"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
}

/// A group of 1,600 members. Samba returns all values of `member` at once (Windows would send
/// `member;range=0-1499`), so the binary reads it unranged; the ranged path is driven directly
/// below, with explicit range requests, which Samba honours.
#[test]
fn large_group_read_completely_and_ranged_retrieval() {
    const N: usize = 1600;
    let dc = dc();
    let ou = dc.add_ou("big");
    let names: Vec<String> = (0..N).map(|i| format!("big-{i:04}")).collect();
    let ldif: String = names.iter().map(|n| SambaDc::user_ldif(&ou, n)).collect();
    dc.add(&ldif);
    let member_dns: Vec<String> = names.iter().map(|n| format!("CN={n},{ou}")).collect();
    let refs: Vec<&str> = member_dns.iter().map(String::as_str).collect();
    let group_dn = dc.add_group(&ou, "big-all", &refs);

    // What Samba does with a plain request: every value, under the plain attribute name.
    let plain = dc.search(&group_dn, "base", "(objectClass=*)", &["member"]);
    assert_eq!(
        plain.lines().filter(|l| l.starts_with("member: ")).count(),
        N
    );
    assert!(
        !plain.contains("member;range="),
        "Samba now ranges by itself"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), (&ou, "(objectClass=group)"), &ou, None);
    let (_, json) = dry_run(&config);
    let planned = planned_groups(operations(&json, "audit"));
    assert_eq!(planned["big-all"].0, dc.object_guid(&group_dn));
    assert_eq!(
        planned["big-all"].1,
        names.iter().cloned().collect::<BTreeSet<_>>()
    );

    // The ranged path, against the same server: ask for a first range as Windows would answer
    // it, then let complete_ranges fetch the rest.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let table: toml::Table = std::fs::read_to_string(&config)
        .expect("config")
        .parse()
        .expect("config");
    let ldap_config: ldapsync::config::LdapConfig =
        table["ldap"].clone().try_into().expect("[ldap]");
    rt.block_on(async {
        let mut ldap = ldapsync::source::ldap::connect(&ldap_config)
            .await
            .expect("connect");
        let timeout = Duration::from_secs(30);
        let mut entry = first_range(&mut ldap, &group_dn, "member;range=0-999").await;
        assert_eq!(entry.attrs["member;range=0-999"].len(), 1000);
        ldapsync::source::ldap::complete_ranges(&mut ldap, timeout, &mut entry, "member")
            .await
            .expect("ranged retrieval");
        let got: BTreeSet<String> = entry.attrs["member"]
            .iter()
            .map(|v| String::from_utf8(v.clone()).unwrap().to_ascii_lowercase())
            .collect();
        let want: BTreeSet<String> = member_dns.iter().map(|d| d.to_ascii_lowercase()).collect();
        assert_eq!(got.len(), N);
        assert_eq!(got, want);
        assert!(!entry.attrs.keys().any(|k| k.contains(";range=")));

        // A group that disappears between two ranges: the read fails, it is never shorter.
        let small = dc.add_group(&ou, "big-gone", &refs[..5]);
        let mut entry = first_range(&mut ldap, &small, "member;range=0-1").await;
        assert_eq!(entry.attrs["member;range=0-1"].len(), 2);
        dc.delete(&[&small]);
        let err = ldapsync::source::ldap::complete_ranges(&mut ldap, timeout, &mut entry, "member")
            .await
            .expect_err("a vanished group must fail the ranged read");
        assert!(matches!(err, SourceError::RangeCutShort { .. }), "{err}");
        let _ = ldap.unbind().await;
    });
}

/// One base-scope search for `attr` (e.g. `member;range=0-999`), as a RawEntry with the
/// lowercase attribute names the reader produces.
async fn first_range(ldap: &mut ldap3::Ldap, dn: &str, attr: &str) -> RawEntry {
    let (entries, result) = ldap
        .search(dn, ldap3::Scope::Base, "(objectClass=*)", vec![attr])
        .await
        .expect("search")
        .success()
        .expect("search result");
    assert_eq!(result.rc, 0);
    let entry = ldap3::SearchEntry::construct(entries.into_iter().next().expect("the entry"));
    RawEntry {
        dn: entry.dn,
        attrs: entry
            .attrs
            .into_iter()
            .map(|(k, vs)| {
                (
                    k.to_ascii_lowercase(),
                    vs.into_iter().map(String::into_bytes).collect(),
                )
            })
            .collect(),
    }
}

/// The user filter the documentation gives for AD: people only (no computer accounts).
const AD_DOCUMENTED_USERS: &str = "(&(objectCategory=person)(objectClass=user))";

/// Adds `line` at the start of `[section]` in the config file at `path`.
fn add_key(path: &Path, section: &str, line: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let header = format!("[{section}]\n");
    assert!(text.contains(&header), "no [{section}] in {text}");
    std::fs::write(
        path,
        text.replacen(&header, &format!("{header}{line}\n"), 1),
    )
    .unwrap();
}

/// The members planned for `group` by the audit sink of a dry run.
fn members_of(config: &Path, group: &str) -> (BTreeSet<String>, Vec<String>) {
    let (_, json) = dry_run(config);
    let planned = planned_groups(operations(&json, "audit"));
    let warnings = json["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    (planned[group].1.clone(), warnings)
}

/// The binary objectSid of `dn` (base64 in ldapsearch's LDIF), e.g. to take its RID.
fn object_sid(dc: &SambaDc, dn: &str) -> Vec<u8> {
    use base64::Engine as _;
    let ldif = dc.search(dn, "base", "(objectClass=*)", &["objectSid"]);
    let encoded = ldif
        .lines()
        .find_map(|l| l.strip_prefix("objectSid:: "))
        .unwrap_or_else(|| panic!("no objectSid for {dn}:\n{ldif}"));
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .expect("base64 objectSid")
}

/// The documented AD user filter leaves the DC's computer account out; `exclude_disabled`
/// also leaves out the accounts with the ACCOUNTDISABLE bit: krbtgt, Guest and users created
/// without a password.
#[test]
fn ad_user_filter_and_disabled_accounts() {
    let dc = dc();
    let root = dc.base_dn();
    let ou = dc.add_ou("uac");
    let users = dc.add_users(&ou, &["uac-on", "uac-off"]);
    // NORMAL_ACCOUNT | PASSWD_NOTREQD: enabled without a password.
    dc.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 544\n",
        users[0]
    ));
    let uac = dc.search(
        &users[1],
        "base",
        "(objectClass=*)",
        &["userAccountControl"],
    );
    let flags: u32 = uac
        .lines()
        .find_map(|l| l.strip_prefix("userAccountControl: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{uac}"));
    assert_ne!(flags & 2, 0, "a user added without a password is disabled");
    let builtin = |cn: &str| format!("CN={cn},CN=Users,{root}");
    let computer = format!("CN=DC1,OU=Domain Controllers,{root}");
    let (admin, krbtgt, guest) = (
        builtin("Administrator"),
        builtin("krbtgt"),
        builtin("Guest"),
    );
    dc.add_group(
        &ou,
        "uac-all",
        &[&users[0], &users[1], &admin, &krbtgt, &guest, &computer],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), (&ou, "(objectClass=group)"), root, None);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(AD_USERS, AD_DOCUMENTED_USERS);
    std::fs::write(&config, text).unwrap();

    let (members, warnings) = members_of(&config, "uac-all");
    assert_eq!(
        members,
        set(&["uac-on", "uac-off", "Administrator", "krbtgt", "Guest"])
    );
    assert!(
        warnings.iter().any(|w| w.contains(&computer)),
        "the computer account is not a user: {warnings:?}"
    );

    add_key(&config, "users", "exclude_disabled = true");
    let (members, warnings) = members_of(&config, "uac-all");
    assert_eq!(members, set(&["uac-on", "Administrator"]));
    assert!(
        !warnings
            .iter()
            .any(|w| w.contains("krbtgt") || w.contains("uac-off")),
        "excluded accounts are no warning: {warnings:?}"
    );
}

/// A user whose primary group is G is not in G's `member` (AD moves the link into
/// `primaryGroupID`); `ad_primary_group = true` adds such users by G's RID.
#[test]
fn ad_primary_group_adds_members_by_rid() {
    let dc = dc();
    let ou = dc.add_ou("prim");
    let users = dc.add_users(&ou, &["prim-a", "prim-b"]);
    let group = dc.add_group(&ou, "prim-g", &[&users[0], &users[1]]);
    let sid = object_sid(dc, &group);
    let rid = u32::from_le_bytes(sid[sid.len() - 4..].try_into().unwrap());
    dc.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: primaryGroupID\nprimaryGroupID: {rid}\n",
        users[1]
    ));
    let member = dc.search(&group, "base", "(objectClass=*)", &["member"]);
    assert!(
        member.contains(&users[0]) && !member.contains(&users[1]),
        "AD keeps a primary group out of member:\n{member}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), (&ou, "(objectClass=group)"), &ou, None);
    assert_eq!(members_of(&config, "prim-g").0, set(&["prim-a"]));
    add_key(&config, "groups", "ad_primary_group = true");
    assert_eq!(members_of(&config, "prim-g").0, set(&["prim-a", "prim-b"]));
}

/// Samba's own generated certificate (a CN, no subjectAltName): refused by default with an
/// error that says so and what to do; accepted with `tls_cn_fallback = true`, whose chain
/// check still refuses another CA.
#[test]
fn samba_generated_certificate_and_the_cn_fallback() {
    let dc = SambaDc::start_with_generated_certificate();
    let ou = dc.add_ou("cert");
    let users = dc.add_users(&ou, &["cert-alice"]);
    dc.add_group(&ou, "cert-team", &[&users[0]]);
    let cert = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
        ])
        .arg(&dc.pki().cert)
        .output()
        .expect("openssl x509");
    let shown = String::from_utf8_lossy(&cert.stdout);
    let cn = dc.dns_host_name();
    assert!(
        shown.contains(&format!("CN = {cn}")) && !shown.contains("DNS:"),
        "Samba's generated certificate: {shown}"
    );

    // The certificate's name, in another case, resolving to the DC for ldapsync alone.
    let host = cn.to_lowercase();
    let hosts = [(dc.ip(), host.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_for(
        &dc,
        &format!("ldaps://{host}"),
        dir.path(),
        (&ou, "(objectClass=group)"),
        &ou,
        None,
    );
    let dry_run = |config: &Path| {
        run_ldapsync_with_hosts(config, &["sync", "--dry-run", "--output", "json"], &hosts)
    };
    let out = dry_run(&config);
    assert_code(&out, 1);
    let err = out.stderr_str();
    assert!(
        err.contains("without a subjectAltName")
            && err.contains(&format!("{cn:?}"))
            && err.contains("tls_cn_fallback = true")
            && err.contains("Regenerate the server certificate"),
        "{}",
        out.describe()
    );

    add_key(&config, "ldap", "tls_cn_fallback = true");
    let out = dry_run(&config);
    assert_code(&out, 0);
    let json: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let planned = planned_groups(operations(&json, "audit"));
    assert_eq!(planned["cert-team"].1, set(&["cert-alice"]));

    // The fallback compares the CN with the host: by its address, the DC is not the CN.
    let by_address = write_file(
        dir.path(),
        "by-address.toml",
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&format!("ldaps://{host}"), &dc.ldaps_url()),
    );
    let out = dry_run(&by_address);
    assert_code(&out, 1);
    out.assert_stderr_has("is not the host either");

    // Another CA: the chain is still checked, the fallback changes nothing.
    let other = generate_test_pki(&dir.path().join("other-ca"), &[&host], &[]);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &dc.ca_file().display().to_string(),
        &other.ca_cert.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let out = dry_run(&config);
    assert_code(&out, 1);
    out.assert_stderr_has("UnknownIssuer");
}
