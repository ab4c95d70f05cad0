//! The daemon: cron schedule, metrics/health endpoints, systemd notification, reload and shutdown.
//!
//! One task (the *scheduler loop*) owns the configuration, the sinks and the one [`Store`] the
//! process holds for its whole life, and performs every run, so runs can never overlap.
//! tokio-cron-scheduler only produces ticks: its job callbacks hand a tick to the loop, or, when
//! a run is in progress (or a run is already queued), skip it and count it in
//! `ldapsync_skipped_ticks_total`.
//!
//! Guards against the scheduler's known pitfalls (specs/rust-crates.md §2.1):
//! - it stores a time zone as a *fixed offset* taken when the job is created: the loop re-creates
//!   the jobs whenever the configured zone's UTC offset changes (DST);
//! - it polls every 500 ms, so a tick arrives up to about half a second late (harmless here);
//! - repeated jobs can stop firing (#113): the loop computes, with croner and the real zone,
//!   when the next tick is due, and when none arrived well after that (`STALL_GRACE`), it
//!   re-creates the scheduler, counts `ldapsync_scheduler_restarts_total` and runs the missed tick.
//!
//! systemd (`Type=notify`): `READY=1` after the configuration is loaded, the state file is open,
//! the HTTP listener is bound and the first LDAP bind check passed; `STATUS=` after each run;
//! `WATCHDOG=1` from the scheduler loop, also while a run is in progress (so a loop that stops
//! being polled gets restarted by systemd). All of it is a no-op outside systemd.
//!
//! Signals: SIGTERM/SIGINT let the run in flight finish (bounded by [`SHUTDOWN_GRACE`]), record
//! it and exit 0; SIGHUP reloads the configuration (`app::load_config` + `app::build_sinks`): a bad
//! new configuration is rejected and the running one kept, with an error log line and
//! `ldapsync_config_reloads_total{result="failure"}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

use crate::app::{self, Config};
use crate::config::ScheduleConfig;
use crate::engine::{self, RunOptions, RunReport, RunResult, SinkResult};
use crate::exit::ExitStatus;
use crate::sinks::Sink;
use crate::store::{RunRecord, Store};
use crate::telemetry::metrics;

/// How long SIGTERM/SIGINT waits for the run in flight before abandoning it (the unit's
/// `TimeoutStopSec` is larger).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// How late a tick may be before the scheduler is considered stalled (it polls every 500 ms).
const STALL_GRACE: Duration = Duration::from_secs(5);

/// Default `[metrics] listen`.
const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Why the daemon could not start or keep running.
#[derive(Debug, thiserror::Error)]
enum DaemonError {
    /// Usage or configuration problem (exit 2).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr} ([metrics] listen): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("first LDAP bind check failed: {0}")]
    Source(String),
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
    #[error("cannot install the signal handlers: {0}")]
    Signal(std::io::Error),
}

impl DaemonError {
    fn exit_status(&self) -> ExitStatus {
        match self {
            DaemonError::Config(_) => ExitStatus::Usage,
            _ => ExitStatus::Failed,
        }
    }
}

/// The parsed `[schedule]`.
#[derive(Debug, Clone)]
struct Schedule {
    config: ScheduleConfig,
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    fn from_config(config: &Config) -> Result<Schedule, String> {
        let Some(schedule) = &config.schedule else {
            return Err(format!(
                "{}: [schedule] is required by `ldapsync daemon` (e.g. [schedule] cron = \"0 */15 * * * *\")",
                config.shown_path()
            ));
        };
        let cron = schedule.cron.cron.clone();
        let tz = schedule.timezone.unwrap_or(Tz::UTC);
        Ok(Schedule {
            config: schedule.clone(),
            cron,
            tz,
        })
    }

