//! Typed configuration: the TOML keys of config.example.toml, defaults, validation with `file:line` errors, and secrets.
//!
//! Every table rejects unknown keys. Errors name the file, the line and the key
//! (`config.toml:12: unknown key "bind_pw" in [ldap]`) and never contain a secret's value.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use croner::Cron;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue};

use crate::secret::{Secret, SecretError, resolve_optional_secret};

/// A value that serde cannot check: the offending key and why it is wrong.
pub type Invalid = (&'static str, String);

/// What the configuration needs from the type-specific part of a `[[sinks]]` table. The sink
/// registry (one level up, in `sinks`) implements it; `config` itself knows no sink type.
pub trait SinkOptions: DeserializeOwned + fmt::Debug + Clone {
    /// The `type` value.
    fn type_name(&self) -> &'static str;
    /// Checks values serde cannot.
    fn validate(&self) -> Result<(), Invalid>;
    /// Resolves every secret (files readable, `env:` variables set) without contacting anything.
    fn resolve_secrets(&self) -> Result<(), SecretError>;
    /// The keys whose secret is written inline in the file (not `env:NAME`, not a `*_file`).
    fn inline_secrets(&self) -> Vec<&'static str>;
}

/// A configuration problem, located in the file where possible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Unlocated { path: String, message: String },
}

/// The whole configuration file; `S` is the type-specific part of a `[[sinks]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "S: DeserializeOwned"))]
pub struct Config<S> {
    pub ldap: LdapConfig,
    pub groups: GroupsConfig,
    pub users: UsersConfig,
    pub state: StateConfig,
    pub schedule: Option<ScheduleConfig>,
    #[serde(default)]
    pub safety: SafetyConfig,
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub sinks: Vec<SinkConfig<S>>,
    /// Where this configuration was read from (not a TOML key).
    #[serde(skip)]
    pub source_path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://` or `ldaps://`; exclusive with `ldif_file`.
    pub url: Option<String>,
    /// Read the directory from an LDIF file instead of a server.
    pub ldif_file: Option<PathBuf>,
    pub bind_dn: Option<String>,
    pub bind_password: Option<Secret>,
    pub bind_password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub starttls: bool,
    /// Escape hatch for test labs only: accept any server certificate.
    #[serde(default)]
    pub danger_skip_tls_verify: bool,
    #[serde(default = "default_page_size")]
    pub page_size: i32,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Accept `ldap://` without StartTLS to a non-loopback host (a clear-text bind).
    #[serde(default)]
    pub allow_insecure: bool,
    /// Legacy escape hatch: a certificate with no subjectAltName at all (Samba's generated one)
    /// is matched by its subject CN; the chain is still verified.
    #[serde(default)]
    pub tls_cn_fallback: bool,
    /// Read only what changed since the last complete read when the server offers it.
    #[serde(default)]
    pub incremental: IncrementalMode,
}

/// `[ldap] incremental`: whether runs read only what changed (RFC 4533 syncrepl; `uSNChanged` on AD) when they can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IncrementalMode {
    /// Incremental reads when the server offers them, full reads otherwise.
    #[default]
    Auto,
    /// Every run reads the whole directory.
    Off,
}

fn default_page_size() -> i32 {
    500
}
fn default_timeout_secs() -> u64 {
    30
}

/// How nested groups (a group that is a member of a group) are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NestedMode {
    /// A group's members are its transitive user members.
    #[default]
    Flatten,
    /// Group members of groups are dropped.
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    pub base_dn: String,
    #[serde(default = "default_group_filter")]
    pub filter: String,
    #[serde(default = "default_id_attribute")]
    pub id_attribute: String,
    #[serde(default = "default_cn")]
    pub name_attribute: String,
    /// Unset: every membership attribute an entry carries (`member`, `uniqueMember`,
    /// `memberUid`), so groups of several classes each keep their members.
    pub member_attribute: Option<String>,
    #[serde(default = "default_description")]
    pub description_attribute: String,
    #[serde(default)]
    pub nested: NestedMode,
    /// AD: also members, the users whose `primaryGroupID` is the group's RID.
    #[serde(default)]
    pub ad_primary_group: bool,
}

