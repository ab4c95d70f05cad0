//! One run: read → plan → guard → apply → report. The dry run is the same code with `apply` skipped and nothing written.
//!
//! Failure isolation: a failed read fails every sink and writes nothing (docs/safety.md rule 1); a held
//! or failed sink does not stop the others; a sink's cursor moves only when every one of its
//! operations succeeded (rule 5).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, GroupsConfig, IncrementalMode, LdapConfig, SafetyConfig, UsersConfig};
use crate::directory::{self, Directory};
use crate::exit::ExitStatus;
use crate::ledger::Ledger;
use crate::model::{GroupSpec, OpKind, Plan, Summary};
use crate::plan::{self, Hold, Thresholds};
use crate::planfile::{self, PlanFileError, SavedPlan, SavedSink};
use crate::sinks::{ApplyReport, Recorder, Sink};
use crate::source::incremental::{self, Probe, ReadMode, Snapshot};
use crate::source::{ReadStats, SourceError};
use crate::store::{SinkRunRecord, Store, StoreError};
use crate::telemetry::metrics;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    pub full: bool,
    pub allow_deletes: bool,
    /// Accept a read that returned zero groups or users although a ledger holds groups
    /// (`sync --allow-empty-scope`, one run only).
    pub allow_empty_scope: bool,
    /// Set by a signal handler: the run stops after the request in flight.
    pub interrupt: Interrupt,
    /// Apply exactly this saved plan (`sync --plan FILE`) after checking that the directory and
    /// the ledgers are still those it was made from.
    pub saved: Option<Arc<SavedPlan>>,
    /// Fingerprint the directory read and each ledger (`--save-plan`).
    pub fingerprints: bool,
    /// Where the run reports how far its apply has come.
    pub progress: Progress,
    /// With no state file yet (`store` is `None`) in a real run: create it here, only once the
    /// directory read succeeded (a failed first read leaves no file behind).
    pub create_state: Option<PathBuf>,
}

/// How far the apply of a run has come, shared (cheaply cloned) with whatever shows it: the
/// progress bar of `sync`, the daemon's `STATUS=` line. The engine updates it as operations are
/// recorded, and `ldapsync_run_progress_ratio{sink}` with it.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<ProgressState>>);

#[derive(Debug, Default)]
struct ProgressState {
    sink: Option<String>,
    started: Option<Instant>,
    groups_total: u64,
    groups_done: u64,
    operations_total: u64,
    operations_done: u64,
    /// The sink's HTTP request count when its apply started.
    requests_before: u64,
    /// Per group source id, the weight of its operations not yet recorded.
    remaining: HashMap<String, u64>,
}

/// One moment of [`Progress`]: the sink being applied and its counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressSnapshot {
    pub sink: String,
    pub groups_done: u64,
    pub groups_total: u64,
    /// Operations, memberships counted one by one (as in the summary).
    pub operations_done: u64,
    pub operations_total: u64,
    /// HTTP requests the sink sent since its apply started (retries included).
    pub requests: u64,
    pub elapsed: Duration,
}

impl ProgressSnapshot {
    /// The share of operations done, 0 to 1.
    pub fn ratio(&self) -> f64 {
        if self.operations_total == 0 {
            return 1.0;
        }
        self.operations_done as f64 / self.operations_total as f64
    }

    /// Operations per second so far.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return 0.0;
        }
        self.operations_done as f64 / seconds
    }

    /// The time left at the current rate, once there is a rate.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| {
            Duration::from_secs_f64(
                self.operations_total.saturating_sub(self.operations_done) as f64 / rate,
            )
        })
    }
}

fn lock_progress(progress: &Progress) -> std::sync::MutexGuard<'_, ProgressState> {
    progress.0.lock().unwrap_or_else(|e| e.into_inner())
}

fn requests_sent(sink: &str) -> u64 {
    metrics()
        .sink_request_duration_seconds
        .with_label_values(&[sink])
        .get_sample_count()
}