    /// The next tick of `cron` strictly after `after`, in the configured zone.
    fn next_after(&self, cron: &Cron, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        cron.find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The longest gap between consecutive ticks of the main cron over its next 64 ticks.
    fn interval(&self, now: DateTime<Utc>) -> Duration {
        let mut longest = Duration::ZERO;
        let mut previous = self.next_after(&self.cron, now);
        for _ in 0..64 {
            let Some(p) = previous else { break };
            let Some(next) = self.next_after(&self.cron, p) else {
                break;
            };
            longest = longest.max((next - p).to_std().unwrap_or_default());
            previous = Some(next);
        }
        if longest.is_zero() {
            Duration::from_secs(3600)
        } else {
            longest
        }
    }

    /// The zone's current UTC offset in seconds (what tokio-cron-scheduler freezes into a job).
    fn offset_now(&self) -> i32 {
        self.tz
            .offset_from_utc_datetime(&Utc::now().naive_utc())
            .fix()
            .local_minus_utc()
    }
}

/// Tick hand-over between the scheduler's callbacks and the scheduler loop.
#[derive(Default)]
struct Ticks {
    /// A run is in progress.
    busy: AtomicBool,
    /// A tick waits for the loop: `Some(full)`.
    pending: Mutex<Option<bool>>,
    /// A full-sync tick was skipped while busy: the next run is a full one.
    full_owed: AtomicBool,
    /// When the main cron last fired (skipped or not).
    last_fire: Mutex<Option<DateTime<Utc>>>,
    notify: Notify,
}

impl Ticks {
    fn fire(&self, full: bool) {
        if !full {
            *lock(&self.last_fire) = Some(Utc::now());
        }
        if self.busy.load(Ordering::SeqCst) {
            if full {
                self.full_owed.store(true, Ordering::SeqCst);
            }
            metrics().skipped_ticks_total.inc();
            tracing::info!(full, "scheduled tick skipped: a run is still in progress");
            return;
        }
        let mut pending = lock(&self.pending);
        match *pending {
            Some(queued_full) => {
                *pending = Some(queued_full || full);
                if queued_full == full {
                    metrics().skipped_ticks_total.inc();
                    tracing::info!(full, "scheduled tick skipped: a run is already queued");
                }
            }
            None => *pending = Some(full),
        }
        drop(pending);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<bool> {
        let full = lock(&self.pending).take()?;
        Some(full || self.full_owed.swap(false, Ordering::SeqCst))
    }
}

/// Locks a mutex, recovering the data if a holder panicked (the data are plain values).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running tokio-cron-scheduler with the jobs of one [`Schedule`].
struct Ticker {
    scheduler: JobScheduler,
    /// The UTC offset frozen into the jobs.
    offset: i32,
    /// When it was started (reference for the stall check before the first tick).
    started: DateTime<Utc>,
}

impl Ticker {
    async fn start(schedule: &Schedule, ticks: &Arc<Ticks>) -> Result<Ticker, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        let mut crons = vec![(schedule.config.cron.expression.clone(), false)];
        if let Some(full) = &schedule.config.full_sync_cron {
            crons.push((full.expression.clone(), true));
        }
        for (expression, full) in crons {
            let ticks = ticks.clone();
            let job = Job::new_async_tz(expression.as_str(), schedule.tz, move |_, _| {
                let ticks = ticks.clone();
                Box::pin(async move { ticks.fire(full) })
            })?;
            scheduler.add(job).await?;
        }
        scheduler.start().await?;
        Ok(Ticker {
            scheduler,
            offset: schedule.offset_now(),
            started: Utc::now(),
        })
    }

    async fn stop(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "stopping the scheduler");
        }
    }
}

/// The latest run of one sink, for `/readyz`.
#[derive(Debug, Clone)]
struct SinkHealth {
    finished_at: DateTime<Utc>,
    result: SinkResult,
    error: Option<String>,
}

/// What `/readyz` decides on.
#[derive(Debug, Default)]
struct Health {
    sinks: Vec<String>,
    max_age: Duration,
    latest: BTreeMap<String, SinkHealth>,
}

