//! The directory snapshot of a state file as plain data, and the config of an Active Directory
//! source, for the incremental-read tests (`tests/incremental.rs`, `tests/incremental_ad.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::process::run_ok;
use super::samba::SambaDc;

/// The stored snapshot as plain data: (scope, entryUUID or objectGUID) → (DN, attributes), with interned
/// values looked up (the state file's packed format: LEB128 varints; a value header is
/// `len << 1` before the bytes, or `string id << 1 | 1`).
pub type Dump = BTreeMap<(i64, String), (String, BTreeMap<String, Vec<Vec<u8>>>)>;

pub fn snapshot_dump(state: &Path) -> Dump {
    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut n = 0;
        for shift in (0..64).step_by(7) {
            let byte = bytes[0];
            *bytes = &bytes[1..];
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        n
    }
    let db = rusqlite::Connection::open(state).unwrap();
    let strings: BTreeMap<i64, Vec<u8>> = db
        .prepare("SELECT id, value FROM snapshot_strings")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut statement = db
        .prepare("SELECT scope, key, dn, attrs FROM snapshot_entries")
        .unwrap();
    let rows = statement
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .unwrap();
    let mut dump = Dump::new();
    for row in rows {
        let (scope, key, dn, blob) = row.unwrap();
        let mut bytes = blob.as_slice();
        let mut attrs = BTreeMap::new();
        for _ in 0..varint(&mut bytes) {
            let len = varint(&mut bytes) as usize;
            let name = String::from_utf8(bytes[..len].to_vec()).unwrap();
            bytes = &bytes[len..];
            let mut values = Vec::new();
            for _ in 0..varint(&mut bytes) {
                let header = varint(&mut bytes);
                if header & 1 == 1 {
                    values.push(strings[&((header >> 1) as i64)].clone());
                } else {
                    let len = (header >> 1) as usize;
                    values.push(bytes[..len].to_vec());
                    bytes = &bytes[len..];
                }
            }
            values.sort();
            attrs.insert(name, values);
        }
        let dn = String::from_utf8(strings[&dn].clone()).unwrap();
        dump.insert((scope, key), (dn, attrs));
    }
    dump
}

/// How a run read the directory: `read.mode` of its JSON report (`full` or `incremental`).
pub fn read_mode(report: &serde_json::Value) -> &str {
    report["read"]["mode"].as_str().unwrap_or_default()
}

/// `(read.users, read.groups)` of a JSON report: what the run's directory holds.
pub fn read_counts(report: &serde_json::Value) -> (u64, u64) {
    let read = &report["read"];
    (
        read["users"].as_u64().unwrap_or(0),
        read["groups"].as_u64().unwrap_or(0),
    )
}

/// The `[ldap]`, `[groups]`, `[users]` and `[state]` sections of a config reading `dc` over
/// LDAPS at `url` as its Administrator, with AD conventions (objectGUID ids, sAMAccountName user
/// names).
pub fn ad_config_toml(
    dc: &SambaDc,
    url: &str,
    state: &Path,
    (group_base, group_filter): (&str, &str),
    (user_base, user_filter): (&str, &str),
) -> String {
    format!(
        "[ldap]\nurl = \"{url}\"\nca_file = \"{ca}\"\nbind_dn = \"{admin}\"\n\
         bind_password = \"{password}\"\npage_size = 100\n\n\
         [groups]\nbase_dn = \"{group_base}\"\nfilter = \"{group_filter}\"\n\
         id_attribute = \"objectGUID\"\nname_attribute = \"cn\"\n\n\
         [users]\nbase_dn = \"{user_base}\"\nfilter = \"{user_filter}\"\n\
         id_attribute = \"objectGUID\"\nusername_attribute = \"sAMAccountName\"\n\
         email_attribute = \"mail\"\n\n[state]\npath = \"{state}\"\n",
        ca = dc.ca_file().display(),
        admin = dc.admin_dn(),
        password = dc.admin_password(),
        state = state.display(),
    )
}

/// Creates an ordinary (non-administrator) account `CN=NAME,CN=Users,<domain>` with `password` on
/// `dc` (samba-tool writing its sam.ldb, which the running DC shares) and returns its DN.
pub fn samba_plain_user(dc: &SambaDc, name: &str, password: &str) -> String {
    run_ok(
        &format!("samba-tool user create {name}"),
        Command::new("/usr/bin/samba-tool")
            .args(["user", "create", name, password, "-H"])
            .arg(dc.sam_ldb())
            .arg("-s")
            .arg(dc.smb_conf()),
        None,
        Duration::from_secs(120),
    );
    format!("CN={name},CN=Users,{}", dc.base_dn())
}
