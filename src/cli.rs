//! The command line (README "Commands and exit codes"): `sync`, `daemon`, `check`, `status`, and their exit codes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::app::{self, Config};
use crate::engine::{self, RunOptions, SinkResult};
use crate::exit::ExitStatus;
use crate::manual;
use crate::planfile::{SavedPlan, SavedSink};
use crate::report::{self, LedgerView, StatusView};
use crate::store::Store;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "ldapsync",
    version,
    about = "Reconcile LDAP groups and members into SCIM, PingOne, Posit Connect and ForgeRock"
)]
pub struct Cli {
    /// Configuration file [default: $LDAPSYNC_CONFIG, then /etc/ldapsync/config.toml]
    #[arg(short = 'c', long, global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=ldapsync=debug)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// What `sync` prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum SyncOutput {
    /// The plan, one line per operation, and the results
    #[default]
    Text,
    /// One JSON object for tools
    Json,
    /// Only one summary line per sink
    Summary,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one sync, then exit
    Sync {
        /// Show the plan; write nothing to any target or to the state file
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Only these sinks (repeatable)
        #[arg(short = 's', long = "sink", value_name = "NAME")]
        sinks: Vec<String>,
        /// Full reconcile: sinks with cursors (PingOne provisioning sync) resend everything
        #[arg(long)]
        full: bool,
        /// The plan and results as text for people, one JSON object for tools, or one summary
        /// line per sink
        #[arg(short = 'o', long, value_enum, default_value_t = SyncOutput::Text)]
        output: SyncOutput,
        /// Lift the group-delete and member-removal thresholds for this run
        #[arg(long)]
        allow_deletes: bool,
        /// Accept, for this run only, a directory read that returns zero groups or users while
        /// a sink's ledger still holds groups (otherwise such a read fails the run)
        #[arg(long)]
        allow_empty_scope: bool,
        /// With --dry-run: save the exact plan, with fingerprints of the directory read and of
        /// each sink's ledger, to FILE (apply it with --plan FILE). Not with --full: a full
        /// reconcile's repairs are reviewed with `--dry-run --full` and applied with `--full`
        #[arg(
            long,
            value_name = "FILE",
            requires = "dry_run",
            conflicts_with = "full"
        )]
        save_plan: Option<PathBuf>,
        /// Apply exactly the plan saved in FILE, held operations included; refused (exit 1,
        /// nothing written) when the directory or a ledger changed since it was saved
        #[arg(long, value_name = "FILE", conflicts_with_all = ["dry_run", "sinks", "full", "allow_deletes"])]
        plan: Option<PathBuf>,
        /// No progress on stderr while applying
        #[arg(short = 'q', long)]
        quiet: bool,
        /// How often progress is printed when stderr is not a terminal, in milliseconds (tests
        /// use a short one; the default is 30 s)
        #[arg(long, hide = true, env = "LDAPSYNC_PROGRESS_INTERVAL_MS")]
        progress_interval_ms: Option<u64>,
    },
    /// Run on the configured schedule with the metrics and health endpoints, until SIGTERM
    Daemon,
    /// Validate the configuration (and resolve every secret and open every file it names)
    Check {
        /// Also bind to LDAP and authenticate to each sink
        #[arg(long)]
        connect: bool,
    },
    /// Last runs and per-sink ledger counts from the state file (works beside a running daemon)
    Status {
        /// Text for people, or one JSON object for tools
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Only these sinks (repeatable)
        #[arg(short = 's', long = "sink", value_name = "NAME")]
        sinks: Vec<String>,
    },
    /// What each sink's ledger holds: owned groups, member counts, unmapped members, pending
    /// intents (works beside a running daemon)
    Ledger {
        /// Only these sinks (repeatable)
        #[arg(short = 's', long = "sink", value_name = "NAME")]
        sinks: Vec<String>,
        /// Text for people, or one JSON object for tools
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Hand a saved plan to the running daemon: it applies exactly that plan at its next run
    /// (and refuses it, writing nothing, if the directory or a ledger changed since)
    Approve {
        /// A plan saved by `sync --dry-run --save-plan FILE`
        #[arg(long, value_name = "FILE")]
        plan: PathBuf,
    },
    /// Print a shell completion script on stdout
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: manual::CompletionShell,
    },
    /// Print the ldapsync(1) man page (roff) on stdout
    #[command(hide = true)]
    Manpage,
}

/// The configuration file to use: `--config`, `$LDAPSYNC_CONFIG`, then the system default.
pub fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("LDAPSYNC_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/ldapsync/config.toml"))
}

