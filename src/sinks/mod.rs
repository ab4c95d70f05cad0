//! Sinks: the [`Sink`] trait, the registry of sink types, and the [`Recorder`] through which sinks record each applied operation.
//!
//! A sink is a small repeated shape: a config struct (deserialized from its `[[sinks]]` table),
//! a client built on the shared [`http`] layer, the mapping to its target's JSON, and its tests.
//! Sinks never talk to LDAP and never touch SQLite directly: they report each successful
//! operation to the [`Recorder`], which writes the ledger in the same step. The group sinks
//! (SCIM, PingOne groups, Connect, ForgeRock) only implement [`lifecycle::GroupApi`]; the
//! shared driver [`lifecycle::apply`] does the rest.

pub mod connect;
pub mod file;
pub mod forgerock;
pub mod http;
pub mod lifecycle;
pub mod pingone;
pub mod scim;
pub mod target;

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::SecretError;
use crate::ledger::Ledger;
use crate::plan::{GroupSpec, MemberRef, OpKind, Plan, Summary};
use crate::store::{Store, StoreError};

/// The `type`-specific part of a `[[sinks]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkSettings {
    File(file::FileConfig),
    Scim(scim::ScimConfig),
    PingoneProvisioningSync(pingone::provisioning_sync::ProvisioningSyncConfig),
    PingoneGroups(pingone::groups::PingOneGroupsConfig),
    Connect(connect::ConnectConfig),
    Forgerock(forgerock::ForgeRockConfig),
}

impl SinkSettings {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkSettings::File(_) => "file",
            SinkSettings::Scim(_) => "scim",
            SinkSettings::PingoneProvisioningSync(_) => "pingone_provisioning_sync",
            SinkSettings::PingoneGroups(_) => "pingone_groups",
            SinkSettings::Connect(_) => "connect",
            SinkSettings::Forgerock(_) => "forgerock",
        }
    }

    /// Checks values serde cannot; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            SinkSettings::File(c) => c.validate(),
            SinkSettings::Scim(c) => c.validate(),
            SinkSettings::PingoneProvisioningSync(c) => c.validate(),
            SinkSettings::PingoneGroups(c) => c.validate(),
            SinkSettings::Connect(c) => c.validate(),
            SinkSettings::Forgerock(c) => c.validate(),
        }
    }

    pub fn resolve_secrets(&self) -> Result<(), SecretError> {
        match self {
            SinkSettings::File(_) => Ok(()),
            SinkSettings::Scim(c) => c.token().map(|_| ()),
            SinkSettings::PingoneProvisioningSync(c) => c.client_secret().map(|_| ()),
            SinkSettings::PingoneGroups(c) => c.client_secret().map(|_| ()),
            SinkSettings::Connect(c) => c.api_key().map(|_| ()),
            SinkSettings::Forgerock(c) => c.resolve_secrets(),
        }
    }
}

/// Builds the sink described by a `[[sinks]]` entry.
pub fn build(config: &crate::config::SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    let name = config.name.clone();
    Ok(match &config.settings {
        SinkSettings::File(c) => Box::new(file::FileSink::new(name, c.clone())),
        SinkSettings::Scim(c) => Box::new(scim::ScimSink::new(name, c, config.http_settings())?),
        SinkSettings::PingoneProvisioningSync(c) => Box::new(
            pingone::provisioning_sync::ProvisioningSyncSink::new(name, c, config.http_settings())?,
        ),
        SinkSettings::PingoneGroups(c) => Box::new(pingone::groups::PingOneGroupsSink::new(
            name,
            c,
            config.http_settings(),
        )?),
        SinkSettings::Connect(c) => {
            Box::new(connect::ConnectSink::new(name, c, config.http_settings())?)
        }
        SinkSettings::Forgerock(c) => Box::new(forgerock::ForgeRockSink::new(
            name,
            c,
            config.http_settings(),
        )?),
    })
}

