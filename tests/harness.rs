//! Proves the shared test helpers (`tests/common`) against the real servers: OpenLDAP slapd
//! (plain, TLS, bulk-loaded, restarted) and scim2-server (auth, uniqueness, paging), plus the
//! emulator plumbing with a minimal stand-in emulator.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn ldapsearch_tls(args: &[&str], ca: Option<&std::path::Path>) -> std::process::Output {
    let mut cmd = Command::new("ldapsearch");
    // Deliberately not LDAPNOINIT: the LDAPTLS_* variables must be honoured.
    cmd.env("LDAPTLS_REQCERT", "demand")
        .env("HOME", "/nonexistent")
        .env_remove("LDAPTLS_CACERTDIR")
        .args(["-x", "-LLL", "-o", "nettimeout=10"])
        .args(args);
    match ca {
        Some(ca) => cmd.env("LDAPTLS_CACERT", ca),
        // An empty CA file: nothing is trusted, whatever /etc/ldap/ldap.conf says.
        None => cmd.env("LDAPTLS_CACERT", "/dev/null"),
    };
    run_with_timeout(&mut cmd, None, Duration::from_secs(60))
}

#[test]
fn slapd_starts_with_base_tree() {
    let slapd = Slapd::start();
    assert!(slapd.url().starts_with("ldap://127.0.0.1:"));
    assert!(port_open(slapd.port()));
    let ous = slapd.search_dns(slapd.base_dn(), "(objectClass=organizationalUnit)");
    let ous: BTreeSet<_> = ous.iter().map(|d| d.to_ascii_lowercase()).collect();
    assert_eq!(
        ous,
        BTreeSet::from([
            "ou=groups,dc=example,dc=com".to_string(),
            "ou=people,dc=example,dc=com".to_string()
        ])
    );
    // The suffix entry itself exists, and an absent base gives no DNs rather than a panic.
    assert_eq!(
        slapd.search_dns(slapd.base_dn(), "(objectClass=dcObject)"),
        vec!["dc=example,dc=com"]
    );
    assert!(
        slapd
            .search_dns("ou=nope,dc=example,dc=com", "(objectClass=*)")
            .is_empty()
    );
}

#[test]
fn slapd_add_modify_delete_and_memberof() {
    let slapd = Slapd::start();
    let alice = slapd.add_user("alice", "alice@example.com");
    slapd.add(
        "dn: uid=bob,ou=People,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: bob\n\
         cn: Bob\nsn: B\nmail: bob@example.com\n",
    );
    let bob = "uid=bob,ou=People,dc=example,dc=com";
    let devs = slapd.add_group("devs", &[&alice]);

    let people = slapd.search_dns(&slapd.people_dn(), "(objectClass=inetOrgPerson)");
    assert_eq!(people.len(), 2, "{people:?}");
    assert!(people.contains(&alice) && people.contains(&bob.to_string()));
    assert_eq!(
        slapd.search_dns(
            &slapd.groups_dn(),
            "(member=uid=alice,ou=People,dc=example,dc=com)"
        ),
        vec![devs.clone()]
    );

    slapd.modify(&format!(
        "dn: {devs}\nchangetype: modify\nadd: member\nmember: {bob}\n"
    ));
    assert_eq!(slapd.attr_values(&devs, "member").len(), 2);
    // The memberof overlay maintains memberOf on the users.
    assert_eq!(slapd.attr_values(bob, "memberOf"), vec![devs.clone()]);
    // entryUUID (the source id on OpenLDAP) is there.
    let uuid = slapd.attr_values(&devs, "entryUUID");
    assert_eq!(uuid.len(), 1);
    assert_eq!(uuid[0].len(), 36, "{uuid:?}");

    slapd.delete(&[&devs]);
    assert!(slapd.search_dns(&slapd.groups_dn(), "(cn=devs)").is_empty());
    // memberof-refint: deleting the group removes memberOf from its members.
    assert!(slapd.attr_values(bob, "memberOf").is_empty());
}