/// How long between two plain progress lines when stderr is not a terminal.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// The options of one `sync` as given on the command line.
struct SyncArgs {
    sinks: Vec<String>,
    output: SyncOutput,
    save_plan: Option<PathBuf>,
    plan: Option<PathBuf>,
    quiet: bool,
    progress_interval: Duration,
}

/// Runs the parsed command and returns the process exit status.
pub async fn run(cli: Cli) -> ExitStatus {
    let path = config_path(&cli);
    match cli.command {
        Command::Sync {
            dry_run,
            sinks,
            full,
            output,
            allow_deletes,
            allow_empty_scope,
            save_plan,
            plan,
            quiet,
            progress_interval_ms,
        } => {
            let options = RunOptions {
                dry_run,
                full,
                allow_deletes,
                allow_empty_scope,
                fingerprints: save_plan.is_some(),
                ..RunOptions::default()
            };
            let args = SyncArgs {
                sinks,
                output,
                save_plan,
                plan,
                quiet,
                progress_interval: progress_interval_ms
                    .map(Duration::from_millis)
                    .unwrap_or(PROGRESS_INTERVAL),
            };
            sync(&path, args, options).await
        }
        Command::Daemon => crate::daemon::run(&path).await,
        Command::Check { connect } => check(&path, connect).await,
        Command::Status { output, sinks } => status(&path, output, &sinks),
        Command::Ledger { sinks, output } => ledger(&path, output, &sinks),
        Command::Approve { plan } => approve(&path, &plan),
        Command::Completions { shell } => {
            manual::print(&manual::completion_script(Cli::command(), shell))
        }
        Command::Manpage => manual::print(&manual::manpage(Cli::command())),
    }
}

/// Prints an error that ends a command once: on stderr as `error: …`, and with JSON output
/// also as `{"error": …, "exit_code": …}` on stdout, so a tool reading stdout sees it too.
fn fail(json: bool, status: ExitStatus, error: &dyn std::fmt::Display) -> ExitStatus {
    if json {
        println!(
            "{}",
            serde_json::json!({"error": error.to_string(), "exit_code": status.code()})
        );
    }
    eprintln!("error: {error}");
    status
}

/// Reads and checks a saved plan file.
fn read_plan(file: &std::path::Path) -> Result<SavedPlan, String> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    SavedPlan::parse(&text, &shown).map_err(|e| e.to_string())
}

/// Writes `text` to `file` through a temporary file in the same directory and a rename, so a
/// reader never sees half a plan.
fn write_atomically(file: &std::path::Path, text: &str) -> Result<(), String> {
    let mut temp = file.as_os_str().to_os_string();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, file))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))
}

async fn sync(path: &std::path::Path, args: SyncArgs, mut options: RunOptions) -> ExitStatus {
    let json = args.output == SyncOutput::Json;
    let mut only = args.sinks.clone();
    if let Some(file) = &args.plan {
        match read_plan(file) {
            Ok(saved) => {
                only = saved.sinks.iter().map(|s| s.name.clone()).collect();
                options.saved = Some(Arc::new(saved));
            }
            Err(e) => return fail(json, ExitStatus::Failed, &e),
        }
    }
    let (config, sinks) = match load(path, &only) {
        Ok(loaded) => loaded,
        Err(e) => return fail(json, ExitStatus::Usage, &e),
    };
    let state = &config.state.path;
    let store = if options.dry_run {
        Store::open_read_only(state)
    } else if state.exists() {
        Store::open(state).map(Some)
    } else {
        // Created by the run once the directory read succeeded.
        options.create_state = Some(state.clone());
        Ok(None)
    };
    let mut store = match store {
        Ok(store) => store,
        Err(e) => return fail(json, ExitStatus::Failed, &e),
    };
    let _signals = watch_signals(&options.interrupt);
    let shown = (!args.quiet && !options.dry_run)
        .then(|| ProgressDisplay::start(&options.progress, args.progress_interval));
    let result = engine::run(&config, store.as_mut(), &sinks, &options).await;
    if let Some(shown) = shown {
        shown.stop().await;
    }
    let mut report = match result {
        Ok(report) => report,
        Err(e) => return fail(json, ExitStatus::Failed, &e),
    };
    if let Some(file) = &args.save_plan
        && report.read_error.is_none()
    {
        match save_plan(&report, file) {
            Ok(fingerprint) => report.plan_fingerprint = Some(fingerprint),
            Err(e) => return fail(json, ExitStatus::Failed, &e),
        }
    }
    match args.output {
        SyncOutput::Text => print!("{}", report::text(&report)),
        SyncOutput::Summary => print!("{}", report::summary(&report)),
        SyncOutput::Json => println!("{}", report::json(&report)),
    }
    if let Some(error) = &report.read_error {
        eprintln!("error: {}", report::escape_controls(error));
    }
    let status = report.exit_status();
    // The process exits next: freeing a plan of a million memberships piece by piece would
    // only cost time (about 0.2 s at that size). The state file is closed as usual.
    std::mem::forget(report);
    status
}