impl Health {
    /// `Ok(body)` when ready, `Err(reasons)` when not.
    fn readiness(&self, now: DateTime<Utc>) -> Result<String, String> {
        let mut problems = Vec::new();
        for sink in &self.sinks {
            match self.latest.get(sink) {
                None => problems.push(format!("sink {sink:?}: no completed run yet")),
                Some(h) if h.result != SinkResult::Success => problems.push(format!(
                    "sink {sink:?}: latest run at {} {}{}",
                    h.finished_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    if h.result == SinkResult::Held {
                        "was held by a safety threshold"
                    } else {
                        "failed"
                    },
                    h.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
                Some(h) => {
                    let age = (now - h.finished_at).to_std().unwrap_or_default();
                    if age > self.max_age {
                        problems.push(format!(
                            "sink {sink:?}: latest successful run is {}s old (ready_max_age_secs = {})",
                            age.as_secs(),
                            self.max_age.as_secs()
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "ready: the latest run of every sink ({}) succeeded within {}s\n",
                self.sinks.len(),
                self.max_age.as_secs()
            ))
        } else {
            Err(format!("not ready:\n{}\n", problems.join("\n")))
        }
    }

    fn record(&mut self, sink: &str, at: DateTime<Utc>, result: SinkResult, error: Option<String>) {
        self.latest.insert(
            sink.to_string(),
            SinkHealth {
                finished_at: at,
                result,
                error,
            },
        );
    }

    /// Applies a run from the history (oldest first) so a restarted daemon knows where it is.
    fn seed(&mut self, run: &RunRecord) {
        if run.mode != "sync" {
            return;
        }
        let Some(at) = run
            .finished_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            return;
        };
        if run.sinks.is_empty() {
            if let Some(error) = &run.error {
                for sink in self.sinks.clone() {
                    self.record(&sink, at, SinkResult::Failed, Some(error.clone()));
                }
            }
            return;
        }
        for s in &run.sinks {
            let result = SinkResult::parse(&s.result).unwrap_or(SinkResult::Failed);
            self.record(&s.sink, at, result, s.error.clone());
        }
    }

    /// Applies a finished run.
    fn apply(&mut self, report: &RunReport) {
        let at = Utc::now();
        if let Some(error) = &report.read_error {
            for sink in self.sinks.clone() {
                self.record(&sink, at, SinkResult::Failed, Some(error.clone()));
            }
            return;
        }
        for s in &report.sinks {
            self.record(&s.name, at, s.result, s.error.clone());
        }
    }
}

type SharedHealth = Arc<Mutex<Health>>;

/// `[metrics] ready_max_age_secs`, or twice the schedule interval.
fn max_age(config: &Config, schedule: &Schedule) -> Duration {
    config
        .metrics
        .as_ref()
        .and_then(|m| m.ready_max_age_secs)
        .map(Duration::from_secs)
        .unwrap_or_else(|| schedule.interval(Utc::now()) * 2)
}

fn listen_address(config: &Config) -> String {
    config
        .metrics
        .as_ref()
        .map(|m| m.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string())
}

async fn metrics_handler() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        crate::telemetry::render(),
    )
}

async fn readyz_handler(State(health): State<SharedHealth>) -> impl IntoResponse {
    let verdict = lock(&health).readiness(Utc::now());
    match verdict {
        Ok(body) => (StatusCode::OK, body),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
    }
}

fn router(health: SharedHealth) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(health)
}

/// systemd notification; a no-op outside systemd (no `NOTIFY_SOCKET`).
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// A loaded configuration with its sinks and schedule.
type Prepared = (Config, Vec<Box<dyn Sink>>, Schedule);

/// `WATCHDOG_USEC` when the watchdog is meant for this process: like sd_watchdog_enabled(3),
/// `WATCHDOG_PID`, when set, must be our pid.
fn watchdog_usec() -> Option<u64> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?.parse::<u64>().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then_some(usec),
    }
}