fn default_group_filter() -> String {
    "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup)(objectClass=group))".into()
}
fn default_id_attribute() -> String {
    "entryUUID".into()
}
fn default_cn() -> String {
    "cn".into()
}
fn default_description() -> String {
    "description".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    pub base_dn: String,
    #[serde(default = "default_user_filter")]
    pub filter: String,
    #[serde(default = "default_id_attribute")]
    pub id_attribute: String,
    #[serde(default = "default_uid")]
    pub username_attribute: String,
    #[serde(default = "default_mail")]
    pub email_attribute: String,
    /// AD: leave out accounts whose `userAccountControl` has the ACCOUNTDISABLE bit (2).
    #[serde(default)]
    pub exclude_disabled: bool,
}

fn default_user_filter() -> String {
    "(|(objectClass=inetOrgPerson)(objectClass=posixAccount)(objectClass=user))".into()
}
fn default_uid() -> String {
    "uid".into()
}
fn default_mail() -> String {
    "mail".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub cron: CronSchedule,
    /// An IANA zone name; UTC when absent.
    #[serde(default, deserialize_with = "time_zone")]
    pub timezone: Option<Tz>,
    #[serde(default = "default_true")]
    pub run_on_start: bool,
    pub full_sync_cron: Option<CronSchedule>,
}

/// A seconds-resolution cron expression, parsed once when the configuration is read, exactly as
/// tokio-cron-scheduler parses it (seconds required; day-of-month AND day-of-week).
#[derive(Debug, Clone)]
pub struct CronSchedule {
    pub expression: String,
    pub cron: Cron,
}

impl CronSchedule {
    pub fn parse(expression: &str) -> Result<CronSchedule, String> {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(expression)
            .map(|cron| CronSchedule {
                expression: expression.to_string(),
                cron,
            })
            .map_err(|e| {
                let fields = expression.split_whitespace().count();
                if fields == 5 {
                    format!(
                        "{expression:?} has 5 fields, but ldapsync's cron has six, starting with seconds (second minute hour day month weekday): write \"0 {expression}\" to run at second 0 of the same minutes"
                    )
                } else {
                    format!(
                        "{expression:?} is not a cron expression ldapsync reads ({e}); it has six fields, second minute hour day month weekday, e.g. \"0 */5 * * * *\" for every five minutes"
                    )
                }
            })
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let expression = String::deserialize(deserializer)?;
        CronSchedule::parse(&expression).map_err(serde::de::Error::custom)
    }
}

fn time_zone<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Tz>, D::Error> {
    let name = String::deserialize(deserializer)?;
    name.parse::<Tz>()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{name:?} is not an IANA time zone name")))
}

fn default_true() -> bool {
    true
}

/// Mass-change thresholds (docs/safety.md rule 2). A plan that exceeds any of them is held.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    #[serde(default = "default_max_group_deletes")]
    pub max_group_deletes: u64,
    #[serde(default = "default_percent")]
    pub max_group_delete_percent: f64,
    #[serde(default = "default_max_member_removes")]
    pub max_member_removes: u64,
    #[serde(default = "default_percent")]
    pub max_member_remove_percent: f64,
    /// The percentage limits apply only to counts above this many operations (default 10).
    #[serde(default = "default_percent_floor")]
    pub percent_floor: u64,
}

fn default_percent_floor() -> u64 {
    10
}

fn default_max_group_deletes() -> u64 {
    50
}
fn default_max_member_removes() -> u64 {
    500
}
fn default_percent() -> f64 {
    10.0
}

