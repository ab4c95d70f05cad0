//! Shared helpers for the integration tests: real OpenLDAP `slapd`, the real `scim2-server`, the
//! Python emulators of `tests/emulators/`, and running the `ldapsync` binary.
//!
//! Every test file uses it with `mod common;`. Each test file uses only some helpers, hence the
//! `allow(dead_code)`. Everything here panics with a useful message (including the tail of the
//! server's log) instead of returning errors: a helper failing is a broken test environment.
//!
//! External programs come from `scripts/install-test-deps.sh` (Debian slapd, ldap-utils, openssl;
//! the venv at `$REPO/.venv` with scim2-server). Nothing here sleeps for a fixed time to
//! synchronise: readiness is always polled.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

// ------------------------------------------------------------------------------------ basics

/// The repository root (the crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Never hands out the same port twice in
/// one test process, so parallel tests in one binary do not collide with each other.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<BTreeSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(BTreeSet::new()));
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if given.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Polls `cond` (every 10 ms at first, backing off to 100 ms) until it returns true; panics with
/// `what` if it has not within `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()))
}

/// Polls `f` until it returns `Some(value)` and returns the value; panics with `what` after
/// `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Writes `contents` to `dir/name` (creating parent directories) and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The last `lines` lines of a (log) file, or a note that it could not be read.
pub fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn tool(path: &str, hint: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if !p.exists() {
        panic!("{path} not found: {hint} (run scripts/install-test-deps.sh)");
    }
    p
}