/// Loads the configuration, requires `[schedule]` and builds the sinks.
fn prepare(path: &std::path::Path) -> Result<Prepared, String> {
    let config = app::load_config(path).map_err(|e| e.to_string())?;
    let schedule = Schedule::from_config(&config)?;
    let sinks = app::build_sinks(&config, &[]).map_err(|e| e.to_string())?;
    Ok((config, sinks, schedule))
}

/// Runs the scheduled loop until SIGTERM/SIGINT; returns the exit code.
pub async fn run(path: &std::path::Path) -> ExitStatus {
    match Daemon::start(path).await {
        Ok((daemon, signals)) => daemon.serve(signals).await,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            e.exit_status()
        }
    }
}

struct Daemon {
    path: std::path::PathBuf,
    config: Config,
    sinks: Vec<Box<dyn Sink>>,
    schedule: Schedule,
    store: Store,
    health: SharedHealth,
    ticks: Arc<Ticks>,
    ticker: Option<Ticker>,
    http: tokio::task::JoinHandle<()>,
    http_stop: CancellationToken,
    watchdog: bool,
    housekeeping: Duration,
}

/// Outcome of waiting for something while watching signals.
enum Interrupt {
    Shutdown(&'static str),
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(DaemonError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?,
            hup: signal(SignalKind::hangup()).map_err(DaemonError::Signal)?,
        })
    }

    async fn next(&mut self) -> Interrupt {
        tokio::select! {
            _ = self.term.recv() => Interrupt::Shutdown("SIGTERM"),
            _ = self.int.recv() => Interrupt::Shutdown("SIGINT"),
            _ = self.hup.recv() => Interrupt::Reload,
        }
    }
}

impl Daemon {
    async fn start(path: &std::path::Path) -> Result<(Daemon, Signals), DaemonError> {
        // Signals first, so that a SIGTERM during start-up is not fatal by default action.
        let signals = Signals::install()?;
        for result in ["success", "failure"] {
            metrics().config_reloads_total.with_label_values(&[result]);
        }
        let (config, sinks, schedule) = prepare(path).map_err(DaemonError::Config)?;
        let store = Store::open(&config.state.path)?;
        let health = Health {
            sinks: sinks.iter().map(|s| s.name().to_string()).collect(),
            max_age: max_age(&config, &schedule),
            latest: BTreeMap::new(),
        };
        let health = Arc::new(Mutex::new(health));
        {
            let mut h = lock(&health);
            for run in store.recent_runs(50)?.iter().rev() {
                h.seed(run);
            }
        }
        let addr = listen_address(&config);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: addr.clone(),
                source,
            })?;
        // The first bind check before `READY=1`.
        app::check_source(&config)
            .await
            .1
            .map_err(DaemonError::Source)?;
        let http_stop = CancellationToken::new();
        let app = router(health.clone());
        let stop = http_stop.clone();
        let http = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics/health server failed");
            }
        });
        let usec = watchdog_usec();
        let watchdog = usec.is_some();
        let usec = usec.unwrap_or(0);
        let housekeeping = if watchdog {
            Duration::from_micros(usec / 3)
                .clamp(Duration::from_millis(100), Duration::from_secs(1))
        } else {
            Duration::from_secs(1)
        };
        let ticks = Arc::new(Ticks::default());
        let ticker = Ticker::start(&schedule, &ticks).await?;
        tracing::info!(
            config = %config.shown_path(),
            listen = %addr,
            cron = %schedule.config.cron.expression,
            timezone = %schedule.tz,
            full_sync_cron = schedule
                .config
                .full_sync_cron
                .as_ref()
                .map_or("none", |c| c.expression.as_str()),
            sinks = config.sinks.len(),
            watchdog,
            "daemon started"
        );
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("started; waiting for the first scheduled run"),
        ]);
        Ok((
            Daemon {
                path: path.to_path_buf(),
                config,
                sinks,
                schedule,
                store,
                health,
                ticks,
                ticker: Some(ticker),
                http,
                http_stop,
                watchdog,
                housekeeping,
            },
            signals,
        ))
    }
}

