//! Sinks: the [`Sink`] trait, the registry of sink types, and the [`Recorder`] through which sinks record each applied operation.
//!
//! A sink is a small repeated shape: a config struct (deserialized from its `[[sinks]]` table),
//! a client built on the shared [`http`] layer, the mapping to its target's JSON, and its tests.
//! Sinks never talk to LDAP and never touch SQLite directly: they report each successful
//! operation to the [`Recorder`], which writes the ledger in the same step. The group sinks
//! (SCIM, PingOne groups, Connect, ForgeRock) only implement [`lifecycle::GroupApi`]; the
//! shared driver [`lifecycle::apply`] does the rest.

pub(crate) mod connect;
pub(crate) mod file;
pub(crate) mod forgerock;
pub(crate) mod http;
pub(crate) mod lifecycle;
pub(crate) mod pingone;
pub(crate) mod scim;
pub(crate) mod target;

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Invalid, SinkConfig, SinkOptions};
use crate::directory::Directory;
use crate::ledger::{Ledger, LedgerWriteError, LedgerWriter, Origin};
use crate::model::{GroupSpec, MemberRef, OpKind, Plan, Summary, TargetView};
use crate::secret::{SecretError, SecretField};

/// The registration of one sink type, implemented by the type's config struct: everything the
/// rest of the program needs to know about a type, so adding a sink is one module plus one
/// line in [`sink_types!`].
pub(crate) trait SinkType {
    /// Checks values serde cannot; returns the offending key and why.
    fn validate(&self) -> Result<(), Invalid>;
    /// The secrets this configuration uses (resolved by `check`, listed by the permission
    /// warning when written inline).
    fn secret_fields(&self) -> Vec<SecretField<'_>>;
    /// Builds the sink.
    fn build(&self, name: String, http: http::HttpSettings) -> Built;
}

/// What [`SinkType::build`] returns.
pub(crate) type Built = Result<Box<dyn Sink>, SinkError>;

/// Generates [`SinkSettings`], the `type`-tagged union of every registered sink config.
macro_rules! sink_types {
    ($($type_name:literal => $variant:ident($config:ty),)*) => {
        /// The `type`-specific part of a `[[sinks]]` table.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type")]
        pub(crate) enum SinkSettings {
            $(#[serde(rename = $type_name)] $variant($config),)*
        }

        impl SinkSettings {
            fn registered(&self) -> &dyn SinkType {
                match self {
                    $(SinkSettings::$variant(config) => config,)*
                }
            }
        }

        impl SinkOptions for SinkSettings {
            fn type_name(&self) -> &'static str {
                match self {
                    $(SinkSettings::$variant(_) => $type_name,)*
                }
            }
            fn validate(&self) -> Result<(), Invalid> {
                self.registered().validate()
            }
            fn resolve_secrets(&self) -> Result<(), SecretError> {
                self.registered()
                    .secret_fields()
                    .iter()
                    .try_for_each(|field| field.resolve().map(|_| ()))
            }
            fn inline_secrets(&self) -> Vec<&'static str> {
                self.registered()
                    .secret_fields()
                    .iter()
                    .filter(|field| field.is_inline())
                    .map(|field| field.key)
                    .collect()
            }
        }
    };
}

sink_types! {
    "file" => File(file::FileConfig),
    "scim" => Scim(scim::ScimConfig),
    "pingone_provisioning_sync" => PingoneProvisioningSync(pingone::provisioning_sync::ProvisioningSyncConfig),
    "pingone_groups" => PingoneGroups(pingone::groups::PingOneGroupsConfig),
    "connect" => Connect(connect::ConnectConfig),
    "forgerock" => Forgerock(forgerock::ForgeRockConfig),
}

/// Builds the sink described by a `[[sinks]]` entry.
pub(crate) fn build(config: &SinkConfig<SinkSettings>) -> Result<Box<dyn Sink>, SinkError> {
    let registered = config.settings.registered();
    let mut http = http_settings(config);
    // Every configured secret is scrubbed from what the target answers; a secret that cannot be
    // resolved fails in `build` itself, naming its key.
    http.secrets = registered
        .secret_fields()
        .iter()
        .filter_map(|field| field.resolve().ok())
        .collect();
    registered.build(config.name.clone(), http)
}