#[test]
#[should_panic(expected = "ldapadd failed")]
fn slapd_add_panics_on_ldap_error() {
    let slapd = Slapd::start();
    // No such parent entry.
    slapd.add("dn: uid=x,ou=Nowhere,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: x\ncn: x\nsn: x\n");
}

#[test]
fn slapd_syncprov_answers_sync_requests_with_cookies() {
    let slapd = Slapd::start();
    slapd.add_user("alice", "alice@example.com");
    let sync = |cookie: Option<&str>| {
        let ctl = match cookie {
            Some(c) => format!("sync=ro/{c}"),
            None => "sync=ro".to_string(),
        };
        let out = run_with_timeout(
            slapd.ldap_tool("ldapsearch").args([
                "-o",
                "ldif-wrap=no",
                "-b",
                slapd.base_dn(),
                "-E",
                &ctl,
                "(objectClass=*)",
                "1.1",
            ]),
            None,
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "sync search: {}", out.describe());
        let text = out.stdout_str();
        let cookie = text
            .lines()
            .find_map(|l| l.strip_prefix("# cookie: "))
            .unwrap_or_else(|| panic!("no sync cookie in:\n{text}"))
            .to_owned();
        (parse_ldif_dns(&text), cookie)
    };
    let (all, cookie) = sync(None);
    assert_eq!(all.len(), 4, "{all:?}"); // suffix, two OUs, alice
    assert!(cookie.contains("csn="), "{cookie}");
    let carol = slapd.add_user("carol", "carol@example.com");
    let (delta, cookie2) = sync(Some(&cookie));
    assert_eq!(delta, vec![carol]);
    assert_ne!(cookie, cookie2);
}

#[test]
fn slapd_tls_ldaps_and_starttls() {
    let slapd = Slapd::start_tls();
    let ca = slapd.ca_file();
    assert!(ca.exists());
    assert!(slapd.ldaps_url().starts_with("ldaps://127.0.0.1:"));
    let base = ["-b", slapd.base_dn(), "-s", "base", "1.1"];

    // Each way in works with the test CA, and not without it: the certificate really is verified.
    let works_only_with_the_ca = |what: &str, args: &[&str]| {
        let out = ldapsearch_tls(args, Some(&ca));
        assert!(out.status.success(), "{what}: {}", out.describe());
        assert_eq!(parse_ldif_dns(&out.stdout_str()), vec![slapd.base_dn()]);
        let out = ldapsearch_tls(args, None);
        assert!(
            !out.status.success(),
            "{what} without CA: {}",
            out.describe()
        );
    };
    let ldaps = slapd.ldaps_url();
    works_only_with_the_ca("ldaps", &[&["-H", ldaps.as_str()][..], &base].concat());
    // StartTLS (-ZZ: must succeed) on the ldap:// port.
    let url = slapd.url();
    works_only_with_the_ca("StartTLS", &[&["-ZZ", "-H", &url][..], &base].concat());

    // The server certificate names 127.0.0.1 and localhost (rustls needs the SAN).
    let out = run_with_timeout(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&slapd.pki().cert),
        None,
        Duration::from_secs(30),
    );
    let text = out.stdout_str();
    assert!(
        text.contains("IP Address:127.0.0.1") && text.contains("DNS:localhost"),
        "{text}"
    );
    // The plain admin helpers keep working on a TLS-enabled server.
    slapd.add_user("tls-user", "t@example.com");
    assert_eq!(
        slapd.search_dns(&slapd.people_dn(), "(uid=tls-user)").len(),
        1
    );
}

fn big_ldif(users: usize) -> String {
    let mut ldif = String::new();
    for i in 0..users {
        write!(
            ldif,
            "dn: uid=user{i:05},ou=People,dc=example,dc=com\nobjectClass: inetOrgPerson\n\
             uid: user{i:05}\ncn: User {i}\nsn: {i}\nmail: user{i:05}@example.com\n\n"
        )
        .unwrap();
    }
    ldif.push_str(
        "dn: cn=everyone,ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: everyone\n",
    );
    for i in 0..users {
        writeln!(ldif, "member: uid=user{i:05},ou=People,dc=example,dc=com").unwrap();
    }
    ldif
}

