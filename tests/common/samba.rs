//! A real Samba AD domain controller ([`SambaDc`]) in a temporary directory.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::ldap::{LdapServer, ldap_command};
use super::pki::{TestPki, generate_test_pki};
use super::process::{
    OutputExt, addr_open, await_server, log_file, on_a_free_address, run_ok, stop_child, temp_dir,
    tool, wait_for_exit, write_file,
};

const SAMBA: &str = "/usr/sbin/samba";
const SAMBA_TOOL: &str = "/usr/bin/samba-tool";
const LDBSEARCH: &str = "/usr/bin/ldbsearch";
const SAMBA_REALM: &str = "AD.LDAPSYNC.TEST";
const SAMBA_DOMAIN: &str = "LDAPSYNC";
const SAMBA_BASE_DN: &str = "DC=ad,DC=ldapsync,DC=test";
const SAMBA_ADMIN_DN: &str = "CN=Administrator,CN=Users,DC=ad,DC=ldapsync,DC=test";
/// Meets AD's default password complexity.
const SAMBA_ADMIN_PASSWORD: &str = "Adm1n-Secret!";

/// A real Samba AD domain controller (Debian `samba` 4.17) provisioned into a temporary
/// directory, serving only LDAP/LDAPS (`server services = ldap`) with a generated test CA.
///
/// Samba's LDAP ports are not configurable (389, 636 and the global catalog 3268/3269), so each
/// DC listens on its own loopback address `127.X.Y.Z` (all of 127.0.0.0/8 reaches `lo` on Linux;
/// `interfaces = 127.X.Y.Z/8`, `bind interfaces only = yes`): parallel test binaries do not
/// collide, and nothing binds 127.0.0.1:389. The server certificate has subjectAltName
/// DNS:localhost, IP:127.0.0.1 and IP:127.X.Y.Z (Samba's auto-generated one has none, which rustls
/// rejects).
///
/// Provisioning takes about 5 s, so a test binary should share one DC (a `OnceLock`) and give
/// each test its own OU. `samba -i` exits when its standard input closes, and this helper holds
/// the pipe: the DC dies with the test process, and its directory is deleted, even when it lives
/// in a static and is never dropped. Provisioning sets NT ACLs (security.* xattrs) on the sysvol, so it needs root, as
/// the CI does. Dropping it stops samba and deletes the directory.
pub struct SambaDc {
    child: Option<Child>,
    ip: String,
    pki: TestPki,
    /// Samba's own auto-generated certificate instead of the test CA's (see
    /// [`SambaDc::start_with_generated_certificate`]).
    generated_certificate: bool,
    dir: TempDir,
}

impl SambaDc {
    /// Provisions a domain (`ad.ldapsync.test`, NetBIOS `LDAPSYNC`) and starts its DC.
    pub fn start() -> SambaDc {
        Self::start_with(false)
    }

    /// A DC that serves the certificate Samba generates itself when its TLS files do not exist,
    /// as a default installation does: a self-signed CA (`pki().ca_cert`) and a server
    /// certificate whose subject CN is the DC's DNS host name ([`SambaDc::dns_host_name`]) and
    /// which has no subjectAltName. That name does not resolve: run the client with
    /// [`run_ldapsync_with_hosts`](super::run_ldapsync_with_hosts). The admin tools trust that
    /// CA without checking the name (`TLS_REQCERT allow`).
    pub fn start_with_generated_certificate() -> SambaDc {
        Self::start_with(true)
    }