/// Runs `cmd` to completion with `stdin` fed to it, killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let out_reader = read_all_in_thread(child.stdout.take().expect("stdout pipe"));
    let err_reader = read_all_in_thread(child.stderr.take().expect("stderr pipe"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn read_all_in_thread(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Convenience accessors on a finished process's [`Output`].
pub trait OutputExt {
    /// The exit code; -1 when killed by a signal.
    fn code(&self) -> i32;
    fn stdout_str(&self) -> String;
    fn stderr_str(&self) -> String;
    /// Everything, for assertion messages.
    fn describe(&self) -> String {
        format!(
            "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code(),
            self.stdout_str(),
            self.stderr_str()
        )
    }
}

impl OutputExt for Output {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Stops a child: SIGTERM, up to `grace` to exit, then SIGKILL; always reaps it.
fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().ok()
}

fn log_file(path: &Path) -> (Stdio, Stdio) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let g = f.try_clone().expect("clone log file handle");
    (Stdio::from(f), Stdio::from(g))
}

/// Retries `attempt` (given the attempt number) up to 5 times while it returns Err(log tail),
/// which it does when the address it picked was taken before the server could bind it.
fn on_a_free_address<T>(what: &str, mut attempt: impl FnMut(u32) -> Result<T, String>) -> T {
    let mut last_log = String::new();
    for n in 0..5 {
        match attempt(n) {
            Ok(v) => return v,
            Err(log) => last_log = log,
        }
    }
    panic!("{what} could not listen on a free address after 5 attempts; log tail:\n{last_log}");
}

/// Waits for a server process that was just spawned (logging to `log`) until `ready` returns
/// Ok, polling every 10 ms at first, backing off to 100 ms, and returns the child. Err(log tail)
/// when it exited and its log says its address was taken (the caller retries elsewhere); panics
/// when it exited for another reason, or is not ready within `START_TIMEOUT` (it is stopped
/// first; `ready`'s last Err says why).
fn await_server(
    mut child: Child,
    what: &str,
    log: &Path,
    mut ready: impl FnMut() -> Result<(), String>,
) -> Result<Child, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let tail = file_tail(log, 40);
            let text = fs::read_to_string(log).unwrap_or_default();
            if ["Address already in use", "errno=98", "Failed to listen"]
                .iter()
                .any(|m| text.contains(m))
            {
                return Err(tail);
            }
            panic!("{what} exited during start ({status}); log tail:\n{tail}");
        }
        let why = match ready() {
            Ok(()) => return Ok(child),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            let tail = file_tail(log, 40);
            drop(child.stdin.take());
            stop_child(&mut child, Duration::from_secs(10));
            panic!("{what} not ready within {START_TIMEOUT:?}: {why}; log tail:\n{tail}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

// ------------------------------------------------------------------------------------ ldap-utils

/// A directory server administered with the ldap-utils commands (`ldapadd`, `ldapmodify`,
/// `ldapdelete`, `ldapmodrdn`, `ldapsearch`): the plumbing [`Slapd`] and [`SambaDc`] share.
pub trait LdapServer {
    /// The server's name in failure messages.
    const NAME: &'static str;
    /// The naming context, probed with a base search to tell that the server is ready.
    const BASE_DN: &'static str;
    /// How long one ldap-utils command may take before it is killed.
    const TOOL_TIMEOUT: Duration;

    /// An ldap-utils command bound as the administrator (`-x -H URL -D DN -w PASSWORD`).
    fn ldap_tool(&self, name: &str) -> Command;

    /// The server's own log (stdout and stderr).
    fn log_path(&self) -> PathBuf;

    fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
    }

    /// Runs `name` with `args`, feeding it `input`; panics with its stderr, the start of the
    /// input and the server's log tail on failure.
    fn run_tool(&self, name: &str, args: &[&str], input: &str) {
        let out = run_with_timeout(
            self.ldap_tool(name).args(args),
            Some(input.as_bytes()),
            Self::TOOL_TIMEOUT,
        );
        if !out.status.success() {
            let command = [&[name], args].concat().join(" ");
            let shown: String = input.chars().take(4000).collect();
            panic!(
                "{command} failed (exit {}):\n{}\n--- input (start) ---\n{shown}\n--- {} log tail ---\n{}",
                out.code(),
                out.stderr_str(),
                Self::NAME,
                self.log_tail(20)
            );
        }
    }

    /// Adds entries (LDIF without changetype) with `ldapadd`; panics with stderr on failure.
    fn add(&self, ldif: &str) {
        self.run_tool("ldapadd", &[], ldif)
    }

    /// Applies LDIF change records with `ldapmodify` (default changetype: modify; records may
    /// carry `changetype: add|delete|modrdn`); panics with stderr on failure.
    fn modify(&self, ldif: &str) {
        self.run_tool("ldapmodify", &[], ldif)
    }

    /// Deletes entries (by DN) with `ldapdelete`; panics on failure.
    fn delete(&self, dns: &[&str]) {
        self.run_tool("ldapdelete", &[], &format!("{}\n", dns.join("\n")))
    }

    /// Renames `dn` to `new_rdn` (same parent, old RDN value removed) with `ldapmodrdn -r`.
    fn rename(&self, dn: &str, new_rdn: &str) {
        self.run_tool("ldapmodrdn", &["-r", dn, new_rdn], "")
    }

    /// Adds `member` to the `member` attribute of `group`.
    fn add_member(&self, group: &str, member: &str) {
        self.modify(&format!(
            "dn: {group}\nchangetype: modify\nadd: member\nmember: {member}\n"
        ))
    }

    /// Removes `member` from the `member` attribute of `group`.
    fn remove_member(&self, group: &str, member: &str) {
        self.modify(&format!(
            "dn: {group}\nchangetype: modify\ndelete: member\nmember: {member}\n"
        ))
    }

    /// `ldapsearch -LLL` as the administrator with `scope` (base, one, sub), returning the LDIF
    /// text (unwrapped lines). An absent base (noSuchObject, 32) gives an empty string; other
    /// failures panic.
    fn search_scoped(&self, base: &str, scope: &str, filter: &str, attrs: &[&str]) -> String {
        let out = run_with_timeout(
            self.ldap_tool("ldapsearch")
                .args([
                    "-LLL",
                    "-o",
                    "ldif-wrap=no",
                    "-b",
                    base,
                    "-s",
                    scope,
                    filter,
                ])
                .args(attrs),
            None,
            Self::TOOL_TIMEOUT,
        );
        match out.code() {
            0 => out.stdout_str(),
            32 => String::new(),
            _ => panic!(
                "ldapsearch -b {base:?} {filter:?} failed:\n{}",
                out.describe()
            ),
        }
    }

    /// A bound base search of the naming context: Ok once the server answers it.
    fn probe(&self) -> Result<(), String> {
        let out = run_with_timeout(
            self.ldap_tool("ldapsearch").args([
                "-b",
                Self::BASE_DN,
                "-s",
                "base",
                "(objectClass=*)",
                "1.1",
            ]),
            None,
            Duration::from_secs(30),
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ldapsearch: {}", out.describe()))
        }
    }
}

/// `name -x -H url -D bind_dn -w password -o nettimeout=10`.
fn ldap_command(name: &str, url: &str, bind_dn: &str, password: &str) -> Command {
    let mut cmd = Command::new(name);
    cmd.args(["-x", "-H", url, "-D", bind_dn, "-w", password])
        .args(["-o", "nettimeout=10"]);
    cmd
}

// ------------------------------------------------------------------------------------ HTTP

/// A complete HTTP response (any status; 4xx/5xx are not errors here).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body as JSON; `Value::Null` when empty; panics when it is not JSON.
    pub fn json(&self) -> Value {
        if self.body.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}), status {}: {}",
                self.status, self.body
            )
        })
    }
    /// The body as JSON, or `Value::Null` when it is empty or not JSON.
    pub fn json_or_null(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    })
}

