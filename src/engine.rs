//! One run: read → plan → guard → apply → report. The dry run is the same code with `apply` skipped and nothing written.
//!
//! Failure isolation: a failed read fails every sink and writes nothing (DESIGN.md §4.1); a held
//! or failed sink does not stop the others; a sink's cursor moves only when every one of its
//! operations succeeded (§4.5).

use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, SafetyConfig};
use crate::directory::Directory;
use crate::ledger::Ledger;
use crate::plan::{self, Hold, OpKind, Plan, Summary};
use crate::sinks::{ApplyReport, Recorder, Sink};
use crate::source::{self, ReadStats};
use crate::store::{SinkRunRecord, Store};
use crate::telemetry::metrics;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    pub full: bool,
    pub allow_deletes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkResult {
    /// Dry run: planned, nothing applied.
    Planned,
    Success,
    Held,
    Failed,
}

/// What happened to one sink in a run.
#[derive(Debug, Serialize)]
pub struct SinkOutcome {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub result: SinkResult,
    pub summary: Summary,
    #[serde(skip)]
    pub plan: Plan,
    pub hold: Option<Hold>,
    pub preview: Option<Value>,
    pub applied: Option<ApplyReport>,
    pub error: Option<String>,
}

/// The outcome of a run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub dry_run: bool,
    pub read_error: Option<String>,
    pub warnings: Vec<String>,
    pub users: u64,
    pub groups: u64,
    pub duration_seconds: f64,
    pub sinks: Vec<SinkOutcome>,
}

impl RunReport {
    fn failed_read(dry_run: bool, error: String, started: Instant) -> RunReport {
        RunReport {
            dry_run,
            read_error: Some(error),
            warnings: Vec::new(),
            users: 0,
            groups: 0,
            duration_seconds: started.elapsed().as_secs_f64(),
            sinks: Vec::new(),
        }
    }

    /// Exit code per DESIGN.md §5.
    pub fn exit_code(&self) -> i32 {
        if self.read_error.is_some() {
            return 1;
        }
        let count = |r: SinkResult| self.sinks.iter().filter(|s| s.result == r).count();
        let (failed, held, ok) = (
            count(SinkResult::Failed),
            count(SinkResult::Held),
            count(SinkResult::Success) + count(SinkResult::Planned),
        );
        match (failed, held, ok) {
            (0, 0, _) => 0,
            (0, _, _) => 3,
            (_, _, 0) => 1,
            _ => 4,
        }
    }

    /// `success`, `held` or `failure`, for metrics and history.
    pub fn result_label(&self) -> &'static str {
        match self.exit_code() {
            0 => "success",
            3 => "held",
            _ => "failure",
        }
    }
}

/// A run-level problem that is not a read failure: the state file.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Performs one run over `sinks`. `store` is `None` only for a dry run with no state file yet.
pub async fn run(
    config: &Config,
    mut store: Option<&mut Store>,
    sinks: &[Box<dyn Sink>],
    options: &RunOptions,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    let mode = if options.dry_run { "dry-run" } else { "sync" };
    let run_id = match (&store, options.dry_run) {
        (Some(store), false) => Some(store.begin_run(mode)?),
        _ => None,
    };

    let read = read(config, store.as_deref()).await;
    let (directory, stats) = match read {
        Ok(read) => read,
        Err(error) => {
            tracing::error!(%error, "directory read failed; nothing was written to any sink");
            let report = RunReport::failed_read(options.dry_run, error, started);
            if let (Some(store), Some(id)) = (store.as_deref_mut(), run_id) {
                store.finish_run(id, "failure", report.read_error.as_deref(), &[])?;
            }
            record_run_metrics(&report, options, started);
            return Ok(report);
        }
    };
    for warning in &directory.warnings {
        tracing::warn!("{warning}");
    }
    if let (Some(store), false) = (store.as_deref_mut(), options.dry_run) {
        store.save_snapshot(&directory, &source_identity(config))?;
    }

    let mut outcomes = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let ledger = match store.as_deref() {
            Some(store) => store.load_ledger(sink.name())?,
            None => Ledger::default(),
        };
        let outcome = run_sink(
            sink.as_ref(),
            &directory,
            &ledger,
            store.as_deref_mut(),
            &config.safety,
            options,
        )
        .await?;
        outcomes.push(outcome);
    }

    let report = RunReport {
        dry_run: options.dry_run,
        read_error: None,
        warnings: directory.warnings.clone(),
        users: stats.users,
        groups: stats.groups,
        duration_seconds: started.elapsed().as_secs_f64(),
        sinks: outcomes,
    };
    if let (Some(store), Some(id)) = (store, run_id) {
        let records: Vec<SinkRunRecord> = report
            .sinks
            .iter()
            .map(|s| SinkRunRecord {
                sink: s.name.clone(),
                result: format!("{:?}", s.result).to_lowercase(),
                planned: s.summary,
                applied: s.applied.as_ref().map(|a| a.applied).unwrap_or_default(),
                failed: s
                    .applied
                    .as_ref()
                    .map(|a| a.failures.len() as u64)
                    .unwrap_or(0),
                unmapped: s.applied.as_ref().map(|a| a.unmapped).unwrap_or(0),
                error: s.error.clone(),
            })
            .collect();
        store.finish_run(id, report.result_label(), None, &records)?;
    }
    record_run_metrics(&report, options, started);
    Ok(report)
}

