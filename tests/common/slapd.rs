//! A real OpenLDAP `slapd` ([`Slapd`]) in a temporary directory, optionally bulk-loaded with
//! [`Ldif`].

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::ldap::{LdapServer, ldap_command, parse_ldif_dns};
use super::pki::{TestPki, generate_test_pki};
use super::process::{
    await_server, free_port, log_file, on_a_free_address, port_open, run_ok, stop_child, temp_dir,
    tool, write_file,
};

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const SLAPD_MODULES: &str = "/usr/lib/ldap";
const SLAPD_SCHEMAS: &str = "/etc/ldap/schema";
const BASE_DN: &str = "dc=example,dc=com";
const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
const ADMIN_PASSWORD: &str = "admin-secret";

/// LDIF to bulk-load with `slapadd` before slapd starts: the text itself (`&str`, `String`) or a
/// file (`&Path`, `PathBuf`).
#[derive(Debug, Clone)]
pub enum Ldif {
    Text(String),
    File(PathBuf),
}

macro_rules! ldif_from {
    ($($t:ty => $variant:ident($conv:expr)),* $(,)?) => {$(
        impl From<$t> for Ldif {
            fn from(v: $t) -> Self {
                Ldif::$variant($conv(v))
            }
        }
    )*};
}
ldif_from!(
    &str => Text(str::to_owned),
    String => Text(String::from),
    &String => Text(String::clone),
    &Path => File(Path::to_path_buf),
    PathBuf => File(PathBuf::from),
    &PathBuf => File(PathBuf::clone),
);

/// How to start a [`Slapd`]; `Slapd::start*` cover the usual cases.
#[derive(Debug, Clone, Default)]
pub struct SlapdOptions {
    /// Also listen on ldaps://, and allow StartTLS on ldap://, with a generated test CA.
    pub tls: bool,
    /// Entries to bulk-load with slapadd (after the base tree, which is always there).
    pub ldif: Option<Ldif>,
}

/// A real OpenLDAP slapd on 127.0.0.1 serving `dc=example,dc=com` from a temporary directory
/// (mdb backend; schemas core, cosine, nis, inetorgperson; overlays memberof and syncprov).
/// The base tree is `dc=example,dc=com`, `ou=People,…` and `ou=Groups,…`.
/// Dropping it stops slapd and deletes the directory.
pub struct Slapd {
    child: Option<Child>,
    port: u16,
    ldaps_port: Option<u16>,
    pki: Option<TestPki>,
    dir: TempDir,
}

impl Slapd {
    /// slapd with just the base tree.
    pub fn start() -> Slapd {
        Self::start_with(SlapdOptions::default())
    }

    /// slapd with `ldaps://` and StartTLS (see [`Slapd::ldaps_url`], [`Slapd::ca_file`]).
    pub fn start_tls() -> Slapd {
        Self::start_with(SlapdOptions {
            tls: true,
            ..Default::default()
        })
    }

    /// slapd with the base tree plus `ldif` bulk-loaded by `slapadd -q` before it starts: the
    /// fast path for big data sets. The LDIF must not repeat the base tree entries. Note that
    /// overlays do not run in slapadd, so `memberOf` is not computed for these entries (include
    /// it in the LDIF if a test needs it); entryUUID/entryCSN are generated as usual.
    pub fn start_with_ldif(ldif: impl Into<Ldif>) -> Slapd {
        Self::start_with(SlapdOptions {
            tls: false,
            ldif: Some(ldif.into()),
        })
    }

    pub fn start_with(opts: SlapdOptions) -> Slapd {
        tool(SLAPD, "Debian package slapd");
        let dir = temp_dir("ldapsync-slapd-");
        let pki = opts
            .tls
            .then(|| generate_test_pki(&dir.path().join("tls"), &["localhost"], &["127.0.0.1"]));
        fs::create_dir_all(dir.path().join("data")).expect("mkdir data");
        let conf = slapd_conf(dir.path(), pki.as_ref());
        write_file(dir.path(), "slapd.conf", conf);

        let mut slapd = Slapd {
            child: None,
            port: 0,
            ldaps_port: None,
            pki,
            dir,
        };
        let base = write_file(slapd.dir(), "base.ldif", base_tree_ldif());
        match opts.ldif {
            None => slapd.slapadd(&base, true),
            Some(ldif) => {
                slapd.slapadd(&base, false);
                let path = match ldif {
                    Ldif::File(p) => p,
                    Ldif::Text(t) => write_file(slapd.dir(), "load.ldif", t),
                };
                slapd.slapadd(&path, true);
            }
        }
        slapd.launch_on_free_ports();
        slapd
    }

