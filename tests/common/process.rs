//! Running and waiting: commands with a timeout ([`OutputExt`] on their output), polling until
//! something holds, free ports, files and logs, and the plumbing that starts and stops the test
//! servers.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a test server may take to become ready.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(30);

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
    addr_open(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Whether something accepts TCP connections on `addr` (within 200 ms).
pub(super) fn addr_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A new temporary directory `$TMPDIR/PREFIX…`, deleted when dropped.
pub(super) fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("create temp dir {prefix}*: {e}"))
}

pub(super) fn tool(path: &str, hint: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if !p.exists() {
        panic!("{path} not found: {hint} (run scripts/install-test-deps.sh)");
    }
    p
}

/// `$VAR` when set, else `$REPO/.venv/bin/NAME`; panics when that does not exist.
pub(super) fn venv_program(var: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin").join(name));
    if !path.exists() {
        panic!(
            "{} not found (run scripts/install-test-deps.sh, or set {var})",
            path.display()
        );
    }
    path
}

/// [`run_with_timeout`] that panics, naming `what` and showing the output, unless `cmd` succeeds.
pub fn run_ok(what: &str, cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let out = run_with_timeout(cmd, stdin, timeout);
    assert!(out.status.success(), "{what} failed:\n{}", out.describe());
    out
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
    /// Asserts that stdout contains `needle`; the message shows everything.
    #[track_caller]
    fn assert_stdout_has(&self, needle: &str) {
        self.assert_has("stdout", self.stdout_str(), needle);
    }
    /// Asserts that stderr contains `needle`; the message shows everything.
    #[track_caller]
    fn assert_stderr_has(&self, needle: &str) {
        self.assert_has("stderr", self.stderr_str(), needle);
    }
    #[track_caller]
    fn assert_has(&self, stream: &str, text: String, needle: &str) {
        let found = text.contains(needle);
        assert!(found, "{stream} lacks {needle:?}: {}", self.describe());
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

/// The lines of `text` that start with `prefix`.
pub fn lines_starting<'t>(text: &'t str, prefix: &str) -> Vec<&'t str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Stops a child: SIGTERM, up to `grace` to exit, then SIGKILL; always reaps it.
pub(super) fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if let Some(status) = wait_for_exit(child, grace) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Waits up to `timeout` (polling every 10 ms) for a child to exit: its status, or None while it
/// is still running.
pub(super) fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

pub(super) fn log_file(path: &Path) -> (Stdio, Stdio) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let g = f.try_clone().expect("clone log file handle");
    (Stdio::from(f), Stdio::from(g))
}

/// Retries `attempt` (given the attempt number) up to 5 times while it returns Err(log tail),
/// which it does when the address it picked was taken before the server could bind it.
pub(super) fn on_a_free_address<T>(
    what: &str,
    mut attempt: impl FnMut(u32) -> Result<T, String>,
) -> T {
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
pub(super) fn await_server(
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
