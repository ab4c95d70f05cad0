//! A real 389 Directory Server ([`Ds389`]) in a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::ldap::{LdapServer, ldap_command};
use super::process::{
    OutputExt, await_server, free_port, log_file, run_with_timeout, stop_child, temp_dir, tool,
    wait_for_exit, write_file,
};

const DSCREATE: &str = "/usr/sbin/dscreate";
const NS_SLAPD: &str = "/usr/sbin/ns-slapd";
const DEFAULTS_INF: &str = "/usr/share/dirsrv/inf/defaults.inf";
const INSTANCE: &str = "ldapsync";
const BASE_DN: &str = "dc=example,dc=com";
const ROOT_DN: &str = "cn=Directory Manager";
const ROOT_PASSWORD: &str = "Directory-Manager-1";
/// A service account: the Directory Manager is exempt from the size limit, ldapsync is not.
const SERVICE_DN: &str = "uid=ldapsync,ou=Services,dc=example,dc=com";
const SERVICE_PASSWORD: &str = "ldapsync-Secret-1";

/// A real 389 Directory Server (Debian `389-ds-base`, 2.3) created by `dscreate from-file` in
/// a temporary directory and run in the foreground on 127.0.0.1, with its default limits (a
/// 2,000-entry size limit for everyone but the Directory Manager).
///
/// `dscreate` wants systemd and the system paths; it is made to work in a temporary directory
/// the way lib389 supports prefix installs: `PREFIX=<dir>` makes it read
/// `<dir>/share/dirsrv/inf/defaults.inf`, a copy of the packaged one with `with_systemd = 0`,
/// every writable path (config, database, logs, run, lock) under `<dir>` and `user = root`.
/// It creates the instance without starting it (`start = False`); the helper then adds
/// `nsslapd-listenhost: 127.0.0.1` to its `dse.ldif` and runs `ns-slapd -D <config dir> -d 0`
/// (foreground) under a shell that stops it, and deletes the directory, when this process
/// closes the shell's standard input — also when the server lives in a static that is never
/// dropped. Needs root, as the CI has (the server runs as `root`).
///
/// The tree: `dc=example,dc=com`, `ou=People`, `ou=Groups`, and `ou=Services` with the service
/// account [`Ds389::service_dn`] that may read everything (including `nsUniqueId`).
pub struct Ds389 {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Ds389 {
    /// Creates and starts an instance (dscreate takes about 10 s).
    pub fn start() -> Ds389 {
        tool(DSCREATE, "Debian package 389-ds-base");
        tool(NS_SLAPD, "Debian package 389-ds-base");
        let dir = temp_dir("ldapsync-ds389-");
        let mut ds = Ds389 {
            child: None,
            port: free_port(),
            dir,
        };
        ds.create();
        ds.launch();
        ds.add(&format!(
            "dn: ou=People,{BASE_DN}\nobjectClass: organizationalUnit\nou: People\n\n\
             dn: ou=Groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: Groups\n\n\
             dn: ou=Services,{BASE_DN}\nobjectClass: organizationalUnit\nou: Services\n\n\
             dn: {SERVICE_DN}\nobjectClass: inetOrgPerson\nuid: ldapsync\ncn: ldapsync\n\
             sn: ldapsync\nuserPassword: {SERVICE_PASSWORD}\n"
        ));
        ds.modify(&format!(
            "dn: {BASE_DN}\nchangetype: modify\nadd: aci\naci: (targetattr=\"* || nsUniqueId\")\
             (version 3.0; acl \"ldapsync reads\"; allow (read, search, compare) \
             userdn=\"ldap:///{SERVICE_DN}\";)\n"
        ));
        ds
    }