impl Daemon {
    /// The scheduler loop; returns the exit code.
    async fn serve(mut self, mut signals: Signals) -> ExitStatus {
        if self.schedule.config.run_on_start {
            self.ticks.fire(false);
        }
        let mut housekeeping = tokio::time::interval(self.housekeeping);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown: Option<&'static str> = None;
        while shutdown.is_none() {
            tokio::select! {
                interrupt = signals.next() => match interrupt {
                    Interrupt::Shutdown(name) => shutdown = Some(name),
                    Interrupt::Reload => self.reload().await,
                },
                _ = self.ticks.notify.notified() => {
                    if let Some(full) = self.ticks.take() {
                        let (stop, reload) = self.run_once(full, &mut signals).await;
                        shutdown = stop;
                        if reload && shutdown.is_none() {
                            self.reload().await;
                        }
                    }
                }
                _ = housekeeping.tick() => self.housekeeping().await,
            }
        }
        let signal = shutdown.unwrap_or("shutdown");
        tracing::info!(signal, "shutting down");
        notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("shutting down"),
        ]);
        if let Some(ticker) = self.ticker.take() {
            ticker.stop().await;
        }
        self.http_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.http)
            .await
            .is_err()
        {
            self.http.abort();
        }
        tracing::info!("stopped");
        ExitStatus::Success
    }

    /// Watchdog ping, scheduler stall check (#113) and DST re-scheduling.
    async fn housekeeping(&mut self) {
        if self.watchdog {
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
        let Some(ticker) = &self.ticker else { return };
        let now = Utc::now();
        if self.schedule.offset_now() != ticker.offset {
            tracing::info!(timezone = %self.schedule.tz, "the time zone's UTC offset changed; re-creating the schedule");
            self.restart_ticker(false).await;
            return;
        }
        let reference = lock(&self.ticks.last_fire)
            .unwrap_or(ticker.started)
            .max(ticker.started);
        let Some(due) = self.schedule.next_after(&self.schedule.cron, reference) else {
            return;
        };
        let grace = chrono::Duration::from_std(STALL_GRACE).unwrap_or_default();
        if now > due + grace {
            tracing::warn!(
                due = %due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "the scheduler did not fire a due tick (tokio-cron-scheduler #113?); re-creating it and running the missed tick"
            );
            metrics().scheduler_restarts_total.inc();
            self.restart_ticker(true).await;
        }
    }

    async fn restart_ticker(&mut self, fire_missed: bool) {
        if let Some(old) = self.ticker.take() {
            old.stop().await;
        }
        match Ticker::start(&self.schedule, &self.ticks).await {
            Ok(ticker) => self.ticker = Some(ticker),
            Err(e) => {
                tracing::error!(error = %e, "cannot re-create the scheduler; retrying in a moment")
            }
        }
        if fire_missed {
            self.ticks.fire(false);
        }
    }

    /// One run; keeps pinging the watchdog and notes signals meanwhile. Returns the shutdown
    /// signal (if one arrived) and whether a reload was requested.
    async fn run_once(
        &mut self,
        full: bool,
        signals: &mut Signals,
    ) -> (Option<&'static str>, bool) {
        self.ticks.busy.store(true, Ordering::SeqCst);
        let options = RunOptions {
            full,
            ..RunOptions::default()
        };
        tracing::info!(full, "run started");
        notify(&[sd_notify::NotifyState::Status(if full {
            "full sync run in progress"
        } else {
            "sync run in progress"
        })]);
        let mut shutdown = None;
        let mut reload = false;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut ping = tokio::time::interval(self.housekeeping);
        let outcome = {
            let run = engine::run(&self.config, Some(&mut self.store), &self.sinks, &options);
            tokio::pin!(run);
            loop {
                let abandon = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    result = &mut run => break Some(result),
                    _ = ping.tick() => {
                        if self.watchdog {
                            notify(&[sd_notify::NotifyState::Watchdog]);
                        }
                    }
                    interrupt = signals.next() => match interrupt {
                        Interrupt::Shutdown(name) => {
                            if shutdown.is_none() {
                                tracing::info!(signal = name, grace_secs = SHUTDOWN_GRACE.as_secs(), "finishing the run in flight before shutting down");
                                notify(&[sd_notify::NotifyState::Status("finishing the run in flight before shutting down")]);
                                deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                            }
                            shutdown = Some(name);
                        }
                        Interrupt::Reload => {
                            tracing::info!("SIGHUP during a run: reloading the configuration after it");
                            reload = true;
                        }
                    },
                    _ = abandon => break None,
                }
            }
        };
        let status = match outcome {
            Some(Ok(report)) => {
                lock(&self.health).apply(&report);
                let sinks: Vec<String> = report
                    .sinks
                    .iter()
                    .map(|s| format!("{}={}", s.name, s.result.as_str()))
                    .collect();
                tracing::info!(
                    result = report.result().as_str(),
                    full,
                    users = report.users,
                    groups = report.groups,
                    seconds = report.duration_seconds,
                    sinks = %sinks.join(","),
                    "run finished"
                );
                let mut status = format!(
                    "last run {}: {}",
                    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    report.result().as_str()
                );
                match &report.read_error {
                    Some(e) => status.push_str(&format!(" (read failed: {e})")),
                    None => status.push_str(&format!(" ({})", sinks.join(", "))),
                }
                status
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "run failed on the state file");
                metrics()
                    .runs_total
                    .with_label_values(&[RunResult::Failure.as_str()])
                    .inc();
                let at = Utc::now();
                let mut health = lock(&self.health);
                for sink in health.sinks.clone() {
                    health.record(&sink, at, SinkResult::Failed, Some(e.to_string()));
                }
                format!(
                    "last run {}: failure (state file: {e})",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            }
            None => {
                tracing::error!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "the run in flight did not finish within the shutdown grace period; abandoning it"
                );
                if let Err(e) = self.mark_interrupted() {
                    tracing::error!(error = %e, "cannot record the interrupted run");
                }
                "last run: interrupted by shutdown".to_string()
            }
        };
        notify(&[sd_notify::NotifyState::Status(&next_status(
            &status,
            &self.schedule,
        ))]);
        self.ticks.busy.store(false, Ordering::SeqCst);
        (shutdown, reload)
    }

    /// Closes the newest unfinished run in the history as interrupted.
    fn mark_interrupted(&mut self) -> Result<(), crate::store::StoreError> {
        if let Some(run) = self.store.recent_runs(1)?.into_iter().next()
            && run.result.is_none()
        {
            self.store.finish_run(
                run.id,
                "failure",
                Some("interrupted: the daemon was stopped during the run"),
                &[],
            )?;
        }
        Ok(())
    }

    /// SIGHUP: load and check the new configuration; keep the old one on any error.
    async fn reload(&mut self) {
        let reloads = &metrics().config_reloads_total;
        let prepared = prepare(&self.path).and_then(|prepared| {
            if prepared.0.state.path != self.config.state.path {
                Err(format!(
                    "[state] path changed from {} to {}: that needs a restart",
                    self.config.state.path.display(),
                    prepared.0.state.path.display()
                ))
            } else {
                Ok(prepared)
            }
        });
        let (config, sinks, schedule) = match prepared {
            Ok(p) => p,
            Err(e) => {
                reloads.with_label_values(&["failure"]).inc();
                tracing::error!(error = %e, "configuration reload rejected; the running configuration stays in effect");
                return;
            }
        };
        if listen_address(&config) != listen_address(&self.config) {
            tracing::warn!(
                old = %listen_address(&self.config),
                new = %listen_address(&config),
                "[metrics] listen changed; it takes effect after a restart"
            );
        }
        let expression = |c: &ScheduleConfig| {
            (
                c.cron.expression.clone(),
                c.full_sync_cron.as_ref().map(|f| f.expression.clone()),
            )
        };
        let reschedule = expression(&schedule.config) != expression(&self.schedule.config)
            || schedule.tz != self.schedule.tz;
        {
            let mut health = lock(&self.health);
            health.sinks = sinks.iter().map(|s| s.name().to_string()).collect();
            health.max_age = max_age(&config, &schedule);
        }
        self.config = config;
        self.sinks = sinks;
        self.schedule = schedule;
        if reschedule {
            self.restart_ticker(false).await;
        }
        reloads.with_label_values(&["success"]).inc();
        tracing::info!(
            config = %self.config.shown_path(),
            sinks = self.sinks.len(),
            cron = %self.schedule.config.cron,
            rescheduled = reschedule,
            "configuration reloaded"
        );
    }
}

