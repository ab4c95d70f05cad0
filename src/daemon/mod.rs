//! The daemon (`ldapsync daemon`): the scheduler loop that performs the scheduled runs, and
//! start-up, reload and shutdown around it.
//!
//! One task, the *scheduler loop* ([`Daemon::serve`]), owns the configuration, the sinks and the
//! one state file the process holds for its whole life, and starts every run, so runs can never
//! overlap. The concerns around it live in the submodules:
//! - [`schedule`]: the parsed `[schedule]`, the ticks and tokio-cron-scheduler with its
//!   workarounds (DST, stalls);
//! - [`state`]: the state file, with every SQLite call (the runs included) on the blocking pool;
//! - [`health`] and [`http`]: the `/readyz` state and the `/metrics`, `/healthz`, `/readyz`
//!   endpoints;
//! - [`signals`]: SIGTERM/SIGINT/SIGHUP, sd_notify and the watchdog the loop pings.

mod health;
mod http;
mod schedule;
mod signals;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio_cron_scheduler::JobSchedulerError;

use self::health::{Health, SharedHealth};
use self::http::{HttpServer, listen_address};
use self::schedule::{Schedule, Ticker, Ticks};
use self::signals::{Interrupt, Signals, Watchdog, notify};
use self::state::StateFile;
use crate::app::{self, Config};
use crate::engine::{EngineError, Progress, RunOptions, RunReport, RunResult};
use crate::exit::ExitStatus;
use crate::planfile::SavedPlan;
use crate::sinks::Sink;
use crate::telemetry::metrics;

/// How long SIGTERM/SIGINT waits for the run in flight before abandoning it (the unit's
/// `TimeoutStopSec` is larger).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Why the daemon could not start.
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

/// Locks a mutex, recovering the data if a holder panicked (the data are plain values).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the scheduled loop until SIGTERM/SIGINT; returns the exit code.
pub async fn run(path: &Path) -> ExitStatus {
    match Daemon::start(path).await {
        Ok((daemon, signals)) => daemon.serve(signals).await,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_status()
        }
    }
}

/// A loaded configuration with its sinks and schedule.
struct Prepared {
    config: Config,
    sinks: Vec<Box<dyn Sink>>,
    schedule: Schedule,
}

impl Prepared {
    /// Loads the configuration, requires `[schedule]` and builds the sinks.
    fn load(path: &Path) -> Result<Prepared, String> {
        let config = app::load_config(path).map_err(|e| e.to_string())?;
        let schedule = Schedule::from_config(&config)?;
        let sinks = app::build_sinks(&config, &[]).map_err(|e| e.to_string())?;
        Ok(Prepared {
            config,
            sinks,
            schedule,
        })
    }

    fn sink_names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.name().to_string()).collect()
    }
}

/// The scheduler loop's state.
struct Daemon {
    path: PathBuf,
    config: Arc<Config>,
    sinks: Arc<Vec<Box<dyn Sink>>>,
    schedule: Schedule,
    state: StateFile,
    health: SharedHealth,
    ticks: Arc<Ticks>,
    ticker: Ticker,
    http: HttpServer,
    watchdog: Watchdog,
    /// How far the run in flight has come (`STATUS=` and `ldapsync_run_progress_ratio`).
    progress: Progress,
}

/// How often the `STATUS=` line shows the progress of a run in flight. The hidden
/// `LDAPSYNC_PROGRESS_INTERVAL_MS` (also read by `sync`) shortens it for tests.
fn progress_interval() -> Duration {
    std::env::var("LDAPSYNC_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5))
}

/// A plan approved with `ldapsync approve --plan FILE`, found at a tick.
struct Approval {
    file: PathBuf,
    plan: Arc<SavedPlan>,
    sinks: Arc<Vec<Box<dyn Sink>>>,
}

impl Approval {
    /// Takes the approved plan left beside the state file, if there is one. An unusable one is
    /// set aside (`….rejected`) with an error in the log.
    fn take(config: &Config) -> Option<Approval> {
        let file = app::approval_path(config);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "cannot read the approved plan");
                return None;
            }
        };
        let shown = file.display().to_string();
        let loaded = SavedPlan::parse(&text, &shown)
            .map_err(|e| e.to_string())
            .and_then(|plan| {
                let names: Vec<String> = plan.sinks.iter().map(|s| s.name.clone()).collect();
                let sinks = app::build_sinks(config, &names).map_err(|e| e.to_string())?;
                Ok((plan, sinks))
            });
        match loaded {
            Ok((plan, sinks)) => Some(Approval {
                file,
                plan: Arc::new(plan),
                sinks: Arc::new(sinks),
            }),
            Err(error) => {
                tracing::error!(%error, "the approved plan cannot be used; set aside");
                set_aside(&file, "rejected");
                None
            }
        }
    }
}