#[test]
fn slapd_bulk_load_from_text() {
    let started = Instant::now();
    let slapd = Slapd::start_with_ldif(big_ldif(3000));
    eprintln!("bulk start took {:?}", started.elapsed());
    // More than the default size limit (500): the admin is unlimited.
    let users = slapd.search_dns(&slapd.people_dn(), "(objectClass=inetOrgPerson)");
    assert_eq!(users.len(), 3000);
    let members = slapd.attr_values("cn=everyone,ou=Groups,dc=example,dc=com", "member");
    assert_eq!(members.len(), 3000);
    // slapadd generates entryUUID; the base tree is there too.
    assert_eq!(slapd.attr_values(&users[0], "entryUUID").len(), 1);
    assert_eq!(slapd.search_dns(slapd.base_dn(), "(ou=Groups)").len(), 1);
    // And it is a live server: writes work after a bulk load.
    slapd.add_user("late", "late@example.com");
    assert_eq!(slapd.search_dns(&slapd.people_dn(), "(uid=late)").len(), 1);
}

#[test]
fn slapd_bulk_load_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "data.ldif", big_ldif(10));
    let slapd = Slapd::start_with_ldif(&path);
    assert_eq!(
        slapd.search_dns(&slapd.people_dn(), "(uid=user*)").len(),
        10
    );
}

#[test]
fn slapd_stop_and_restart_keep_data_and_port() {
    let mut slapd = Slapd::start();
    let url = slapd.url();
    slapd.add_user("alice", "alice@example.com");
    slapd.stop();
    assert!(!slapd.is_running());
    assert!(!port_open(slapd.port()), "port still open after stop");
    slapd.restart();
    assert!(slapd.is_running());
    assert_eq!(slapd.url(), url);
    assert_eq!(slapd.search_dns(&slapd.people_dn(), "(uid=alice)").len(), 1);
}

#[test]
fn slapd_drop_stops_server() {
    let slapd = Slapd::start();
    let port = slapd.port();
    let dir = slapd.dir().to_owned();
    drop(slapd);
    assert!(!port_open(port));
    assert!(!dir.exists());
}

#[test]
fn scim_server_starts_and_checks_the_token() {
    let scim = ScimServer::start(false);
    assert!(scim.base_url().starts_with("http://127.0.0.1:"));
    let spc = scim.get_json("/ServiceProviderConfig");
    assert!(
        spc["patch"]["supported"].as_bool().unwrap_or(false),
        "{spc}"
    );

    let wrong = scim.request_with_token("GET", "/Groups", Some("wrong-token"), None);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let none = scim.request_with_token("GET", "/Groups", None, None);
    assert_eq!(none.status, 401, "{}", none.body);
    let ok = scim.request("GET", "/Groups", None);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["totalResults"], 0);
}

#[test]
fn scim_server_users_and_groups() {
    let scim = ScimServer::start(false);
    let alice = scim.create_user("alice", "alice@example.com");
    let user = scim.get_json(&format!("/Users/{alice}"));
    assert_eq!(user["userName"], "alice");
    assert_eq!(user["emails"][0]["value"], "alice@example.com");
    // userName is unique in the default schema.
    let (status, body) = scim.post_json(
        "/Users",
        &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "alice"}),
    );
    assert_eq!(status, 409, "{body}");

    let gid = scim.create_group("devs", &[&alice]);
    let groups = scim.groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["id"], gid.as_str());
    assert_eq!(groups[0]["members"][0]["value"], alice.as_str());
    assert_eq!(scim.users().len(), 1);
}

#[test]
fn scim_server_groups_pages_through_everything() {
    let scim = ScimServer::start(false);
    for i in 0..230 {
        scim.create_group(&format!("g{i:03}"), &[]);
    }
    let names: BTreeSet<String> = scim
        .groups()
        .iter()
        .map(|g| g["displayName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 230);
    assert!(names.contains("g000") && names.contains("g229"));
}

fn new_group(name: &str) -> serde_json::Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name})
}