/// Writes the dry run's plan to `file`; returns its fingerprint.
fn save_plan(report: &engine::RunReport, file: &std::path::Path) -> Result<String, String> {
    let mut saved = Vec::with_capacity(report.sinks.len());
    for sink in &report.sinks {
        let (SinkResult::Planned | SinkResult::Held, Some(ledger)) =
            (sink.result, &sink.ledger_fingerprint)
        else {
            return Err(format!(
                "the plan was not saved: sink \"{}\" could not be planned ({})",
                sink.name,
                sink.error.as_deref().unwrap_or("no plan")
            ));
        };
        saved.push(SavedSink::new(
            &sink.name,
            &sink.type_name,
            ledger.clone(),
            sink.hold.is_some(),
            &sink.plan,
        ));
    }
    let plan = SavedPlan::new(
        report.directory_fingerprint.clone().unwrap_or_default(),
        saved,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    write_atomically(file, &plan.to_json())?;
    Ok(plan.fingerprint)
}

/// Shows the progress of an apply on stderr: a bar redrawn in place on a terminal, otherwise
/// one plain line every `interval`.
struct ProgressDisplay {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressDisplay {
    fn start(progress: &engine::Progress, interval: Duration) -> ProgressDisplay {
        use std::io::IsTerminal;
        let stop = tokio_util::sync::CancellationToken::new();
        let progress = progress.clone();
        let stopped = stop.clone();
        let task = if std::io::stderr().is_terminal() {
            tokio::spawn(async move {
                let bar = indicatif::ProgressBar::with_draw_target(
                    None,
                    indicatif::ProgressDrawTarget::stderr(),
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} [{bar:30}] {pos}/{len} operations  {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                let mut shown = false;
                loop {
                    tokio::select! {
                        _ = stopped.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    let Some(p) = progress.snapshot() else {
                        continue;
                    };
                    shown = true;
                    bar.set_length(p.operations_total);
                    bar.set_position(p.operations_done);
                    bar.set_message(report::progress_message(&p));
                }
                if shown {
                    bar.finish_and_clear();
                }
            })
        } else {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if let Some(p) = progress.snapshot() {
                        eprintln!("{}", report::progress_line(&p));
                    }
                }
            })
        };
        ProgressDisplay { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// SIGINT/SIGTERM during a one-shot run: the first stops the run after the request in flight
/// (exit 130/143 once what was applied is printed); a second one exits at once. Dropping the
/// returned handle stops watching.
fn watch_signals(interrupt: &engine::Interrupt) -> Option<AbortOnDrop> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(int), Ok(term)) => (int, term),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot watch SIGINT/SIGTERM; a signal will end the run at once");
            return None;
        }
    };
    let interrupt = interrupt.clone();
    let task = tokio::spawn(async move {
        let mut seen = false;
        loop {
            let (number, name) = tokio::select! {
                _ = int.recv() => (2, "SIGINT"),
                _ = term.recv() => (15, "SIGTERM"),
            };
            if seen {
                eprintln!("{name} again: exiting at once; the next run resumes from the ledger");
                std::process::exit(128 + number);
            }
            seen = true;
            tracing::warn!(
                signal = name,
                "stopping after the request in flight (send it again to exit at once)"
            );
            interrupt.trigger(number);
        }
    });
    Some(AbortOnDrop(task))
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Loads the configuration and builds the sinks (all, or those in `only`).
fn load(
    path: &std::path::Path,
    only: &[String],
) -> Result<(Config, Vec<Box<dyn crate::sinks::Sink>>), app::AppError> {
    let config = app::load_config(path)?;
    let sinks = app::build_sinks(&config, only)?;
    Ok((config, sinks))
}

async fn check(path: &std::path::Path, connect: bool) -> ExitStatus {
    let loaded = load(path, &[]).and_then(|(config, sinks)| {
        config.check_files()?;
        Ok((config, sinks))
    });
    let (config, sinks) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => return fail(false, ExitStatus::Usage, &e),
    };
    println!(
        "{}: configuration is valid ({} sink(s))",
        path.display(),
        sinks.len()
    );
    if !connect {
        return ExitStatus::Success;
    }
    let mut status = ExitStatus::Success;
    match app::check_source(&config).await {
        ("ldap", Ok(())) => println!("ldap: connected and bound"),
        (what, Ok(())) => println!("{what}: readable"),
        (what, Err(e)) => {
            println!("{what}: FAILED: {e}");
            status = ExitStatus::Failed;
        }
    }
    for sink in &sinks {
        match sink.check().await {
            Ok(()) => println!("sink {:?} ({}): OK", sink.name(), sink.type_name()),
            Err(e) => {
                println!("sink {:?} ({}): FAILED: {e}", sink.name(), sink.type_name());
                status = ExitStatus::Failed;
            }
        }
    }
    status
}