    /// The prefixed defaults.inf and the answer file, then `dscreate from-file`.
    fn create(&self) {
        let root = self.dir();
        let d = root.display();
        let defaults =
            fs::read_to_string(DEFAULTS_INF).unwrap_or_else(|e| panic!("read {DEFAULTS_INF}: {e}"));
        let mut prefixed = String::new();
        for line in defaults.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            let path = line.split_once('=').map_or("", |(_, v)| v.trim());
            let replaced = match key {
                "with_systemd" => "0".to_string(),
                "user" | "group" => "root".to_string(),
                "initconfig_dir" => format!("{d}/etc/default"),
                "tmpfiles_d" => format!("{d}/tmpfiles.d"),
                "tmp_dir" => format!("{d}/tmp"),
                "local_state_dir" => format!("{d}/var"),
                "inst_dir" => format!("{d}/inst/slapd-{{instance_name}}"),
                "db_home_dir" => format!("{d}/dbhome/slapd-{{instance_name}}"),
                "run_dir" => format!("{d}/run"),
                "pid_file" => format!("{d}/run/slapd-{{instance_name}}.pid"),
                // Everything the instance writes: its config, database, logs, locks, sockets.
                _ if ["/etc/dirsrv", "/var/", "/run/"]
                    .iter()
                    .any(|p| path.starts_with(p)) =>
                {
                    format!("{d}{path}")
                }
                _ => {
                    prefixed.push_str(line);
                    prefixed.push('\n');
                    continue;
                }
            };
            prefixed.push_str(&format!("{key} = {replaced}\n"));
        }
        write_file(root, "share/dirsrv/inf/defaults.inf", prefixed);
        let answers = write_file(
            root,
            "instance.inf",
            format!(
                "[general]\nconfig_version = 2\nfull_machine_name = localhost\nstart = False\n\
                 strict_host_checking = False\nsystemd = False\nselinux = False\n\n\
                 [slapd]\ninstance_name = {INSTANCE}\nport = {port}\nsecure_port = {secure}\n\
                 self_sign_cert = False\nroot_password = {ROOT_PASSWORD}\nuser = root\n\
                 group = root\n\n\
                 [backend-userroot]\nsuffix = {BASE_DN}\ncreate_suffix_entry = True\n",
                port = self.port,
                secure = free_port(),
            ),
        );
        let out = run_with_timeout(
            Command::new(DSCREATE)
                .args(["-v", "from-file"])
                .arg(&answers)
                .env("PREFIX", root)
                .current_dir(root),
            None,
            Duration::from_secs(300),
        );
        assert!(
            out.status.success(),
            "dscreate from-file failed:\n{}",
            out.describe()
        );
        // Loopback only.
        let dse = self.config_dir().join("dse.ldif");
        let text = fs::read_to_string(&dse).expect("read dse.ldif");
        assert!(text.contains("dn: cn=config\n"), "{}", dse.display());
        fs::write(
            &dse,
            text.replacen(
                "dn: cn=config\n",
                "dn: cn=config\nnsslapd-listenhost: 127.0.0.1\n",
                1,
            ),
        )
        .expect("write dse.ldif");
    }

    fn launch(&mut self) {
        let (out, err) = log_file(&self.log_path());
        // ns-slapd in the foreground (-d 0); the shell kills it when its stdin closes, and then
        // deletes the directory (a TempDir in a static is never dropped). Background jobs of a
        // non-interactive shell read /dev/null, hence the stdin kept as fd 3 for `cat`.
        let child = Command::new("/bin/sh")
            .args([
                "-c",
                r#"dir="$1"; shift; exec 3<&0; "$@" & pid=$!
                   { cat <&3 >/dev/null; kill "$pid" 2>/dev/null; } &
                   wait "$pid"; rc=$?
                   case "$dir" in */ldapsync-ds389-*) rm -rf "$dir";; esac
                   exit "$rc""#,
                "ds389",
            ])
            .arg(self.dir())
            .arg(NS_SLAPD)
            .arg("-D")
            .arg(self.config_dir())
            .arg("-i")
            .arg(self.dir().join(format!("run/slapd-{INSTANCE}.pid")))
            .args(["-d", "0"])
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NS_SLAPD}: {e}"));
        let child = await_server(child, "389-ds", &self.errors_log(), || self.probe())
            .unwrap_or_else(|tail| panic!("389-ds did not start:\n{tail}"));
        self.child = Some(child);
    }

    /// Stops the server: closes the shell's stdin (it kills ns-slapd), then SIGTERM/SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            if wait_for_exit(&mut child, Duration::from_secs(30)).is_none() {
                stop_child(&mut child, Duration::from_secs(5));
            }
        }
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
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
    /// The account ldapsync binds as (subject to the server's size limit).
    pub fn service_dn(&self) -> &'static str {
        SERVICE_DN
    }
    pub fn service_password(&self) -> &'static str {
        SERVICE_PASSWORD
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_dir(&self) -> PathBuf {
        self.dir().join(format!("etc/dirsrv/slapd-{INSTANCE}"))
    }
    /// The server's error log (its stdout/stderr in the foreground say little).
    pub fn errors_log(&self) -> PathBuf {
        self.dir()
            .join(format!("var/log/dirsrv/slapd-{INSTANCE}/errors"))
    }
}

impl LdapServer for Ds389 {
    const NAME: &'static str = "389-ds";
    const BASE_DN: &'static str = BASE_DN;
    const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

    /// Bound as the Directory Manager.
    fn ldap_tool(&self, name: &str) -> Command {
        ldap_command(name, &self.url(), ROOT_DN, ROOT_PASSWORD)
    }

    /// ns-slapd's stdout/stderr.
    fn log_path(&self) -> PathBuf {
        self.dir().join("ns-slapd.log")
    }

    fn log_tail(&self, lines: usize) -> String {
        super::process::file_tail(&self.errors_log(), lines)
    }
}

impl Drop for Ds389 {
    fn drop(&mut self) {
        self.stop();
    }
}