impl Default for SafetyConfig {
    fn default() -> Self {
        SafetyConfig {
            max_group_deletes: default_max_group_deletes(),
            max_group_delete_percent: default_percent(),
            max_member_removes: default_max_member_removes(),
            max_member_remove_percent: default_percent(),
            percent_floor: default_percent_floor(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    pub ready_max_age_secs: Option<u64>,
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

/// One `[[sinks]]` entry: a name, the keys every sink shares, and the settings of its `type`.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkConfig<S> {
    pub name: String,
    /// Requests per second to this target (shared HTTP layer).
    pub rate_limit_per_second: Option<u32>,
    /// Whole-request timeout.
    pub timeout_secs: Option<u64>,
    /// Retries of a request that met a 429, a 5xx or a connection error.
    pub max_retries: Option<u32>,
    /// A `Retry-After` longer than this fails the request at once (default 300).
    pub max_retry_after_secs: Option<u64>,
    /// The sink's part of a run fails cleanly past this many seconds (default 3600).
    pub run_timeout_secs: Option<u64>,
    /// Accept `http://` URLs to a non-loopback host (default false).
    #[serde(default)]
    pub allow_insecure: bool,
    #[serde(flatten)]
    pub settings: S,
}

impl<S: SinkOptions> Config<S> {
    /// Reads, parses and validates a configuration file. Secrets are not resolved here.
    /// Warns when the file holds inline secrets and other users can read it.
    pub fn load(path: &Path) -> Result<Config<S>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config = Config::parse(&text, path)?;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        let inline = config.inline_secrets();
        if mode & 0o077 != 0 && !inline.is_empty() {
            tracing::warn!(
                "{} holds inline secrets ({}) and is readable by other users: use *_file, env:NAME, or chmod 600",
                path.display(),
                inline.join(", ")
            );
        }
        Ok(config)
    }

    /// Parses configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config<S>, ConfigError> {
        let shown = path.display().to_string();
        let spans = Spans::new(text);
        let mut config: Config<S> = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let section = spans.section_at(span.start);
            let (message, key) = humanize_toml_error(e.message(), section.as_deref());
            // A table-level error (e.g. inside [[sinks]], whose keys serde sees flattened) spans
            // the table: point at the key itself when the table has it.
            let line = key
                .and_then(|key| spans.key_in_table_at(span.start, &key))
                .unwrap_or_else(|| spans.line(span.start));
            ConfigError::Invalid {
                path: shown.clone(),
                line,
                message,
            }
        })?;
        config.source_path = path.to_path_buf();
        validate(&config, &spans, &shown)?;
        Ok(config)
    }

    /// The config file name used in error messages.
    pub fn shown_path(&self) -> String {
        self.source_path.display().to_string()
    }

    /// Resolves every secret (files readable, `env:` variables set) without contacting anything.
    pub fn resolve_secrets(&self) -> Result<(), ConfigError> {
        let path = self.shown_path();
        let fail = |message: String| ConfigError::Unlocated {
            path: path.clone(),
            message,
        };
        self.ldap.bind_password().map_err(|e| fail(e.to_string()))?;
        for sink in &self.sinks {
            sink.settings
                .resolve_secrets()
                .map_err(|e| fail(format!("sink \"{}\": {e}", sink.name)))?;
        }
        Ok(())
    }

    /// Opens every non-secret file the configuration names (the LDIF export, the CA
    /// certificate) the way a run opens them — relative paths from the current directory — and
    /// names the path and the key when one cannot be read. Secret files are checked by
    /// [`Config::resolve_secrets`].
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let files = [
            ("[ldap] ldif_file", self.ldap.ldif_file.as_ref()),
            ("[ldap] ca_file", self.ldap.ca_file.as_ref()),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            if let Err(e) = std::fs::File::open(file) {
                let from = if file.is_relative() {
                    std::env::current_dir()
                        .map(|d| format!(" (relative to the current directory {})", d.display()))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                return Err(ConfigError::Unlocated {
                    path: self.shown_path(),
                    message: format!("{key}: cannot read {}{from}: {e}", file.display()),
                });
            }
        }
        Ok(())
    }

    /// Where secrets are written inline in the file, as `section.key` (for the permission warning).
    fn inline_secrets(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self
            .ldap
            .bind_password
            .as_ref()
            .is_some_and(|p| !p.expose().starts_with("env:"))
        {
            found.push("ldap.bind_password".to_string());
        }
        for sink in &self.sinks {
            for key in sink.settings.inline_secrets() {
                found.push(format!("sinks[{}].{key}", sink.name));
            }
        }
        found
    }
}

impl LdapConfig {
    /// The LDAP bind password, if one is configured.
    pub fn bind_password(&self) -> Result<Option<Secret>, SecretError> {
        resolve_optional_secret(
            "[ldap] bind_password",
            self.bind_password.as_ref().map(Secret::expose),
            self.bind_password_file.as_deref(),
        )
    }
}

