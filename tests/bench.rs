//! The performance harness (a benchmark, not a test: `#[ignore]`, run by `scripts/bench.sh`).
//!
//! Loads 100,000 users, 10,000 groups and 1,000,000 memberships into a real slapd, then compares
//! the wall time of `ldapsearch -E pr=1000/noprompt` reading the same entries and attributes with
//! a cold `ldapsync sync --dry-run`, and reports ldapsync's peak RSS; then counts the requests
//! an initial push of the same directory makes into a fast in-process SCIM target
//! ([`initial_push_request_count`]). Sizes can be scaled with LDAPSYNC_BENCH_USERS /
//! LDAPSYNC_BENCH_GROUPS / LDAPSYNC_BENCH_MEMBERS_PER_GROUP. With LDAPSYNC_BENCH_STATE_ONLY set,
//! [`cold_dry_run_against_ldapsearch`] stops after printing the state file's size; set to a path,
//! it first copies the state file there (to inspect it, e.g. with sqlite3's `dbstat`).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The benchmark directory: `(slapd, users, groups, members per group)`, loaded from an LDIF
/// written into `dir` (sizes from the LDAPSYNC_BENCH_* variables).
fn bench_directory(dir: &std::path::Path) -> (Slapd, usize, usize, usize) {
    let users = env_or("LDAPSYNC_BENCH_USERS", 100_000);
    let groups = env_or("LDAPSYNC_BENCH_GROUPS", 10_000);
    let per_group = env_or("LDAPSYNC_BENCH_MEMBERS_PER_GROUP", 100);
    let ldif_path = dir.join("bench.ldif");
    let started = Instant::now();
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&ldif_path).unwrap());
        for u in 0..users {
            writeln!(
                out,
                "dn: uid=user{u:06},ou=People,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: user{u:06}\ncn: User {u}\nsn: {u}\nmail: user{u:06}@example.com\n"
            )
            .unwrap();
        }
        for g in 0..groups {
            writeln!(out, "dn: cn=group{g:05},ou=Groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: group{g:05}\ndescription: benchmark group {g}").unwrap();
            for m in 0..per_group {
                let u = (g * 37 + m * 1009) % users;
                writeln!(out, "member: uid=user{u:06},ou=People,dc=example,dc=com").unwrap();
            }
            writeln!(out).unwrap();
        }
    }
    println!("generated LDIF in {:.1}s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let slapd = Slapd::start_with_ldif(ldif_path.as_path());
    println!("slapadd + start in {:.1}s", started.elapsed().as_secs_f64());

    (slapd, users, groups, per_group)
}

/// The benchmark's configuration: the directory into a file sink (`/dev/null`), state in
/// `dir`/state.db, then `extra` (e.g. a `[schedule]`).
fn bench_config(slapd: &Slapd, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[ldap]\nurl = \"{}\"\nbind_dn = \"{}\"\nbind_password = \"{}\"\npage_size = 1000\n\n[groups]\nbase_dn = \"ou=Groups,dc=example,dc=com\"\nfilter = \"(objectClass=groupOfNames)\"\n\n[users]\nbase_dn = \"ou=People,dc=example,dc=com\"\nfilter = \"(objectClass=inetOrgPerson)\"\n\n[state]\npath = \"{}\"\n{extra}\n[[sinks]]\nname = \"audit\"\ntype = \"file\"\npath = \"/dev/null\"\n",
        slapd.url(),
        slapd.admin_dn(),
        slapd.admin_password(),
        dir.join("state.db").display()
    )
}

