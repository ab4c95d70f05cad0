//! The file sink: every applied operation as one JSON line (the dry-run operation shape) to a file or stdout.
//!
//! It is the embedded default target for a first run, an audit trail, and a way to feed other
//! tools. It keeps a ledger like any sink, so a rerun writes only what changed.

use crate::config::Invalid;
use crate::secret::SecretField;
use crate::sinks::http::HttpSettings;
use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Recorder, Sink, SinkError};
use crate::model::{Operation, OperationView, Plan};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// A file to append to, or `-` for stdout.
    pub path: String,
}

impl crate::sinks::SinkType for FileConfig {
    fn secret_fields(&self) -> Vec<SecretField<'_>> {
        Vec::new()
    }
    fn validate(&self) -> Result<(), Invalid> {
        if self.path.trim().is_empty() {
            return Err(("path", "must be a file path or \"-\" for stdout".into()));
        }
        Ok(())
    }
    fn build(&self, name: String, _http: HttpSettings) -> crate::sinks::Built {
        Ok(Box::new(FileSink::new(name, self.clone())))
    }
}

pub struct FileSink {
    name: String,
    config: FileConfig,
}

impl FileSink {
    pub fn new(name: String, config: FileConfig) -> Self {
        FileSink { name, config }
    }

    fn open(&self) -> Result<Box<dyn Write + Send>, SinkError> {
        if self.config.path == "-" {
            return Ok(Box::new(std::io::stdout()));
        }
        let path = PathBuf::from(&self.config.path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| SinkError::Target {
                sink: self.name.clone(),
                message: format!("cannot open {} for appending: {e}", path.display()),
            })?;
        Ok(Box::new(std::io::BufWriter::new(file)))
    }
}

#[async_trait]
impl Sink for FileSink {
    fn identity(&self) -> (&str, &'static str) {
        (&self.name, "file")
    }

    async fn check(&self) -> Result<(), SinkError> {
        if self.config.path != "-" {
            self.open()?;
        }
        Ok(())
    }

    async fn apply(&self, plan: &Plan, recorder: &mut Recorder<'_>) -> Result<(), SinkError> {
        if plan.is_empty() {
            return Ok(());
        }
        let mut out = self.open()?;
        let write_error = |e: std::io::Error| SinkError::Target {
            sink: self.name.clone(),
            message: format!("cannot write to {}: {e}", self.config.path),
        };
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for op in &plan.operations {
            let mut line =
                serde_json::to_value(OperationView::from(op)).map_err(|e| SinkError::Target {
                    sink: self.name.clone(),
                    message: format!("cannot encode an operation: {e}"),
                })?;
            if let Some(object) = line.as_object_mut() {
                object.insert("sink".into(), self.name.clone().into());
                object.insert("time".into(), time.clone().into());
            }
            // Written (and flushed) before it is recorded: a crash repeats a line, never loses one.
            writeln!(out, "{line}")
                .and_then(|_| out.flush())
                .map_err(write_error)?;
            let group = op.group();
            match op {
                Operation::Create { .. } => {
                    recorder.intent(group)?;
                    recorder.created(group, &group.source_id)?;
                }
                Operation::Adopt { present, .. } => {
                    let id = group.target_id.as_deref().unwrap_or(&group.source_id);
                    recorder.adopted(group, id, present)?;
                }
                Operation::Update { .. } => {
                    let id = recorder
                        .target_id(group)
                        .unwrap_or_else(|| group.source_id.clone());
                    recorder.updated(group, &id)?;
                }
                Operation::MemberAdd { members, .. } | Operation::MemberRemove { members, .. } => {
                    recorder.members_changed(op.kind(), group, members)?
                }
                Operation::Delete { .. } => recorder.deleted(group)?,
                Operation::UserCreate { user, .. } => {
                    recorder.user_created(group, user, &user.source_id)?
                }
                Operation::UserDeactivate { user, .. } | Operation::UserReactivate { user, .. } => {
                    recorder.user_active_changed(op.kind(), group, user)?
                }
            }
        }
        Ok(())
    }
}