impl Progress {
    /// A sink starts applying `plan`.
    fn begin(&self, sink: &str, plan: &Plan) {
        let mut remaining: HashMap<String, u64> = HashMap::new();
        for op in &plan.operations {
            *remaining.entry(op.group().source_id.clone()).or_default() += op.weight();
        }
        let total = plan.operations.iter().map(|op| op.weight()).sum();
        *lock_progress(self) = ProgressState {
            sink: Some(sink.to_string()),
            started: Some(Instant::now()),
            groups_total: remaining.len() as u64,
            groups_done: 0,
            operations_total: total,
            operations_done: 0,
            requests_before: requests_sent(sink),
            remaining,
        };
        let ratio = if total == 0 { 1.0 } else { 0.0 };
        metrics()
            .run_progress_ratio
            .with_label_values(&[sink])
            .set(ratio);
    }

    /// `count` operations (memberships) of `group` were recorded, done or failed.
    fn record(&self, group: &str, count: u64) {
        let mut state = lock_progress(self);
        state.operations_done = (state.operations_done + count).min(state.operations_total);
        if let Some(left) = state.remaining.get_mut(group) {
            *left = left.saturating_sub(count);
            if *left == 0 {
                state.remaining.remove(group);
                state.groups_done += 1;
            }
        }
        if let Some(sink) = &state.sink {
            let ratio = state.operations_done as f64 / state.operations_total.max(1) as f64;
            metrics()
                .run_progress_ratio
                .with_label_values(&[sink])
                .set(ratio);
        }
    }

    /// The sink's apply ended.
    fn end(&self) {
        lock_progress(self).sink = None;
    }

    /// Where the apply is now; `None` between applies (reading, planning, after the run).
    pub fn snapshot(&self) -> Option<ProgressSnapshot> {
        let state = lock_progress(self);
        let sink = state.sink.clone()?;
        Some(ProgressSnapshot {
            requests: requests_sent(&sink).saturating_sub(state.requests_before),
            sink,
            groups_done: state.groups_done,
            groups_total: state.groups_total,
            operations_done: state.operations_done,
            operations_total: state.operations_total,
            elapsed: state.started.map(|t| t.elapsed()).unwrap_or_default(),
        })
    }
}

/// A request to stop the run (SIGINT/SIGTERM in a one-shot `sync`): the sinks stop after the
/// request in flight, the sinks not yet started are skipped, and the run is recorded as
/// `interrupted`.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

/// How long a sink may take to reach its next record after an interrupt (a request in flight,
/// a retry wait) before it is dropped.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

impl Interrupt {
    /// Asks the run to stop because of `signal` (its number).
    pub fn trigger(&self, signal: i32) {
        let _ = self
            .signal
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }

    /// The signal that interrupted the run, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.token
            .is_cancelled()
            .then(|| self.signal.load(Ordering::SeqCst))
    }
}

/// How one sink's part of a run ended; one spelling everywhere (report, history, `/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkResult {
    /// Dry run: planned, nothing applied.
    Planned,
    Success,
    Held,
    Failed,
    /// Stopped by a signal after the request in flight.
    Interrupted,
}

impl SinkResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkResult::Planned => "planned",
            SinkResult::Success => "success",
            SinkResult::Held => "held",
            SinkResult::Failed => "failed",
            SinkResult::Interrupted => "interrupted",
        }
    }

    /// Reads a result back from the run history (`failure` is how older versions wrote `failed`).
    pub fn parse(text: &str) -> Option<SinkResult> {
        match text {
            "planned" => Some(SinkResult::Planned),
            "success" => Some(SinkResult::Success),
            "held" => Some(SinkResult::Held),
            "failed" | "failure" => Some(SinkResult::Failed),
            "interrupted" => Some(SinkResult::Interrupted),
            _ => None,
        }
    }
}

/// Why the directory read failed; every variant fails the run for every sink, nothing written.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the directory read crashed ({0}); treated as an incomplete read")]
    Crashed(String),
    #[error(
        "the {scope} scope ({base}) returned no entries but held {previous} at the last complete read; refusing to treat that as deletions. If the scope really is empty now, remove the state file or change the scope"
    )]
    ScopeEmptied {
        scope: &'static str,
        base: String,
        previous: u64,
    },
    #[error(
        "the {scope} scope ({base}) returned no entries while the ledgers hold {held} group(s); refusing to treat that as deletions, nothing was written. Check the base DN, filter and bind permissions; if the scope really is empty now, run `ldapsync sync --allow-empty-scope` once"
    )]
    EmptyScope {
        scope: &'static str,
        base: String,
        held: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The run-level outcome label of metrics and the run history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    Success,
    Held,
    Failure,
    Interrupted,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Held => "held",
            RunResult::Failure => "failure",
            RunResult::Interrupted => "interrupted",
        }
    }
}