/// The daemon on a one-second cron for 100 runs (the first is the initial sync; a few carry
/// directory changes): its resident memory after each run, from /proc, must not drift upwards.
#[test]
#[ignore = "benchmark: run scripts/bench.sh"]
fn daemon_soak() {
    const RUNS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let (slapd, _users, _groups, _) = bench_directory(dir.path());
    let port = free_port();
    let config = write_file(
        dir.path(),
        "daemon.toml",
        bench_config(
            &slapd,
            dir.path(),
            &format!(
                "\n[schedule]\ncron = \"* * * * * *\"\nrun_on_start = true\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
            ),
        ),
    );
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = Command::new(ldapsync_bin())
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let rss_mb = |pid: u32| -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let state = dir.path().join("state.db");
    let finished = || -> usize {
        rusqlite::Connection::open_with_flags(&state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|db| {
                db.query_row(
                    "SELECT COUNT(*) FROM runs WHERE finished_at IS NOT NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map(|n| n as usize)
            .unwrap_or(0)
    };
    let started = Instant::now();
    // Per run, the lowest resident size seen between its end and the next run's end: the
    // daemon at rest (a sample taken at the very end of a run may see it before it released
    // that run's memory).
    let mut samples: Vec<f64> = Vec::with_capacity(RUNS);
    let mut seen = 0;
    let mut resting = f64::MAX;
    while samples.len() < RUNS {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("the daemon exited ({status})");
        }
        let now = finished();
        resting = resting.min(rss_mb(daemon.id()));
        if now > seen {
            if seen > 0 {
                samples.push(resting);
            }
            seen = now;
            resting = f64::MAX;
            // Every tenth run carries a change: a member added to one group.
            if samples.len() % 10 == 5 {
                let g = samples.len();
                let mut modify = slapd.ldap_tool("ldapmodify");
                modify.stdin(Stdio::piped()).stdout(Stdio::null());
                let mut child = modify.spawn().unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("dn: cn=group{g:05},ou=Groups,dc=example,dc=com\nchangetype: modify\nadd: member\nmember: uid=user000001,ou=People,dc=example,dc=com\n\n").as_bytes())
                    .unwrap();
                let _ = child.wait();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "{} runs in an hour",
            samples.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let settled = &samples[9..];
    let low = settled.iter().cloned().fold(f64::MAX, f64::min);
    let high = settled.iter().cloned().fold(0.0, f64::max);
    let last10 = samples[RUNS - 10..].iter().sum::<f64>() / 10.0;
    let first10 = samples[10..20].iter().sum::<f64>() / 10.0;
    println!(
        "BENCH daemon_soak runs={RUNS} seconds={:.0} resting_rss_after_run1={:.0}MB resting_rss_runs10_100=[{low:.0}..{high:.0}]MB mean_runs11_20={first10:.1}MB mean_runs91_100={last10:.1}MB drift={:+.1}MB",
        started.elapsed().as_secs_f64(),
        samples[0],
        last10 - first10,
    );
}

#[test]
#[ignore = "benchmark: run scripts/bench.sh"]
fn cold_dry_run_against_ldapsearch() {
    let dir = tempfile::tempdir().unwrap();
    let (slapd, users, groups, per_group) = bench_directory(dir.path());

    let ldapsearch = |base: &str, filter: &str, attrs: &[&str]| {
        let started = Instant::now();
        let status = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-H",
                &slapd.url(),
                "-D",
                slapd.admin_dn(),
                "-w",
                slapd.admin_password(),
            ])
            .args(["-b", base, "-E", "pr=1000/noprompt", filter])
            .args(attrs)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        started.elapsed()
    };
    // Warm the server's caches the same way for both contenders.
    let _ = ldapsearch(
        "ou=Groups,dc=example,dc=com",
        "(objectClass=groupOfNames)",
        &["entryUUID", "cn", "member", "description"],
    );
    let mut baseline = Duration::ZERO;
    for _ in 0..2 {
        let t = ldapsearch(
            "ou=People,dc=example,dc=com",
            "(objectClass=inetOrgPerson)",
            &["entryUUID", "uid", "mail"],
        ) + ldapsearch(
            "ou=Groups,dc=example,dc=com",
            "(objectClass=groupOfNames)",
            &["entryUUID", "cn", "member", "description"],
        );
        baseline = if baseline.is_zero() {
            t
        } else {
            baseline.min(t)
        };
    }

    let config = write_file(
        dir.path(),
        "config.toml",
        bench_config(&slapd, dir.path(), ""),
    );
    // Runs ldapsync under GNU time; returns wall time, peak RSS in MiB and stdout.
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let mut command = Command::new("/usr/bin/time");
        command.arg("-v");
        // LDAPSYNC_BENCH_PERF=FILE profiles the runs with `perf record` into FILE.
        if let Ok(file) = std::env::var("LDAPSYNC_BENCH_PERF") {
            command.args(["perf", "record", "-F", "2000", "-g", "-o", &file, "--"]);
        }
        let out = command
            .arg(ldapsync_bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "ldapsync=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let elapsed = started.elapsed();
        assert!(out.status.success(), "{}", out.describe());
        let kb: u64 = out
            .stderr_str()
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Maximum resident set size (kbytes): ")
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for line in out.stderr_str().lines().filter(|l| l.contains(" read")) {
            println!("  {line}");
        }
        (elapsed, kb / 1024, out.stdout_str())
    };
    let mut best = Duration::MAX;
    let mut peak_mb = 0u64;
    for _ in 0..2 {
        let (elapsed, mb, stdout) = timed(&["sync", "--dry-run"]);
        assert!(
            stdout.contains(&format!("{groups} create")),
            "{}",
            stdout.lines().take(5).collect::<Vec<_>>().join("\n")
        );
        best = best.min(elapsed);
        peak_mb = peak_mb.max(mb);
    }
    let ratio = best.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "BENCH users={users} groups={groups} memberships={} ldapsearch={:.2}s ldapsync_dry_run={:.2}s ratio={ratio:.2} peak_rss={peak_mb}MB",
        groups * per_group,
        baseline.as_secs_f64(),
        best.as_secs_f64(),
    );
    // The steady state: a real initial sync into the file sink, then a warm dry run against
    // the full ledger (what the daemon does every tick when nothing changed).
    let (sync_time, sync_mb, _) = timed(&["sync"]);
    let (warm_time, warm_mb, stdout) = timed(&["sync", "--dry-run"]);
    assert!(stdout.contains("nothing to do"), "{stdout}");
    println!(
        "BENCH initial_sync={:.2}s peak_rss={sync_mb}MB warm_dry_run={:.2}s peak_rss={warm_mb}MB",
        sync_time.as_secs_f64(),
        warm_time.as_secs_f64()
    );
    let state = dir.path().join("state.db");
    let state_mb = |path: &std::path::Path| {
        let wal = path.with_extension("db-wal");
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        (size(path) + size(&wal)) as f64 / 1e6
    };
    println!(
        "BENCH state_file_after_first_sync={:.1}MB",
        state_mb(&state)
    );
    if let Some(keep) = std::env::var_os("LDAPSYNC_BENCH_STATE_ONLY") {
        if keep != "1" {
            std::fs::copy(&state, &keep).unwrap();
        }
        return;
    }

    // The median of three runs of `args`, its largest peak RSS and the last stdout.
    let median = |args: &[&str]| {
        let mut times = Vec::new();
        let mut mb = 0;
        let mut last = String::new();
        for _ in 0..3 {
            let (t, m, out) = timed(args);
            times.push(t);
            mb = mb.max(m);
            last = out;
        }
        times.sort();
        (times[1], mb, last)
    };
    let (full_time, full_mb, stdout) = median(&["sync", "--full"]);
    assert!(stdout.contains("(full read)"), "{stdout}");
    let (quiet_time, quiet_mb, stdout) = median(&["sync"]);
    assert!(stdout.contains("(incremental read"), "{stdout}");
    // 100 membership changes: one member added to each of 100 groups.
    let mut ldif = String::new();
    for g in 0..100.min(groups) {
        let member = |u: usize| (0..per_group).any(|m| (g * 37 + m * 1009) % users == u);
        let u = (0..users).find(|&u| !member(u)).unwrap();
        ldif.push_str(&format!(
            "dn: cn=group{g:05},ou=Groups,dc=example,dc=com\nchangetype: modify\nadd: member\nmember: uid=user{u:06},ou=People,dc=example,dc=com\n\n"
        ));
    }
    let mut modify = slapd.ldap_tool("ldapmodify");
    modify.arg("-c").stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = modify.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ldif.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let (changed_time, changed_mb, stdout) = timed(&["sync"]);
    assert!(stdout.contains("(incremental read"), "{stdout}");
    let ratio = |t: Duration| t.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "BENCH no_change_full_sync={:.2}s ratio={:.2} peak_rss={full_mb}MB no_change_incremental_sync={:.3}s peak_rss={quiet_mb}MB incremental_sync_after_100_changes={:.3}s peak_rss={changed_mb}MB state_file={:.1}MB",
        full_time.as_secs_f64(),
        ratio(full_time),
        quiet_time.as_secs_f64(),
        changed_time.as_secs_f64(),
        state_mb(&state),
    );
}