    fn start_with(generated_certificate: bool) -> SambaDc {
        tool(SAMBA, "Debian package samba");
        tool(SAMBA_TOOL, "Debian package samba-common-bin");
        let dir = temp_dir("ldapsync-samba-");
        let root = dir.path();
        // An empty config file: samba-tool must not read /etc/samba/smb.conf (its share
        // definitions and log paths would end up in ours); --targetdir keeps everything else in
        // the temporary directory.
        let empty = write_file(root, "empty.conf", "");
        run_ok(
            "samba-tool domain provision",
            Command::new(SAMBA_TOOL)
                .args(["domain", "provision", "-s"])
                .arg(&empty)
                .arg(format!("--targetdir={}", root.display()))
                .args([
                    &format!("--realm={SAMBA_REALM}"),
                    &format!("--domain={SAMBA_DOMAIN}"),
                    &format!("--adminpass={SAMBA_ADMIN_PASSWORD}"),
                    "--server-role=dc",
                    "--dns-backend=NONE",
                    "--use-rfc2307",
                    "--host-name=dc1",
                ]),
            None,
            Duration::from_secs(300),
        );
        let mut dc = SambaDc {
            child: None,
            ip: String::new(),
            // Generated below, once the address is known.
            pki: TestPki {
                ca_cert: PathBuf::new(),
                ca_key: PathBuf::new(),
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            generated_certificate,
            dir,
        };
        let (ca, check) = if generated_certificate {
            ("private/tls/ca.pem", "allow")
        } else {
            ("tls/ca.crt", "demand")
        };
        write_file(
            dc.dir(),
            "ldap.conf",
            format!(
                "TLS_CACERT {}\nTLS_REQCERT {check}\n",
                dc.dir().join(ca).display()
            ),
        );
        on_a_free_address("samba", |attempt| {
            dc.ip = loopback_address(attempt);
            // Someone else's DC on this address: try the next one.
            if [389, 636].into_iter().any(|p| dc.port_open(p)) {
                return Err(format!("{} is taken", dc.ip));
            }
            let tls = dc.dir().join("tls");
            dc.pki = if generated_certificate {
                let generated = dc.dir().join("private/tls");
                TestPki {
                    ca_cert: generated.join("ca.pem"),
                    ca_key: PathBuf::new(),
                    cert: generated.join("cert.pem"),
                    key: generated.join("key.pem"),
                }
            } else {
                generate_test_pki(&tls, &["localhost"], &["127.0.0.1", &dc.ip])
            };
            dc.write_smb_conf();
            dc.launch()
        });
        dc
    }

    /// Writes etc/smb.conf: the provisioned one (kept as smb.conf.provisioned) with our
    /// services, address, TLS files, pid directory and log in its [global] section.
    fn write_smb_conf(&self) {
        let path = self.smb_conf();
        let pristine = self.dir().join("etc/smb.conf.provisioned");
        if !pristine.exists() {
            fs::copy(&path, &pristine).expect("keep the provisioned smb.conf");
        }
        let text = fs::read_to_string(&pristine).expect("read the provisioned smb.conf");
        // With the generated certificate, Samba's defaults (tls/*.pem in the private directory)
        // are left alone: it writes them at its first start.
        let tls = if self.generated_certificate {
            String::new()
        } else {
            format!(
                "\ttls keyfile = {}\n\ttls certfile = {}\n\ttls cafile = {}\n",
                self.pki.key.display(),
                self.pki.cert.display(),
                self.pki.ca_cert.display(),
            )
        };
        let ours = format!(
            "\tserver services = ldap\n\
             \tinterfaces = {ip}/8\n\
             \tbind interfaces only = yes\n\
             \ttls enabled = yes\n\
             {tls}\
             \tpid directory = {dir}/run\n\
             \tlog file = {dir}/samba.log\n",
            ip = self.ip,
            dir = self.dir().display(),
        );
        let mut out = String::new();
        for line in text.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            if matches!(
                key,
                "server services" | "interfaces" | "bind interfaces only"
            ) {
                continue; // provision's values, replaced by ours
            }
            out.push_str(line);
            out.push('\n');
            if line.trim() == "[global]" {
                out.push_str(&ours);
            }
        }
        assert!(
            out.contains("server services = ldap"),
            "no [global] section in {}:\n{text}",
            pristine.display()
        );
        fs::write(&path, out).expect("write smb.conf");
    }

