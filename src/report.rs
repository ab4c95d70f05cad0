//! Renders what the commands print: a run (text, one line per operation, grouped by sink; or JSON for tools) and `status`.

use std::fmt::Write;

use serde::Serialize;

use crate::engine::ProgressSnapshot;
use crate::engine::{RunReport, SinkOutcome, SinkResult};
use crate::model::{OpKind, Operation, OperationView, Summary, Unmapped};
use crate::sinks::OpFailure;
use crate::source::incremental::ReadMode;
use crate::store::{LedgerCounts, LedgerListing, RunRecord};

/// At most this many member names are printed per operation in text output.
const NAMES_SHOWN: usize = 10;

/// The JSON document printed by `sync --output json`. Fields are declared in alphabetical
/// order, the order the document has always had.
#[derive(Debug, Serialize)]
pub struct RunView<'a> {
    /// Present (true) when the operator accepted an empty scope for this run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty_scope: bool,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    pub exit_code: i32,
    /// The fingerprint of the plan file saved (`--save-plan`) or applied (`--plan`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_fingerprint: Option<&'a str>,
    pub read: ReadView,
    pub sinks: Vec<SinkView<'a>>,
    pub warnings: &'a [String],
}

/// What the directory read returned, how (`full` or `incremental`) and how long it took.
#[derive(Debug, Serialize)]
pub struct ReadView {
    /// Entries read from LDAP: all (full) or those added, changed or removed (incremental).
    pub changes: u64,
    pub groups: u64,
    pub mode: ReadMode,
    pub seconds: f64,
    pub users: u64,
}

/// One sink's plan and, after a real run, what it applied.
#[derive(Debug, Serialize)]
pub struct SinkView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<&'a [OpFailure]>,
    pub held: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_reasons: Option<&'a [String]>,
    pub name: &'a str,
    pub operations: Vec<OperationView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<&'a serde_json::Value>,
    pub result: SinkResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_members: Option<u64>,
    pub summary: Summary,
    #[serde(rename = "type")]
    pub type_name: &'a str,
    /// Per group, the members with no user in the target (not planned).
    pub unmapped: &'a [Unmapped],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmapped_members: Option<u64>,
}

impl<'a> From<&'a SinkOutcome> for SinkView<'a> {
    fn from(s: &'a SinkOutcome) -> Self {
        let applied = s.applied.as_ref();
        SinkView {
            applied: applied.map(|a| a.applied),
            error: s.error.as_deref(),
            failures: applied.map(|a| a.failures.as_slice()),
            held: s.hold.is_some(),
            hold_reasons: s.hold.as_ref().map(|h| h.reasons.as_slice()),
            name: &s.name,
            operations: s
                .plan
                .operations
                .iter()
                .enumerate()
                .map(|(i, op)| OperationView {
                    drift: s.plan.is_drift(i),
                    ..OperationView::from(op)
                })
                .collect(),
            preview: s.preview.as_ref(),
            result: s.result,
            skipped_members: applied.map(|a| a.skipped),
            summary: s.summary,
            type_name: &s.type_name,
            unmapped: &s.plan.unmapped,
            unmapped_members: applied.map(|a| a.unmapped),
        }
    }
}

impl<'a> From<&'a RunReport> for RunView<'a> {
    fn from(report: &'a RunReport) -> Self {
        RunView {
            allow_empty_scope: report.allow_empty_scope,
            dry_run: report.dry_run,
            error: report.read_error.as_deref(),
            exit_code: report.exit_status().code(),
            plan_fingerprint: report.plan_fingerprint.as_deref(),
            read: ReadView {
                changes: report.read.changes,
                groups: report.groups,
                mode: report.read.mode,
                seconds: report.read.seconds,
                users: report.users,
            },
            sinks: report.sinks.iter().map(SinkView::from).collect(),
            warnings: &report.warnings,
        }
    }
}

/// The JSON document printed by `sync --output json`.
pub fn json(report: &RunReport) -> String {
    serde_json::to_string(&RunView::from(report)).expect("a run view always serializes")
}