/// What the fast local SCIM target of [`initial_push_request_count`] counted.
#[derive(Default)]
struct Counts {
    total: std::sync::atomic::AtomicU64,
    user_pages: std::sync::atomic::AtomicU64,
    group_reads: std::sync::atomic::AtomicU64,
    creates: std::sync::atomic::AtomicU64,
    patches: std::sync::atomic::AtomicU64,
    group_gets: std::sync::atomic::AtomicU64,
    /// The groups created: (name, member ids), indexed by the number in their id `g<n>`.
    groups: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

/// A minimal in-process SCIM target (axum): `users` users, groups kept as a counter, every
/// request counted. Fast, so that ldapsync is what is measured.
fn fast_scim_target(users: usize) -> (String, std::sync::Arc<Counts>) {
    use axum::Router;
    use axum::extract::{Path, RawQuery};
    use axum::http::StatusCode;
    use axum::routing::{get, patch};
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    type Reply = (StatusCode, [(&'static str, &'static str); 1], String);
    fn reply(status: StatusCode, body: serde_json::Value) -> Reply {
        (
            status,
            [("content-type", "application/scim+json")],
            body.to_string(),
        )
    }
    fn param(query: &Option<String>, name: &str) -> Option<usize> {
        query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
    }
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    let list_users = move |RawQuery(query): RawQuery| {
        let c = c.clone();
        async move {
            c.total.fetch_add(1, Relaxed);
            c.user_pages.fetch_add(1, Relaxed);
            let start = param(&query, "startIndex").unwrap_or(1).max(1);
            let count = param(&query, "count").unwrap_or(100);
            let resources: Vec<serde_json::Value> = (start - 1..(start - 1 + count).min(users))
                .map(|u| serde_json::json!({"id": format!("u{u}"), "userName": format!("user{u:06}")}))
                .collect();
            reply(
                StatusCode::OK,
                serde_json::json!({"totalResults": users, "startIndex": start,
                                   "itemsPerPage": resources.len(), "Resources": resources}),
            )
        }
    };
    let c = counts.clone();
    let list_groups = move || {
        let c = c.clone();
        async move {
            c.total.fetch_add(1, Relaxed);
            c.group_reads.fetch_add(1, Relaxed);
            reply(
                StatusCode::OK,
                serde_json::json!({"totalResults": 0, "Resources": []}),
            )
        }
    };
    let c = counts.clone();
    let create = move |body: axum::body::Bytes| {
        let c = c.clone();
        async move {
            c.total.fetch_add(1, Relaxed);
            c.creates.fetch_add(1, Relaxed);
            let group: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let name = group["displayName"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut groups = c.groups.lock().unwrap();
            groups.push((name, Vec::new()));
            let id = format!("g{}", groups.len() - 1);
            reply(StatusCode::CREATED, serde_json::json!({"id": id}))
        }
    };
    let group_of = |id: &str| id.trim_start_matches('g').parse::<usize>().ok();
    let c = counts.clone();
    let change = move |Path(id): Path<String>, body: axum::body::Bytes| {
        let c = c.clone();
        async move {
            c.total.fetch_add(1, Relaxed);
            c.patches.fetch_add(1, Relaxed);
            let patch: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut groups = c.groups.lock().unwrap();
            let Some(group) = group_of(&id).and_then(|n| groups.get_mut(n)) else {
                return StatusCode::NOT_FOUND;
            };
            for op in patch["Operations"].as_array().into_iter().flatten() {
                if op["op"] == "add" {
                    for m in op["value"].as_array().into_iter().flatten() {
                        group
                            .1
                            .push(m["value"].as_str().unwrap_or_default().to_string());
                    }
                }
            }
            StatusCode::NO_CONTENT
        }
    };
    let c = counts.clone();
    let read = move |Path(id): Path<String>| {
        let c = c.clone();
        async move {
            c.total.fetch_add(1, Relaxed);
            c.group_gets.fetch_add(1, Relaxed);
            let groups = c.groups.lock().unwrap();
            match group_of(&id).and_then(|n| groups.get(n)) {
                None => reply(StatusCode::NOT_FOUND, serde_json::json!({})),
                Some((name, members)) => {
                    let members: Vec<serde_json::Value> = members
                        .iter()
                        .map(|m| serde_json::json!({"value": m}))
                        .collect();
                    reply(
                        StatusCode::OK,
                        serde_json::json!({"id": id, "displayName": name, "members": members}),
                    )
                }
            }
        }
    };
    let c = counts.clone();
    let config = move || {
        let c = c.clone();
        async move {
            c.total.fetch_add(1, Relaxed);
            reply(
                StatusCode::OK,
                serde_json::json!({"patch": {"supported": true}}),
            )
        }
    };
    let app = Router::new()
        .route("/ServiceProviderConfig", get(config))
        .route("/Users", get(list_users))
        .route("/Groups", get(list_groups).post(create))
        .route("/Groups/{id}", patch(change).get(read));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}"), counts)
}

/// The requests an initial push of the benchmark directory makes into a fast local SCIM
/// target: at most one create per group, one PATCH per member chunk, the user pages, and a
/// constant.
#[test]
#[ignore = "benchmark: run scripts/bench.sh"]
fn initial_push_request_count() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let (slapd, users, groups, per_group) = bench_directory(dir.path());
    let (url, counts) = fast_scim_target(users);
    let chunk = 100;
    let config = write_file(
        dir.path(),
        "push.toml",
        format!(
            "{ldap}\n[[sinks]]\nname = \"scim\"\ntype = \"scim\"\nbase_url = \"{url}\"\ntoken = \"bench\"\nmember_chunk_size = {chunk}\nrate_limit_per_second = 1000000\nrun_timeout_secs = 86400\n",
            ldap = ldap_config_toml(&slapd, &dir.path().join("push.db")),
        ),
    );
    let started = Instant::now();
    let out = Command::new(ldapsync_bin())
        .arg("--config")
        .arg(&config)
        .args(["sync", "--output", "json"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", out.describe());
    let total = counts.total.load(Relaxed);
    let user_pages = counts.user_pages.load(Relaxed);
    let member_chunks = groups as u64 * per_group.div_ceil(chunk) as u64;
    let bound = groups as u64 + member_chunks + user_pages + 10;
    println!(
        "BENCH push users={users} groups={groups} memberships={} requests={total} (creates={} member_patches={} user_pages={user_pages} group_listing={} other={}) bound={bound} seconds={:.1}",
        groups * per_group,
        counts.creates.load(Relaxed),
        counts.patches.load(Relaxed),
        counts.group_reads.load(Relaxed),
        total
            - counts.creates.load(Relaxed)
            - counts.patches.load(Relaxed)
            - user_pages
            - counts.group_reads.load(Relaxed),
        elapsed.as_secs_f64(),
    );
    assert!(total <= bound, "{total} requests, more than {bound}");

    // A full reconcile of the converged target: every owned group read once, the users listed
    // again, nothing to repair.
    let before = counts.total.load(Relaxed);
    let started = Instant::now();
    let out = Command::new(ldapsync_bin())
        .arg("--config")
        .arg(&config)
        .args(["sync", "--dry-run", "--full"])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", out.describe());
    out.assert_stdout_has("nothing to do");
    let requests = counts.total.load(Relaxed) - before;
    let full_bound = groups as u64 + user_pages + 10;
    println!(
        "BENCH full_reconcile groups={groups} memberships={} requests={requests} (group_reads={}) bound={full_bound} seconds={:.1}",
        groups * per_group,
        counts.group_gets.load(Relaxed),
        elapsed.as_secs_f64(),
    );
    assert!(
        requests <= full_bound,
        "{requests} requests, more than {full_bound}"
    );
}