fn validate<S: SinkOptions>(
    config: &Config<S>,
    spans: &Spans<'_>,
    path: &str,
) -> Result<(), ConfigError> {
    let at = |section: &str, key: &str, message: String| ConfigError::Invalid {
        path: path.to_string(),
        line: spans.key(&[section], key).unwrap_or(1),
        message,
    };
    let ldap = &config.ldap;
    match (&ldap.url, &ldap.ldif_file) {
        (None, None) => {
            return Err(at(
                "ldap",
                "url",
                "[ldap] needs either \"url\" (a server) or \"ldif_file\" (an LDIF export)".into(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(at(
                "ldap",
                "ldif_file",
                "[ldap] takes \"url\" or \"ldif_file\", not both".into(),
            ));
        }
        (Some(url), None) => {
            if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
                return Err(at(
                    "ldap",
                    "url",
                    format!(
                        "invalid value for \"url\" in [ldap]: {url:?} must start with ldap:// or ldaps://"
                    ),
                ));
            }
            if url.starts_with("ldaps://") && ldap.starttls {
                return Err(at(
                    "ldap",
                    "starttls",
                    "\"starttls\" in [ldap] only applies to ldap:// URLs; ldaps:// is already TLS"
                        .into(),
                ));
            }
            if let Some(rest) = url.strip_prefix("ldap://")
                && !ldap.starttls
                && !ldap.allow_insecure
                && !is_loopback(host_of(rest))
            {
                return Err(at(
                    "ldap",
                    "url",
                    "invalid value for \"url\" in [ldap]: ldap:// without StartTLS to a non-loopback host sends the bind password in clear text; use ldaps://, set starttls = true, or set allow_insecure = true in [ldap]".into(),
                ));
            }
            if host_has_userinfo(url.split_once("://").map_or("", |(_, rest)| rest)) {
                return Err(at(
                    "ldap",
                    "url",
                    "invalid value for \"url\" in [ldap]: the URL carries credentials (user@); give them as bind_dn and bind_password".into(),
                ));
            }
        }
        (None, Some(_)) => {}
    }
    if ldap.danger_skip_tls_verify && ldap.ca_file.is_some() {
        return Err(at(
            "ldap",
            "danger_skip_tls_verify",
            "[ldap] sets both \"danger_skip_tls_verify\" and \"ca_file\": with ca_file the certificate is verified against that CA, so danger_skip_tls_verify would do nothing; remove one of them".into(),
        ));
    }
    if ldap.danger_skip_tls_verify && ldap.tls_cn_fallback {
        return Err(at(
            "ldap",
            "tls_cn_fallback",
            "[ldap] sets both \"danger_skip_tls_verify\" and \"tls_cn_fallback\": nothing is verified with the first, so the second would do nothing; remove one of them".into(),
        ));
    }
    if ldap.bind_password.is_some() && ldap.bind_password_file.is_some() {
        return Err(at(
            "ldap",
            "bind_password_file",
            "[ldap] takes \"bind_password\" or \"bind_password_file\", not both".into(),
        ));
    }
    if !(1..=100_000).contains(&ldap.page_size) {
        return Err(at(
            "ldap",
            "page_size",
            format!(
                "invalid value for \"page_size\" in [ldap]: {} (expected 1..=100000)",
                ldap.page_size
            ),
        ));
    }
    if ldap.timeout_secs == 0 {
        return Err(at(
            "ldap",
            "timeout_secs",
            "invalid value for \"timeout_secs\" in [ldap]: must be at least 1".into(),
        ));
    }
    for (section, filter) in [
        ("groups", &config.groups.filter),
        ("users", &config.users.filter),
    ] {
        if ldap3::parse_filter(filter).is_err() {
            return Err(at(
                section,
                "filter",
                format!(
                    "invalid value for \"filter\" in [{section}]: {filter:?} is not an LDAP filter"
                ),
            ));
        }
    }
    for (name, value) in [
        (
            "max_group_delete_percent",
            config.safety.max_group_delete_percent,
        ),
        (
            "max_member_remove_percent",
            config.safety.max_member_remove_percent,
        ),
    ] {
        if !(0.0..=100.0).contains(&value) {
            return Err(at(
                "safety",
                name,
                format!("invalid value for \"{name}\" in [safety]: {value} (expected 0..=100)"),
            ));
        }
    }
    if let Some(metrics) = &config.metrics
        && metrics.listen.parse::<std::net::SocketAddr>().is_err()
    {
        return Err(at(
            "metrics",
            "listen",
            format!(
                "invalid value for \"listen\" in [metrics]: {:?} is not an address:port",
                metrics.listen
            ),
        ));
    }
    if config.sinks.is_empty() {
        return Err(ConfigError::Unlocated {
            path: path.to_string(),
            message: "at least one [[sinks]] entry is required".into(),
        });
    }
    let tables = sink_tables(spans.text);
    let mut seen = std::collections::BTreeSet::new();
    for (index, sink) in config.sinks.iter().enumerate() {
        let line = spans.sink_key(index, "name").unwrap_or(1);
        if let Some(table) = tables.get(index) {
            check_sink_urls(table, sink.allow_insecure).map_err(|(key, message)| {
                ConfigError::Invalid {
                    path: path.to_string(),
                    line: spans.sink_key(index, &key).unwrap_or(line),
                    message: format!(
                        "invalid value for \"{key}\" in sink \"{}\": {message}",
                        sink.name
                    ),
                }
            })?;
        }
        if sink.name.trim().is_empty() || !seen.insert(sink.name.clone()) {
            return Err(ConfigError::Invalid {
                path: path.to_string(),
                line,
                message: format!(
                    "invalid value for \"name\" in [[sinks]]: {:?} is empty or used twice",
                    sink.name
                ),
            });
        }
        sink.settings
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_string(),
                line: spans.sink_key(index, key).unwrap_or(line),
                message: format!(
                    "invalid value for \"{key}\" in sink \"{}\": {message}",
                    sink.name
                ),
            })?;
    }
    Ok(())
}