fn next_status(status: &str, schedule: &Schedule) -> String {
    match schedule.next_after(&schedule.cron, Utc::now()) {
        Some(next) => format!(
            "{status}; next run {}",
            next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: Option<&str>) -> Schedule {
        let config = ScheduleConfig {
            cron: crate::config::CronSchedule::parse(cron).unwrap(),
            timezone: tz.map(|t| t.parse().unwrap()),
            run_on_start: false,
            full_sync_cron: None,
        };
        Schedule {
            cron: config.cron.cron.clone(),
            tz: tz.map(|t| t.parse().unwrap()).unwrap_or(Tz::UTC),
            config,
        }
    }

    #[test]
    fn interval_is_the_longest_gap() {
        let now = Utc::now();
        assert_eq!(
            schedule("0 */15 * * * *", None).interval(now),
            Duration::from_secs(900)
        );
        assert_eq!(
            schedule("* * * * * *", None).interval(now),
            Duration::from_secs(1)
        );
        // Weekdays at 09:00: the weekend gap (3 days) is the longest.
        assert_eq!(
            schedule("0 0 9 * * Mon-Fri", Some("Europe/Berlin")).interval(now),
            Duration::from_secs(3 * 86400)
        );
    }

    #[test]
    fn next_tick_uses_the_real_zone_across_dst() {
        let s = schedule("0 30 2 * * *", Some("Europe/Berlin"));
        // 2026-03-29: 02:30 does not exist in Berlin; croner fires at 03:00 CEST = 01:00 UTC.
        let before = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        let next = s.next_after(&s.cron, before).unwrap();
        let after = s.next_after(&s.cron, next).unwrap();
        assert_eq!(after, Utc.with_ymd_and_hms(2026, 3, 30, 0, 30, 0).unwrap());
    }

    #[test]
    fn readiness_names_the_failing_sink() {
        let mut h = Health {
            sinks: vec!["a".into(), "b".into()],
            max_age: Duration::from_secs(60),
            latest: BTreeMap::new(),
        };
        let now = Utc::now();
        assert!(
            h.readiness(now)
                .unwrap_err()
                .contains("\"a\": no completed run yet")
        );
        h.record("a", now, SinkResult::Success, None);
        h.record("b", now, SinkResult::Failed, Some("HTTP 401".into()));
        let why = h.readiness(now).unwrap_err();
        assert!(
            why.contains("\"b\"") && why.contains("HTTP 401") && !why.contains("\"a\""),
            "{why}"
        );
        h.record("b", now, SinkResult::Success, None);
        assert!(h.readiness(now).is_ok());
        let later = now + chrono::Duration::seconds(61);
        assert!(h.readiness(later).unwrap_err().contains("61s old"));
    }

    #[test]
    fn ticks_coalesce_and_count_skips() {
        let t = Ticks::default();
        let before = metrics().skipped_ticks_total.get();
        t.fire(false);
        t.fire(false);
        assert_eq!(metrics().skipped_ticks_total.get(), before + 1);
        t.busy.store(true, Ordering::SeqCst);
        t.fire(true);
        assert_eq!(metrics().skipped_ticks_total.get(), before + 2);
        t.busy.store(false, Ordering::SeqCst);
        // The skipped full tick is owed to the next run.
        assert_eq!(t.take(), Some(true));
        assert_eq!(t.take(), None);
    }
}
