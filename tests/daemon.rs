//! `ldapsync daemon` as a child process against a real slapd and the real scim2-server: the
//! metrics endpoint (checked by `promtool check metrics`), counters moving with runs, `/healthz`
//! and `/readyz` flipping on a failing sink, SIGHUP with a bad and a good configuration, SIGTERM
//! during a run, a 1-second cron that keeps firing, JSON logs, and no secret in any log line.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

// ------------------------------------------------------------------------------------ fixture

/// The counter of successful runs.
const RUNS_OK: &str = "ldapsync_runs_total{result=\"success\"}";

/// A running `ldapsync daemon`; SIGKILLed on drop if still running.
struct DaemonProc {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl DaemonProc {
    fn start(config: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> DaemonProc {
        let log = config.with_file_name("daemon.log");
        let err = File::create(&log).expect("create daemon log");
        let out = File::create(config.with_file_name("daemon.stdout")).expect("create stdout");
        let mut cmd = Command::new(ldapsync_bin());
        cmd.env_remove("LDAPSYNC_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(config)
            .args(args)
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn ldapsync daemon");
        let mut d = DaemonProc { child, port, log };
        let started = Instant::now();
        wait_until(Duration::from_secs(30), "the daemon's /healthz", || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("daemon exited early ({status}); log:\n{}", d.log_text());
            }
            port_open(port) && d.get("/healthz").status == 200
        });
        eprintln!("daemon up in {:?}", started.elapsed());
        d
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> HttpResponse {
        http_request("GET", &self.url(path), &[], None)
    }

    /// Waits until `/readyz` answers 200.
    fn wait_ready(&self) {
        wait_until(Duration::from_secs(30), "/readyz 200", || {
            self.get("/readyz").status == 200
        });
    }

    /// Waits until the metric `key` is at least `at_least`.
    fn wait_metric(&self, timeout: Duration, what: &str, key: &str, at_least: f64) {
        wait_until(timeout, what, || self.metric(key) >= at_least);
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        parse_metrics(&self.get("/metrics").body)
    }

    fn metric(&self, key: &str) -> f64 {
        self.metrics().get(key).copied().unwrap_or(0.0)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("kill");
    }

    /// Waits for the process to exit (panics after `timeout`).
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for(timeout, "the daemon to exit", || {
            child.try_wait().ok().flatten()
        })
    }

    fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `name{labels}` → value, from the Prometheus text format.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

struct Env {
    dir: tempfile::TempDir,
    slapd: Slapd,
}

/// slapd with three users and three groups; the LDAP password and the SCIM token go to files.
fn env_with_directory(groups: usize) -> Env {
    let dir = tempfile::Builder::new()
        .prefix("ldapsync-daemon-")
        .tempdir()
        .unwrap();
    let slapd = Slapd::start();
    let users: Vec<String> = (0..3)
        .map(|i| slapd.add_user(&format!("user{i}"), &format!("user{i}@example.com")))
        .collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    for g in 0..groups {
        slapd.add_group(&format!("team{g:03}"), &refs[..(g % 3) + 1]);
    }
    write_file(dir.path(), "ldap-password", slapd.admin_password());
    Env { dir, slapd }
}

impl Env {
    /// Writes config.toml: the LDAP sections (the password from its file), then `rest`.
    fn config(&self, rest: &str) -> PathBuf {
        write_file(self.dir.path(), "config.toml", self.config_text(rest))
    }

    fn config_text(&self, rest: &str) -> String {
        let password = self.dir.path().join("ldap-password");
        let ldap = ldap_config_toml_with(
            &self.slapd,
            &self.dir.path().join("state.db"),
            &format!("bind_password_file = \"{}\"", password.display()),
        );
        format!("{ldap}{rest}")
    }

    /// Writes the token of `scim` to a file and returns its path.
    fn token_file(&self, scim: &ScimServer) -> PathBuf {
        write_file(self.dir.path(), "scim-token", scim.token())
    }
}

/// A directory of `groups` groups and a SCIM server behind a proxy that answers each request
/// 150 ms late; `config` runs only at start-up (1 January at midnight is far away), with
/// metrics on `port`.
struct SlowRun {
    env: Env,
    scim: ScimServer,
    proxy: SlowProxy,
    port: u16,
}

impl SlowRun {
    fn start(groups: usize) -> SlowRun {
        let env = env_with_directory(groups);
        let scim = ScimServer::start(false);
        let proxy = SlowProxy::start(scim.port(), Duration::from_millis(150));
        SlowRun {
            env,
            scim,
            proxy,
            port: free_port(),
        }
    }

