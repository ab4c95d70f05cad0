//! The fault matrix every sink type is driven through ([`drive_fault_matrix`]), written once:
//! faults injected by the [`FaultProxy`] in front of the target, then recovery, then the
//! target's real state and the ledger compared (docs/reliability.md).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process::OutputExt;
use super::proxy::FaultProxy;
use super::run::{assert_code, sync};
use super::slapd::Slapd;

/// The `timeout_secs` a sink under the matrix is configured with: the slow answers below are
/// held longer than this.
pub const FAULT_TIMEOUT_SECS: u64 = 1;
/// How long a slow answer is held (past [`FAULT_TIMEOUT_SECS`]).
const SLOW_SECS: u64 = 3;

/// One sink under the fault matrix.
pub struct FaultMatrix<'a> {
    pub slapd: &'a Slapd,
    /// In front of the sink's API (its URL in `config` is the proxy's).
    pub proxy: &'a FaultProxy,
    /// The config: one sink `sink` with `timeout_secs = FAULT_TIMEOUT_SECS`.
    pub config: &'a Path,
    /// Its state file.
    pub state: &'a Path,
    pub sink: &'a str,
    /// A regular expression of the path a group create (or an import batch) is POSTed to.
    pub create_path: &'a str,
    /// A regular expression of the paths the sink reads from (lookups); `None`: it reads nothing.
    pub read_path: Option<&'a str>,
    /// The sink looks an unanswered create up in the same run (group sinks), so the ledger
    /// equals the target after every run; otherwise (the PingOne import, which has nothing to
    /// read) the ledger holds a subset of it until the next run resends the batch.
    pub looks_up_unanswered: bool,
    /// Every group the target holds, as (name, its members' user names), duplicates kept. The
    /// user `alice` must exist in the target already (the groups' member is mapped to it).
    pub target_groups: &'a dyn Fn() -> Vec<(String, Vec<String>)>,
}

/// The faults, each a name and the proxy rules that make it: 429 storms (Retry-After in
/// seconds, as an HTTP date, absent, far too long), 5xx bursts with HTML or empty bodies,
/// errors committed by the target, connection resets before and after forwarding, answers held
/// past the request timeout, non-JSON success bodies.
fn faults(create: &str, read: Option<&str>) -> Vec<(&'static str, Value)> {
    let post = |rule: Value| {
        let mut rule = rule;
        rule["method"] = json!("POST");
        rule["path"] = json!(create);
        rule
    };
    let mut faults = vec![
        (
            "429, Retry-After in seconds",
            json!([post(
                json!({"action": "status", "status": 429, "retry_after": 1, "times": 2})
            )]),
        ),
        (
            "429, Retry-After as an HTTP date",
            json!([post(
                json!({"action": "status", "status": 429, "retry_after": 1, "retry_after_format": "http-date", "times": 2})
            )]),
        ),
        (
            "429 without Retry-After",
            json!([post(json!({"action": "status", "status": 429, "times": 3}))]),
        ),
        (
            "429 asking for a day",
            json!([post(
                json!({"action": "status", "status": 429, "retry_after": 100000})
            )]),
        ),
        (
            "503 burst with an HTML body",
            json!([post(
                json!({"action": "status", "status": 503, "raw_body": "<html><body>Service Unavailable</body></html>", "times": 2})
            )]),
        ),
        (
            "502 burst with an empty body",
            json!([post(
                json!({"action": "status", "status": 502, "raw_body": "", "content_type": "text/plain", "times": 2})
            )]),
        ),
        (
            "503 after the target committed",
            json!([post(
                json!({"action": "forward_status", "status": 503, "raw_body": "<html>upstream timeout</html>", "times": 1})
            )]),
        ),
        (
            "connection reset before forwarding",
            json!([post(
                json!({"action": "reset", "forward": false, "times": 2})
            )]),
        ),
        (
            "connection reset after forwarding",
            json!([post(json!({"action": "reset", "times": 1}))]),
        ),
        (
            "answer held past the request timeout",
            json!([post(
                json!({"action": "delay", "after": true, "seconds": SLOW_SECS, "times": 1})
            )]),
        ),
        (
            "non-JSON success body",
            json!([post(
                json!({"action": "forward_status", "status": 200, "raw_body": "<html>OK</html>", "times": 1})
            )]),
        ),
    ];
    if let Some(read) = read {
        let get = |rule: Value| {
            let mut rule = rule;
            rule["method"] = json!("GET");
            rule["path"] = json!(read);
            rule
        };
        faults.extend([
            ("500 burst on reads, text body", json!([get(json!({"action": "status", "status": 500, "raw_body": "Internal Server Error", "content_type": "text/plain", "times": 3}))])),
            ("slow reads past the request timeout", json!([get(json!({"action": "delay", "seconds": SLOW_SECS, "times": 2}))])),
            ("non-JSON answer to a read", json!([get(json!({"action": "forward_status", "status": 200, "raw_body": "<html>login</html>", "times": 1}))])),
            ("connection reset on a read", json!([get(json!({"action": "reset", "times": 2}))])),
        ]);
    }
    faults
}