/// What happened to one sink in a run.
#[derive(Debug)]
pub struct SinkOutcome {
    pub name: String,
    pub type_name: String,
    pub result: SinkResult,
    pub summary: Summary,
    pub plan: Plan,
    pub hold: Option<Hold>,
    pub preview: Option<Value>,
    pub applied: Option<ApplyReport>,
    pub error: Option<String>,
    /// The fingerprint of the sink's ledger when it was planned (`--save-plan`).
    pub ledger_fingerprint: Option<String>,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    pub dry_run: bool,
    pub read_error: Option<String>,
    /// The run accepted an empty scope (`--allow-empty-scope`).
    pub allow_empty_scope: bool,
    /// The signal that stopped the run, if one did.
    pub interrupted: Option<i32>,
    pub warnings: Vec<String>,
    pub users: u64,
    pub groups: u64,
    /// How the directory was read, and how long the read itself took.
    pub read: ReadInfo,
    pub duration_seconds: f64,
    pub sinks: Vec<SinkOutcome>,
    /// The fingerprint of the directory read (`--save-plan`, `--plan`).
    pub directory_fingerprint: Option<String>,
    /// The fingerprint of the saved plan this run saved or applied.
    pub plan_fingerprint: Option<String>,
}

/// How a run read the directory (the report's `"read"` object).
#[derive(Debug, Clone, Copy)]
pub struct ReadInfo {
    pub mode: ReadMode,
    /// The read alone: LDAP, the stored snapshot, resolving members.
    pub seconds: f64,
    /// Entries read from LDAP: all of them (full), or those added, changed or removed (incremental).
    pub changes: u64,
}

impl Default for ReadInfo {
    fn default() -> Self {
        ReadInfo {
            mode: ReadMode::Full,
            seconds: 0.0,
            changes: 0,
        }
    }
}

impl RunReport {
    fn failed_read(options: &RunOptions, error: String, started: Instant) -> RunReport {
        RunReport {
            dry_run: options.dry_run,
            read_error: Some(error),
            allow_empty_scope: options.allow_empty_scope,
            interrupted: options.interrupt.signal(),
            warnings: Vec::new(),
            users: 0,
            groups: 0,
            read: ReadInfo::default(),
            duration_seconds: started.elapsed().as_secs_f64(),
            sinks: Vec::new(),
            directory_fingerprint: None,
            plan_fingerprint: options.saved.as_ref().map(|p| p.fingerprint.clone()),
        }
    }

    /// The exit status of the run (README "Commands and exit codes").
    pub fn exit_status(&self) -> ExitStatus {
        if let Some(signal) = self.interrupted {
            return ExitStatus::Interrupted(signal);
        }
        if self.read_error.is_some() {
            return ExitStatus::Failed;
        }
        let count = |r: SinkResult| self.sinks.iter().filter(|s| s.result == r).count();
        let (failed, held, ok) = (
            count(SinkResult::Failed),
            count(SinkResult::Held),
            count(SinkResult::Success) + count(SinkResult::Planned),
        );
        match (failed, held, ok) {
            (0, 0, _) => ExitStatus::Success,
            (0, _, _) => ExitStatus::Held,
            (_, _, 0) => ExitStatus::Failed,
            _ => ExitStatus::Partial,
        }
    }

    /// `success`, `held` or `failure`, for metrics and history.
    pub fn result(&self) -> RunResult {
        match self.exit_status() {
            ExitStatus::Success => RunResult::Success,
            ExitStatus::Held => RunResult::Held,
            ExitStatus::Interrupted(_) => RunResult::Interrupted,
            _ => RunResult::Failure,
        }
    }
}

/// A run-level problem that is not a read failure: the state file, or a saved plan that no
/// longer applies.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Plan(#[from] PlanFileError),
}