/// One blocking HTTP request. `body`, when given, is sent as JSON with `content_type`
/// (default `application/json`, overridable through `headers`).
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> HttpResponse {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    let has_ct = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let result = match body {
        Some(b) => {
            if !has_ct {
                req = req.header("content-type", "application/json");
            }
            let bytes = serde_json::to_vec(b).expect("serialize body");
            agent().run(req.body(bytes).expect("build request"))
        }
        None => agent().run(req.body(()).expect("build request")),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
    HttpResponse {
        status,
        headers,
        body,
    }
}

// ------------------------------------------------------------------------------------ TLS

/// A test CA and a server certificate signed by it, as PEM files.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates (with the `openssl` CLI) a CA and a server certificate for the given DNS names and
/// IP addresses (subjectAltName; the first DNS name, else "localhost", is also the CN) into
/// `dir`. ECDSA P-256, SHA-256, valid ten years, serverAuth, CA:FALSE: acceptable to rustls.
pub fn generate_test_pki(dir: &Path, dns_names: &[&str], ips: &[&str]) -> TestPki {
    fs::create_dir_all(dir).expect("mkdir pki dir");
    let pki = TestPki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    let csr = dir.join("server.csr");
    let mut sans: Vec<String> = dns_names.iter().map(|d| format!("DNS:{d}")).collect();
    sans.extend(ips.iter().map(|i| format!("IP:{i}")));
    let ext = write_file(
        dir,
        "server-ext.cnf",
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n\
             subjectAltName={}\n",
            sans.join(",")
        ),
    );
    let cn = dns_names.first().copied().unwrap_or("localhost");
    let openssl = |args: &[&str]| {
        let out = run_with_timeout(
            Command::new("openssl").args(args).current_dir(dir),
            None,
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "openssl {args:?} failed:\n{}",
            out.describe()
        );
    };
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p(&pki.ca_key),
        "-out",
        &p(&pki.ca_cert),
        "-days",
        "3650",
        "-sha256",
        "-subj",
        "/O=ldapsync tests/CN=ldapsync test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p(&pki.key),
        "-out",
        &p(&csr),
        "-subj",
        &format!("/O=ldapsync tests/CN={cn}"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&pki.ca_cert),
        "-CAkey",
        &p(&pki.ca_key),
        "-CAcreateserial",
        "-out",
        &p(&pki.cert),
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        &p(&ext),
    ]);
    pki
}

