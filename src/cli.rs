//! The command line (DESIGN.md §5): `sync`, `daemon`, `check`, `status`, and their exit codes.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::engine::{self, RunOptions};
use crate::sinks::{self, Sink};
use crate::store::Store;
use crate::telemetry::LogFormat;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

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
        shell: crate::manual::CompletionShell,
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

/// Loads the configuration and resolves its secrets; messages are ready for stderr.
pub fn load_config(path: &std::path::Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    config.resolve_secrets().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Builds the configured sinks, optionally only those named.
pub fn build_sinks(config: &Config, only: &[String]) -> Result<Vec<Box<dyn Sink>>, String> {
    for name in only {
        if !config.sinks.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "no sink named {name:?}; configured sinks: {}",
                known.join(", ")
            ));
        }
    }
    config
        .sinks
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .map(|s| sinks::build(s).map_err(|e| e.to_string()))
        .collect()
}

/// Runs the parsed command and returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let path = config_path(&cli);
    match cli.command {
        Command::Sync {
            dry_run,
            sinks,
            full,
            output,
            allow_deletes,
        } => {
            let options = RunOptions {
                dry_run,
                full,
                allow_deletes,
            };
            sync(&path, &sinks, &options, output).await
        }
        Command::Daemon => crate::daemon::run(&path).await,
        Command::Check { connect } => check(&path, connect).await,
        Command::Status { output } => status(&path, output),
        Command::Completions { shell } => {
            crate::manual::print(&crate::manual::completion_script(shell))
        }
        Command::Manpage => crate::manual::print(&crate::manual::manpage()),
    }
}

async fn sync(
    path: &std::path::Path,
    only: &[String],
    options: &RunOptions,
    output: Output,
) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let sinks = match build_sinks(&config, only) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
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
            return EXIT_FAILED;
        }
    };
    let report = match engine::run(&config, store.as_mut(), &sinks, options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    match output {
        Output::Text => print!("{}", crate::report::text(&report)),
        Output::Json => println!("{}", crate::report::json(&report)),
    }
    if let Some(error) = &report.read_error {
        eprintln!("error: {error}");
    }
    report.exit_code()
}

async fn check(path: &std::path::Path, connect: bool) -> i32 {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let sinks = match build_sinks(&config, &[]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    println!(
        "{}: configuration is valid ({} sink(s))",
        path.display(),
        sinks.len()
    );
    if !connect {
        return EXIT_OK;
    }
    let mut code = EXIT_OK;
    if config.ldap.url.is_some() {
        match crate::source::ldap::connect(&config).await {
            Ok(_) => println!("ldap: connected and bound"),
            Err(e) => {
                println!("ldap: FAILED: {e}");
                code = EXIT_FAILED;
            }
        }
    } else {
        match std::fs::metadata(
            config
                .ldap
                .ldif_file
                .as_deref()
                .unwrap_or(std::path::Path::new("")),
        ) {
            Ok(_) => println!("ldif: readable"),
            Err(e) => {
                println!("ldif: FAILED: {e}");
                code = EXIT_FAILED;
            }
        }
    }
    for sink in &sinks {
        match sink.check().await {
            Ok(()) => println!("sink {:?} ({}): OK", sink.name(), sink.type_name()),
            Err(e) => {
                println!("sink {:?} ({}): FAILED: {e}", sink.name(), sink.type_name());
                code = EXIT_FAILED;
            }
        }
    }
    code
}

fn status(path: &std::path::Path, output: Output) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
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
            return EXIT_OK;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let (runs, counts) = match (store.recent_runs(10), store.ledger_counts()) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let now = chrono::Utc::now();
    let age = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds())
    };
    match output {
        Output::Json => {
            let sinks: Vec<serde_json::Value> = counts
                .iter()
                .map(|c| {
                    let mut v = serde_json::to_value(c).unwrap_or_default();
                    v["cursor_age_seconds"] = serde_json::json!(age(&c.cursor_updated_at));
                    v
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"state": config.state.path, "runs": runs, "sinks": sinks})
            );
        }
        Output::Text => {
            println!("state: {}", config.state.path.display());
            println!("sinks:");
            for c in &counts {
                let cursor = match age(&c.cursor_updated_at) {
                    Some(s) => format!("cursor {s}s old"),
                    None => "no cursor".into(),
                };
                println!(
                    "  {:<20} {} groups, {} memberships, {} unconfirmed creates, {cursor}",
                    c.sink, c.groups, c.memberships, c.pending_creates
                );
            }
            println!("recent runs:");
            for r in &runs {
                println!(
                    "  #{:<5} {} {:<8} {}{}",
                    r.id,
                    r.started_at,
                    r.mode,
                    r.result.as_deref().unwrap_or("running"),
                    r.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
                for s in &r.sinks {
                    let a = s.applied;
                    println!(
                        "         {:<20} {:<8} applied {}+ {}~ {}- members +{} -{}{}",
                        s.sink,
                        s.result,
                        a.create,
                        a.update,
                        a.delete,
                        a.member_add,
                        a.member_remove,
                        s.error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    EXIT_OK
}