/// Performs one run over `sinks`. `store` is `None` only for a dry run with no state file yet,
/// or a first real run (then `options.create_state` says where to create it after the read).
pub async fn run<S: std::fmt::Debug>(
    config: &Config<S>,
    mut store: Option<&mut Store>,
    sinks: &[Box<dyn Sink>],
    options: &RunOptions,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    let fingerprint = config_fingerprint(config);
    if let Some(store) = store.as_deref_mut()
        && quiet_eligible(config, options)
        && let Some(report) =
            quiet_run(config, store, sinks, options, &fingerprint, started).await?
    {
        return Ok(report);
    }
    let mode = match (options.dry_run, &options.saved) {
        (true, _) => "dry-run",
        (false, Some(_)) => "plan",
        (false, None) => "sync",
    };
    // Declared before `store` so that a file created by this run outlives the borrow of it.
    let mut created: Option<Store> = None;
    // A saved plan is checked before anything is written, the history included.
    let mut run_id = match (&store, options.dry_run, &options.saved) {
        (Some(store), false, None) => Some(store.begin_run(mode)?),
        _ => None,
    };

    let read = read(config, store.as_deref(), options).await;
    let (directory, stats, read_info, snapshot) = match read {
        Ok(read) => read,
        Err(error) => {
            let report = RunReport::failed_read(options, error.to_string(), started);
            if let (Some(store), Some(id)) = (store.as_deref_mut(), run_id) {
                store.finish_run(
                    id,
                    report.result().as_str(),
                    report.read_error.as_deref(),
                    &[],
                )?;
            }
            record_run_metrics(&report, options, started);
            return Ok(report);
        }
    };
    if let Some(saved) = &options.saved {
        saved.check_directory(&directory)?;
        for sink in &saved.sinks {
            let ledger = match store.as_deref() {
                Some(store) => store.load_ledger(&sink.name)?,
                None => Ledger::default(),
            };
            saved.check_ledger(sink, &ledger)?;
        }
    }
    if store.is_none()
        && !options.dry_run
        && let Some(path) = &options.create_state
    {
        store = Some(created.insert(Store::open(path)?));
    }
    if run_id.is_none()
        && !options.dry_run
        && let Some(store) = store.as_deref()
    {
        run_id = Some(store.begin_run(mode)?);
    }
    for warning in &directory.warnings {
        tracing::warn!("{warning}");
    }
    if let (Some(store), false) = (store.as_deref_mut(), options.dry_run) {
        store.record_scopes(
            &[
                ("users", directory.users.len() as u64),
                ("groups", directory.groups.len() as u64),
            ],
            &source_identity(&config.ldap, &config.users, &config.groups),
        )?;
        // The cookie moves with the snapshot, in one transaction, once the read is accepted.
        store.save_snapshot(snapshot.as_ref())?;
    }
    drop(snapshot);
    let thresholds = thresholds(&config.safety);

    let mut outcomes = Vec::with_capacity(sinks.len());
    for sink in sinks {
        if options.interrupt.signal().is_some() {
            tracing::warn!(sink = sink.name(), "interrupted: this sink was not started");
            continue;
        }
        let ledger = match store.as_deref() {
            Some(store) => store.load_ledger(sink.name())?,
            None => Ledger::default(),
        };
        let run_timeout = config
            .sinks
            .iter()
            .find(|s| s.name == sink.name())
            .and_then(|s| s.run_timeout_secs)
            .unwrap_or(DEFAULT_RUN_TIMEOUT_SECS);
        let saved = options
            .saved
            .as_ref()
            .and_then(|p| p.sinks.iter().find(|s| s.name == sink.name()));
        let mut outcome = run_sink(
            sink.as_ref(),
            run_timeout,
            &directory,
            &ledger,
            store.as_deref_mut(),
            &thresholds,
            options,
            saved,
        )
        .await?;
        if options.fingerprints {
            outcome.ledger_fingerprint = Some(planfile::ledger_fingerprint(&ledger));
        }
        outcomes.push(outcome);
    }
    warn_unmapped(&outcomes);

    let report = RunReport {
        dry_run: options.dry_run,
        read_error: None,
        allow_empty_scope: options.allow_empty_scope,
        interrupted: options.interrupt.signal(),
        warnings: directory.warnings.clone(),
        users: stats.users,
        groups: stats.groups,
        read: read_info,
        duration_seconds: started.elapsed().as_secs_f64(),
        sinks: outcomes,
        directory_fingerprint: (options.fingerprints || options.saved.is_some())
            .then(|| planfile::directory_fingerprint(&directory)),
        plan_fingerprint: options.saved.as_ref().map(|p| p.fingerprint.clone()),
    };
    if let (Some(store), Some(id)) = (store, run_id) {
        store.set_run_basis(id, &fingerprint, report.users, report.groups)?;
        store.finish_run(id, report.result().as_str(), None, &sink_records(&report))?;
    }
    record_run_metrics(&report, options, started);
    Ok(report)
}