/// Names of the groups `sink` has a confirmed record of (a target id), sorted.
pub fn confirmed_ledger_names(state: &Path, sink: &str) -> Vec<String> {
    let db = rusqlite::Connection::open(state)
        .unwrap_or_else(|e| panic!("open {}: {e}", state.display()));
    let mut stmt = db
        .prepare("SELECT name FROM ledger_groups WHERE sink = ?1 AND target_id IS NOT NULL ORDER BY name")
        .expect("ledger query");
    stmt.query_map([sink], |r| r.get(0))
        .expect("ledger rows")
        .map(|r| r.expect("ledger row"))
        .collect()
}

/// For each fault: a new LDAP group `fault-N` (member alice), a run that meets the fault (exit
/// 0 or 1; the ledger holds what the target accepted), then the target recovers and the next
/// run converges: every group exactly once in the target with its member, and the ledger equal
/// to the target. Ends with a dry run that has nothing to do.
pub fn drive_fault_matrix(m: &FaultMatrix<'_>) {
    let state = m.state;
    let alice = m.slapd.add_user("alice", "alice@example.com");
    let fault_groups = || -> BTreeMap<String, Vec<Vec<String>>> {
        let mut found: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        for (name, mut members) in (m.target_groups)() {
            if name.starts_with("fault-") {
                members.sort();
                found.entry(name).or_default().push(members);
            }
        }
        found
    };
    let mut names = Vec::new();
    for (i, (fault, rules)) in faults(m.create_path, m.read_path).into_iter().enumerate() {
        let name = format!("fault-{i:02}");
        m.slapd.add_group(&name, &[&alice]);
        names.push(name.clone());

        let logged = m.proxy.log().len();
        m.proxy.rules(rules);
        let out = sync(m.config, &[]);
        m.proxy.clear();
        let context = || {
            format!(
                "{} / {fault}:\n{}\nproxy:\n{}",
                m.sink,
                out.describe(),
                m.proxy.stderr_tail(10)
            )
        };
        assert!([0, 1].contains(&out.code()), "{}", context());
        eprintln!("fault matrix: {} / {fault}: exit {}", m.sink, out.code());
        // A held answer is logged once the proxy lets it go.
        let met = || {
            m.proxy.log()[logged..]
                .iter()
                .any(|r| r["rules"].as_array().is_some_and(|r| !r.is_empty()))
        };
        let deadline = Instant::now() + Duration::from_secs(SLOW_SECS + 10);
        while !met() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(met(), "the fault was never met: {}", context());
        let target: Vec<String> = fault_groups().keys().cloned().collect();
        let ledger = confirmed_ledger_names(state, m.sink);
        if m.looks_up_unanswered {
            assert_eq!(
                ledger,
                target,
                "the ledger holds what the target accepted: {}",
                context()
            );
        } else {
            assert!(
                ledger.iter().all(|n| target.contains(n)),
                "the ledger records only what the target accepted: {ledger:?} / {target:?}: {}",
                context()
            );
        }

        let out = sync(m.config, &[]);
        assert_code(&out, 0);
        let groups = fault_groups();
        for name in &names {
            assert_eq!(
                groups.get(name),
                Some(&vec![vec!["alice".to_string()]]),
                "{} / {fault}: {name} exactly once, with its member: {groups:#?}",
                m.sink
            );
        }
        assert_eq!(
            groups.len(),
            names.len(),
            "{} / {fault}: {groups:#?}",
            m.sink
        );
        assert_eq!(
            confirmed_ledger_names(state, m.sink),
            names,
            "{} / {fault}: the ledger equals the target",
            m.sink
        );
    }
    let again = sync(m.config, &["--dry-run", "--output", "json"]);
    assert_code(&again, 0);
    let plan: Value = serde_json::from_str(&again.stdout_str()).expect("dry-run JSON");
    let summary = &plan["sinks"][0]["summary"];
    for kind in [
        "create",
        "adopt",
        "update",
        "delete",
        "member_add",
        "member_remove",
    ] {
        assert_eq!(summary[kind], 0, "{}: nothing left to do: {plan}", m.sink);
    }
}