/// The shared HTTP layer's settings from the keys every `[[sinks]]` table has.
pub(crate) fn http_settings<S>(config: &SinkConfig<S>) -> http::HttpSettings {
    let defaults = http::HttpSettings::default();
    http::HttpSettings {
        rate_limit_per_second: config
            .rate_limit_per_second
            .unwrap_or(defaults.rate_limit_per_second),
        timeout: config
            .timeout_secs
            .map(std::time::Duration::from_secs)
            .unwrap_or(defaults.timeout),
        max_retries: config.max_retries.unwrap_or(defaults.max_retries),
        max_retry_after: config
            .max_retry_after_secs
            .map(std::time::Duration::from_secs)
            .unwrap_or(defaults.max_retry_after),
        ..defaults
    }
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
    #[error(
        "sink \"{sink}\": interrupted by a signal after the request in flight; what was applied is recorded"
    )]
    Interrupted { sink: String },
    #[error("sink \"{sink}\": cannot record in the ledger: {source}")]
    Ledger {
        sink: String,
        #[source]
        source: LedgerWriteError,
    },
}

/// A target system that receives plans.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Its configured name and its `type`.
    fn identity(&self) -> (&str, &'static str);

    /// Its configured name.
    fn name(&self) -> &str {
        self.identity().0
    }

    /// Its `type` (the registration's name).
    fn type_name(&self) -> &'static str {
        self.identity().1
    }

    /// Authenticates and makes one harmless read (`check --connect`).
    async fn check(&self) -> Result<(), SinkError>;

    /// Executes the plan. Each successful operation is reported to `recorder` as it completes;
    /// a failed operation is reported with [`Recorder::failed`] and the rest continue. An `Err`
    /// means the sink as a whole could not go on (authentication, an unreachable target).
    async fn apply(&self, plan: &Plan, recorder: &mut Recorder<'_>) -> Result<(), SinkError>;

    /// What the target holds for planning, read-only (dry runs too): the target users of the
    /// directory's members and the existing groups to adopt; with `full` (`sync --full`) also
    /// the real state of every owned group. By default nothing is resolved and the plan is made
    /// against the ledger alone.
    async fn resolve(
        &self,
        _directory: &Directory,
        _ledger: &Ledger,
        _full: bool,
    ) -> Result<TargetView, SinkError> {
        Ok(TargetView::default())
    }

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
    /// The names of the users counted in `unmapped`.
    #[serde(skip)]
    pub unmapped_users: std::collections::BTreeSet<String>,
}

/// What the engine watches a run through: `(kind, group, success, count)` per recorded outcome.
pub type Observer = dyn Fn(OpKind, &GroupSpec, bool, u64) + Send + Sync;

/// Records each applied operation in the sink's ledger as it happens, and counts it.
pub struct Recorder<'a> {
    ledger: &'a mut dyn LedgerWriter,
    /// The sink's ledger as the run started (what the plan was made against).
    planned_against: &'a Ledger,
    sink: String,
    target_ids: HashMap<String, String>,
    pub report: ApplyReport,
    observer: Option<&'a Observer>,
    /// Once cancelled (SIGINT/SIGTERM), the next record returns [`SinkError::Interrupted`]:
    /// the op in flight is recorded, no further request is sent.
    stop: Option<tokio_util::sync::CancellationToken>,
}

impl<'a> Recorder<'a> {
    pub fn new(ledger: &'a mut dyn LedgerWriter, planned_against: &'a Ledger, sink: &str) -> Self {
        Recorder {
            ledger,
            planned_against,
            sink: sink.to_string(),
            target_ids: HashMap::new(),
            report: ApplyReport::default(),
            observer: None,
            stop: None,
        }
    }