    fn config(&self) -> PathBuf {
        let url = format!("http://127.0.0.1:{}/v2", self.proxy.port);
        let sink = scim_sink(&url, &self.env.token_file(&self.scim));
        let schedule = schedule("0 0 0 1 1 *", true, self.port, None);
        self.env.config(&format!("{schedule}{sink}"))
    }
}

fn scim_sink(base_url: &str, token_file: &Path) -> String {
    format!(
        "\n[[sinks]]\nname = \"scim\"\ntype = \"scim\"\nbase_url = \"{base_url}\"\ntoken_file = \"{}\"\n",
        token_file.display()
    )
}

/// A file sink `audit` writing to `path`.
fn file_sink(path: &Path) -> String {
    format!("\n{}", file_sink_toml("audit", path))
}

fn schedule(cron: &str, run_on_start: bool, port: u16, max_age: Option<u64>) -> String {
    let mut s = format!(
        "\n[schedule]\ncron = \"{cron}\"\nrun_on_start = {run_on_start}\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    if let Some(age) = max_age {
        s.push_str(&format!("ready_max_age_secs = {age}\n"));
    }
    s
}

/// A `NOTIFY_SOCKET` for the daemon, and every notification it sent so far.
struct Notifications {
    socket: std::os::unix::net::UnixDatagram,
    path: String,
    seen: String,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let path = path.display().to_string();
        Notifications {
            socket,
            path,
            seen: String::new(),
        }
    }

    /// Waits up to 200 ms for one more notification; returns all seen, one per line.
    fn poll(&mut self) -> &str {
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.socket.recv(&mut buf) {
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            self.seen.push('\n');
        }
        &self.seen
    }
}

fn promtool_check(metrics_text: &str) {
    run_ok(
        &format!("promtool check metrics on\n{metrics_text}\n---"),
        Command::new("promtool").args(["check", "metrics"]),
        Some(metrics_text.as_bytes()),
        Duration::from_secs(30),
    );
}

// ------------------------------------------------------------------------------------ tests

#[test]
fn daemon_requires_a_schedule_section() {
    let env = env_with_directory(1);
    let port = free_port();
    let config = env.config(&format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n{}",
        "\n[[sinks]]\nname = \"out\"\ntype = \"file\"\npath = \"-\"\n"
    ));
    let out = run_with_timeout(
        Command::new(ldapsync_bin())
            .arg("--config")
            .arg(&config)
            .arg("daemon"),
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), 2, "{}", out.describe());
    out.assert_stderr_has("[schedule] is required");
    assert!(!port_open(port));
}

#[test]
fn metrics_health_counters_and_no_secrets_in_logs() {
    let env = env_with_directory(3);
    let scim = ScimServer::start(false);
    for i in 0..3 {
        scim.create_user(&format!("user{i}"), &format!("user{i}@example.com"));
    }
    let port = free_port();
    let config = env.config(&format!(
        "{}{}",
        schedule("*/2 * * * * *", true, port, Some(60)),
        scim_sink(&scim.base_url(), &env.token_file(&scim))
    ));
    // debug for ldapsync and its HTTP/LDAP stack: the strictest test of "no secret in logs".
    let mut d = DaemonProc::start(&config, port, &[], &[("RUST_LOG", "debug")]);
    assert_eq!(d.get("/healthz").status, 200);

    d.wait_ready();
    let ready = d.get("/readyz");
    assert!(ready.body.contains("ready"), "{}", ready.body);

    let response = d.get("/metrics");
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    promtool_check(&response.body);
    let m = parse_metrics(&response.body);
    for key in [
        "ldapsync_build_info{version=\"0.1.0\"}",
        "ldapsync_last_success_timestamp_seconds{sink=\"scim\"}",
        "ldapsync_skipped_ticks_total",
        "ldapsync_config_reloads_total{result=\"success\"}",
        "process_resident_memory_bytes",
    ] {
        assert!(m.contains_key(key), "{key} missing:\n{}", response.body);
    }
    assert!(m[RUNS_OK] >= 1.0);
    assert_eq!(
        m["ldapsync_applied_operations_total{op=\"create\",result=\"success\",sink=\"scim\"}"],
        3.0
    );
    assert_eq!(scim.groups().len(), 3);

    // Counters move with further scheduled runs.
    let runs = m[RUNS_OK];
    let entries = m["ldapsync_ldap_entries_read_total{kind=\"group\"}"];
    d.wait_metric(
        Duration::from_secs(20),
        "two more successful runs",
        RUNS_OK,
        runs + 2.0,
    );
    let m = d.metrics();
    assert!(m["ldapsync_ldap_entries_read_total{kind=\"group\"}"] >= entries + 6.0);
    assert!(m["ldapsync_run_duration_seconds_count"] >= runs + 2.0);
    promtool_check(&d.get("/metrics").body);

    assert!(d.terminate().success(), "{}", d.log_text());
    let log = d.log_text();
    assert!(log.contains("sink run finished"), "{log}");
    assert!(log.contains("run finished"), "{log}");
    for secret in [scim.token(), env.slapd.admin_password()] {
        assert!(!log.contains(secret), "a secret appears in the log:\n{log}");
    }
}