// ------------------------------------------------------------------------------------ slapd

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const SLAPD_MODULES: &str = "/usr/lib/ldap";
const SLAPD_SCHEMAS: &str = "/etc/ldap/schema";
const BASE_DN: &str = "dc=example,dc=com";
const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
const ADMIN_PASSWORD: &str = "admin-secret";
const START_TIMEOUT: Duration = Duration::from_secs(30);

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
        let dir = tempfile::Builder::new()
            .prefix("ldapsync-slapd-")
            .tempdir()
            .expect("create temp dir for slapd");
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
        let out = run_with_timeout(&mut cmd, None, Duration::from_secs(600));
        assert!(
            out.status.success(),
            "slapadd -l {} failed:\n{}",
            ldif.display(),
            out.describe()
        );
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

    /// The values of `attr` on the entry `dn` (empty if the entry or attribute is absent).
    pub fn attr_values(&self, dn: &str, attr: &str) -> Vec<String> {
        let ldif = self.search_scoped(dn, "base", "(objectClass=*)", &[attr]);
        let mut values = Vec::new();
        for line in ldif.lines() {
            if let Some((name, rest)) = line.split_once(':') {
                if !name.eq_ignore_ascii_case(attr) {
                    continue;
                }
                values.push(decode_ldif_value(rest));
            }
        }
        values
    }

    /// Adds `uid=UID,ou=People,…` (inetOrgPerson with cn, sn, mail) and returns its DN.
    pub fn add_user(&self, uid: &str, mail: &str) -> String {
        let dn = format!("uid={uid},ou=People,{BASE_DN}");
        self.add(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {mail}\n"
        ));
        dn
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

    /// Bound as the admin to `url()`, ignoring ldap.conf/.ldaprc.
    fn ldap_tool(&self, name: &str) -> Command {
        let mut cmd = ldap_command(name, &self.url(), ADMIN_DN, ADMIN_PASSWORD);
        cmd.env("LDAPNOINIT", "1");
        cmd
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

/// The DNs of an (unwrapped) LDIF text, decoding base64 (`dn::`) ones.
pub fn parse_ldif_dns(ldif: &str) -> Vec<String> {
    ldif.lines()
        .filter_map(|l| l.strip_prefix("dn:"))
        .map(decode_ldif_value)
        .collect()
}

/// The value part of an LDIF `attr:` line after the first colon: `: text` or `:: base64`.
fn decode_ldif_value(rest: &str) -> String {
    use base64::Engine as _;
    if let Some(b64) = rest.strip_prefix(':') {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap_or_else(|e| panic!("bad base64 in LDIF value {b64:?}: {e}"));
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        rest.trim_start().to_owned()
    }
}

// ------------------------------------------------------------------------------------ scim2-server

const SCIM_GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const SCIM_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

/// The real `scim2-server` (PyPI, in-memory SCIM 2.0 server) on a free 127.0.0.1 port, with a
/// bearer token. Dropping it stops the server.
pub struct ScimServer {
    child: Option<Child>,
    port: u16,
    token: String,
    dir: TempDir,
}

impl ScimServer {
    /// `unique_display_name`: serve a Group schema whose `displayName` has
    /// `uniqueness: "server"`, so that a duplicate group name answers 409 (like StrongDM); by
    /// default scim2-server accepts duplicate group names.
    pub fn start(unique_display_name: bool) -> ScimServer {
        ScimServer::start_with(unique_display_name, true)
    }

    /// Like [`ScimServer::start`]; with `patch_supported = false` its `/ServiceProviderConfig`
    /// announces no PATCH support, so clients must fall back to PUT.
    pub fn start_with(unique_display_name: bool, patch_supported: bool) -> ScimServer {
        let bin = scim2_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("ldapsync-scim-")
            .tempdir()
            .expect("create temp dir for scim2-server");
        let schema = unique_display_name.then(|| {
            let mut schemas = default_scim_schemas(&bin);
            make_group_display_name_unique(&mut schemas);
            write_file(
                dir.path(),
                "schemas.json",
                serde_json::to_string_pretty(&schemas).unwrap(),
            )
        });
        let provider_config = (!patch_supported).then(|| {
            let mut config = default_scim_resource(&bin, "default-service-provider-config.json");
            config["patch"]["supported"] = Value::Bool(false);
            write_file(
                dir.path(),
                "service-provider-config.json",
                serde_json::to_string_pretty(&config).unwrap(),
            )
        });
        let token = format!("test-token-{:016x}", rand::random::<u64>());
        let mut server = ScimServer {
            child: None,
            port: 0,
            token,
            dir,
        };
        on_a_free_address("scim2-server", |_| {
            server.port = free_port();
            let (out, err) = log_file(&server.log_path());
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--hostname",
                "127.0.0.1",
                "--port",
                &server.port.to_string(),
            ])
            .args(["--bearer-token", &server.token]);
            if let Some(s) = &schema {
                cmd.arg("--schema").arg(s);
            }
            if let Some(c) = &provider_config {
                cmd.arg("--service-provider-config").arg(c);
            }
            let child = cmd
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let child = await_server(child, "scim2-server", &server.log_path(), || {
                if !port_open(server.port) {
                    return Err("port closed".into());
                }
                let r = server.request("GET", "/ServiceProviderConfig", None);
                assert_eq!(
                    r.status,
                    200,
                    "scim2-server /ServiceProviderConfig: {}\nlog:\n{}",
                    r.body,
                    server.log_tail(20)
                );
                Ok(())
            })?;
            server.child = Some(child);
            Ok(())
        });
        server
    }

    /// `http://127.0.0.1:PORT/v2` (scim2-server serves the same routes with and without `/v2`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.token
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("scim2-server.log")
    }
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
    }

    /// A request to `base_url() + path` with the right token (JSON body as application/scim+json).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        let token = self.token.clone();
        self.request_with_token(method, path, Some(&token), body)
    }

    /// A request with any token (`None`: no Authorization header).
    pub fn request_with_token(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("accept", "application/scim+json"),
            ("content-type", "application/scim+json"),
        ];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        http_request(
            method,
            &format!("{}{path}", self.base_url()),
            &headers,
            body,
        )
    }

    /// GET `path`, expecting 200; the JSON body.
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.request("GET", path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// POST `body` to `path`: (status, JSON body or Null).
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.request("POST", path, Some(body));
        (r.status, r.json_or_null())
    }

    /// Every resource of `/Groups` or `/Users` (`endpoint`), paging through with startIndex/count.
    pub fn list_all(&self, endpoint: &str) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let page = self.get_json(&format!(
                "{endpoint}?startIndex={}&count=100",
                all.len() + 1
            ));
            let total = page["totalResults"].as_u64().expect("totalResults") as usize;
            let resources = page["Resources"].as_array().cloned().unwrap_or_default();
            if resources.is_empty() {
                break;
            }
            all.extend(resources);
            if all.len() >= total {
                break;
            }
        }
        all
    }

    /// All groups (with their members), paging through.
    pub fn groups(&self) -> Vec<Value> {
        self.list_all("/Groups")
    }

    /// All users, paging through.
    pub fn users(&self) -> Vec<Value> {
        self.list_all("/Users")
    }

    /// Creates an active user with this userName and primary work email; returns its id.
    pub fn create_user(&self, user_name: &str, email: &str) -> String {
        let (status, body) = self.post_json(
            "/Users",
            &json!({
                "schemas": [SCIM_USER_SCHEMA],
                "userName": user_name,
                "active": true,
                "emails": [{"value": email, "type": "work", "primary": true}],
            }),
        );
        assert_eq!(status, 201, "create user {user_name}: {body}");
        body["id"].as_str().expect("user id").to_owned()
    }

    /// Creates a group with these member (user) ids; returns its id.
    pub fn create_group(&self, display_name: &str, member_ids: &[&str]) -> String {
        let members: Vec<Value> = member_ids.iter().map(|id| json!({"value": id})).collect();
        let (status, body) = self.post_json(
            "/Groups",
            &json!({
                "schemas": [SCIM_GROUP_SCHEMA],
                "displayName": display_name,
                "members": members,
            }),
        );
        assert_eq!(status, 201, "create group {display_name}: {body}");
        body["id"].as_str().expect("group id").to_owned()
    }
}