/// Text from outside (names, errors) as a human output shows it: control characters (ESC, CR,
/// LF, NUL, DEL, C1…) escaped, so a value can neither forge a line nor drive the terminal.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A user name as the text plan lists it: quoted when it contains the list separator.
fn shown_name(name: &str) -> String {
    if name.contains([',', '"']) || name.trim() != name || name.chars().any(char::is_control) {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

fn sign(kind: OpKind) -> char {
    match kind {
        OpKind::Create | OpKind::MemberAdd | OpKind::UserCreate | OpKind::UserReactivate => '+',
        OpKind::Update => '~',
        OpKind::Adopt => '=',
        OpKind::Delete | OpKind::MemberRemove | OpKind::UserDeactivate => '-',
    }
}

/// The plan and results as a person reads them.
pub fn text(report: &RunReport) -> String {
    let mut out = String::new();
    // The error itself is printed once, on stderr, by the command.
    if report.read_error.is_some() {
        let _ = writeln!(
            out,
            "READ FAILED: nothing was written to any sink (the error is on stderr)"
        );
        return out;
    }
    let title = if report.dry_run { "Dry run" } else { "Sync" };
    let _ = writeln!(
        out,
        "{title}: read {} users and {} groups in {:.2}s ({})",
        report.users,
        report.groups,
        report.read.seconds,
        match report.read.mode {
            ReadMode::Full => "full read".to_string(),
            ReadMode::Incremental =>
                format!("incremental read: {} changed entries", report.read.changes),
        }
    );
    plan_fingerprint_line(&mut out, report);
    if let Some(signal) = report.interrupted {
        let _ = writeln!(
            out,
            "INTERRUPTED by signal {signal}: stopped after the request in flight; what was applied is recorded and the next run continues"
        );
    }
    if report.allow_empty_scope {
        let _ = writeln!(
            out,
            "Empty scope accepted for this run (--allow-empty-scope): an empty read may delete every group"
        );
    }
    if !report.warnings.is_empty() {
        let _ = writeln!(
            out,
            "{} warning(s) about the directory (see the log)",
            report.warnings.len()
        );
    }
    for sink in &report.sinks {
        let _ = writeln!(out, "\n{}", summary_line(sink));
        let s = sink.summary;
        if s.user_create + s.user_deactivate + s.user_reactivate > 0 {
            let reactivate = match s.user_reactivate {
                0 => String::new(),
                n => format!(", {n} user_reactivate"),
            };
            let _ = writeln!(
                out,
                "  users: {} user_create, {} user_deactivate{reactivate}",
                s.user_create, s.user_deactivate
            );
        }
        if sink.plan.is_empty() {
            let _ = writeln!(out, "  nothing to do");
        }
        for (index, op) in sink.plan.operations.iter().enumerate() {
            let group = op.group();
            let detail = match op {
                Operation::Update { previous, .. } if previous.name != group.name => {
                    format!("{} → {}", previous.name, group.name)
                }
                Operation::Update { .. } => format!("{} (description or DN changed)", group.name),
                Operation::MemberAdd { members, .. } | Operation::MemberRemove { members, .. } => {
                    let names: Vec<String> = members
                        .iter()
                        .take(NAMES_SHOWN)
                        .map(|m| shown_name(&m.username))
                        .collect();
                    let more = members.len().saturating_sub(NAMES_SHOWN);
                    let tail = if more > 0 {
                        format!(" … and {more} more")
                    } else {
                        String::new()
                    };
                    format!("{}: {}{tail}", group.name, names.join(", "))
                }
                Operation::Adopt { by, .. } => format!(
                    "{} (id {}, by {})",
                    group.name,
                    group.target_id.as_deref().unwrap_or("?"),
                    by.as_str()
                ),
                Operation::UserCreate { user, .. } => {
                    format!("{} (for {})", user.username, group.name)
                }
                Operation::UserDeactivate { user, .. } => {
                    format!("{} (left the scope; not deleted)", user.username)
                }
                Operation::UserReactivate { user, .. } => {
                    format!("{} (back in the scope, for {})", user.username, group.name)
                }
                Operation::Create { resume: true, .. } => {
                    format!("{} (resuming an unconfirmed create)", group.name)
                }
                _ => group.name.clone(),
            };
            let repairs = if sink.plan.is_drift(index) {
                "  ~ drift"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {} {:<13} {}{repairs}",
                sign(op.kind()),
                op.kind().as_str(),
                escape_controls(&detail)
            );
        }
        for unmapped in &sink.plan.unmapped {
            let names: Vec<String> = unmapped
                .members
                .iter()
                .take(NAMES_SHOWN)
                .map(|m| shown_name(m))
                .collect();
            let more = unmapped.members.len().saturating_sub(NAMES_SHOWN);
            let tail = if more > 0 {
                format!(" … and {more} more")
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  unmapped: {}: {}{tail} (no such user in the target; not added)",
                unmapped.group,
                names.join(", ")
            );
        }
        match sink.result {
            SinkResult::Interrupted => {
                let _ = writeln!(
                    out,
                    "  INTERRUPTED: {}",
                    escape_controls(sink.error.as_deref().unwrap_or(""))
                );
                if let Some(applied) = &sink.applied {
                    let a = applied.applied;
                    let _ = writeln!(
                        out,
                        "  applied before the interruption: {} create, {} update, {} delete, {} member_add, {} member_remove",
                        a.create, a.update, a.delete, a.member_add, a.member_remove
                    );
                }
            }
            SinkResult::Held => {
                let _ = writeln!(
                    out,
                    "  HELD: {}",
                    escape_controls(sink.error.as_deref().unwrap_or(""))
                );
            }
            SinkResult::Failed => {
                let _ = writeln!(
                    out,
                    "  FAILED: {}",
                    escape_controls(sink.error.as_deref().unwrap_or(""))
                );
            }
            SinkResult::Success => {
                if let Some(applied) = &sink.applied {
                    let a = applied.applied;
                    let _ = writeln!(
                        out,
                        "  applied: {} create, {} update, {} delete, {} member_add, {} member_remove; {} unmapped member(s)",
                        a.create,
                        a.update,
                        a.delete,
                        a.member_add,
                        a.member_remove,
                        applied.unmapped
                    );
                    if applied.skipped > 0 {
                        let _ = writeln!(
                            out,
                            "  skipped: {} membership change(s) managed by the target itself",
                            applied.skipped
                        );
                    }
                }
            }
            SinkResult::Planned => {}
        }
    }
    if report.dry_run {
        let _ = writeln!(out, "\nDry run: nothing was written.");
    }
    out
}

/// `sink "NAME" (TYPE): N create, …` — the per-sink line of every text output.
fn summary_line(sink: &SinkOutcome) -> String {
    let s = sink.summary;
    format!(
        "sink \"{}\" ({}): {} create, {} update, {} delete, {} member_add, {} member_remove, {} adopt, {} unmapped",
        sink.name,
        sink.type_name,
        s.create,
        s.update,
        s.delete,
        s.member_add,
        s.member_remove,
        s.adopt,
        s.unmapped
    )
}

fn plan_fingerprint_line(out: &mut String, report: &RunReport) {
    if let Some(fingerprint) = &report.plan_fingerprint {
        let verb = if report.dry_run { "saved" } else { "applied" };
        let _ = writeln!(out, "Plan {verb}: {fingerprint}");
    }
}

/// `sync --output summary`: only the per-sink summary lines, each with how the sink ended.
pub fn summary(report: &RunReport) -> String {
    let mut out = String::new();
    if report.read_error.is_some() {
        let _ = writeln!(out, "READ FAILED: nothing was written to any sink");
        return out;
    }
    for sink in &report.sinks {
        let _ = writeln!(out, "{}: {}", summary_line(sink), sink.result.as_str());
    }
    out
}

/// What a progress bar says beside the bar: the sink, groups, requests, rate and time left.
pub fn progress_message(p: &ProgressSnapshot) -> String {
    let eta = p
        .eta()
        .map(|d| format!("{}s", d.as_secs()))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "sink \"{}\": {}/{} groups, {} requests, {:.1} op/s, {eta} left",
        escape_controls(&p.sink),
        p.groups_done,
        p.groups_total,
        p.requests,
        p.rate()
    )
}

/// One progress line of an apply (the plain form, every 30 s when stderr is not a terminal).
pub fn progress_line(p: &ProgressSnapshot) -> String {
    format!(
        "progress: {}/{} operations ({:.0}%), {}",
        p.operations_done,
        p.operations_total,
        p.ratio() * 100.0,
        progress_message(p)
    )
}

/// The JSON document printed by `ledger --output json`.
#[derive(Debug, Serialize)]
pub struct LedgerView<'a> {
    pub sinks: Vec<SinkLedgerView<'a>>,
    pub state: &'a std::path::Path,
}