/// Renames a handled approval to `….applied` or `….rejected`, so it is applied once.
fn set_aside(file: &Path, outcome: &str) {
    let mut name = file.as_os_str().to_os_string();
    name.push(format!(".{outcome}"));
    if let Err(e) = std::fs::rename(file, &name) {
        tracing::error!(file = %file.display(), error = %e, "cannot set the approved plan aside; remove it by hand");
    }
}

impl Daemon {
    async fn start(path: &Path) -> Result<(Daemon, Signals), DaemonError> {
        // Signals first, so that a SIGTERM during start-up is not fatal by default action.
        let signals = Signals::install().map_err(DaemonError::Signal)?;
        for result in ["success", "failure"] {
            metrics().config_reloads_total.with_label_values(&[result]);
        }
        let prepared = Prepared::load(path).map_err(DaemonError::Config)?;
        let state = StateFile::open(&prepared.config.state.path).await?;
        let mut health = Health::new(&prepared.config, prepared.sink_names(), &prepared.schedule);
        for run in state.recent_runs(50).await?.iter().rev() {
            health.seed(run);
        }
        let health = Arc::new(Mutex::new(health));
        let Prepared {
            config,
            sinks,
            schedule,
        } = prepared;
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
        let http = HttpServer::spawn(listener, health.clone());
        let watchdog = Watchdog::from_env();
        let ticks = Arc::new(Ticks::default());
        let ticker = Ticker::start(&schedule, ticks.clone()).await?;
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
            watchdog = watchdog.enabled(),
            "daemon started"
        );
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("started; waiting for the first scheduled run"),
        ]);
        Ok((
            Daemon {
                path: path.to_path_buf(),
                config: Arc::new(config),
                sinks: Arc::new(sinks),
                schedule,
                state,
                health,
                ticks,
                ticker,
                http,
                watchdog,
                progress: Progress::default(),
            },
            signals,
        ))
    }

    /// The scheduler loop; returns the exit code.
    async fn serve(mut self, mut signals: Signals) -> ExitStatus {
        if self.schedule.config.run_on_start {
            self.ticks.fire(false);
        }
        let mut housekeeping = tokio::time::interval(self.watchdog.period());
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown: Option<&'static str> = None;
        while shutdown.is_none() {
            tokio::select! {
                interrupt = signals.next() => match interrupt {
                    Interrupt::Shutdown(name) => shutdown = Some(name),
                    Interrupt::Reload => self.reload().await,
                },
                tick = self.ticks.next() => {
                    if let Some(full) = tick {
                        let (stop, reload) = self.run_once(full, &mut signals).await;
                        shutdown = stop;
                        if reload && shutdown.is_none() {
                            self.reload().await;
                        }
                    }
                }
                _ = housekeeping.tick() => {
                    self.watchdog.ping();
                    self.ticker.check(&self.schedule).await;
                }
            }
        }
        let signal = shutdown.unwrap_or("shutdown");
        tracing::info!(signal, "shutting down");
        notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("shutting down"),
        ]);
        self.ticker.stop().await;
        self.http.stop().await;
        tracing::info!("stopped");
        ExitStatus::Success
    }

    /// One run, on the blocking pool ([`state`]); meanwhile the loop keeps pinging the watchdog
    /// and notes signals. Returns the shutdown signal (if one arrived) and whether a reload was
    /// requested.
    async fn run_once(
        &mut self,
        full: bool,
        signals: &mut Signals,
    ) -> (Option<&'static str>, bool) {
        self.ticks.set_busy(true);
        let approval = Approval::take(&self.config);
        let options = RunOptions {
            full,
            progress: self.progress.clone(),
            saved: approval.as_ref().map(|a| a.plan.clone()),
            ..RunOptions::default()
        };
        let sinks = match &approval {
            Some(a) => {
                tracing::info!(plan = %a.plan.fingerprint, "applying the approved plan instead of a scheduled run");
                a.sinks.clone()
            }
            None => self.sinks.clone(),
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
        let mut ping = tokio::time::interval(self.watchdog.period());
        let mut progress = tokio::time::interval(progress_interval());
        let mut run = self.state.start_run(self.config.clone(), sinks, options);
        let outcome = loop {
            let abandon = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = run.finished() => break Some(result),
                _ = ping.tick() => self.watchdog.ping(),
                _ = progress.tick() => {
                    if let Some(p) = self.progress.snapshot() {
                        let line = format!("sync run in progress: {}", crate::report::progress_line(&p));
                        notify(&[sd_notify::NotifyState::Status(&line)]);
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
        };
        // Dropping the task abandons a run that is still going.
        drop(run);
        if let (Some(approval), Some(result)) = (&approval, &outcome) {
            match result {
                Err(EngineError::Plan(e)) => {
                    tracing::error!(plan = %approval.plan.fingerprint, error = %e, "the approved plan was refused; nothing was written");
                    set_aside(&approval.file, "rejected");
                }
                _ => {
                    tracing::info!(plan = %approval.plan.fingerprint, "the approved plan was applied");
                    set_aside(&approval.file, "applied");
                }
            }
        }
        let status = match outcome {
            Some(Ok(report)) => self.finished(full, &report),
            Some(Err(EngineError::Plan(e))) => format!("approved plan refused: {e}"),
            Some(Err(e)) => self.failed(&e),
            None => {
                tracing::error!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "the run in flight did not finish within the shutdown grace period; abandoning it"
                );
                if let Err(e) = self.state.mark_interrupted().await {
                    tracing::error!(error = %e, "cannot record the interrupted run");
                }
                "last run: interrupted by shutdown".to_string()
            }
        };
        let status = match self.schedule.next_after(Utc::now()) {
            Some(next) => format!(
                "{status}; next run {}",
                next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => status,
        };
        notify(&[sd_notify::NotifyState::Status(&status)]);
        self.ticks.set_busy(false);
        (shutdown, reload)
    }

    /// A completed run: health, log line and `STATUS=` text.
    fn finished(&self, full: bool, report: &RunReport) -> String {
        lock(&self.health).apply(report);
        // The engine leaves errors to its front end: a one-shot `sync` prints them once; the
        // daemon logs them here.
        if let Some(error) = &report.read_error {
            tracing::error!(%error, "directory read failed; nothing was written to any sink");
        }
        for sink in &report.sinks {
            match (&sink.error, sink.result) {
                (Some(error), crate::engine::SinkResult::Held) => {
                    tracing::warn!(sink = %sink.name, "{error}")
                }
                (Some(error), _) => tracing::error!(sink = %sink.name, "{error}"),
                (None, _) => {}
            }
        }
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

    /// A run that failed on the state file: health, metrics, log line and `STATUS=` text.
    fn failed(&self, e: &EngineError) -> String {
        tracing::error!(error = %e, "run failed on the state file");
        metrics()
            .runs_total
            .with_label_values(&[RunResult::Failure.as_str()])
            .inc();
        let at = Utc::now();
        lock(&self.health).fail_all(at, &e.to_string());
        format!(
            "last run {}: failure (state file: {e})",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }

    /// SIGHUP: load and check the new configuration; keep the old one on any error.
    async fn reload(&mut self) {
        let reloads = &metrics().config_reloads_total;
        let prepared = Prepared::load(&self.path).and_then(|prepared| {
            if prepared.config.state.path != self.config.state.path {
                Err(format!(
                    "[state] path changed from {} to {}: that needs a restart",
                    self.config.state.path.display(),
                    prepared.config.state.path.display()
                ))
            } else {
                Ok(prepared)
            }
        });
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                reloads.with_label_values(&["failure"]).inc();
                tracing::error!(error = %e, "configuration reload rejected; the running configuration stays in effect");
                return;
            }
        };
        if listen_address(&prepared.config) != listen_address(&self.config) {
            tracing::warn!(
                old = %listen_address(&self.config),
                new = %listen_address(&prepared.config),
                "[metrics] listen changed; it takes effect after a restart"
            );
        }
        let reschedule = self.schedule.jobs_differ(&prepared.schedule);
        lock(&self.health).reconfigure(&prepared.config, prepared.sink_names(), &prepared.schedule);
        self.config = Arc::new(prepared.config);
        self.sinks = Arc::new(prepared.sinks);
        self.schedule = prepared.schedule;
        if reschedule {
            self.ticker.restart(&self.schedule, false).await;
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