impl Drop for ScimServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
    }
}

/// `$LDAPSYNC_SCIM2_SERVER`, else `$REPO/.venv/bin/scim2-server`.
pub fn scim2_server_bin() -> PathBuf {
    let bin = std::env::var_os("LDAPSYNC_SCIM2_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/scim2-server"));
    if !bin.exists() {
        panic!(
            "{} not found (run scripts/install-test-deps.sh, or set LDAPSYNC_SCIM2_SERVER)",
            bin.display()
        );
    }
    bin
}

/// The Python interpreter of a console script: its `#!` line, else `python` beside it.
fn script_python(script: &Path) -> PathBuf {
    let first = fs::read_to_string(script)
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_default();
    if let Some(interp) = first.strip_prefix("#!") {
        let interp = PathBuf::from(interp.trim());
        if interp.is_absolute() && interp.exists() {
            return interp;
        }
    }
    script.with_file_name("python")
}

/// The package's own default schemas (`scim2_server/resources/default-schemas.json`).
fn default_scim_schemas(bin: &Path) -> Vec<Value> {
    serde_json::from_value(default_scim_resource(bin, "default-schemas.json"))
        .expect("default-schemas.json is a list")
}

/// One of the JSON files scim2-server ships in `scim2_server/resources/`.
fn default_scim_resource(bin: &Path, name: &str) -> Value {
    let python = script_python(bin);
    let out = run_with_timeout(
        Command::new(&python).args([
            "-c",
            &format!(
                "import importlib.util, os; \
                 s = importlib.util.find_spec('scim2_server'); \
                 print(os.path.join(s.submodule_search_locations[0], 'resources', '{name}'))"
            ),
        ]),
        None,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{} cannot locate scim2_server:\n{}",
        python.display(),
        out.describe()
    );
    let path = PathBuf::from(out.stdout_str().trim());
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn make_group_display_name_unique(schemas: &mut [Value]) {
    let group = schemas
        .iter_mut()
        .find(|s| s["id"] == SCIM_GROUP_SCHEMA)
        .expect("Group schema in scim2-server's default schemas");
    let attr = group["attributes"]
        .as_array_mut()
        .expect("Group schema attributes")
        .iter_mut()
        .find(|a| a["name"] == "displayName")
        .expect("Group displayName attribute");
    attr["uniqueness"] = json!("server");
}

// ------------------------------------------------------------------------------------ emulators

/// `$LDAPSYNC_PYTHON`, else `$REPO/.venv/bin/python`.
pub fn venv_python() -> PathBuf {
    let py = std::env::var_os("LDAPSYNC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    if !py.exists() {
        panic!(
            "{} not found (run scripts/install-test-deps.sh, or set LDAPSYNC_PYTHON)",
            py.display()
        );
    }
    py
}

/// One of the target emulators in `tests/emulators/<script>.py`, run as
/// `python <script>.py --port 0 ARGS…`; it prints `LISTENING http://127.0.0.1:PORT` on stdout
/// when ready. Its admin API is under `/__admin`. Dropping it stops the process.
pub struct Emulator {
    child: Option<Child>,
    base_url: String,
    name: String,
    dir: TempDir,
}

impl Emulator {
    /// Starts `tests/emulators/<script>.py` (`script` with or without `.py`).
    pub fn start(script: &str, args: &[&str]) -> Emulator {
        let name = script.trim_end_matches(".py");
        let path = repo_root()
            .join("tests/emulators")
            .join(format!("{name}.py"));
        Self::start_script(&path, args)
    }

    /// Starts the emulator script at `path` (same contract as [`Emulator::start`]).
    pub fn start_script(path: &Path, args: &[&str]) -> Emulator {
        let python = venv_python();
        assert!(path.exists(), "emulator {} not found", path.display());
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ldapsync-emu-{name}-"))
            .tempdir()
            .expect("create temp dir for emulator");
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let stderr = File::create(&stderr_path).expect("create emulator stderr log");
        let mut child = Command::new(&python)
            .arg(path)
            .args(["--port", "0"])
            .args(args)
            .current_dir(repo_root())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} {}: {e}", python.display(), path.display())
            });

        // Read the first stdout line in a thread (with a timeout here), then keep draining
        // stdout into a file so that the emulator never blocks on a full pipe.
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            if let Ok(mut f) = File::create(stdout_path) {
                let _ = std::io::copy(&mut reader, &mut f);
            }
        });
        let mut emu = Emulator {
            child: Some(child),
            base_url: String::new(),
            name,
            dir,
        };
        let first = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "emulator {} printed no LISTENING line within {START_TIMEOUT:?}; stderr:\n{}",
                emu.name,
                emu.stderr_tail(40)
            ),
        };
        let Some(url) = first.trim().strip_prefix("LISTENING ") else {
            // Give a crashing emulator a moment to finish writing its traceback.
            if let Some(c) = emu.child.as_mut() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            panic!(
                "emulator {}: expected `LISTENING http://127.0.0.1:PORT` on stdout, got {first:?}; stderr:\n{}",
                emu.name,
                emu.stderr_tail(40)
            );
        };
        emu.base_url = url.trim_end_matches('/').to_owned();
        emu
    }

    /// `http://127.0.0.1:PORT` as the emulator announced it.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn stderr_tail(&self, lines: usize) -> String {
        file_tail(&self.dir().join("stderr.log"), lines)
    }

    /// Any request to `base_url() + path`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> HttpResponse {
        http_request(method, &format!("{}{path}", self.base_url), headers, body)
    }

    /// GET /__admin/state (expects 200).
    pub fn state(&self) -> Value {
        let r = self.request("GET", "/__admin/state", &[], None);
        assert_eq!(
            r.status,
            200,
            "emulator {} GET /__admin/state: {}\nstderr:\n{}",
            self.name,
            r.body,
            self.stderr_tail(20)
        );
        r.json()
    }

    /// The `key` list of `/__admin/state` (empty when absent).
    pub fn state_list(&self, key: &str) -> Vec<Value> {
        self.state()[key].as_array().cloned().unwrap_or_default()
    }

    /// The emulator's request log (`requests` of `/__admin/state`), oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.state_list("requests")
    }

    /// POST `body` to the admin API: `path` is taken as is when it starts with `/__admin`,
    /// else it is appended to `/__admin` (so `"/reset"` and `"/__admin/reset"` are the same).
    /// Expects a 2xx status; returns the JSON body (Null if empty).
    pub fn admin_post(&self, path: &str, body: &Value) -> Value {
        let full = if path.starts_with("/__admin") {
            path.to_owned()
        } else {
            format!("/__admin/{}", path.trim_start_matches('/'))
        };
        let r = self.request("POST", &full, &[], Some(body));
        assert!(
            (200..300).contains(&r.status),
            "emulator {} POST {full}: {} {}\nstderr:\n{}",
            self.name,
            r.status,
            r.body,
            self.stderr_tail(20)
        );
        r.json_or_null()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
    }
}