/// One sink's ledger.
#[derive(Debug, Serialize)]
pub struct SinkLedgerView<'a> {
    pub groups: Vec<LedgerGroupView<'a>>,
    /// Groups whose create was sent but never confirmed (resolved by externalId next run).
    pub pending_intents: u64,
    pub sink: &'a str,
    /// Per group, the members without a user in the target at the sink's last run.
    pub unmapped: &'a [Unmapped],
}

/// One owned group (or pending intent) of a ledger.
#[derive(Debug, Serialize)]
pub struct LedgerGroupView<'a> {
    pub members: u64,
    pub name: &'a str,
    /// `created`, `adopted`, `pending` (an unconfirmed create) or `unknown` (recorded by an
    /// older ldapsync).
    pub origin: &'a str,
    pub recorded_at: Option<&'a str>,
    pub source_id: &'a str,
    pub target_id: Option<&'a str>,
    pub updated_at: &'a str,
}

impl<'a> LedgerView<'a> {
    pub fn new(state: &'a std::path::Path, listing: &'a [LedgerListing]) -> Self {
        LedgerView {
            sinks: listing
                .iter()
                .map(|l| SinkLedgerView {
                    groups: l
                        .groups
                        .iter()
                        .map(|g| LedgerGroupView {
                            members: g.members,
                            name: &g.name,
                            origin: match (&g.target_id, g.origin.as_deref()) {
                                (None, _) => "pending",
                                (Some(_), Some(origin)) => origin,
                                (Some(_), None) => "unknown",
                            },
                            recorded_at: g.recorded_at.as_deref(),
                            source_id: &g.source_id,
                            target_id: g.target_id.as_deref(),
                            updated_at: &g.updated_at,
                        })
                        .collect(),
                    pending_intents: l.groups.iter().filter(|g| g.target_id.is_none()).count()
                        as u64,
                    sink: &l.sink,
                    unmapped: &l.unmapped,
                })
                .collect(),
            state,
        }
    }