#[test]
fn readyz_and_sighup_with_bad_and_good_configs() {
    let env = env_with_directory(2);
    let scim = ScimServer::start(false);
    let port = free_port();
    let good = env.config_text(&format!(
        "{}{}",
        schedule("* * * * * *", true, port, Some(30)),
        scim_sink(&scim.base_url(), &env.token_file(&scim))
    ));
    let config = write_file(env.dir.path(), "config.toml", &good);
    let d = DaemonProc::start(&config, port, &[], &[]);
    d.wait_ready();

    // A bad configuration: rejected, the old one keeps running.
    write_file(
        env.dir.path(),
        "config.toml",
        format!("{good}\n[ldap_extra]\nbogus = 1\n"),
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(10), "reload failure counted", || {
        d.metric("ldapsync_config_reloads_total{result=\"failure\"}") == 1.0
    });
    assert_eq!(
        d.metric("ldapsync_config_reloads_total{result=\"success\"}"),
        0.0
    );
    let runs = d.metric(RUNS_OK);
    d.wait_metric(
        Duration::from_secs(15),
        "runs continue with the old config",
        RUNS_OK,
        runs + 2.0,
    );
    assert_eq!(d.get("/readyz").status, 200);
    let log = d.log_text();
    assert!(
        log.contains("configuration reload rejected") && log.contains("config.toml:"),
        "{log}"
    );

    // A good configuration with a wrong token: accepted, and the next run fails the sink.
    let wrong = write_file(env.dir.path(), "wrong-token", "not-the-token-4711");
    env.config(&format!(
        "{}{}",
        schedule("* * * * * *", false, port, Some(30)),
        scim_sink(&scim.base_url(), &wrong)
    ));
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(10), "reload success counted", || {
        d.metric("ldapsync_config_reloads_total{result=\"success\"}") == 1.0
    });
    let not_ready = wait_for(Duration::from_secs(30), "/readyz 503", || {
        let r = d.get("/readyz");
        (r.status == 503).then_some(r)
    });
    assert!(
        not_ready.body.contains("\"scim\"") && not_ready.body.contains("failed"),
        "{}",
        not_ready.body
    );
    assert!(d.metric("ldapsync_runs_total{result=\"failure\"}") >= 1.0);
    assert!(d.get("/healthz").status == 200);
    let log = d.log_text();
    assert!(!log.contains("not-the-token-4711"), "{log}");
    assert!(!log.contains(scim.token()), "{log}");
}

/// An HTTP/1.1 proxy that delays every request by `delay` and counts them; one request per
/// connection (`Connection: close` both ways).
struct SlowProxy {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl SlowProxy {
    fn start(upstream_port: u16, delay: Duration) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let counter = counter.clone();
                thread::spawn(move || {
                    let _ = proxy_one(client, upstream_port, delay, &counter);
                });
            }
        });
        SlowProxy { port, requests }
    }
}

fn proxy_one(
    client: TcpStream,
    upstream_port: u16,
    delay: Duration,
    counter: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            head.extend_from_slice(b"connection: close\r\n\r\n");
            break;
        }
        if !lower.starts_with("connection:") {
            head.extend_from_slice(line.as_bytes());
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    counter.fetch_add(1, Ordering::SeqCst);
    thread::sleep(delay);
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    upstream.write_all(&head)?;
    upstream.write_all(&body)?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response)?;
    let split = response
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(response.len());
    let mut client = client;
    client.write_all(&response[..split])?;
    client.write_all(b"\r\nconnection: close")?;
    client.write_all(&response[split..])?;
    client.flush()?;
    client.shutdown(Shutdown::Both)
}