// ------------------------------------------------------------------------------------ ldapsync

/// The `ldapsync` binary built by cargo for these tests.
pub fn ldapsync_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ldapsync"))
}

/// The `[ldap]`, `[groups]`, `[users]` and `[state]` sections of a config reading `slapd` (its
/// admin password inline) with the state file at `state`.
pub fn ldap_config_toml(slapd: &Slapd, state: &Path) -> String {
    let password = format!("bind_password = \"{}\"", slapd.admin_password());
    ldap_config_toml_with(slapd, state, &password)
}

/// [`ldap_config_toml`] with another password line (e.g. `bind_password_file = "…"`).
pub fn ldap_config_toml_with(slapd: &Slapd, state: &Path, password_line: &str) -> String {
    format!(
        "[ldap]\nurl = \"{url}\"\nbind_dn = \"{bind_dn}\"\n{password_line}\n\n\
         [groups]\nbase_dn = \"{groups}\"\n\n[users]\nbase_dn = \"{people}\"\n\n\
         [state]\npath = \"{state}\"\n",
        url = slapd.url(),
        bind_dn = slapd.admin_dn(),
        groups = slapd.groups_dn(),
        people = slapd.people_dn(),
        state = state.display(),
    )
}

/// A `[safety]` section that holds nothing back in a test (`max_member_removes` as given).
pub fn permissive_safety_toml(max_member_removes: u32) -> String {
    format!(
        "[safety]\nmax_group_deletes = 100\nmax_group_delete_percent = 100.0\n\
         max_member_removes = {max_member_removes}\nmax_member_remove_percent = 100.0\n"
    )
}