#[test]
fn scim_server_allows_duplicate_display_names_by_default() {
    let scim = ScimServer::start(false);
    let (s1, b1) = scim.post_json("/Groups", &new_group("devs"));
    let (s2, b2) = scim.post_json("/Groups", &new_group("devs"));
    assert_eq!((s1, s2), (201, 201), "{b1} {b2}");
    assert_ne!(b1["id"], b2["id"]);
    assert_eq!(scim.groups().len(), 2);
}

#[test]
fn scim_server_unique_display_name_answers_409() {
    let scim = ScimServer::start(true);
    let (s1, b1) = scim.post_json("/Groups", &new_group("devs"));
    assert_eq!(s1, 201, "{b1}");
    let (s2, b2) = scim.post_json("/Groups", &new_group("devs"));
    assert_eq!(s2, 409, "{b2}");
    assert_eq!(b2["scimType"], "uniqueness", "{b2}");
    let (s3, b3) = scim.post_json("/Groups", &new_group("ops"));
    assert_eq!(s3, 201, "{b3}");
    assert_eq!(scim.groups().len(), 2);
    // The served schema says so too.
    let schema = scim.get_json("/Schemas/urn:ietf:params:scim:schemas:core:2.0:Group");
    let dn = schema["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "displayName")
        .unwrap()
        .clone();
    assert_eq!(dn["uniqueness"], "server", "{dn}");
}

/// A minimal emulator honouring the contract of `Emulator`: `--port 0`, one
/// `LISTENING http://127.0.0.1:PORT` line, `/__admin/state` and admin POSTs.
const FAKE_EMULATOR: &str = r#"
import argparse, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--greeting", default="hi")
a = p.parse_args()
state = {"greeting": a.greeting, "posts": []}

class H(BaseHTTPRequestHandler):
    def log_message(self, *args):
        sys.stderr.write("request\n")
    def send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/__admin/state":
            self.send(200, state)
        else:
            self.send(404, {"error": "not found"})
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(n) or b"null")
        if self.path == "/__admin/record":
            state["posts"].append(body)
            self.send(200, {"ok": True})
        else:
            self.send(400, {"error": "bad admin path " + self.path})

srv = ThreadingHTTPServer(("127.0.0.1", a.port), H)
print(f"LISTENING http://127.0.0.1:{srv.server_address[1]}", flush=True)
srv.serve_forever()
"#;

#[test]
fn emulator_contract_plumbing() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_file(dir.path(), "fake_emulator.py", FAKE_EMULATOR);
    let emu = Emulator::start_script(&script, &["--greeting", "hello"]);
    assert!(
        emu.base_url().starts_with("http://127.0.0.1:"),
        "{}",
        emu.base_url()
    );
    assert_ne!(emu.base_url(), "http://127.0.0.1:0");
    assert_eq!(emu.state()["greeting"], "hello");
    let r = emu.admin_post("/record", &json!({"n": 1}));
    assert_eq!(r["ok"], true);
    emu.admin_post("/__admin/record", &json!({"n": 2}));
    assert_eq!(emu.state()["posts"], json!([{"n": 1}, {"n": 2}]));
    assert_eq!(emu.request("GET", "/nope", &[], None).status, 404);
    let port: u16 = emu.base_url().rsplit(':').next().unwrap().parse().unwrap();
    drop(emu);
    assert!(!port_open(port), "emulator still listening after drop");
}

#[test]
#[should_panic(expected = "expected `LISTENING")]
fn emulator_that_does_not_announce_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_file(dir.path(), "broken.py", "print('hello')\n");
    Emulator::start_script(&script, &[]);
}

#[test]
fn wait_until_polls_until_true() {
    let start = Instant::now();
    let mut calls = 0;
    wait_until(Duration::from_secs(5), "third call", || {
        calls += 1;
        calls == 3
    });
    assert_eq!(calls, 3);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
#[should_panic(expected = "waiting for the impossible")]
fn wait_until_panics_with_what_on_timeout() {
    wait_until(Duration::from_millis(100), "the impossible", || false);
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
    let p = free_port();
    std::net::TcpListener::bind(("127.0.0.1", p)).expect("free port is bindable");
}