/// Reads the directory and applies the "scope emptied" rule (DESIGN.md §4.1).
async fn read(config: &Config, store: Option<&Store>) -> Result<(Directory, ReadStats), String> {
    // ldap3's decoders can panic on malformed BER (ldap3 #135): contain that as a failed read.
    let owned = config.clone();
    let handle = tokio::spawn(async move { source::read_directory(&owned).await });
    let (directory, stats) = match handle.await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => {
            return Err(format!(
                "the directory read crashed ({e}); treated as an incomplete read"
            ));
        }
    };
    let m = metrics();
    m.ldap_entries_read_total
        .with_label_values(&["user"])
        .inc_by(stats.users);
    m.ldap_entries_read_total
        .with_label_values(&["group"])
        .inc_by(stats.groups);
    if let Some(store) = store {
        let identity = source_identity(config);
        for (scope, now, base) in [
            ("users", directory.users.len(), &config.users.base_dn),
            ("groups", directory.groups.len(), &config.groups.base_dn),
        ] {
            let previous = store.scope(scope).map_err(|e| e.to_string())?;
            if let Some(previous) = previous
                && previous.source == identity
                && previous.entries > 0
                && now == 0
            {
                return Err(format!(
                    "the {scope} scope ({base}) returned no entries but held {} at the last complete read; refusing to treat that as deletions. If the scope really is empty now, remove the state file or change the scope",
                    previous.entries
                ));
            }
        }
    }
    Ok((directory, stats))
}

/// Identifies where a snapshot came from: server or file, scopes and filters.
fn source_identity(config: &Config) -> String {
    let source = config
        .ldap
        .url
        .clone()
        .or_else(|| {
            config
                .ldap
                .ldif_file
                .as_ref()
                .map(|p| format!("ldif:{}", p.display()))
        })
        .unwrap_or_default();
    format!(
        "{source}|{}|{}|{}|{}",
        config.users.base_dn, config.users.filter, config.groups.base_dn, config.groups.filter
    )
}

async fn run_sink(
    sink: &dyn Sink,
    directory: &Directory,
    ledger: &Ledger,
    store: Option<&mut Store>,
    safety: &SafetyConfig,
    options: &RunOptions,
) -> Result<SinkOutcome, EngineError> {
    let mut plan = plan::plan(directory, ledger);
    plan.full = options.full;
    let summary = plan.summary();
    let m = metrics();
    for kind in OpKind::ALL {
        m.planned_operations
            .with_label_values(&[sink.name(), kind.as_str()])
            .set(summary.get(kind) as i64);
    }
    let hold = plan::guard(&plan, ledger, safety, options.allow_deletes);
    let mut outcome = SinkOutcome {
        name: sink.name().to_string(),
        type_name: sink.type_name().to_string(),
        result: SinkResult::Planned,
        summary,
        preview: options
            .dry_run
            .then(|| sink.preview(&plan, ledger, options.full))
            .flatten(),
        plan,
        hold,
        applied: None,
        error: None,
    };
    m.safety_hold_active
        .with_label_values(&[sink.name()])
        .set(outcome.hold.is_some() as i64);
    if let Some(hold) = &outcome.hold {
        m.safety_holds_total.with_label_values(&[sink.name()]).inc();
        tracing::warn!(sink = sink.name(), "{hold}");
        outcome.result = SinkResult::Held;
        outcome.error = Some(hold.to_string());
        return Ok(outcome);
    }
    if options.dry_run {
        return Ok(outcome);
    }
    let Some(store) = store else {
        return Ok(outcome);
    };
    let sink_name = sink.name().to_string();
    let observer = move |kind: OpKind, success: bool, count: u64| {
        metrics()
            .applied_operations_total
            .with_label_values(&[
                sink_name.as_str(),
                kind.as_str(),
                if success { "success" } else { "failure" },
            ])
            .inc_by(count);
    };
    let mut recorder = Recorder::new(store, sink.name()).with_observer(&observer);
    let started = Instant::now();
    let result = if outcome.plan.is_empty() && !options.full {
        Ok(())
    } else {
        sink.apply(&outcome.plan, ledger, &mut recorder).await
    };
    let report = std::mem::take(&mut recorder.report);
    drop(recorder);
    m.unmapped_members
        .with_label_values(&[sink.name()])
        .set(report.unmapped as i64);
    match result {
        Err(e) => {
            outcome.result = SinkResult::Failed;
            outcome.error = Some(e.to_string());
        }
        Ok(()) if !report.failures.is_empty() => {
            outcome.result = SinkResult::Failed;
            outcome.error = Some(format!(
                "{} operation(s) failed; the first: {} {}: {}",
                report.failures.len(),
                report.failures[0].op,
                report.failures[0].group,
                report.failures[0].error
            ));
        }
        Ok(()) => {
            if let Some(cursor) = &report.cursor {
                store.set_cursor(sink.name(), cursor)?;
            }
            outcome.result = SinkResult::Success;
            m.last_success_timestamp_seconds
                .with_label_values(&[sink.name()])
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
    }
    let a = report.applied;
    tracing::info!(
        sink = sink.name(),
        result = ?outcome.result,
        created = a.create,
        updated = a.update,
        deleted = a.delete,
        members_added = a.member_add,
        members_removed = a.member_remove,
        failed = report.failures.len(),
        unmapped = report.unmapped,
        seconds = started.elapsed().as_secs_f64(),
        "sink run finished"
    );
    if let Some(error) = &outcome.error {
        tracing::error!(sink = sink.name(), "{error}");
    }
    outcome.applied = Some(report);
    Ok(outcome)
}

fn record_run_metrics(report: &RunReport, options: &RunOptions, started: Instant) {
    if options.dry_run {
        return;
    }
    let m = metrics();
    m.runs_total
        .with_label_values(&[report.result_label()])
        .inc();
    m.run_duration_seconds
        .observe(started.elapsed().as_secs_f64());
}