    /// The sink's ledger as the run started: what the plan was made against.
    pub fn planned_against(&self) -> &'a Ledger {
        self.planned_against
    }

    /// Stops the sink at its next record once `stop` is cancelled.
    pub fn with_stop(mut self, stop: tokio_util::sync::CancellationToken) -> Self {
        self.stop = Some(stop);
        self
    }

    /// `Err` once the run was interrupted: called after each record, so the op that completed
    /// is in the ledger and nothing more is sent.
    fn checkpoint(&self) -> Result<(), SinkError> {
        match &self.stop {
            Some(stop) if stop.is_cancelled() => Err(SinkError::Interrupted {
                sink: self.sink.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Calls `observer(kind, group, success, count)` for every recorded outcome (metrics,
    /// progress).
    pub fn with_observer(mut self, observer: &'a Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    fn store_error(&self, source: LedgerWriteError) -> SinkError {
        SinkError::Ledger {
            sink: self.sink.clone(),
            source,
        }
    }

    fn count(&mut self, kind: OpKind, group: &GroupSpec, n: u64) {
        if n == 0 {
            return;
        }
        self.report.applied.add(kind, n);
        if let Some(observer) = self.observer {
            observer(kind, group, true, n);
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
        self.checkpoint()?;
        self.ledger
            .record_intent(group)
            .map_err(|e| self.store_error(e))
    }

    /// After a ledger write for one operation: a failed write fails the sink; a done one is
    /// counted, and the run stops here if it was interrupted.
    fn written(
        &mut self,
        kind: OpKind,
        n: u64,
        group: &GroupSpec,
        write: Result<(), LedgerWriteError>,
    ) -> Result<(), SinkError> {
        write.map_err(|e| self.store_error(e))?;
        self.count(kind, group, n);
        self.checkpoint()
    }

    /// Records a created (or adopted) group.
    pub fn created(&mut self, group: &GroupSpec, target_id: &str) -> Result<(), SinkError> {
        let write = self
            .ledger
            .record_group(group, target_id)
            .and_then(|()| self.ledger.record_origin(&group.source_id, Origin::Created));
        self.target_ids
            .insert(group.source_id.clone(), target_id.to_string());
        self.written(OpKind::Create, 1, group, write)
    }

    /// Records an adopted group (it already existed in the target) and the members it already
    /// has that the directory wants there.
    pub fn adopted(
        &mut self,
        group: &GroupSpec,
        target_id: &str,
        present: &[MemberRef],
    ) -> Result<(), SinkError> {
        let write = self
            .ledger
            .record_group(group, target_id)
            .and_then(|()| self.ledger.record_origin(&group.source_id, Origin::Adopted))
            .and_then(|()| self.record_members(OpKind::MemberAdd, group, present));
        self.target_ids
            .insert(group.source_id.clone(), target_id.to_string());
        self.written(OpKind::Adopt, 1, group, write)
    }

    /// Records an updated group (new name/description/DN).
    pub fn updated(&mut self, group: &GroupSpec, target_id: &str) -> Result<(), SinkError> {
        let write = self.ledger.record_group(group, target_id);
        self.written(OpKind::Update, 1, group, write)
    }

    /// Records a deleted group (or one found already gone).
    pub fn deleted(&mut self, group: &GroupSpec) -> Result<(), SinkError> {
        let write = self.ledger.record_deleted(&group.source_id);
        self.written(OpKind::Delete, 1, group, write)
    }

    /// Records a target user the sink created (`provision_users`) for a member of `group`.
    pub fn user_created(
        &mut self,
        group: &GroupSpec,
        user: &MemberRef,
        target_id: &str,
    ) -> Result<(), SinkError> {
        let write = self.ledger.record_user_created(user, target_id);
        self.written(OpKind::UserCreate, 1, group, write)
    }

    /// Records that a user the sink created was deactivated (`UserDeactivate`) or reactivated
    /// (`UserReactivate`); `group`: the operation's.
    pub fn user_active_changed(
        &mut self,
        kind: OpKind,
        group: &GroupSpec,
        user: &MemberRef,
    ) -> Result<(), SinkError> {
        let active = kind == OpKind::UserReactivate;
        let write = self.ledger.record_user_active(&user.source_id, active);
        self.written(kind, 1, group, write)
    }

    /// Forgets a group the target no longer has, without counting a delete (it will be recreated).
    pub fn forget(&mut self, group: &GroupSpec) -> Result<(), SinkError> {
        self.ledger
            .record_deleted(&group.source_id)
            .map_err(|e| self.store_error(e))
    }

    /// Records members added to a group (`MemberAdd`; `members` carry their target user ids)
    /// or removed from it (`MemberRemove`).
    pub fn members_changed(
        &mut self,
        kind: OpKind,
        group: &GroupSpec,
        members: &[MemberRef],
    ) -> Result<(), SinkError> {
        let write = self.record_members(kind, group, members);
        self.written(kind, members.len() as u64, group, write)
    }

    /// Records members the target manages itself (no request sent): the ledger takes them as in
    /// sync so the plan converges, and they are counted as skipped, not applied.
    pub fn members_skipped(
        &mut self,
        kind: OpKind,
        group: &GroupSpec,
        members: &[MemberRef],
    ) -> Result<(), SinkError> {
        self.record_members(kind, group, members)
            .map_err(|e| self.store_error(e))?;
        self.report.skipped += members.len() as u64;
        Ok(())
    }

    /// Writes a member change (`MemberRemove`: gone; otherwise present) to the ledger.
    fn record_members(
        &mut self,
        kind: OpKind,
        group: &GroupSpec,
        members: &[MemberRef],
    ) -> Result<(), LedgerWriteError> {
        if members.is_empty() {
            return Ok(());
        }
        match kind {
            OpKind::MemberRemove => {
                let ids: Vec<&str> = members.iter().map(|m| m.source_id.as_str()).collect();
                self.ledger.record_members_removed(&group.source_id, &ids)
            }
            _ => self.ledger.record_members_added(&group.source_id, members),
        }
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
            observer(kind, group, false, count);
        }
        self.report.failures.push(OpFailure {
            op: kind.as_str(),
            group: group.name.clone(),
            error,
        });
    }

    /// Counts a member that could not be mapped to a target user (skipped, retried next run).
    /// The engine names them once per run in one WARN line (`unmapped_users`).
    pub fn unmapped(&mut self, group: &GroupSpec, member: &MemberRef) {
        tracing::debug!(sink = %self.sink, group = %group.name, member = %member.username, "member has no matching user in the target; skipped");
        self.report.unmapped += 1;
        self.report.unmapped_users.insert(member.username.clone());
    }

    /// Proposes a new cursor; the engine stores it only if no operation failed.
    pub fn set_cursor(&mut self, cursor: String) {
        self.report.cursor = Some(cursor);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::SinkSettings;
    use crate::config::{Config, SinkOptions};

    fn parse(text: &str, path: &str) -> Config<SinkSettings> {
        Config::parse(text, Path::new(path)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn config_example_documents_every_sink_type() {
        let config = parse(
            include_str!("../../config.example.toml"),
            "config.example.toml",
        );
        assert!(config.schedule.is_some());
        let types: std::collections::BTreeSet<&str> = config
            .sinks
            .iter()
            .map(|s| s.settings.type_name())
            .collect();
        assert_eq!(types.len(), 6, "every sink type is documented: {types:?}");
    }

    const INLINE_SECRETS: &str = r#"
[ldap]
url = "ldap://127.0.0.1:1"
bind_dn = "cn=x"
bind_password = "inline-ldap-secret"
[groups]
base_dn = "ou=g"
[users]
base_dn = "ou=u"
[state]
path = "s.db"
[[sinks]]
name = "scim"
type = "scim"
base_url = "http://127.0.0.1:1"
token = "inline-scim-secret"
[[sinks]]
name = "env"
type = "scim"
base_url = "http://127.0.0.1:1"
token = "env:SOME_TOKEN"
"#;

    #[test]
    fn a_configuration_printed_with_debug_hides_inline_secrets() {
        let config = parse(INLINE_SECRETS, "c.toml");
        let printed = format!("{config:?}");
        assert!(!printed.contains("inline-ldap-secret") && !printed.contains("inline-scim-secret"));
        assert_eq!(
            config.ldap.bind_password().unwrap().unwrap().expose(),
            "inline-ldap-secret"
        );
    }

    #[test]
    fn inline_secrets_are_found_but_env_references_are_not() {
        let config = parse(INLINE_SECRETS, "c.toml");
        let found: Vec<Vec<&str>> = config
            .sinks
            .iter()
            .map(|s| s.settings.inline_secrets())
            .collect();
        assert_eq!(found, [vec!["token"], vec![]]);
    }
}