/// A failure of a sink as a whole or of one of its operations.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink \"{sink}\": {source}")]
    Http {
        sink: String,
        #[source]
        source: http::HttpError,
    },
    #[error("sink \"{sink}\": {message}")]
    Target { sink: String, message: String },
    #[error("sink \"{sink}\": secret: {source}")]
    Secret {
        sink: String,
        #[source]
        source: SecretError,
    },
    #[error("sink \"{sink}\": {source}")]
    Store {
        sink: String,
        #[source]
        source: StoreError,
    },
}

/// A target system that receives plans.
#[async_trait]
pub trait Sink: Send + Sync {
    fn name(&self) -> &str;
    fn type_name(&self) -> &'static str;

    /// Authenticates and makes one harmless read (`check --connect`).
    async fn check(&self) -> Result<(), SinkError>;

    /// Executes the plan. Each successful operation is reported to `recorder` as it completes;
    /// a failed operation is reported with [`Recorder::failed`] and the rest continue. An `Err`
    /// means the sink as a whole could not go on (authentication, an unreachable target).
    async fn apply(
        &self,
        plan: &Plan,
        ledger: &Ledger,
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError>;

    /// Extra dry-run detail (e.g. the request batches a sink would send).
    fn preview(&self, _plan: &Plan, _ledger: &Ledger, _full: bool) -> Option<serde_json::Value> {
        None
    }
}

/// One operation that failed, for the run report.
#[derive(Debug, Clone, Serialize)]
pub struct OpFailure {
    pub op: &'static str,
    pub group: String,
    pub error: String,
}

/// What a sink's apply achieved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub applied: Summary,
    pub failures: Vec<OpFailure>,
    pub unmapped: u64,
    /// Memberships the target manages itself (e.g. Connect with LDAP groups): recorded in the
    /// ledger as in sync, but no request was sent.
    pub skipped: u64,
    /// A new cursor/token to store, only if every operation succeeded.
    pub cursor: Option<String>,
}

/// Records each applied operation in the sink's ledger as it happens, and counts it.
pub struct Recorder<'a> {
    store: &'a mut Store,
    sink: String,
    target_ids: HashMap<String, String>,
    pub report: ApplyReport,
    observer: Option<&'a (dyn Fn(OpKind, bool, u64) + Send + Sync)>,
}

impl<'a> Recorder<'a> {
    pub fn new(store: &'a mut Store, sink: &str) -> Self {
        Recorder {
            store,
            sink: sink.to_string(),
            target_ids: HashMap::new(),
            report: ApplyReport::default(),
            observer: None,
        }
    }

    /// Calls `observer(kind, success, count)` for every recorded outcome (metrics).
    pub fn with_observer(
        mut self,
        observer: &'a (dyn Fn(OpKind, bool, u64) + Send + Sync),
    ) -> Self {
        self.observer = Some(observer);
        self
    }

    fn store_error(&self, source: StoreError) -> SinkError {
        SinkError::Store {
            sink: self.sink.clone(),
            source,
        }
    }

    fn count(&mut self, kind: OpKind, n: u64) {
        self.report.applied.add(kind, n);
        if let Some(observer) = self.observer {
            observer(kind, true, n);
        }
    }

    /// The target id of a group: from the plan, or recorded earlier in this run.
    pub fn target_id(&self, group: &GroupSpec) -> Option<String> {
        self.target_ids
            .get(&group.source_id)
            .cloned()
            .or_else(|| group.target_id.clone())
    }

    /// Records the intent to create `group` before the create request is sent.
    pub fn intent(&mut self, group: &GroupSpec) -> Result<(), SinkError> {
        self.store
            .record_intent(&self.sink, group)
            .map_err(|e| self.store_error(e))
    }

    /// Records a created (or adopted) group.
    pub fn created(&mut self, group: &GroupSpec, target_id: &str) -> Result<(), SinkError> {
        self.store
            .record_group(&self.sink, group, target_id)
            .map_err(|e| self.store_error(e))?;
        self.target_ids
            .insert(group.source_id.clone(), target_id.to_string());
        self.count(OpKind::Create, 1);
        Ok(())
    }