/// The `[[sinks]]` tables as raw TOML (for checks over every URL a sink type has).
fn sink_tables(text: &str) -> Vec<toml::Table> {
    text.parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("sinks").and_then(|v| v.as_array()).cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_table().cloned())
        .collect()
}

/// Every http(s) URL of a sink table: no credentials in it, ever; `http://` only to a loopback
/// host unless the sink sets `allow_insecure = true`. The URL itself is not repeated (it may
/// hold a password).
fn check_sink_urls(table: &toml::Table, allow_insecure: bool) -> Result<(), (String, String)> {
    for (key, value) in table {
        let Some(url) = value.as_str() else { continue };
        let (plain, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (false, rest)
        } else {
            continue;
        };
        if host_has_userinfo(rest) {
            return Err((
                key.clone(),
                "the URL carries credentials (user:password@host); credentials in a URL are never allowed: give them in the sink's secret keys (token, api_key, client_secret, as *_file or env:NAME)".into(),
            ));
        }
        if plain && !allow_insecure && !is_loopback(host_of(rest)) {
            return Err((
                key.clone(),
                "http:// to a non-loopback host sends the credential in clear text; use https://, or set allow_insecure = true on the sink".into(),
            ));
        }
    }
    Ok(())
}

/// The authority of a URL after its `scheme://`.
fn authority(rest: &str) -> &str {
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// Whether the authority carries `user[:password]@`.
fn host_has_userinfo(rest: &str) -> bool {
    authority(rest).contains('@')
}

/// The host of a URL after its `scheme://` (without user info, port or IPv6 brackets).
fn host_of(rest: &str) -> &str {
    let authority = authority(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(inner) = host_port.strip_prefix('[') {
        return inner.split(']').next().unwrap_or(inner);
    }
    host_port.split(':').next().unwrap_or(host_port)
}

/// `localhost`, 127.0.0.0/8 and ::1: traffic that never leaves the machine.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Turns serde/toml wording into the project's (`unknown key "x" in [ldap]`); also returns the
/// key. toml reports no error kind, only serde's message, so the three shapes serde writes are
/// recognised here, in one place.
fn humanize_toml_error(message: &str, section: Option<&str>) -> (String, Option<String>) {
    let first = message.lines().next().unwrap_or(message).trim();
    let place = section.map(|s| format!(" in {s}")).unwrap_or_default();
    let quoted = |rest: &str| rest.split('`').next().map(str::to_string);
    if let Some(key) = first.strip_prefix("unknown field `").and_then(quoted) {
        let known: Vec<&str> = first
            .split("expected ")
            .nth(1)
            .map(|list| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        // Unknown at the top level: a section name (the error points into that section).
        let is_section = section.is_none_or(|s| s.trim_matches(['[', ']']) == key);
        let hint = did_you_mean(&key, &known)
            .map(|k| match is_section {
                true => format!("; did you mean [{k}]?"),
                false => format!("; did you mean \"{k}\"?"),
            })
            .unwrap_or_default();
        let message = match is_section {
            true => format!("unknown section [{key}]{hint}"),
            false => format!("unknown key \"{key}\"{place}{hint}"),
        };
        return (message, Some(key));
    }
    if let Some(key) = first.strip_prefix("missing field `").and_then(quoted) {
        return match section {
            // Missing at the top level: a required section.
            None => (format!("missing section [{key}]"), None),
            Some(_) => (format!("missing key \"{key}\"{place}"), None),
        };
    }
    if let Some(value) = first.strip_prefix("unknown variant `").and_then(quoted) {
        let expected = first.split("expected ").nth(1).unwrap_or("");
        return (
            format!("invalid value \"{value}\"{place}, expected {expected}"),
            None,
        );
    }
    (format!("{first}{place}"), None)
}

/// The known name closest to a misspelt `name`, if one is close enough to be what was meant.
fn did_you_mean<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Where tables and keys are in the file, from toml's own spanned parse of the document.
struct Spans<'a> {
    text: &'a str,
    document: Option<DeTable<'a>>,
}

impl<'a> Spans<'a> {
    fn new(text: &'a str) -> Self {
        Spans {
            text,
            document: DeTable::parse(text).ok().map(toml::Spanned::into_inner),
        }
    }

    /// The 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// The top-level table (`[ldap]`) or array of tables (`[[sinks]]`) holding `offset`, if
    /// any; `None` at the top level.
    fn section_at(&self, offset: usize) -> Option<String> {
        let document = self.document.as_ref()?;
        document.iter().find_map(|(name, value)| {
            let inside = |table: &DeTable<'_>| {
                table.iter().any(|(k, v)| {
                    k.span().contains(&offset)
                        || v.span().contains(&offset)
                        || v.span().start == offset
                })
            };
            match value.get_ref() {
                DeValue::Table(table) if inside(table) || value.span().contains(&offset) => {
                    Some(format!("[{}]", name.get_ref()))
                }
                DeValue::Array(items)
                    if items.iter().any(|item| {
                        item.span().contains(&offset)
                            || matches!(item.get_ref(), DeValue::Table(t) if inside(t))
                    }) =>
                {
                    Some(format!("[[{}]]", name.get_ref()))
                }
                _ => None,
            }
        })
    }

    /// The line of `key` in the table at `path` (`["ldap"]`), or of the table when the key is
    /// absent.
    fn key(&self, path: &[&str], key: &str) -> Option<usize> {
        let mut table = self.document.as_ref()?;
        let mut at = None;
        for name in path {
            let (k, v) = table.iter().find(|(k, _)| k.get_ref() == name)?;
            at = Some(k.span().start);
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return at.map(|o| self.line(o)),
            }
        }
        Self::key_of(table, key)
            .or(at)
            .map(|offset| self.line(offset))
    }

    /// The line of `key` in the `index`-th `[[sinks]]` table.
    fn sink_key(&self, index: usize, key: &str) -> Option<usize> {
        let sinks = self
            .document
            .as_ref()?
            .iter()
            .find(|(k, _)| k.get_ref() == "sinks")?;
        let DeValue::Array(items) = sinks.1.get_ref() else {
            return None;
        };
        let item = items.get(index)?;
        let DeValue::Table(table) = item.get_ref() else {
            return None;
        };
        Self::key_of(table, key)
            .or_else(|| table.iter().next().map(|(k, _)| k.span().start))
            .map(|offset| self.line(offset))
    }

    /// The line of `key` in the innermost table that contains `offset` (an error spanning a
    /// whole table, such as a flattened `[[sinks]]` entry).
    fn key_in_table_at(&self, offset: usize, key: &str) -> Option<usize> {
        fn find(table: &DeTable<'_>, offset: usize, key: &str) -> Option<usize> {
            let holds = |value: &toml::Spanned<DeValue<'_>>| {
                value.span().contains(&offset) || value.span().start == offset
            };
            for (_, value) in table.iter() {
                let tables: Vec<&toml::Spanned<DeValue<'_>>> = match value.get_ref() {
                    DeValue::Table(_) => vec![value],
                    DeValue::Array(items) => items.iter().collect(),
                    _ => continue,
                };
                for spanned in tables {
                    let DeValue::Table(t) = spanned.get_ref() else {
                        continue;
                    };
                    if let Some(found) = find(t, offset, key) {
                        return Some(found);
                    }
                    if holds(spanned)
                        && let Some(at) = Spans::key_of(t, key)
                    {
                        return Some(at);
                    }
                }
            }
            None
        }
        find(self.document.as_ref()?, offset, key).map(|o| self.line(o))
    }

    fn key_of(table: &DeTable<'_>, key: &str) -> Option<usize> {
        table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, _)| k.span().start)
    }
}

