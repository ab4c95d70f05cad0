//! What both front ends (`cli` and `daemon`) need once: the configuration with its sinks, and a check that the directory source is reachable.

use std::path::Path;

use crate::config::{self, ConfigError};
use crate::sinks::{self, Sink, SinkSettings};

/// The configuration with the registered sink types.
pub type Config = config::Config<SinkSettings>;

/// Why the configuration cannot be used; every variant is a usage error (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no sink named {name:?}; configured sinks: {known}")]
    UnknownSink { name: String, known: String },
    #[error(transparent)]
    Sink(#[from] sinks::SinkError),
}

/// Reads and validates the configuration file and resolves its secrets.
pub fn load_config(path: &Path) -> Result<Config, AppError> {
    let config = Config::load(path)?;
    config.resolve_secrets()?;
    Ok(config)
}

/// Where `ldapsync approve --plan FILE` leaves a saved plan for the running daemon, which
/// applies it at its next tick: beside the state file, so it is as private as the ledgers.
pub fn approval_path(config: &Config) -> std::path::PathBuf {
    let mut name = config
        .state
        .path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".approved-plan.json");
    config.state.path.with_file_name(name)
}

/// Builds the configured sinks, or only those named in `only`.
pub fn build_sinks(config: &Config, only: &[String]) -> Result<Vec<Box<dyn Sink>>, AppError> {
    for name in only {
        if !config.sinks.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
            return Err(AppError::UnknownSink {
                name: name.clone(),
                known: known.join(", "),
            });
        }
    }
    config
        .sinks
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .map(|s| sinks::build(s).map_err(AppError::from))
        .collect()
}

/// Checks that the directory source answers: binds to the LDAP server, or opens the LDIF file.
/// Returns what was checked (`ldap` or `ldif`) and, on failure, why.
pub async fn check_source(config: &Config) -> (&'static str, Result<(), String>) {
    match &config.ldap.ldif_file {
        None => (
            "ldap",
            crate::source::ldap::connect(&config.ldap)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        ),
        Some(path) => (
            "ldif",
            std::fs::File::open(path)
                .map(|_| ())
                .map_err(|e| format!("{}: {e}", path.display())),
        ),
    }
}