#[test]
fn sigterm_during_a_run_finishes_it_and_records_it() {
    let groups = 8;
    let run = SlowRun::start(groups);
    let config = run.config();
    let mut d = DaemonProc::start(&config, run.port, &[], &[]);
    wait_until(Duration::from_secs(30), "the run to reach the sink", || {
        run.proxy.requests.load(Ordering::SeqCst) >= 2
    });
    let signalled = Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(60));
    let took = signalled.elapsed();
    let log = d.log_text();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("finishing the run in flight"), "{log}");
    assert!(
        took >= Duration::from_millis(500),
        "exited too soon ({took:?}): {log}"
    );
    eprintln!("SIGTERM → exit 0 in {took:?}");
    assert_eq!(run.scim.groups().len(), groups, "the run was completed");

    let out = run_ldapsync(&config, &["status", "--output", "json"]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    let status: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let run = &status["runs"][0];
    assert_eq!(run["result"], "success", "{status:#}");
    assert!(run["finished_at"].is_string(), "{status:#}");
    assert_eq!(run["sinks"][0]["sink"], "scim", "{status:#}");
    assert_eq!(run["sinks"][0]["result"], "success", "{status:#}");
    assert_eq!(
        run["sinks"][0]["applied"]["create"], groups as u64,
        "{status:#}"
    );
    assert_eq!(status["sinks"][0]["groups"], groups as u64, "{status:#}");
    let text = run_ldapsync(&config, &["status"]);
    text.assert_stdout_has("scim");
}

#[test]
fn one_second_cron_keeps_firing_without_overlap_and_json_logs() {
    let env = env_with_directory(3);
    let port = free_port();
    let out_file = env.dir.path().join("ops.jsonl");
    let config = env.config(&format!(
        "{}{}",
        schedule("* * * * * *", false, port, Some(30)),
        file_sink(&out_file)
    ));
    let mut d = DaemonProc::start(&config, port, &["--log-format", "json"], &[]);
    let runs = |d: &DaemonProc| d.metric(RUNS_OK);
    wait_until(Duration::from_secs(10), "the first scheduled run", || {
        runs(&d) >= 1.0
    });
    let (start_runs, start) = (runs(&d), Instant::now());
    let wanted = 20.0;
    wait_until(Duration::from_secs(30), "20 more runs", || {
        runs(&d) >= start_runs + wanted
    });
    let elapsed = start.elapsed();
    let m = d.metrics();
    let skipped = m["ldapsync_skipped_ticks_total"];
    let restarts = m["ldapsync_scheduler_restarts_total"];
    eprintln!(
        "1-second cron: {wanted} runs in {elapsed:?}; skipped ticks {skipped}; scheduler restarts {restarts}; failures {}",
        m["ldapsync_runs_total{result=\"failure\"}"]
    );
    // 20 ticks take 20 s (±1 s of polling latency); at most one more tick may be missed.
    assert!(
        elapsed <= Duration::from_millis(22_500),
        "20 runs took {elapsed:?}"
    );
    assert!(skipped <= 1.0, "skipped ticks: {skipped}");
    assert_eq!(restarts, 0.0);
    assert_eq!(m["ldapsync_runs_total{result=\"failure\"}"], 0.0);

    // No overlap: in the recorded history each run starts after the previous one finished.
    let out = run_ldapsync(&config, &["status", "--output", "json"]);
    assert_eq!(
        out.code(),
        0,
        "status while the daemon runs: {}",
        out.describe()
    );
    let status: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let mut runs_seen: Vec<(String, String)> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            Some((
                r["started_at"].as_str()?.to_string(),
                r["finished_at"].as_str()?.to_string(),
            ))
        })
        .collect();
    runs_seen.sort();
    assert!(runs_seen.len() >= 5, "{status:#}");
    for pair in runs_seen.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "overlapping runs: {pair:?}");
    }

    assert!(d.terminate().success());
    let log = d.log_text();
    let mut lines = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines > 20, "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("\"sink run finished\""))
            .count()
            >= 20
    );
}