/// Each sink's part of a finished run, as the history records it.
fn sink_records(report: &RunReport) -> Vec<SinkRunRecord> {
    report
        .sinks
        .iter()
        .map(|s| SinkRunRecord {
            sink: s.name.clone(),
            result: s.result.as_str().to_string(),
            planned: s.summary,
            applied: s.applied.as_ref().map(|a| a.applied).unwrap_or_default(),
            failed: s
                .applied
                .as_ref()
                .map(|a| a.failures.len() as u64)
                .unwrap_or(0),
            unmapped: s.applied.as_ref().map(|a| a.unmapped).unwrap_or(0),
            error: s.error.clone(),
            unmapped_members: s.plan.unmapped.clone(),
        })
        .collect()
}

/// What a run's plans depend on besides the directory and the ledgers: the configuration
/// (secrets show as `***`) and this ldapsync's version. A run under another fingerprint never
/// takes the no-change fast path.
pub fn config_fingerprint<S: std::fmt::Debug>(config: &Config<S>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(env!("CARGO_PKG_VERSION").as_bytes());
    hash.update(b"\0");
    hash.update(format!("{config:?}").as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a run may try the no-change fast path at all: a plain real incremental run (not
/// `--full`, a dry run, a saved plan, `--save-plan` or a one-run override) from an LDAP server.
fn quiet_eligible<S>(config: &Config<S>, options: &RunOptions) -> bool {
    !options.dry_run
        && !options.full
        && options.saved.is_none()
        && !options.fingerprints
        && !options.allow_empty_scope
        && options.interrupt.signal().is_none()
        && config.ldap.incremental == IncrementalMode::Auto
        && config.ldap.url.is_some()
}

/// The no-change fast path: when the state file vouches that the last run left nothing to do
/// ([`Store::quiet_basis`]) and a refresh from the stored cookies says the directory did not
/// change, the run is recorded with empty plans without loading the snapshot or any ledger.
/// `None`: read and plan as usual (any doubt, any error of the check itself).
async fn quiet_run<S>(
    config: &Config<S>,
    store: &mut Store,
    sinks: &[Box<dyn Sink>],
    options: &RunOptions,
    fingerprint: &str,
    started: Instant,
) -> Result<Option<RunReport>, EngineError> {
    let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    let Some(basis) = store.quiet_basis(&names, fingerprint)? else {
        return Ok(None);
    };
    let (users, groups) = (basis.users, basis.groups);
    let (ldap, users_config, groups_config) = (
        config.ldap.clone(),
        config.users.clone(),
        config.groups.clone(),
    );
    // On a task of its own, like a read: a decoder panic is contained.
    let probe = tokio::spawn(async move {
        incremental::probe(
            &ldap,
            &users_config,
            &groups_config,
            &basis.identity,
            &basis.users_cookie,
            &basis.groups_cookie,
        )
        .await
    })
    .await;
    let (users_cookie, groups_cookie) = match probe {
        Ok(Ok(Probe::Unchanged {
            users_cookie,
            groups_cookie,
        })) => (users_cookie, groups_cookie),
        Ok(Ok(Probe::Changed)) => return Ok(None),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "the no-change check was not possible; reading as usual");
            return Ok(None);
        }
        Err(e) => {
            tracing::debug!(error = %e, "the no-change check crashed; reading as usual");
            return Ok(None);
        }
    };
    let read = ReadInfo {
        mode: ReadMode::Incremental,
        seconds: started.elapsed().as_secs_f64(),
        changes: 0,
    };
    let run_id = store.begin_run("sync")?;
    store.update_snapshot_cookies(users_cookie.as_deref(), groups_cookie.as_deref())?;
    let m = metrics();
    m.ldap_entries_read_total
        .with_label_values(&["user"])
        .inc_by(users);
    m.ldap_entries_read_total
        .with_label_values(&["group"])
        .inc_by(groups);
    let outcomes: Vec<SinkOutcome> = sinks
        .iter()
        .map(|sink| {
            let name = sink.name();
            for kind in OpKind::ALL {
                m.planned_operations
                    .with_label_values(&[name, kind.as_str()])
                    .set(0);
                m.drift_operations
                    .with_label_values(&[name, kind.as_str()])
                    .set(0);
            }
            m.safety_hold_active.with_label_values(&[name]).set(0);
            m.unmapped_members.with_label_values(&[name]).set(0);
            m.run_progress_ratio.with_label_values(&[name]).set(1.0);
            m.last_success_timestamp_seconds
                .with_label_values(&[name])
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
            // The same line as a sink run that applied nothing.
            tracing::info!(
                sink = name,
                result = ?SinkResult::Success,
                created = 0,
                updated = 0,
                deleted = 0,
                members_added = 0,
                members_removed = 0,
                failed = 0,
                unmapped = 0,
                seconds = 0.0,
                "sink run finished"
            );
            SinkOutcome {
                name: name.to_string(),
                type_name: sink.type_name().to_string(),
                result: SinkResult::Success,
                summary: Summary::default(),
                plan: Plan::default(),
                hold: None,
                preview: None,
                applied: Some(ApplyReport::default()),
                error: None,
                ledger_fingerprint: None,
            }
        })
        .collect();
    tracing::info!(
        users,
        groups,
        "the directory did not change and the last run left nothing to do: nothing to plan"
    );
    let report = RunReport {
        dry_run: false,
        read_error: None,
        allow_empty_scope: false,
        interrupted: options.interrupt.signal(),
        warnings: Vec::new(),
        users,
        groups,
        read,
        duration_seconds: started.elapsed().as_secs_f64(),
        sinks: outcomes,
        directory_fingerprint: None,
        plan_fingerprint: None,
    };
    store.set_run_basis(run_id, fingerprint, users, groups)?;
    store.finish_run(
        run_id,
        report.result().as_str(),
        None,
        &sink_records(&report),
    )?;
    record_run_metrics(&report, options, started);
    Ok(Some(report))
}

/// The `[safety]` section as the planner's thresholds.
fn thresholds(safety: &SafetyConfig) -> Thresholds {
    Thresholds {
        max_group_deletes: safety.max_group_deletes,
        max_group_delete_percent: safety.max_group_delete_percent,
        max_member_removes: safety.max_member_removes,
        max_member_remove_percent: safety.max_member_remove_percent,
        percent_floor: safety.percent_floor,
    }
}

/// Reads the directory and applies the empty-scope rules: a scope that returns nothing while
/// it held entries at the last complete read, or while any sink's ledger holds groups (whatever
/// scope earlier runs read), is an incomplete read, not a deletion — unless the operator
/// accepts it for this one run (`allow_empty_scope`).
async fn read<S>(
    config: &Config<S>,
    store: Option<&Store>,
    options: &RunOptions,
) -> Result<(Directory, ReadStats, ReadInfo, Option<Snapshot>), ReadError> {
    let allow_empty_scope = options.allow_empty_scope;
    let started = Instant::now();
    // An incremental read refreshes the snapshot the last read stored (never under --full).
    let stored = match store {
        Some(store)
            if !options.full
                && config.ldap.incremental == IncrementalMode::Auto
                && config.ldap.url.is_some() =>
        {
            store.load_snapshot()?
        }
        _ => None,
    };
    // ldap3's decoders can panic on malformed BER (ldap3 #135): contain that as a failed read.
    let (ldap, users, groups, full) = (
        config.ldap.clone(),
        config.users.clone(),
        config.groups.clone(),
        options.full,
    );
    // Only a run that stores the snapshot records one: a real run, whose state file is open or
    // is created once the read is accepted (a dry run stores nothing).
    let record = !options.dry_run && (store.is_some() || options.create_state.is_some());
    let handle = tokio::spawn(async move {
        directory::read_with_snapshot(&ldap, &users, &groups, stored, full, record).await
    });
    let (directory, read) = match handle.await {
        Ok(read) => read?,
        Err(e) => return Err(ReadError::Crashed(e.to_string())),
    };
    let stats = read.stats;
    let info = ReadInfo {
        mode: read.mode,
        seconds: started.elapsed().as_secs_f64(),
        changes: read.changes,
    };
    // The directory's entries, whatever the mode (an incremental run delivers them from the
    // refreshed snapshot).
    let m = metrics();
    m.ldap_entries_read_total
        .with_label_values(&["user"])
        .inc_by(stats.users);
    m.ldap_entries_read_total
        .with_label_values(&["group"])
        .inc_by(stats.groups);
    if let Some(store) = store
        && !allow_empty_scope
    {
        let held: u64 = store
            .ledger_counts()?
            .iter()
            .map(|c| c.groups + c.pending_creates)
            .sum();
        for (scope, now, base) in [
            ("groups", directory.groups.len(), &config.groups.base_dn),
            ("users", directory.users.len(), &config.users.base_dn),
        ] {
            if now == 0 && held > 0 {
                return Err(ReadError::EmptyScope {
                    scope,
                    base: base.clone(),
                    held,
                });
            }
        }
        let identity = source_identity(&config.ldap, &config.users, &config.groups);
        for (scope, now, base) in [
            ("users", directory.users.len(), &config.users.base_dn),
            ("groups", directory.groups.len(), &config.groups.base_dn),
        ] {
            if let Some(previous) = store.scope(scope)?
                && previous.source == identity
                && previous.entries > 0
                && now == 0
            {
                return Err(ReadError::ScopeEmptied {
                    scope,
                    base: base.clone(),
                    previous: previous.entries,
                });
            }
        }
    }
    Ok((directory, stats, info, read.snapshot))
}

/// Identifies where a read came from: server or file, scopes and filters.
fn source_identity(ldap: &LdapConfig, users: &UsersConfig, groups: &GroupsConfig) -> String {
    let source = ldap
        .url
        .clone()
        .or_else(|| {
            ldap.ldif_file
                .as_ref()
                .map(|p| format!("ldif:{}", p.display()))
        })
        .unwrap_or_default();
    format!(
        "{source}|{}|{}|{}|{}",
        users.base_dn, users.filter, groups.base_dn, groups.filter
    )
}

/// The default of a sink's `run_timeout_secs`.
pub const DEFAULT_RUN_TIMEOUT_SECS: u64 = 3600;

#[allow(clippy::too_many_arguments)]
async fn run_sink(
    sink: &dyn Sink,
    run_timeout_secs: u64,
    directory: &Directory,
    ledger: &Ledger,
    store: Option<&mut Store>,
    thresholds: &Thresholds,
    options: &RunOptions,
    saved: Option<&SavedSink>,
) -> Result<SinkOutcome, EngineError> {
    // A saved plan is applied exactly as reviewed: no new look at the target, no guard (the
    // operator approved it, held or not).
    let view = match saved {
        Some(_) => Ok(Default::default()),
        // What the target holds (read-only, dry runs too): users the members map to, and
        // groups that exist already (adopted instead of created).
        None => sink.resolve(directory, ledger, options.full).await,
    };
    let view = match view {
        Ok(view) => view,
        Err(e) => {
            let error = e.to_string();
            return Ok(SinkOutcome {
                name: sink.name().to_string(),
                type_name: sink.type_name().to_string(),
                result: SinkResult::Failed,
                summary: Summary::default(),
                plan: Plan::default(),
                hold: None,
                preview: None,
                applied: None,
                error: Some(error),
                ledger_fingerprint: None,
            });
        }
    };
    let plan = match saved {
        Some(saved) => saved.plan(),
        None => {
            let mut plan = plan::plan(directory, ledger, &view);
            plan.full = options.full;
            plan
        }
    };
    // The users found this time join the sink's user map (not looked up again next run).
    let mut store = store;
    if let (Some(store), false) = (store.as_deref_mut(), options.dry_run) {
        store.record_users(sink.name(), &view.learned)?;
    }
    let summary = plan.summary();
    let m = metrics();
    let drift = plan.drift_summary();
    for kind in OpKind::ALL {
        m.planned_operations
            .with_label_values(&[sink.name(), kind.as_str()])
            .set(summary.get(kind) as i64);
        m.drift_operations
            .with_label_values(&[sink.name(), kind.as_str()])
            .set(drift.get(kind) as i64);
    }
    let reconciled = view.actual.is_some();
    let hold = plan::guard(
        &plan,
        ledger,
        thresholds,
        options.allow_deletes || saved.is_some(),
    );
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
        ledger_fingerprint: None,
    };
    m.safety_hold_active
        .with_label_values(&[sink.name()])
        .set(outcome.hold.is_some() as i64);
    if let Some(hold) = &outcome.hold {
        m.safety_holds_total.with_label_values(&[sink.name()]).inc();
        outcome.result = SinkResult::Held;
        outcome.error = Some(hold.message(options.dry_run));
        return Ok(outcome);
    }
    if options.dry_run {
        return Ok(outcome);
    }
    let Some(store) = store else {
        return Ok(outcome);
    };
    // A full reconcile: the ledger is rewritten from what was read in the target first.
    for resync in &outcome.plan.resync {
        store.rewrite_group(sink.name(), &resync.group, resync.members.as_deref())?;
    }
    let sink_name = sink.name().to_string();
    let progress = options.progress.clone();
    let observer = move |kind: OpKind, group: &GroupSpec, success: bool, count: u64| {
        metrics()
            .applied_operations_total
            .with_label_values(&[
                sink_name.as_str(),
                kind.as_str(),
                if success { "success" } else { "failure" },
            ])
            .inc_by(count);
        progress.record(&group.source_id, count);
    };
    options.progress.begin(sink.name(), &outcome.plan);
    let mut ledger_writer = store.ledger_writer(sink.name());
    let mut recorder = Recorder::new(&mut ledger_writer, ledger, sink.name())
        .with_observer(&observer)
        .with_stop(options.interrupt.token.clone());
    let started = Instant::now();
    let result = if outcome.plan.is_empty() && !options.full {
        Ok(())
    } else {
        // Past the sink's run timeout the apply is dropped between two awaits: every op
        // recorded so far stays recorded, an unconfirmed create stays an intent (resolved by
        // lookup on the next run), and the cursor does not move.
        let limit = std::time::Duration::from_secs(run_timeout_secs);
        let stop = options.interrupt.token.clone();
        let apply = async {
            tokio::select! {
                result = sink.apply(&outcome.plan, &mut recorder) => result,
                // The sink stops at its next record; one stuck in a request or a retry wait is
                // dropped after a grace period (its unconfirmed create stays an intent).
                _ = async { stop.cancelled().await; tokio::time::sleep(INTERRUPT_GRACE).await } => {
                    Err(crate::sinks::SinkError::Interrupted { sink: sink.name().to_string() })
                }
            }
        };
        match tokio::time::timeout(limit, apply).await {
            Ok(result) => result,
            Err(_) => Err(crate::sinks::SinkError::Target {
                sink: sink.name().to_string(),
                message: format!(
                    "the sink's run took longer than run_timeout_secs ({run_timeout_secs} s) and was stopped; what was applied is recorded and the next run continues. Check the target's latency and rate limits, or raise run_timeout_secs"
                ),
            }),
        }
    };
    options.progress.end();
    let report = std::mem::take(&mut recorder.report);
    drop(recorder);
    drop(ledger_writer);
    m.unmapped_members
        .with_label_values(&[sink.name()])
        .set((report.unmapped + outcome.summary.unmapped) as i64);
    match result {
        Err(e @ crate::sinks::SinkError::Interrupted { .. }) => {
            outcome.result = SinkResult::Interrupted;
            outcome.error = Some(e.to_string());
        }
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
            if reconciled {
                store.set_reconciled(sink.name())?;
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
    outcome.applied = Some(report);
    Ok(outcome)
}

/// One WARN line per run naming the directory users that have no user in a target (from the
/// plans, and from sinks that find out only while applying), whatever the number of groups
/// and sinks they are missing from.
fn warn_unmapped(outcomes: &[SinkOutcome]) {
    let mut per_sink = Vec::new();
    let mut memberships = 0u64;
    for outcome in outcomes {
        let mut users: std::collections::BTreeSet<&str> = outcome
            .plan
            .unmapped
            .iter()
            .flat_map(|u| u.members.iter().map(String::as_str))
            .collect();
        memberships += outcome.summary.unmapped;
        if let Some(applied) = &outcome.applied {
            users.extend(applied.unmapped_users.iter().map(String::as_str));
            memberships += applied.unmapped;
        }
        if !users.is_empty() {
            let names: Vec<&str> = users.into_iter().collect();
            per_sink.push(format!("{}: {}", outcome.name, names.join(", ")));
        }
    }
    if per_sink.is_empty() {
        return;
    }
    tracing::warn!(
        memberships,
        users = %per_sink.join("; "),
        "directory users with no matching user in the target; their memberships are not planned (they are added once the user exists there)"
    );
}

fn record_run_metrics(report: &RunReport, options: &RunOptions, started: Instant) {
    if options.dry_run {
        return;
    }
    let m = metrics();
    m.runs_total
        .with_label_values(&[report.result().as_str()])
        .inc();
    m.run_duration_seconds
        .observe(started.elapsed().as_secs_f64());
}