#[cfg(test)]
macro_rules! test_config_scopes {
    () => {
        r#"
[ldap]
ldif_file = "dir.ldif"

[groups]
base_dn = "ou=Groups,dc=example,dc=com"

[users]
base_dn = "ou=People,dc=example,dc=com"

[state]
path = "state.db"
"#
    };
}
#[cfg(test)]
pub(crate) const TEST_CONFIG_SCOPES: &str = test_config_scopes!();

/// A stand-in for the sink registry in tests of the layers below `sinks`: one `type = "file"`.
#[cfg(test)]
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum TestSink {
    File {
        #[serde(rename = "path")]
        _path: String,
    },
}

#[cfg(test)]
impl SinkOptions for TestSink {
    fn type_name(&self) -> &'static str {
        "file"
    }
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
    fn resolve_secrets(&self) -> Result<(), SecretError> {
        Ok(())
    }
    fn inline_secrets(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// A configuration with the test stand-in sink.
#[cfg(test)]
pub(crate) type TestConfig = Config<TestSink>;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = concat!(
        test_config_scopes!(),
        "\n[[sinks]]\nname = \"audit\"\ntype = \"file\"\npath = \"-\"\n"
    );

    fn parse(text: &str) -> Result<TestConfig, ConfigError> {
        TestConfig::parse(text, Path::new("config.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.groups.nested, NestedMode::Flatten);
        assert_eq!(config.ldap.page_size, 500);
        assert_eq!(config.safety.max_group_deletes, 50);
        assert_eq!(config.sinks.len(), 1);
    }

    #[test]
    fn unknown_key_names_file_line_key_and_section() {
        let text = MINIMAL.replace(
            "ldif_file = \"dir.ldif\"",
            "ldif_file = \"dir.ldif\"\nbind_pw = \"x\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("config.toml:4: unknown key \"bind_pw\" in [ldap]"),
            "{err}"
        );
    }

    #[test]
    fn misspelt_keys_and_sections_get_a_suggestion() {
        let text = MINIMAL.replace("[ldap]\n", "[ldap]\npage_sise = 10\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.ends_with("unknown key \"page_sise\" in [ldap]; did you mean \"page_size\"?"),
            "{err}"
        );
        let text = format!("{MINIMAL}\n[safty]\nmax_group_deletes = 1\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("unknown section [safty]; did you mean [safety]?"),
            "{err}"
        );
        // Nothing close: no guess.
        let text = MINIMAL.replace("[ldap]\n", "[ldap]\nxyzzy = 1\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn a_five_field_cron_is_shown_in_its_six_field_form() {
        let text = format!("{MINIMAL}\n[schedule]\ncron = \"*/5 * * * *\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("has 5 fields"), "{err}");
        assert!(err.contains("\"0 */5 * * * *\""), "{err}");
        assert_eq!(err.matches("config.toml").count(), 1, "{err}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = MINIMAL.replace("[ldap]\n", "[ldap]\npage_size = \"big\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("config.toml:3:"), "{err}");
        assert!(err.contains("[ldap]"), "{err}");
    }

    #[test]
    fn bad_value_is_located() {
        let text = MINIMAL.replace("[ldap]\n", "[ldap]\npage_size = 0\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("config.toml:3: invalid value for \"page_size\""),
            "{err}"
        );
    }

    #[test]
    fn a_missing_section_is_named_as_a_section() {
        let text = MINIMAL.replace("[users]\nbase_dn = \"ou=People,dc=example,dc=com\"\n", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.ends_with(": missing section [users]"), "{err}");
        let text = MINIMAL.replace("base_dn = \"ou=People,dc=example,dc=com\"", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("missing key \"base_dn\" in [users]"), "{err}");
    }

    #[test]
    fn validation_errors_point_at_the_key_through_toml_spans() {
        let text = MINIMAL.replace(
            "path = \"state.db\"",
            "path = \"state.db\"\n\n[safety]\n\nmax_member_remove_percent = 150",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("config.toml:16: invalid value for \"max_member_remove_percent\""),
            "{err}"
        );
    }

    #[test]
    fn unknown_sink_key_is_rejected() {
        let text = format!("{MINIMAL}colour = \"red\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(err, "config.toml:18: unknown key \"colour\" in [[sinks]]");
    }

    #[test]
    fn bad_filter_and_nested_value_are_rejected() {
        let text = MINIMAL.replace(
            "base_dn = \"ou=Groups,dc=example,dc=com\"",
            "base_dn = \"ou=Groups,dc=example,dc=com\"\nfilter = \"(cn=\"",
        );
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("not an LDAP filter")
        );
        let text = MINIMAL.replace(
            "base_dn = \"ou=Groups,dc=example,dc=com\"",
            "base_dn = \"ou=Groups,dc=example,dc=com\"\nnested = \"deep\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("config.toml:7:") && err.contains("deep"),
            "{err}"
        );
    }

    #[test]
    fn plaintext_ldap_to_a_remote_host_needs_allow_insecure() {
        let remote = MINIMAL.replace(
            "ldif_file = \"dir.ldif\"",
            "url = \"ldap://dc1.example.com:389\"",
        );
        let err = parse(&remote).unwrap_err().to_string();
        assert!(
            err.starts_with("config.toml:3: invalid value for \"url\" in [ldap]")
                && err.contains("allow_insecure"),
            "{err}"
        );
        parse(&remote.replace("[ldap]\n", "[ldap]\nallow_insecure = true\n")).unwrap();
        parse(&remote.replace("[ldap]\n", "[ldap]\nstarttls = true\n")).unwrap();
        parse(&remote.replace("ldap://dc1", "ldaps://dc1")).unwrap();
        for local in [
            "ldap://127.0.0.1:389",
            "ldap://127.9.8.7",
            "ldap://localhost",
            "ldap://[::1]:389",
        ] {
            parse(&remote.replace("ldap://dc1.example.com:389", local)).unwrap();
        }
    }

    #[test]
    fn skip_tls_verify_with_a_ca_file_is_rejected() {
        let text = MINIMAL.replace(
            "ldif_file = \"dir.ldif\"",
            "url = \"ldaps://dc1.example.com\"\nca_file = \"ca.pem\"\ndanger_skip_tls_verify = true",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("config.toml:5: ") && err.contains("danger_skip_tls_verify"),
            "{err}"
        );
        let text = MINIMAL.replace(
            "ldif_file = \"dir.ldif\"",
            "url = \"ldaps://dc1.example.com\"\ndanger_skip_tls_verify = true\ntls_cn_fallback = true",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("config.toml:5: ") && err.contains("tls_cn_fallback"),
            "{err}"
        );
    }

    #[test]
    fn sink_urls_refuse_credentials_and_remote_plaintext() {
        let with_url = |url: &str, extra: &str| {
            parse(&format!(
                "{}{extra}",
                MINIMAL.replace("path = \"-\"", &format!("path = \"{url}\""))
            ))
        };
        let err = with_url("https://user:pw-secret@api.example.com/v2", "")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config.toml:17: invalid value for \"path\" in sink \"audit\"")
                && err.contains("credentials")
                && !err.contains("pw-secret"),
            "{err}"
        );
        let err = with_url("http://api.example.com/v2", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_insecure"), "{err}");
        let err = with_url("http://user:pw@127.0.0.1/v2", "allow_insecure = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials"), "never allowed: {err}");
        with_url("http://127.0.0.1:8080/x", "").unwrap();
        with_url("http://localhost/x", "").unwrap();
        with_url("http://api.example.com", "allow_insecure = true\n").unwrap();
        with_url("https://api.example.com/v2", "").unwrap();
    }
}