/// Runs `ldapsync --config CONFIG ARGS…` to completion (killed after 5 minutes) and captures its
/// output. `LDAPSYNC_CONFIG` is removed from its environment.
pub fn run_ldapsync(config: &Path, args: &[&str]) -> Output {
    run_ldapsync_env(config, args, &[])
}

/// [`run_ldapsync`] with extra environment variables.
pub fn run_ldapsync_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(ldapsync_bin());
    cmd.env_remove("LDAPSYNC_CONFIG")
        .arg("--config")
        .arg(config)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(&mut cmd, None, Duration::from_secs(300))
}

/// `ldapsync --config CONFIG sync ARGS…` (see [`run_ldapsync`]).
pub fn sync(config: &Path, args: &[&str]) -> Output {
    run_ldapsync(config, &[&["sync"], args].concat())
}

/// Asserts a finished process's exit code, showing its whole output when it differs.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.code(), code, "{}", out.describe());
}

/// Makes the state file forget that the creates of `sink` were confirmed, as after a crash
/// between a create request and its record: its ledger keeps only the intents (no target id,
/// no members).
pub fn forget_confirmed_creates(state: &Path, sink: &str) {
    let db = rusqlite::Connection::open(state)
        .unwrap_or_else(|e| panic!("open {}: {e}", state.display()));
    db.execute(
        "UPDATE ledger_groups SET target_id = NULL WHERE sink = ?1",
        [sink],
    )
    .expect("clear the target ids");
    db.execute("DELETE FROM ledger_members WHERE sink = ?1", [sink])
        .expect("delete the ledger members");
}

/// The world of the emulator-driven sink tests: a real slapd, one emulator of
/// `tests/emulators/`, and a temporary directory for the config, secret and state files.
pub struct EmulatorWorld {
    pub slapd: Slapd,
    pub emu: Emulator,
    pub dir: TempDir,
}