#[test]
fn systemd_notifications_ready_status_and_watchdog() {
    let env = env_with_directory(1);
    let port = free_port();
    let mut notes = Notifications::bind(env.dir.path());
    let config = env.config(&format!(
        "{}{}",
        schedule("0 0 0 1 1 *", true, port, None),
        file_sink(&env.dir.path().join("ops.jsonl"))
    ));
    let mut d = DaemonProc::start(
        &config,
        port,
        &[],
        &[
            ("NOTIFY_SOCKET", notes.path.as_str()),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    wait_until(
        Duration::from_secs(30),
        "READY=1, a run status and two watchdog pings",
        || {
            assert!(
                Instant::now() < deadline,
                "notifications so far:\n{}\nlog:\n{}",
                notes.seen,
                d.log_text()
            );
            let seen = notes.poll();
            seen.contains("READY=1")
                && seen.contains("STATUS=last run")
                && seen.matches("WATCHDOG=1").count() >= 2
        },
    );
    let seen = &notes.seen;
    assert!(seen.contains("success (audit=success)"), "{seen}");
    assert!(d.terminate().success());
}

#[test]
fn read_only_commands_and_an_approved_plan_beside_a_running_daemon() {
    let env = env_with_directory(3);
    let port = free_port();
    let ops = env.dir.path().join("ops.jsonl");
    let config = env.config(&format!(
        "{}{}\n[safety]\nmax_group_deletes = 0\n",
        schedule("* * * * * *", true, port, None),
        file_sink(&ops)
    ));
    let d = DaemonProc::start(&config, port, &[], &[]);
    d.wait_metric(Duration::from_secs(30), "a first run", RUNS_OK, 1.0);
    let team2 = format!("cn=team002,{}", env.slapd.groups_dn());
    env.slapd.delete(&[&team2]);
    let held = "ldapsync_runs_total{result=\"held\"}";
    d.wait_metric(Duration::from_secs(30), "a held run", held, 1.0);

    // Beside the daemon: the dry run (saving its plan), status and ledger read the state file.
    let plan = env.dir.path().join("plan.json");
    let plan_arg = plan.display().to_string();
    let out = run_ldapsync(&config, &["sync", "-n", "--save-plan", &plan_arg]);
    assert_code(&out, 3);
    out.assert_stdout_has("- delete        team002");
    assert_code(&run_ldapsync(&config, &["status"]), 0);
    let out = run_ldapsync(&config, &["ledger", "-o", "json"]);
    assert_code(&out, 0);
    let ledger: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    assert_eq!(
        ledger["sinks"][0]["groups"].as_array().unwrap().len(),
        3,
        "{ledger}"
    );

    // The operator approves exactly that plan; the daemon applies it at its next tick.
    let out = run_ldapsync(&config, &["approve", "--plan", &plan_arg]);
    assert_code(&out, 0);
    let approval = env.dir.path().join("state.db.approved-plan.json");
    let applied = env.dir.path().join("state.db.approved-plan.json.applied");
    wait_until(
        Duration::from_secs(30),
        "the approved plan to be applied",
        || applied.exists(),
    );
    assert!(!approval.exists());
    let written = std::fs::read_to_string(&ops).unwrap();
    assert!(
        written
            .lines()
            .any(|l| l.contains("\"op\":\"delete\"") && l.contains("team002")),
        "{written}"
    );
    let out = run_ldapsync(&config, &["ledger", "-o", "json"]);
    let ledger: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    assert_eq!(
        ledger["sinks"][0]["groups"].as_array().unwrap().len(),
        2,
        "{ledger}"
    );

    // The same plan again: the ledger moved on, so the daemon refuses it and writes nothing.
    let lines = written.lines().count();
    assert_code(&run_ldapsync(&config, &["approve", "--plan", &plan_arg]), 0);
    let rejected = env.dir.path().join("state.db.approved-plan.json.rejected");
    wait_until(
        Duration::from_secs(30),
        "the stale plan to be refused",
        || rejected.exists(),
    );
    assert!(
        d.log_text().contains("the approved plan was refused"),
        "{}",
        d.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(&ops).unwrap().lines().count(),
        lines
    );
}

#[test]
fn a_slow_run_reports_progress_in_status_and_metrics() {
    let groups = 8;
    let run = SlowRun::start(groups);
    let mut notes = Notifications::bind(run.env.dir.path());
    let config = run.config();
    let d = DaemonProc::start(
        &config,
        run.port,
        &[],
        &[
            ("NOTIFY_SOCKET", notes.path.as_str()),
            ("LDAPSYNC_PROGRESS_INTERVAL_MS", "100"),
        ],
    );
    wait_until(Duration::from_secs(60), "the run to end", || {
        notes.poll().contains("STATUS=last run")
    });
    let seen = &notes.seen;
    let progress = lines_starting(seen, "STATUS=sync run in progress: progress: ");
    assert!(!progress.is_empty(), "{seen}");
    assert!(
        progress
            .iter()
            .all(|l| l.contains(&format!("/{groups} groups"))),
        "{seen}"
    );
    let metrics = d.get("/metrics").body;
    assert_eq!(
        parse_metrics(&metrics)["ldapsync_run_progress_ratio{sink=\"scim\"}"],
        1.0,
        "{metrics}"
    );
    promtool_check(&metrics);
}