    fn slapadd(&self, ldif: &Path, write_context: bool) {
        tool(SLAPADD, "Debian package slapd");
        let mut cmd = Command::new(SLAPADD);
        cmd.arg("-f")
            .arg(self.conf_path())
            .args(["-b", BASE_DN, "-q", "-l"])
            .arg(ldif);
        if write_context {
            cmd.arg("-w");
        }
        let what = format!("slapadd -l {}", ldif.display());
        run_ok(&what, &mut cmd, None, Duration::from_secs(600));
    }

    fn launch_on_free_ports(&mut self) {
        on_a_free_address("slapd", |_| {
            self.port = free_port();
            self.ldaps_port = self.pki.as_ref().map(|_| free_port());
            self.launch()
        })
    }

    /// Starts slapd on `self.port`; Err(log tail) if the port was taken, panics on other errors.
    fn launch(&mut self) -> Result<(), String> {
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(p) = self.ldaps_port {
            write!(urls, " ldaps://127.0.0.1:{p}/").unwrap();
        }
        let debug = std::env::var("LDAPSYNC_TEST_SLAPD_DEBUG").unwrap_or_else(|_| "stats".into());
        let (out, err) = log_file(&self.log_path());
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(self.conf_path())
            .args(["-h", &urls, "-d", &debug])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SLAPD}: {e}"));
        let child = await_server(child, "slapd", &self.log_path(), || {
            if !(port_open(self.port) && self.ldaps_port.is_none_or(port_open)) {
                return Err("port closed".into());
            }
            self.probe()
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops slapd (SIGTERM, then SIGKILL); the data stays. See [`Slapd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(10));
        }
    }

    /// Starts slapd again on the same port(s) with the same data, e.g. after [`Slapd::stop`].
    pub fn restart(&mut self) {
        self.stop();
        if let Err(tail) = self.launch() {
            panic!(
                "slapd could not bind its port {} again on restart; log tail:\n{tail}",
                self.port
            );
        }
    }

    /// Whether slapd is running (started and not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `ldaps://127.0.0.1:PORT`; panics unless started with [`Slapd::start_tls`].
    pub fn ldaps_url(&self) -> String {
        let p = self
            .ldaps_port
            .expect("ldaps_url(): slapd was not started with TLS");
        format!("ldaps://127.0.0.1:{p}")
    }
    /// The test CA certificate (PEM); panics unless started with TLS.
    pub fn ca_file(&self) -> PathBuf {
        self.pki().ca_cert.clone()
    }
    /// The CA and server certificate/key; panics unless started with TLS.
    pub fn pki(&self) -> &TestPki {
        self.pki
            .as_ref()
            .expect("slapd was not started with TLS (use Slapd::start_tls)")
    }
    pub fn base_dn(&self) -> &'static str {
        BASE_DN
    }
    pub fn people_dn(&self) -> String {
        format!("ou=People,{BASE_DN}")
    }
    pub fn groups_dn(&self) -> String {
        format!("ou=Groups,{BASE_DN}")
    }
    pub fn admin_dn(&self) -> &'static str {
        ADMIN_DN
    }
    pub fn admin_password(&self) -> &'static str {
        ADMIN_PASSWORD
    }
    /// The temporary directory (slapd.conf, data/, tls/, slapd.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn conf_path(&self) -> PathBuf {
        self.dir().join("slapd.conf")
    }
    /// `ldapsearch -LLL` as admin (subtree), returning the LDIF text (unwrapped lines). An absent
    /// base (noSuchObject, 32) gives an empty string; other failures panic.
    pub fn search(&self, base: &str, filter: &str, attrs: &[&str]) -> String {
        self.search_scoped(base, "sub", filter, attrs)
    }

    /// The DNs under `base` matching `filter` (subtree), in server order; empty when `base`
    /// does not exist.
    pub fn search_dns(&self, base: &str, filter: &str) -> Vec<String> {
        parse_ldif_dns(&self.search(base, filter, &["1.1"]))
    }

    /// Adds `uid=UID,ou=People,…` (inetOrgPerson with cn, sn, mail) and returns its DN.
    pub fn add_user(&self, uid: &str, mail: &str) -> String {
        let dn = format!("uid={uid},ou=People,{BASE_DN}");
        self.add(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {mail}\n"
        ));
        dn
    }

    /// The directory of the drift tests ([`super::run::DRIFT_REPAIRS`]): `ops` (alice, bob),
    /// `dev` (alice) and `gone` (bob), with the users `alice_dn` and `bob_dn`.
    pub fn add_drift_groups(&self, alice_dn: &str, bob_dn: &str) {
        self.add_group("ops", &[alice_dn, bob_dn]);
        self.add_group("dev", &[alice_dn]);
        self.add_group("gone", &[bob_dn]);
    }

    /// [`Slapd::add_drift_groups`] with new users alice, bob and carol (`<uid>@example.com`).
    pub fn add_drift_directory(&self) {
        let alice = self.add_user("alice", "alice@example.com");
        let bob = self.add_user("bob", "bob@example.com");
        self.add_user("carol", "carol@example.com");
        self.add_drift_groups(&alice, &bob);
    }

    /// Adds `cn=CN,ou=Groups,…` as a groupOfNames with these member DNs (groupOfNames needs at
    /// least one member; an empty list gets the admin DN as a placeholder member) and returns its DN.
    pub fn add_group(&self, cn: &str, member_dns: &[&str]) -> String {
        let dn = format!("cn={cn},ou=Groups,{BASE_DN}");
        let mut ldif = format!("dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\n");
        if member_dns.is_empty() {
            writeln!(ldif, "member: {ADMIN_DN}").unwrap();
        }
        for m in member_dns {
            writeln!(ldif, "member: {m}").unwrap();
        }
        self.add(&ldif);
        dn
    }
}