    /// `ledger` as a person reads it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "state: {}", self.state.display());
        if self.sinks.is_empty() {
            let _ = writeln!(out, "no ledger yet: ldapsync has applied nothing");
        }
        for sink in &self.sinks {
            let _ = writeln!(
                out,
                "\nsink \"{}\": {} group(s), {} pending intent(s)",
                escape_controls(sink.sink),
                sink.groups.len() as u64 - sink.pending_intents,
                sink.pending_intents
            );
            for g in &sink.groups {
                let when = g.recorded_at.unwrap_or(g.updated_at);
                let _ = writeln!(
                    out,
                    "  {:<24} {:<8} {:>6} member(s)  source {}  target {}  {}",
                    escape_controls(g.name),
                    g.origin,
                    g.members,
                    escape_controls(g.source_id),
                    escape_controls(g.target_id.unwrap_or("-")),
                    when
                );
            }
            for u in sink.unmapped {
                let names: Vec<String> = u.members.iter().map(|m| shown_name(m)).collect();
                let _ = writeln!(
                    out,
                    "  unmapped at the last run: {}: {}",
                    escape_controls(&u.group),
                    escape_controls(&names.join(", "))
                );
            }
        }
        out
    }
}

/// The JSON document printed by `status --output json`.
#[derive(Debug, Serialize)]
pub struct StatusView<'a> {
    pub runs: Vec<RunStatusView<'a>>,
    pub sinks: Vec<SinkStatusView<'a>>,
    pub state: &'a std::path::Path,
}

/// One run of the history.
#[derive(Debug, Serialize)]
pub struct RunStatusView<'a> {
    pub error: Option<&'a str>,
    pub finished_at: Option<&'a str>,
    pub id: i64,
    pub mode: &'a str,
    pub result: Option<&'a str>,
    pub sinks: Vec<SinkRunStatusView<'a>>,
    pub started_at: &'a str,
}

