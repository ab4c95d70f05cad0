//! The command line (README "Commands and exit codes"): `sync`, `daemon`, `check`, `status`, and their exit codes.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::app::{self, Config};
use crate::engine::{self, RunOptions};
use crate::exit::ExitStatus;
use crate::manual;
use crate::report::{self, StatusView};
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
    #[arg(long, global = true)]
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one sync, then exit
    Sync {
        /// Show the plan; write nothing to any target or to the state file
        #[arg(long)]
        dry_run: bool,
        /// Only these sinks (repeatable)
        #[arg(long = "sink", value_name = "NAME")]
        sinks: Vec<String>,
        /// Full reconcile: sinks with cursors (PingOne provisioning sync) resend everything
        #[arg(long)]
        full: bool,
        /// The plan and results as text for people, or one JSON object for tools
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Lift the group-delete and member-removal thresholds for this run
        #[arg(long)]
        allow_deletes: bool,
        /// Accept, for this run only, a directory read that returns zero groups or users while
        /// a sink's ledger still holds groups (otherwise such a read fails the run)
        #[arg(long)]
        allow_empty_scope: bool,
    },
    /// Run on the configured schedule with the metrics and health endpoints, until SIGTERM
    Daemon,
    /// Validate the configuration (and resolve every secret)
    Check {
        /// Also bind to LDAP and authenticate to each sink
        #[arg(long)]
        connect: bool,
    },
    /// Last runs and per-sink ledger counts from the state file
    Status {
        /// Text for people, or one JSON object for tools
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
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
        } => {
            let options = RunOptions {
                dry_run,
                full,
                allow_deletes,
                allow_empty_scope,
                interrupt: engine::Interrupt::default(),
            };
            sync(&path, &sinks, &options, output).await
        }
        Command::Daemon => crate::daemon::run(&path).await,
        Command::Check { connect } => check(&path, connect).await,
        Command::Status { output } => status(&path, output),
        Command::Completions { shell } => {
            manual::print(&manual::completion_script(Cli::command(), shell))
        }
        Command::Manpage => manual::print(&manual::manpage(Cli::command())),
    }
}

async fn sync(
    path: &std::path::Path,
    only: &[String],
    options: &RunOptions,
    output: Output,
) -> ExitStatus {
    let (config, sinks) = match load(path, only) {
        Ok(loaded) => loaded,
        Err(status) => return status,
    };
    let mut store = if options.dry_run {
        Store::open_read_only(&config.state.path)
    } else {
        Store::open(&config.state.path).map(Some)
    };
    let mut store = match store.as_mut() {
        Ok(store) => store.take(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitStatus::Failed;
        }
    };
    let _signals = watch_signals(&options.interrupt);
    let report = match engine::run(&config, store.as_mut(), &sinks, options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitStatus::Failed;
        }
    };
    match output {
        Output::Text => print!("{}", report::text(&report)),
        Output::Json => println!("{}", report::json(&report)),
    }
    if let Some(error) = &report.read_error {
        eprintln!("error: {error}");
    }
    report.exit_status()
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

/// Loads the configuration and builds the sinks (all, or those in `only`); prints the error.
fn load(
    path: &std::path::Path,
    only: &[String],
) -> Result<(Config, Vec<Box<dyn crate::sinks::Sink>>), ExitStatus> {
    let loaded = app::load_config(path).and_then(|config| {
        let sinks = app::build_sinks(&config, only)?;
        Ok((config, sinks))
    });
    loaded.map_err(|e| {
        eprintln!("error: {e}");
        ExitStatus::Usage
    })
}

async fn check(path: &std::path::Path, connect: bool) -> ExitStatus {
    let (config, sinks) = match load(path, &[]) {
        Ok(loaded) => loaded,
        Err(status) => return status,
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

fn status(path: &std::path::Path, output: Output) -> ExitStatus {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitStatus::Usage;
        }
    };
    let store = match Store::open_for_status(&config.state.path) {
        Ok(Some(store)) => store,
        Ok(None) => {
            match output {
                Output::Json => println!("{}", serde_json::json!({"runs": [], "sinks": []})),
                Output::Text => println!(
                    "no state yet at {}: ldapsync has not run",
                    config.state.path.display()
                ),
            }
            return ExitStatus::Success;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitStatus::Failed;
        }
    };
    let (runs, counts) = match (store.recent_runs(10), store.ledger_counts()) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitStatus::Failed;
        }
    };
    let view = StatusView::new(&config.state.path, &runs, &counts, chrono::Utc::now());
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(&view).expect("a status view always serializes")
        ),
        Output::Text => print!("{}", view.text()),
    }
    ExitStatus::Success
}