impl LdapServer for Slapd {
    const NAME: &'static str = "slapd";
    const BASE_DN: &'static str = BASE_DN;
    const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

    /// Bound as the admin to `url()`.
    fn ldap_tool(&self, name: &str) -> Command {
        ldap_command(name, &self.url(), ADMIN_DN, ADMIN_PASSWORD)
    }

    /// slapd's stderr (debug level `stats` unless `LDAPSYNC_TEST_SLAPD_DEBUG` says otherwise).
    fn log_path(&self) -> PathBuf {
        self.dir().join("slapd.log")
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn slapd_conf(dir: &Path, pki: Option<&TestPki>) -> String {
    let d = dir.display();
    let mut c = String::new();
    for s in ["core", "cosine", "nis", "inetorgperson"] {
        writeln!(c, "include {SLAPD_SCHEMAS}/{s}.schema").unwrap();
    }
    writeln!(c, "modulepath {SLAPD_MODULES}").unwrap();
    for m in ["back_mdb", "syncprov", "memberof"] {
        writeln!(c, "moduleload {m}").unwrap();
    }
    writeln!(c, "pidfile {d}/slapd.pid\nargsfile {d}/slapd.args").unwrap();
    if let Some(p) = pki {
        writeln!(
            c,
            "TLSCACertificateFile {}\nTLSCertificateFile {}\nTLSCertificateKeyFile {}",
            p.ca_cert.display(),
            p.cert.display(),
            p.key.display()
        )
        .unwrap();
    }
    write!(
        c,
        r#"
database mdb
maxsize 8589934592
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {d}/data
index objectClass eq
index entryCSN,entryUUID eq
index uid,cn,mail,member,memberUid eq
limits dn.exact="{ADMIN_DN}" size=unlimited time=unlimited
overlay memberof
memberof-refint TRUE
overlay syncprov
syncprov-checkpoint 100 10
"#
    )
    .unwrap();
    c
}

fn base_tree_ldif() -> String {
    format!(
        "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: ou=People,{BASE_DN}\nobjectClass: organizationalUnit\nou: People\n\n\
         dn: ou=Groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: Groups\n"
    )
}