/// One sink's part of a run in the history.
#[derive(Debug, Serialize)]
pub struct SinkRunStatusView<'a> {
    pub applied: Summary,
    pub error: Option<&'a str>,
    pub failed: u64,
    pub planned: Summary,
    pub result: &'a str,
    pub sink: &'a str,
    pub unmapped: u64,
}

/// One sink's ledger counts.
#[derive(Debug, Serialize)]
pub struct SinkStatusView<'a> {
    pub cursor_age_seconds: Option<i64>,
    pub cursor_updated_at: Option<&'a str>,
    /// When `sync --full` last reconciled the sink against its target.
    pub full_reconciled_at: Option<&'a str>,
    pub groups: u64,
    pub memberships: u64,
    pub pending_creates: u64,
    pub sink: &'a str,
}

/// Seconds since an RFC 3339 time.
fn age_seconds(time: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    time.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds())
}

impl<'a> StatusView<'a> {
    pub fn new(
        state: &'a std::path::Path,
        runs: &'a [RunRecord],
        counts: &'a [LedgerCounts],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        StatusView {
            runs: runs
                .iter()
                .map(|r| RunStatusView {
                    error: r.error.as_deref(),
                    finished_at: r.finished_at.as_deref(),
                    id: r.id,
                    mode: &r.mode,
                    result: r.result.as_deref(),
                    sinks: r
                        .sinks
                        .iter()
                        .map(|s| SinkRunStatusView {
                            applied: s.applied,
                            error: s.error.as_deref(),
                            failed: s.failed,
                            planned: s.planned,
                            result: &s.result,
                            sink: &s.sink,
                            unmapped: s.unmapped,
                        })
                        .collect(),
                    started_at: &r.started_at,
                })
                .collect(),
            sinks: counts
                .iter()
                .map(|c| SinkStatusView {
                    cursor_age_seconds: age_seconds(c.cursor_updated_at.as_deref(), now),
                    cursor_updated_at: c.cursor_updated_at.as_deref(),
                    full_reconciled_at: c.full_reconciled_at.as_deref(),
                    groups: c.groups,
                    memberships: c.memberships,
                    pending_creates: c.pending_creates,
                    sink: &c.sink,
                })
                .collect(),
            state,
        }
    }

    /// `status` as a person reads it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "state: {}", self.state.display());
        let _ = writeln!(out, "sinks:");
        for c in &self.sinks {
            let cursor = match c.cursor_age_seconds {
                Some(s) => format!("cursor {s}s old"),
                None => "no cursor".into(),
            };
            let reconciled = match c.full_reconciled_at {
                Some(at) => format!("last full reconcile {at}"),
                None => "never fully reconciled".into(),
            };
            let _ = writeln!(
                out,
                "  {:<20} {} groups, {} memberships, {} unconfirmed creates, {cursor}, {reconciled}",
                c.sink, c.groups, c.memberships, c.pending_creates
            );
        }
        let _ = writeln!(out, "recent runs:");
        for r in &self.runs {
            let _ = writeln!(
                out,
                "  #{:<5} {} {:<8} {}{}",
                r.id,
                r.started_at,
                r.mode,
                r.result.unwrap_or("running"),
                r.error
                    .map(|e| format!(": {}", escape_controls(e)))
                    .unwrap_or_default()
            );
            for s in &r.sinks {
                let a = s.applied;
                let _ = writeln!(
                    out,
                    "         {:<20} {:<8} applied {}+ {}~ {}- members +{} -{}{}",
                    s.sink,
                    s.result,
                    a.create,
                    a.update,
                    a.delete,
                    a.member_add,
                    a.member_remove,
                    s.error
                        .map(|e| format!(" ({})", escape_controls(e)))
                        .unwrap_or_default()
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_characters_are_escaped_in_human_output() {
        assert_eq!(escape_controls("plain → text"), "plain → text");
        assert_eq!(
            escape_controls("a\nb\r\u{1b}[31m\0\u{7f}\u{9b}"),
            "a\\nb\\r\\u{1b}[31m\\u{0}\\u{7f}\\u{9b}"
        );
        assert_eq!(super::shown_name("x\ny"), "\"x\\ny\"");
    }
}