impl EmulatorWorld {
    /// slapd (base tree only) and `tests/emulators/<script>.py EMULATOR_ARGS…`.
    pub fn start(script: &str, emulator_args: &[&str]) -> EmulatorWorld {
        EmulatorWorld {
            slapd: Slapd::start(),
            emu: Emulator::start(script, emulator_args),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The state file of the configs written by [`EmulatorWorld::write_config`].
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Writes `config.toml`: [`ldap_config_toml`] for the world's slapd and state file,
    /// [`permissive_safety_toml`]`(max_member_removes)`, and one `[[sinks]]` table with the
    /// lines `sink`. Returns its path.
    pub fn write_config(&self, max_member_removes: u32, sink: &str) -> PathBuf {
        let text = format!(
            "{ldap}\n{safety}\n[[sinks]]\n{sink}\n",
            ldap = ldap_config_toml(&self.slapd, &self.state_path()),
            safety = permissive_safety_toml(max_member_removes),
        );
        write_file(self.dir.path(), "config.toml", text)
    }

    /// The emulator's groups (`groups` of its state).
    pub fn groups(&self) -> Vec<Value> {
        self.emu.state_list("groups")
    }

    /// The emulator's groups whose `name` is `name`.
    pub fn groups_named(&self, name: &str) -> Vec<Value> {
        self.groups()
            .into_iter()
            .filter(|g| g["name"] == name)
            .collect()
    }

    /// The first emulator group named `name`.
    pub fn group(&self, name: &str) -> Option<Value> {
        self.groups_named(name).into_iter().next()
    }

    /// The emulator's requests from index `from` of its log that change something (not GET)
    /// and that `keep` keeps, as `"METHOD" "path" -> status`.
    pub fn writes_since(&self, from: usize, keep: impl Fn(&Value) -> bool) -> Vec<String> {
        self.emu
            .requests()
            .iter()
            .skip(from)
            .filter(|r| r["method"] != "GET" && keep(r))
            .map(|r| format!("{} {} -> {}", r["method"], r["path"], r["status"]))
            .collect()
    }
}

// ------------------------------------------------------------------------------------ Samba AD DC

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
    dir: TempDir,
}

impl SambaDc {
    /// Provisions a domain (`ad.ldapsync.test`, NetBIOS `LDAPSYNC`) and starts its DC.
    pub fn start() -> SambaDc {
        tool(SAMBA, "Debian package samba");
        tool(SAMBA_TOOL, "Debian package samba-common-bin");
        let dir = tempfile::Builder::new()
            .prefix("ldapsync-samba-")
            .tempdir()
            .expect("create temp dir for samba");
        let root = dir.path();
        // An empty config file: samba-tool must not read /etc/samba/smb.conf (its share
        // definitions and log paths would end up in ours); --targetdir keeps everything else in
        // the temporary directory.
        let empty = write_file(root, "empty.conf", "");
        let out = run_with_timeout(
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
        assert!(
            out.status.success(),
            "samba-tool domain provision failed:\n{}",
            out.describe()
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
            dir,
        };
        write_file(
            dc.dir(),
            "ldap.conf",
            format!(
                "TLS_CACERT {}\nTLS_REQCERT demand\n",
                dc.dir().join("tls/ca.crt").display()
            ),
        );
        on_a_free_address("samba", |attempt| {
            dc.ip = loopback_address(attempt);
            // Someone else's DC on this address: try the next one.
            if [389, 636].iter().any(|p| {
                let addr: SocketAddr = format!("{}:{p}", dc.ip).parse().unwrap();
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }) {
                return Err(format!("{} is taken", dc.ip));
            }
            let tls = dc.dir().join("tls");
            dc.pki = generate_test_pki(&tls, &["localhost"], &["127.0.0.1", &dc.ip]);
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
        let ours = format!(
            "\tserver services = ldap\n\
             \tinterfaces = {ip}/8\n\
             \tbind interfaces only = yes\n\
             \ttls enabled = yes\n\
             \ttls keyfile = {key}\n\
             \ttls certfile = {cert}\n\
             \ttls cafile = {ca}\n\
             \tpid directory = {dir}/run\n\
             \tlog file = {dir}/samba.log\n",
            ip = self.ip,
            key = self.pki.key.display(),
            cert = self.pki.cert.display(),
            ca = self.pki.ca_cert.display(),
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
            let addr: SocketAddr = format!("{}:636", self.ip).parse().unwrap();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
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
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
            stop_child(&mut child, Duration::from_secs(5));
        }
    }

    /// `ldaps://127.X.Y.Z` (port 636).
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}", self.ip)
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
        let out = run_with_timeout(
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
        assert!(out.status.success(), "ldbsearch {dn}:\n{}", out.describe());
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