    /// Records an updated group (new name/description/DN).
    pub fn updated(&mut self, group: &GroupSpec, target_id: &str) -> Result<(), SinkError> {
        self.store
            .record_group(&self.sink, group, target_id)
            .map_err(|e| self.store_error(e))?;
        self.count(OpKind::Update, 1);
        Ok(())
    }

    /// Records a deleted group (or one found already gone).
    pub fn deleted(&mut self, group: &GroupSpec) -> Result<(), SinkError> {
        self.store
            .record_deleted(&self.sink, &group.source_id)
            .map_err(|e| self.store_error(e))?;
        self.count(OpKind::Delete, 1);
        Ok(())
    }

    /// Forgets a group the target no longer has, without counting a delete (it will be recreated).
    pub fn forget(&mut self, group: &GroupSpec) -> Result<(), SinkError> {
        self.store
            .record_deleted(&self.sink, &group.source_id)
            .map_err(|e| self.store_error(e))
    }

    /// Records members added to a group; `members` carry their target user ids.
    pub fn members_added(
        &mut self,
        group: &GroupSpec,
        members: &[MemberRef],
    ) -> Result<(), SinkError> {
        if members.is_empty() {
            return Ok(());
        }
        self.store
            .record_members_added(&self.sink, &group.source_id, members)
            .map_err(|e| self.store_error(e))?;
        self.count(OpKind::MemberAdd, members.len() as u64);
        Ok(())
    }

    /// Records members the target manages itself (no request sent): the ledger takes them as in
    /// sync so the plan converges, and they are counted as skipped, not applied.
    pub fn members_skipped(
        &mut self,
        kind: OpKind,
        group: &GroupSpec,
        members: &[MemberRef],
    ) -> Result<(), SinkError> {
        if members.is_empty() {
            return Ok(());
        }
        match kind {
            OpKind::MemberRemove => {
                let ids: Vec<&str> = members.iter().map(|m| m.source_id.as_str()).collect();
                self.store
                    .record_members_removed(&self.sink, &group.source_id, &ids)
                    .map_err(|e| self.store_error(e))?;
            }
            _ => self
                .store
                .record_members_added(&self.sink, &group.source_id, members)
                .map_err(|e| self.store_error(e))?,
        }
        self.report.skipped += members.len() as u64;
        Ok(())
    }

    /// Records members removed from a group.
    pub fn members_removed(
        &mut self,
        group: &GroupSpec,
        members: &[MemberRef],
    ) -> Result<(), SinkError> {
        if members.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = members.iter().map(|m| m.source_id.as_str()).collect();
        self.store
            .record_members_removed(&self.sink, &group.source_id, &ids)
            .map_err(|e| self.store_error(e))?;
        self.count(OpKind::MemberRemove, members.len() as u64);
        Ok(())
    }

    /// Records a failed operation; the run goes on with the next one.
    pub fn failed(
        &mut self,
        kind: OpKind,
        group: &GroupSpec,
        error: impl std::fmt::Display,
        count: u64,
    ) {
        let error = error.to_string();
        tracing::warn!(sink = %self.sink, op = kind.as_str(), group = %group.name, %error, "operation failed");
        if let Some(observer) = self.observer {
            observer(kind, false, count);
        }
        self.report.failures.push(OpFailure {
            op: kind.as_str(),
            group: group.name.clone(),
            error,
        });
    }

    /// Counts a member that could not be mapped to a target user (skipped, retried next run).
    pub fn unmapped(&mut self, group: &GroupSpec, member: &MemberRef) {
        tracing::info!(sink = %self.sink, group = %group.name, member = %member.username, "member has no matching user in the target; skipped");
        self.report.unmapped += 1;
    }

    /// Proposes a new cursor; the engine stores it only if no operation failed.
    pub fn set_cursor(&mut self, cursor: String) {
        self.report.cursor = Some(cursor);
    }
}