/// Loads the configuration (without secrets) and opens the state file read-only, for the
/// commands that only read it; `Ok(None)` when there is no state file yet.
fn open_for_reading(
    path: &std::path::Path,
    sinks: &[String],
    json: bool,
) -> Result<(Config, Option<Store>), ExitStatus> {
    let config = Config::load(path).map_err(|e| fail(json, ExitStatus::Usage, &e))?;
    for name in sinks {
        if !config.sinks.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
            let e = app::AppError::UnknownSink {
                name: name.clone(),
                known: known.join(", "),
            };
            return Err(fail(json, ExitStatus::Usage, &e));
        }
    }
    let store = Store::open_read_only(&config.state.path)
        .map_err(|e| fail(json, ExitStatus::Failed, &e))?;
    Ok((config, store))
}

fn status(path: &std::path::Path, output: Output, only: &[String]) -> ExitStatus {
    let json = output == Output::Json;
    let (config, store) = match open_for_reading(path, only, json) {
        Ok(opened) => opened,
        Err(status) => return status,
    };
    let Some(store) = store else {
        match output {
            Output::Json => println!("{}", serde_json::json!({"runs": [], "sinks": []})),
            Output::Text => println!(
                "no state yet at {}: ldapsync has not run",
                config.state.path.display()
            ),
        }
        return ExitStatus::Success;
    };
    let (mut runs, mut counts) = match (store.recent_runs(10), store.ledger_counts()) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return fail(json, ExitStatus::Failed, &e),
    };
    if !only.is_empty() {
        counts.retain(|c| only.contains(&c.sink));
        for run in &mut runs {
            run.sinks.retain(|s| only.contains(&s.sink));
        }
    }
    let view = StatusView::new(&config.state.path, &runs, &counts, chrono::Utc::now());
    let serialized = serde_json::to_string(&view);
    print_view(output, serialized, || view.text())
}

/// Prints a view as JSON or as its text (the text is only made when it is printed).
fn print_view(
    output: Output,
    json: serde_json::Result<String>,
    text: impl FnOnce() -> String,
) -> ExitStatus {
    match output {
        Output::Json => println!("{}", json.expect("a view always serializes")),
        Output::Text => print!("{}", text()),
    }
    ExitStatus::Success
}

fn ledger(path: &std::path::Path, output: Output, only: &[String]) -> ExitStatus {
    let json = output == Output::Json;
    let (config, store) = match open_for_reading(path, only, json) {
        Ok(opened) => opened,
        Err(status) => return status,
    };
    let listing = match store.map(|store| store.ledger_listing(only)).transpose() {
        Ok(listing) => listing.unwrap_or_default(),
        Err(e) => return fail(json, ExitStatus::Failed, &e),
    };
    let view = LedgerView::new(&config.state.path, &listing);
    let serialized = serde_json::to_string(&view);
    print_view(output, serialized, || view.text())
}

/// `approve --plan FILE`: checks the saved plan and leaves it where the daemon picks it up.
fn approve(path: &std::path::Path, file: &std::path::Path) -> ExitStatus {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => return fail(false, ExitStatus::Usage, &e),
    };
    let saved = match read_plan(file) {
        Ok(saved) => saved,
        Err(e) => return fail(false, ExitStatus::Failed, &e),
    };
    let names: Vec<String> = saved.sinks.iter().map(|s| s.name.clone()).collect();
    if let Err(e) = app::build_sinks(&config, &names) {
        return fail(false, ExitStatus::Usage, &e);
    }
    let target = app::approval_path(&config);
    if let Err(e) = write_atomically(&target, &saved.to_json()) {
        return fail(false, ExitStatus::Failed, &e);
    }
    println!(
        "approved plan {}: the daemon applies it at its next run ({}). It is refused, and nothing is written, if the directory or a ledger changed since it was saved; the daemon's log and `ldapsync status` say which",
        saved.fingerprint,
        target.display()
    );
    ExitStatus::Success
}