    /// Starts samba; Err(log tail) if it could not listen, panics on other errors.
    fn launch(&mut self) -> Result<(), String> {
        fs::create_dir_all(self.dir().join("run")).expect("mkdir run");
        let (out, err) = log_file(&self.log_path());
        // `samba -i` terminates on EOF on stdin, and we hold the pipe: the DC dies with the test
        // process even from a static that is never dropped. The shell then deletes the directory
        // (a TempDir in a static is never dropped either), unless samba failed (a retry or a
        // panic will want the log).
        let child = Command::new("/bin/sh")
            .args([
                "-c",
                r#"dir="$1"; shift; "$@"; rc=$?
                   if [ "$rc" -eq 0 ]; then case "$dir" in */ldapsync-samba-*) rm -rf "$dir";; esac; fi
                   exit "$rc""#,
                "samba-dc",
            ])
            .arg(self.dir())
            .arg(SAMBA)
            .arg("-s")
            .arg(self.smb_conf())
            .args(["-i", "-M", "single", "--debug-stdout", "-d", "1"])
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SAMBA}: {e}"));
        let child = await_server(child, "samba", &self.log_path(), || {
            if !self.port_open(636) {
                return Err("port 636 closed".into());
            }
            self.probe()
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops samba: closes its stdin (it exits at once), then SIGTERM/SIGKILL if it has not
    /// within 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            if wait_for_exit(&mut child, Duration::from_secs(10)).is_none() {
                stop_child(&mut child, Duration::from_secs(5));
            }
        }
    }

    /// Whether something accepts TCP connections on the DC's address at `port`.
    fn port_open(&self, port: u16) -> bool {
        addr_open(SocketAddr::new(self.ip.parse().expect("DC address"), port))
    }

    /// `ldaps://127.X.Y.Z` (port 636).
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}", self.ip)
    }
    /// The DC's DNS host name, the subject CN of Samba's generated certificate.
    pub fn dns_host_name(&self) -> String {
        format!("DC1.{}", SAMBA_REALM.to_ascii_lowercase())
    }
    /// The loopback address the DC listens on.
    pub fn ip(&self) -> &str {
        &self.ip
    }
    /// The test CA certificate (PEM) that signed the DC's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.ca_cert.clone()
    }
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }
    /// The domain DN, `DC=ad,DC=ldapsync,DC=test`.
    pub fn base_dn(&self) -> &'static str {
        SAMBA_BASE_DN
    }
    /// `CN=Administrator,CN=Users,…`, a simple-bind DN (binds need TLS: `ldaps_url`).
    pub fn admin_dn(&self) -> &'static str {
        SAMBA_ADMIN_DN
    }
    pub fn admin_password(&self) -> &'static str {
        SAMBA_ADMIN_PASSWORD
    }
    pub fn realm(&self) -> &'static str {
        SAMBA_REALM
    }
    /// The temporary directory (etc/smb.conf, private/sam.ldb, tls/, samba.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn smb_conf(&self) -> PathBuf {
        self.dir().join("etc/smb.conf")
    }
    /// The DC's database, for `ldbsearch -H` (an independent reader).
    pub fn sam_ldb(&self) -> PathBuf {
        self.dir().join("private/sam.ldb")
    }
    /// `ldapsearch -LLL` as Administrator over LDAPS with `scope` (unwrapped LDIF). noSuchObject
    /// gives "".
    pub fn search(&self, base: &str, scope: &str, filter: &str, attrs: &[&str]) -> String {
        self.search_scoped(base, scope, filter, attrs)
    }

    /// Adds `OU=NAME,<domain>` and returns its DN.
    pub fn add_ou(&self, name: &str) -> String {
        let dn = format!("OU={name},{SAMBA_BASE_DN}");
        self.add(&format!(
            "dn: {dn}\nobjectClass: organizationalUnit\nou: {name}\n"
        ));
        dn
    }

    /// LDIF for a user `CN=NAME,<ou>` (sAMAccountName NAME, mail NAME@ad.ldapsync.test).
    pub fn user_ldif(ou: &str, name: &str) -> String {
        format!(
            "dn: CN={name},{ou}\nobjectClass: user\nsAMAccountName: {name}\n\
             mail: {name}@ad.ldapsync.test\n\n"
        )
    }

    /// Adds users `CN=NAME,<ou>` in one `ldapadd` and returns their DNs.
    pub fn add_users(&self, ou: &str, names: &[&str]) -> Vec<String> {
        let ldif: String = names.iter().map(|n| Self::user_ldif(ou, n)).collect();
        self.add(&ldif);
        names.iter().map(|n| format!("CN={n},{ou}")).collect()
    }

    /// Adds a global security group `CN=NAME,<ou>` (sAMAccountName NAME) with these member DNs
    /// (users or groups) and returns its DN.
    pub fn add_group(&self, ou: &str, name: &str, member_dns: &[&str]) -> String {
        let dn = format!("CN={name},{ou}");
        let mut ldif = format!("dn: {dn}\nobjectClass: group\nsAMAccountName: {name}\n");
        for m in member_dns {
            writeln!(ldif, "member: {m}").unwrap();
        }
        self.add(&ldif);
        dn
    }

    /// The objectGUID of `dn` as `ldbsearch` prints it from sam.ldb: the canonical string in the
    /// Microsoft byte order, read by Samba's own code, independently of ldapsync.
    pub fn object_guid(&self, dn: &str) -> String {
        tool(LDBSEARCH, "Debian package ldb-tools");
        let out = run_ok(
            &format!("ldbsearch {dn}"),
            Command::new(LDBSEARCH).arg("-H").arg(self.sam_ldb()).args([
                "-b",
                dn,
                "-s",
                "base",
                "(objectClass=*)",
                "objectGUID",
            ]),
            None,
            Duration::from_secs(60),
        );
        out.stdout_str()
            .lines()
            .find_map(|l| l.strip_prefix("objectGUID: "))
            .unwrap_or_else(|| panic!("no objectGUID for {dn}:\n{}", out.describe()))
            .trim()
            .to_string()
    }
}

impl LdapServer for SambaDc {
    const NAME: &'static str = "samba";
    const BASE_DN: &'static str = SAMBA_BASE_DN;
    const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

    /// Bound as the Administrator to `ldaps_url()`, trusting only the test CA (its own
    /// ldap.conf; ~/.ldaprc and /etc/ldap/ldap.conf are not read).
    fn ldap_tool(&self, name: &str) -> Command {
        let mut cmd = ldap_command(
            name,
            &self.ldaps_url(),
            SAMBA_ADMIN_DN,
            SAMBA_ADMIN_PASSWORD,
        );
        cmd.env("LDAPCONF", self.dir().join("ldap.conf"))
            .env("LDAPRC", "ldapsync-tests-no-ldaprc")
            .env_remove("LDAPNOINIT");
        cmd
    }

    /// samba's stdout/stderr (debug level 1).
    fn log_path(&self) -> PathBuf {
        self.dir().join("samba.log")
    }
}

impl Drop for SambaDc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `127.X.Y.Z` for this process and attempt: distinct between concurrent test processes (by pid)
/// and never 127.0.0.1.
fn loopback_address(attempt: u32) -> String {
    let n = std::process::id()
        .wrapping_mul(7)
        .wrapping_add(attempt.wrapping_mul(7919));
    let x = 64 + (n >> 16) % 128;
    let y = (n >> 8) & 0xff;
    let z = 1 + (n & 0xff) % 254;
    format!("127.{x}.{y}.{z}")
}
