//! Renders a run for people (text, one line per operation, grouped by sink) and for tools (JSON, DESIGN.md §5).

use std::fmt::Write;

use serde_json::{Value, json};

use crate::engine::{RunReport, SinkResult};
use crate::model::{OpKind, Operation, OperationView};

/// At most this many member names are printed per operation in text output.
const NAMES_SHOWN: usize = 10;

/// The JSON document printed by `sync --output json`.
pub fn json(report: &RunReport) -> Value {
    let sinks: Vec<Value> = report
        .sinks
        .iter()
        .map(|s| {
            let mut value = json!({
                "name": s.name,
                "type": s.type_name,
                "result": s.result,
                "summary": s.summary,
                "held": s.hold.is_some(),
                "operations": s.plan.operations.iter().map(OperationView::from).collect::<Vec<_>>(),
            });
            let object = value.as_object_mut().expect("json! object literal");
            if let Some(hold) = &s.hold {
                object.insert("hold_reasons".into(), json!(hold.reasons));
            }
            if let Some(preview) = &s.preview {
                object.insert("preview".into(), preview.clone());
            }
            if let Some(applied) = &s.applied {
                object.insert("applied".into(), json!(applied.applied));
                object.insert("failures".into(), json!(applied.failures));
                object.insert("unmapped_members".into(), json!(applied.unmapped));
                object.insert("skipped_members".into(), json!(applied.skipped));
            }
            if let Some(error) = &s.error {
                object.insert("error".into(), json!(error));
            }
            value
        })
        .collect();
    let mut value = json!({
        "dry_run": report.dry_run,
        "sinks": sinks,
        "read": {"users": report.users, "groups": report.groups},
        "warnings": report.warnings,
        "exit_code": report.exit_status().code(),
    });
    if let Some(error) = &report.read_error {
        value["error"] = json!(error);
    }
    value
}

/// A user name as the text plan lists it: quoted when it contains the list separator.
fn shown_name(name: &str) -> String {
    if name.contains([',', '"']) || name.trim() != name {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

fn sign(kind: OpKind) -> char {
    match kind {
        OpKind::Create | OpKind::MemberAdd => '+',
        OpKind::Update => '~',
        OpKind::Delete | OpKind::MemberRemove => '-',
    }
}

/// The plan and results as a person reads them.
pub fn text(report: &RunReport) -> String {
    let mut out = String::new();
    if let Some(error) = &report.read_error {
        let _ = writeln!(out, "READ FAILED: {error}");
        let _ = writeln!(out, "Nothing was written to any sink.");
        return out;
    }
    let title = if report.dry_run { "Dry run" } else { "Sync" };
    let _ = writeln!(
        out,
        "{title}: read {} users and {} groups in {:.2}s",
        report.users, report.groups, report.duration_seconds
    );
    if !report.warnings.is_empty() {
        let _ = writeln!(
            out,
            "{} warning(s) about the directory (see the log)",
            report.warnings.len()
        );
    }
    for sink in &report.sinks {
        let s = sink.summary;
        let _ = writeln!(
            out,
            "\nsink \"{}\" ({}): {} create, {} update, {} delete, {} member_add, {} member_remove",
            sink.name, sink.type_name, s.create, s.update, s.delete, s.member_add, s.member_remove
        );
        if sink.plan.is_empty() {
            let _ = writeln!(out, "  nothing to do");
        }
        for op in &sink.plan.operations {
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
                Operation::Create { resume: true, .. } => {
                    format!("{} (resuming an unconfirmed create)", group.name)
                }
                _ => group.name.clone(),
            };
            let _ = writeln!(
                out,
                "  {} {:<13} {detail}",
                sign(op.kind()),
                op.kind().as_str()
            );
        }
        match sink.result {
            SinkResult::Held => {
                let _ = writeln!(out, "  HELD: {}", sink.error.as_deref().unwrap_or(""));
            }
            SinkResult::Failed => {
                let _ = writeln!(out, "  FAILED: {}", sink.error.as_deref().unwrap_or(""));
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
