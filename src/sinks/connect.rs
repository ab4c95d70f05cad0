//! The Posit Connect sink: LDAP ("remote") groups through remote search + temp ticket, or local groups with managed members.
//!
//! Follows the Posit Connect API reference (see docs/connect.md). The API lives under
//! `<base_url>/__api__` and authenticates with `Authorization: Key <api key>`.
//!
//! * `group_mode = "auto"` reads `GET /__api__/server_settings`: `external_group_search` means the
//!   LDAP provider owns groups ("remote"), otherwise groups are local; `external_group_members`
//!   means the provider owns membership (the flag meanings are UNCONFIRMED, spec §2.4).
//! * Remote: `GET /v1/groups/remote?prefix=NAME` (prefix-fuzzy, so the exact name is picked), then
//!   adopt the `guid` if set, else `PUT /v1/groups {temp_ticket}`; code 131 ("same unique ID
//!   already exists") means adopt. Membership is populated by Connect from LDAP: member operations
//!   are not sent, they are recorded as in sync and counted as skipped (one log line per run).
//! * Local: `POST /v1/groups {name}` (409 code 15 → find by name and adopt), members with
//!   `POST/DELETE /v1/groups/{guid}/members`, users found by listing `/v1/users` (all pages;
//!   a page that repeats ends the listing, never an endless loop), optionally provisioned.
//! * Rename with `PATCH /v1/groups/{guid}` (legacy `POST /v1/groups/{guid}` on servers without
//!   PATCH); delete with `DELETE /v1/groups/{guid}` (404 = done).

use crate::config::Invalid;
use crate::secret::SecretField;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::http::{self, Auth, Body, HttpClient, HttpError, HttpSettings, Response, check_url};
use super::lifecycle::{
    self, AdoptPolicy, ApiProfile, Change, Created, GroupApi, MemberChange, Membership, OpError,
    Outcome, Prepared, TargetGroup, UserKey,
};
use super::target::{self, Page};
use super::{Recorder, Sink, SinkError};
use crate::directory::Directory;
use crate::ledger::Ledger;
use crate::model::{ActualGroup, GroupSpec, MemberRef, OpKind, Plan, TargetView};
use crate::secret::Secret;

/// Connect's maximum `page_size` / `limit`.
const PAGE_SIZE: &str = "500";

/// Where groups come from on the Connect server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupMode {
    /// Ask `GET /__api__/server_settings`.
    #[default]
    Auto,
    /// LDAP-authenticated Connect: groups are imported from the directory with a ticket.
    Remote,
    /// SAML, OAuth2, password, PAM, proxied: groups are created by name and members are managed
    /// by ldapsync, whatever the server settings say.
    Local,
}

/// How an LDAP user is found among Connect's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConnectUserMatch {
    #[default]
    Username,
    Email,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// The server root, e.g. `https://connect.example.com` (`/__api__` is appended).
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    #[serde(default)]
    pub group_mode: GroupMode,
    #[serde(default)]
    pub user_match: ConnectUserMatch,
    /// Create missing Connect users (remote ticket on LDAP, `POST /v1/users` otherwise).
    #[serde(default)]
    pub provision_users: bool,
    /// Which existing groups may be adopted: "name" (default), "external_id" or "never".
    #[serde(default)]
    pub adopt: AdoptPolicy,
}

impl ConnectConfig {
    /// Where the api key is.
    fn api_key_field(&self) -> SecretField<'_> {
        SecretField::new(
            "api_key",
            self.api_key.as_ref(),
            self.api_key_file.as_deref(),
        )
    }
}

impl crate::sinks::SinkType for ConnectConfig {
    fn secret_fields(&self) -> Vec<SecretField<'_>> {
        vec![self.api_key_field()]
    }
    fn validate(&self) -> Result<(), Invalid> {
        check_url("base_url", &self.base_url)?;
        if self.api_key.is_none() && self.api_key_file.is_none() {
            return Err((
                "api_key",
                "an administrator API key is required (api_key or api_key_file)".into(),
            ));
        }
        Ok(())
    }
    fn build(&self, name: String, http: HttpSettings) -> crate::sinks::Built {
        Ok(Box::new(ConnectSink::new(name, self, http)?))
    }
}

/// `<server root>/__api__`, whether or not the configured URL already ends with it.
fn api_root(base_url: &str) -> String {
    let trimmed = base_url.trim_end_matches('/');
    if trimmed.ends_with("/__api__") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/__api__")
    }
}

/// What this run may do on the server, from the configured mode and `server_settings`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mode {
    /// Groups come from LDAP through remote search + ticket.
    remote: bool,
    /// The provider owns membership: member changes are not sent.
    provider_members: bool,
    /// The provider's display name ("LDAP", "SAML", …), or "unknown".
    provider: String,
    /// Users can be imported with a remote ticket (LDAP, OAuth2 with Google).
    user_remote_search: bool,
    /// `GET /v1/groups?prefix=` pages correctly (2025.04.0 and later).
    prefix_paging_fixed: bool,
}

/// Derives the run's [`Mode`]. `settings` is the `server_settings` answer when it could be read.
fn mode_from_settings(configured: GroupMode, settings: Option<&Value>) -> Result<Mode, String> {
    let auth = settings.and_then(|s| s.get("authentication"));
    let flag = |name: &str| auth.and_then(|a| a.get(name)).and_then(Value::as_bool);
    let provider = auth
        .and_then(|a| a.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    if flag("groups_enabled") == Some(false) {
        return Err(
            "groups are disabled on this Connect server (Authorization.UserGroups)".to_string(),
        );
    }
    let version_fixed = settings
        .and_then(|s| s.get("version"))
        .and_then(Value::as_str)
        .and_then(parse_version)
        .is_some_and(|v| v >= (2025, 4, 0));
    let is_ldap = provider.eq_ignore_ascii_case("LDAP");
    let user_remote_search = flag("external_user_search").unwrap_or(is_ldap);
    let (remote, provider_members) = match configured {
        GroupMode::Auto => {
            if settings.is_none() {
                return Err("group_mode = \"auto\" needs GET /__api__/server_settings".into());
            }
            let remote = flag("external_group_search").unwrap_or(is_ldap);
            (
                remote,
                remote || flag("external_group_members").unwrap_or(false),
            )
        }
        GroupMode::Remote => (true, true),
        // An explicit "local" asks ldapsync to manage members; a refusal is reported per group.
        GroupMode::Local => (false, false),
    };
    Ok(Mode {
        remote,
        provider_members,
        provider,
        user_remote_search,
        prefix_paging_fixed: version_fixed,
    })
}

/// `"2024.09.0"` → (2024, 9, 0); suffixes such as `-dev` are ignored.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// The numeric code of a Connect error body `{code, error, payload}`.
fn error_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("code")?
        .as_i64()
}

/// What an operator should do about a Connect error code.
fn hint(code: Option<i64>) -> &'static str {
    match code {
        Some(24) => " (the API key was rejected; check api_key)",
        Some(19..=23) => " (the API key's user lacks permission; use an administrator's key)",
        Some(119) => {
            " (this authentication provider cannot import from the directory; use group_mode = \"local\")"
        }
        Some(120) => {
            " (this authentication provider owns groups and users; use group_mode = \"remote\" or \"auto\")"
        }
        Some(132) => {
            " (the authentication provider refuses this endpoint: it owns this data; use group_mode = \"auto\")"
        }
        Some(15) => " (another Connect group already has this name)",
        Some(64) => " (the Connect license's user limit is reached)",
        Some(83) => " (the remote search matched too many groups)",
        _ => "",
    }
}

/// A Connect error body (`{code, error, payload}`): `code=… error`.
fn error_body(body: &[u8]) -> Option<String> {
    http::json_error(body, &["code"], &["error"], |_| Vec::new())
}

/// The error of a failed response, with an operator hint for known Connect codes.
fn describe(response: Response) -> OpError {
    let code = error_code(&response.body);
    OpError::hinted(response.into_error(), hint(code))
}

/// One result of `GET /v1/groups/remote` (or `/v1/users/remote`).
#[derive(Debug, Clone, Deserialize)]
struct Remote {
    #[serde(default, alias = "username")]
    name: String,
    guid: Option<String>,
    temp_ticket: Option<String>,
}

/// The exact-name matches of a prefix-fuzzy remote search: case-sensitive first, then a
/// case-insensitive match when that one is unique.
fn exact_matches<'a>(results: &'a [Remote], name: &str) -> Vec<&'a Remote> {
    let exact: Vec<&Remote> = results.iter().filter(|r| r.name == name).collect();
    if !exact.is_empty() {
        return exact;
    }
    let folded: Vec<&Remote> = results
        .iter()
        .filter(|r| r.name.to_lowercase() == name.to_lowercase())
        .collect();
    if folded.len() == 1 {
        folded
    } else {
        Vec::new()
    }
}

/// Whether a page only repeats items already seen (the pre-2025.04 prefix paging bug).
fn page_repeats(seen: &HashSet<String>, page_ids: &[String]) -> bool {
    !page_ids.is_empty() && page_ids.iter().all(|id| seen.contains(id))
}

/// Everything an offset-paged listing returned.
struct Listing {
    items: Vec<Value>,
    /// Stopped before `total` items were collected (buggy paging, a repeating page).
    truncated: bool,
}

/// Connect users by the keys members are matched on.
#[derive(Debug, Default)]
struct UserIndex {
    by_username: HashMap<String, String>,
    by_email: HashMap<String, Vec<String>>,
}

impl UserIndex {
    fn insert(&mut self, user: &Value) {
        let Some(guid) = user.get("guid").and_then(Value::as_str) else {
            return;
        };
        if let Some(username) = user.get("username").and_then(Value::as_str) {
            self.by_username
                .insert(username.to_string(), guid.to_string());
        }
        if let Some(email) = user
            .get("email")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            let guids = self.by_email.entry(email.to_lowercase()).or_default();
            if !guids.iter().any(|g| g == guid) {
                guids.push(guid.to_string());
            }
        }
    }
}

pub struct ConnectSink {
    name: String,
    config: ConnectConfig,
    http: HttpClient,
    /// Loaded once per run, on the first member that needs it.
    users: Mutex<Option<UserIndex>>,
}

impl ConnectSink {
    pub fn new(
        name: String,
        config: &ConnectConfig,
        settings: HttpSettings,
    ) -> Result<ConnectSink, SinkError> {
        let key = config
            .api_key_field()
            .resolve()
            .map_err(target::secret_error(&name))?;
        let http = HttpClient::new(
            &name,
            &api_root(&config.base_url),
            Auth::Scheme { scheme: "Key", key },
            settings,
            error_body,
        )
        .map_err(target::http_error(&name))?;
        Ok(ConnectSink {
            name,
            config: config.clone(),
            http,
            users: Mutex::new(None),
        })
    }

    fn target_error(&self, message: String) -> SinkError {
        SinkError::Target {
            sink: self.name.clone(),
            message,
        }
    }

    /// Reads `server_settings` (needed in auto mode, advisory otherwise) and derives the mode.
    async fn resolve_mode(&self) -> Result<Mode, SinkError> {
        let settings = match self
            .http
            .json::<Value>(Method::GET, "/server_settings", &[], None)
            .await
        {
            Ok(settings) => Some(settings),
            Err(e) if self.config.group_mode == GroupMode::Auto => {
                return Err(target::http_error(&self.name)(e));
            }
            Err(e) => {
                tracing::debug!(sink = %self.name, error = %e, "server_settings unreadable; using the configured group_mode");
                None
            }
        };
        let mode = mode_from_settings(self.config.group_mode, settings.as_ref())
            .map_err(|m| self.target_error(m))?;
        tracing::debug!(sink = %self.name, ?mode, "Connect mode");
        Ok(mode)
    }

    /// Walks an offset-paged listing. Stops on an empty page, when `total` is reached, after the
    /// first page when `first_page_only`, or on a page that only repeats items already seen.
    async fn list_pages(
        &self,
        path: &str,
        query: &[(&str, &str)],
        first_page_only: bool,
    ) -> Result<Listing, HttpError> {
        let mut seen = HashSet::new();
        let mut total: Option<u64> = None;
        let mut collected = 0u64;
        let mut stopped_early = false;
        let mut page = 0u32;
        let fetch = |next: Option<String>| async move {
            let page_number = next.unwrap_or_else(|| "1".into());
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("page_number", &page_number));
            q.push(("page_size", PAGE_SIZE));
            self.http.json(Method::GET, path, &q, None).await
        };
        let read = |answer: Value| {
            page += 1;
            total = answer.get("total").and_then(Value::as_u64).or(total);
            let results = answer
                .get("results")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ids: Vec<String> = results
                .iter()
                .filter_map(|r| r.get("guid").and_then(Value::as_str).map(str::to_string))
                .collect();
            let last = Page {
                items: Vec::new(),
                next: None,
            };
            if results.is_empty() {
                return last;
            }
            if page_repeats(&seen, &ids) {
                tracing::warn!(sink = %self.name, path, page, "Connect answered a page that repeats earlier results (its prefix paging bug); listing stopped there");
                stopped_early = true;
                return last;
            }
            seen.extend(ids);
            collected += results.len() as u64;
            let next = if total.is_some_and(|t| collected >= t) {
                None
            } else if first_page_only {
                stopped_early = true;
                None
            } else {
                Some((page + 1).to_string())
            };
            Page {
                items: results,
                next,
            }
        };
        let pages = target::all_pages(&self.name, path, fetch, read).await?;
        let items = pages.items;
        let truncated =
            (stopped_early || pages.cut) && total.is_none_or(|t| (items.len() as u64) < t);
        Ok(Listing { items, truncated })
    }

    /// A local Connect group by exact name: a prefix search (first page only on servers with the
    /// prefix paging bug), then the full listing when that search was cut short.
    async fn find_local_group(&self, mode: &Mode, name: &str) -> Result<Option<String>, HttpError> {
        let pick = |items: &[Value]| {
            items
                .iter()
                .find(|g| g.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|g| g.get("guid").and_then(Value::as_str))
                .map(str::to_string)
        };
        let listing = self
            .list_pages("/v1/groups", &[("prefix", name)], !mode.prefix_paging_fixed)
            .await?;
        if let Some(guid) = pick(&listing.items) {
            return Ok(Some(guid));
        }
        if listing.truncated {
            let all = self.list_pages("/v1/groups", &[], false).await?;
            return Ok(pick(&all.items));
        }
        Ok(None)
    }

    /// `GET /v1/groups/remote?prefix=NAME` narrowed to the exact name.
    async fn remote_search(&self, kind: &str, name: &str) -> Result<Vec<Remote>, HttpError> {
        let answer: Value = self
            .http
            .json(
                Method::GET,
                &format!("/v1/{kind}/remote"),
                &[("prefix", name), ("limit", PAGE_SIZE)],
                None,
            )
            .await?;
        let results: Vec<Remote> = answer
            .get("results")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| HttpError::Decode {
                method: "GET".into(),
                path: format!("/v1/{kind}/remote"),
                detail: e.to_string(),
            })?
            .unwrap_or_default();
        Ok(exact_matches(&results, name).into_iter().cloned().collect())
    }

    /// The per-run index of Connect's users: one paged listing of `/v1/users`, on first use.
    async fn user_index(&self) -> Result<tokio::sync::MutexGuard<'_, Option<UserIndex>>, OpError> {
        let mut users = self.users.lock().await;
        if users.is_none() {
            let listing = self.list_pages("/v1/users", &[], false).await?;
            let mut index = UserIndex::default();
            for user in &listing.items {
                index.insert(user);
            }
            *users = Some(index);
        }
        Ok(users)
    }

    /// The Connect user an LDAP user matches in `index` (`None` also when several do).
    fn find_user(&self, index: &UserIndex, member: &MemberRef) -> Option<String> {
        match self.config.user_match {
            ConnectUserMatch::Username => index.by_username.get(&member.username).cloned(),
            ConnectUserMatch::Email => {
                let email = member.email.as_ref()?;
                match index.by_email.get(&email.to_lowercase()).map(Vec::as_slice) {
                    Some([one]) => Some(one.clone()),
                    Some([_, _, ..]) => {
                        tracing::warn!(sink = %self.name, member = %member.username, "several Connect users have this email; member skipped");
                        None
                    }
                    _ => None,
                }
            }
        }
    }

    /// The Connect user guid of an LDAP user (from the per-run index), provisioning it if allowed.
    async fn user_guid(&self, mode: &Mode, member: &MemberRef) -> Result<Option<String>, OpError> {
        let mut users = self.user_index().await?;
        let Some(index) = users.as_mut() else {
            return Ok(None);
        };
        let found = self.find_user(index, member);
        if found.is_some() || !self.config.provision_users {
            return Ok(found);
        }
        let created = match self.provision(mode, member).await {
            Ok(created) => created,
            // The create may have reached Connect (timeout, reset, 5xx, 429): look the user up
            // before anything is sent again, never a blind second create.
            Err(e) if e.maybe_committed() => {
                let listing = self.list_pages("/v1/users", &[], false).await?;
                let made = listing
                    .items
                    .into_iter()
                    .find(|u| u.get("username").and_then(Value::as_str) == Some(&member.username));
                match made {
                    Some(user) => Some(user),
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if let Some(user) = &created {
            index.insert(user);
        }
        Ok(created
            .as_ref()
            .and_then(|u| u.get("guid"))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// Creates the Connect user of an LDAP member: a remote ticket where the provider searches
    /// users (LDAP, OAuth2 with Google), `POST /v1/users` otherwise.
    async fn provision(&self, mode: &Mode, member: &MemberRef) -> Result<Option<Value>, OpError> {
        let response = if mode.user_remote_search {
            let found = self.remote_search("users", &member.username).await?;
            let remote = match found.as_slice() {
                [one] => one.clone(),
                _ => return Ok(None),
            };
            if let Some(guid) = remote.guid {
                return Ok(Some(json!({"guid": guid, "username": member.username})));
            }
            let Some(ticket) = remote.temp_ticket else {
                return Ok(None);
            };
            let body = Body::json(&json!({"temp_ticket": ticket}));
            self.http
                .send(Method::PUT, "/v1/users", &[], Some(&body))
                .await
        } else {
            let mut user = json!({"username": member.username});
            if let Some(email) = &member.email {
                user["email"] = json!(email);
            }
            if mode.provider.eq_ignore_ascii_case("password") {
                user["user_must_set_password"] = json!(true);
            }
            if mode.provider.eq_ignore_ascii_case("saml")
                || mode.provider.eq_ignore_ascii_case("oauth2")
            {
                // SAML/OAuth2 require the provider's unique ID; the user name is our best key.
                user["unique_id"] = json!(member.username);
            }
            self.http
                .send_create("/v1/users", &[], &Body::json(&user))
                .await
        }?;
        if !response.is_success() {
            return Err(describe(response).of(format!("provisioning user {:?}", member.username)));
        }
        let user: Value = response.json()?;
        tracing::info!(sink = %self.name, user = %member.username, "provisioned a Connect user");
        Ok(Some(user))
    }
}

/// The sink with the mode of one run: the [`GroupApi`] the lifecycle driver works through.
struct ConnectApi<'a> {
    sink: &'a ConnectSink,
    mode: Mode,
}

#[async_trait]
impl GroupApi for ConnectApi<'_> {
    type Members = ();

    /// Connect groups carry no externalId; their names are unique, so the exact name is the
    /// identity. Adoption: in remote mode the exact-name remote search when it is unique; in
    /// local mode by name.
    fn profile(&self) -> ApiProfile<'_> {
        let sink = &self.sink;
        ApiProfile {
            external_id: false,
            ..ApiProfile::new(
                &sink.name,
                "Connect",
                "check the API key",
                sink.config.adopt,
            )
        }
    }

    fn skipped_note(&self) -> String {
        format!(
            "Connect's authentication provider ({}) manages group membership itself; these membership changes were not sent (recorded as in sync)",
            self.mode.provider
        )
    }

    fn user_match(&self) -> Option<(&'static str, UserKey)> {
        Some(match self.sink.config.user_match {
            ConnectUserMatch::Username => ("username", UserKey::Username),
            ConnectUserMatch::Email => ("email", UserKey::Email),
        })
    }

    fn provisions_users(&self) -> bool {
        self.sink.config.provision_users
    }

    /// From the per-run index of `/v1/users` (one paged listing), nothing provisioned.
    async fn map_users(&self, users: &[MemberRef]) -> Result<HashMap<String, String>, OpError> {
        let index = self.sink.user_index().await?;
        let Some(index) = index.as_ref() else {
            return Ok(HashMap::new());
        };
        Ok(users
            .iter()
            .filter_map(|m| Some((m.source_id.clone(), self.sink.find_user(index, m)?)))
            .collect())
    }

    /// Local groups: one paged listing of `/v1/groups` (`None` when Connect's paging cut it
    /// short, so each group is looked up by name instead). Remote groups: `None`.
    async fn list_groups(&self) -> Result<Option<Vec<TargetGroup>>, OpError> {
        if self.mode.remote {
            return Ok(None);
        }
        let listing = self.sink.list_pages("/v1/groups", &[], false).await?;
        if listing.truncated {
            return Ok(None);
        }
        Ok(Some(lifecycle::named_groups(&listing.items, "guid")))
    }

    /// `GET /v1/groups/{guid}/members`, paged: (user guid, username). None are read where the
    /// provider owns membership (LDAP groups; Connect cannot list their members either).
    async fn group_members(&self, guid: &str) -> Result<Vec<(String, String)>, OpError> {
        if self.mode.provider_members {
            return Ok(Vec::new());
        }
        let path = format!("/v1/groups/{guid}/members");
        let listing = self.sink.list_pages(&path, &[], false).await?;
        if listing.truncated {
            return Err(format!(
                "Connect's listing of the members of group {guid} was cut short (its paging repeated a page); not adopted this run"
            )
            .into());
        }
        Ok(lifecycle::member_pairs(&listing.items, "guid", "username"))
    }

    /// `GET /v1/groups/{guid}` (its name; Connect groups have no description) and its members.
    async fn read_group(&self, guid: &str) -> Result<Option<ActualGroup>, OpError> {
        let path = format!("/v1/groups/{guid}");
        let response = self.sink.http.send(Method::GET, &path, &[], None).await?;
        if response.status.as_u16() == 404 {
            return Ok(None);
        }
        if !response.is_success() {
            return Err(describe(response));
        }
        let group: Value = response.json()?;
        Ok(Some(ActualGroup {
            name: group
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            description: None,
            members: self.group_members(guid).await?,
        }))
    }

    /// The group named exactly like `group` (local listing by prefix, or the remote search).
    async fn candidates(&self, group: &GroupSpec, _: bool) -> Result<Vec<TargetGroup>, OpError> {
        let named = |id: String| TargetGroup {
            id,
            name: group.name.clone(),
            external_id: None,
            members: None,
        };
        if !self.mode.remote {
            let found = self.sink.find_local_group(&self.mode, &group.name).await?;
            return Ok(found.into_iter().map(named).collect());
        }
        Ok(self
            .sink
            .remote_search("groups", &group.name)
            .await?
            .into_iter()
            .filter_map(|r| r.guid)
            .map(named)
            .collect())
    }

    /// Remote (the seed's recipe, resumed or not): remote search → exact name → adopt the
    /// guid, or create with its temp ticket.
    async fn prepare_create(&self, group: &GroupSpec, resume: bool) -> Result<Prepared, OpError> {
        if !self.mode.remote {
            return lifecycle::adopt_on_resume(self, group, resume).await;
        }
        let found = self.sink.remote_search("groups", &group.name).await?;
        let remote = match found.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(format!(
                    "Connect's LDAP group search finds no group named {:?}; check Connect's LDAP group settings (GroupSearchBaseDN, group filter)",
                    group.name
                )
                .into());
            }
            many => {
                return Err(format!(
                    "Connect's LDAP group search finds {} groups named {:?}; cannot tell which one is {}",
                    many.len(),
                    group.name,
                    group.dn
                )
                .into());
            }
        };
        if let Some(guid) = remote.guid {
            tracing::info!(sink = %self.sink.name, group = %group.name, guid, "the LDAP group is already in Connect; adopted it");
            return Ok(Prepared::Adopt(guid));
        }
        match remote.temp_ticket {
            Some(ticket) => Ok(Prepared::Create(Some(ticket))),
            None => Err("the remote search result has no temp_ticket".into()),
        }
    }

    /// `PUT /v1/groups {temp_ticket}` (code 131: already imported) or `POST /v1/groups {name}`
    /// (409: the name is taken).
    async fn create(&self, group: &GroupSpec, ticket: Option<String>) -> Result<Created, OpError> {
        let (response, conflict) = match ticket {
            Some(ticket) => {
                let body = Body::json(&json!({"temp_ticket": ticket}));
                let r = self
                    .sink
                    .http
                    .send(Method::PUT, "/v1/groups", &[], Some(&body))
                    .await?;
                let conflict = !r.is_success() && error_code(&r.body) == Some(131);
                (r, conflict)
            }
            None => {
                let body = Body::json(&json!({"name": group.name}));
                let r = self.sink.http.send_create("/v1/groups", &[], &body).await?;
                let conflict = r.status.as_u16() == 409;
                (r, conflict)
            }
        };
        if conflict {
            return Ok(Created::Conflict(describe(response)));
        }
        if !response.is_success() {
            return Err(describe(response));
        }
        target::created(&response.json()?, "guid")
    }

    /// A rename only (Connect groups have no description or DN); not sent for LDAP groups.
    async fn update(
        &self,
        guid: &str,
        group: &GroupSpec,
        previous: &GroupSpec,
    ) -> Result<Outcome, OpError> {
        if group.name == previous.name {
            return Ok(Outcome::Done);
        }
        if self.mode.remote {
            tracing::warn!(sink = %self.sink.name, group = %group.name, previous = %previous.name, "Connect does not rename LDAP groups through its API (the provider owns their names); not sent");
            return Ok(Outcome::Done);
        }
        let http = &self.sink.http;
        let path = format!("/v1/groups/{guid}");
        let body = Body::json(&json!({"name": group.name}));
        let mut response = http.send(Method::PATCH, &path, &[], Some(&body)).await?;
        // Servers before PATCH answer 404 code 2 ("endpoint not supported"): legacy POST.
        if response.status.as_u16() == 404 && error_code(&response.body) == Some(2) {
            response = http.send(Method::POST, &path, &[], Some(&body)).await?;
        }
        lifecycle::outcome_or(response, describe)
    }

    async fn delete(&self, guid: &str) -> Result<Outcome, OpError> {
        let path = format!("/v1/groups/{guid}");
        let response = self
            .sink
            .http
            .send(Method::DELETE, &path, &[], None)
            .await?;
        lifecycle::outcome_or(response, describe)
    }

    async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, OpError> {
        self.sink.user_guid(&self.mode, member).await
    }

    async fn members(&self, _: OpKind, _: &str, _: &GroupSpec) -> Result<Membership<()>, OpError> {
        Ok(if self.mode.provider_members {
            Membership::Provider
        } else {
            Membership::Managed(())
        })
    }

    /// Adds with `POST /v1/groups/{guid}/members {user_guid}` (code 16, already a member, is
    /// success); removes with `DELETE /v1/groups/{guid}/members/{user guid}` (404 code 17, not a
    /// member, or 9, no such user, is success).
    async fn change_members(&self, request: Change<'_, ()>) -> Result<Outcome, OpError> {
        let (change, guid, chunk) = (request.kind, request.id, request.chunk);
        let members = format!("/v1/groups/{guid}/members");
        let http = &self.sink.http;
        for user_guid in chunk.iter().filter_map(|m| m.target_id.as_deref()) {
            let (accepted, response) = match change {
                MemberChange::Add => {
                    let body = Body::json(&json!({"user_guid": user_guid}));
                    let r = http.send(Method::POST, &members, &[], Some(&body)).await?;
                    (r.is_success() || error_code(&r.body) == Some(16), r)
                }
                MemberChange::Remove => {
                    let path = format!("{members}/{user_guid}");
                    let r = http.send(Method::DELETE, &path, &[], None).await?;
                    let group_gone = matches!(error_code(&r.body), Some(4 | 153));
                    (
                        !group_gone && (r.is_success() || r.status.as_u16() == 404),
                        r,
                    )
                }
            };
            if !accepted {
                return self.member_refusal(response);
            }
        }
        Ok(Outcome::Done)
    }
}

impl ConnectApi<'_> {
    /// A failed member change: code 4/153 (no such group), 132 (the provider owns membership).
    fn member_refusal(&self, response: Response) -> Result<Outcome, OpError> {
        match error_code(&response.body) {
            Some(4 | 153) => Ok(Outcome::NotFound),
            Some(132) => Ok(Outcome::Refused(OpError::Target {
                status: Some(response.status.as_u16()),
                message: format!(
                    "Connect's {} provider manages this group's members: {}",
                    self.mode.provider,
                    describe(response)
                ),
            })),
            _ => Err(describe(response)),
        }
    }
}

#[cfg(test)]
impl ConnectSink {
    /// One create in remote mode, without reading `server_settings` (the code-131 test).
    async fn create_remote(
        &self,
        group: &GroupSpec,
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        let mode = mode_from_settings(GroupMode::Remote, None).map_err(|m| self.target_error(m))?;
        lifecycle::create(&ConnectApi { sink: self, mode }, group, false, recorder).await
    }
}

#[async_trait]
impl Sink for ConnectSink {
    fn identity(&self) -> (&str, &'static str) {
        (&self.name, "connect")
    }

    async fn check(&self) -> Result<(), SinkError> {
        // server_settings needs no key: verify the key on the caller's own user.
        let response = self
            .http
            .send(Method::GET, "/v1/user", &[], None)
            .await
            .map_err(target::http_error(&self.name))?;
        if !response.is_success() {
            return Err(self.target_error(describe(response).to_string()));
        }
        let mode = self.resolve_mode().await?;
        tracing::info!(sink = %self.name, provider = %mode.provider, remote = mode.remote, provider_members = mode.provider_members, "Connect reachable");
        Ok(())
    }

    async fn apply(&self, plan: &Plan, recorder: &mut Recorder<'_>) -> Result<(), SinkError> {
        *self.users.lock().await = None;
        let mode = self.resolve_mode().await?;
        lifecycle::apply(&ConnectApi { sink: self, mode }, plan, recorder).await
    }

    /// The shared [`lifecycle::resolve`] with this run's mode.
    async fn resolve(
        &self,
        directory: &Directory,
        ledger: &Ledger,
        full: bool,
    ) -> Result<TargetView, SinkError> {
        *self.users.lock().await = None;
        let mode = self.resolve_mode().await?;
        lifecycle::resolve(&ConnectApi { sink: self, mode }, directory, ledger, full)
            .await
            .map_err(|e| self.target_error(format!("reading Connect before planning: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkType as _;

    fn settings(name: &str, group_search: bool, group_members: bool, version: &str) -> Value {
        json!({"version": version, "authentication": {
            "name": name, "groups_enabled": true,
            "external_group_search": group_search, "external_group_members": group_members,
            "external_user_search": name == "LDAP"}})
    }

    #[test]
    fn auto_mode_follows_server_settings() {
        let ldap = settings("LDAP", true, true, "2024.09.0");
        let mode = mode_from_settings(GroupMode::Auto, Some(&ldap)).unwrap();
        assert!(mode.remote && mode.provider_members && mode.user_remote_search);
        assert!(!mode.prefix_paging_fixed);

        let saml = settings("SAML", false, false, "2025.04.0");
        let mode = mode_from_settings(GroupMode::Auto, Some(&saml)).unwrap();
        assert!(!mode.remote && !mode.provider_members && !mode.user_remote_search);
        assert!(mode.prefix_paging_fixed);

        let provisioned = settings("SAML", false, true, "2025.10.1");
        let mode = mode_from_settings(GroupMode::Auto, Some(&provisioned)).unwrap();
        assert!(!mode.remote && mode.provider_members);
    }

    #[test]
    fn forced_modes_and_refusals() {
        let ldap = settings("LDAP", true, true, "2024.09.0");
        let mode = mode_from_settings(GroupMode::Local, Some(&ldap)).unwrap();
        assert!(!mode.remote && !mode.provider_members);
        let mode = mode_from_settings(GroupMode::Remote, None).unwrap();
        assert!(mode.remote && mode.provider_members);
        assert!(mode_from_settings(GroupMode::Auto, None).is_err());
        let off = json!({"authentication": {"groups_enabled": false}});
        let err = mode_from_settings(GroupMode::Local, Some(&off)).unwrap_err();
        assert!(err.contains("groups are disabled"), "{err}");
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2024.09.0"), Some((2024, 9, 0)));
        assert_eq!(parse_version("2025.04.1-dev+5"), Some((2025, 4, 1)));
        assert_eq!(parse_version("2025"), Some((2025, 0, 0)));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn remote_search_picks_the_exact_name() {
        let results: Vec<Remote> = serde_json::from_value(json!([
            {"name": "Data Science Apprentices", "guid": null, "temp_ticket": "t2"},
            {"name": "Data Science", "guid": "g1", "temp_ticket": "t1"}
        ]))
        .unwrap();
        let found = exact_matches(&results, "Data Science");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].guid.as_deref(), Some("g1"));
        assert_eq!(exact_matches(&results, "data science").len(), 1);
        assert!(exact_matches(&results, "Data").is_empty());
    }

    #[test]
    fn repeating_pages_are_detected() {
        let seen: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        assert!(page_repeats(&seen, &["a".into(), "b".into()]));
        assert!(!page_repeats(&seen, &["b".into(), "c".into()]));
        assert!(!page_repeats(&seen, &[]));
    }

    #[test]
    fn error_bodies_read_code_and_error() {
        let connect = br#"{"code":131,"error":"A group using the same unique ID already exists","payload":null}"#;
        assert_eq!(
            error_body(connect).as_deref(),
            Some("code=131 A group using the same unique ID already exists")
        );
        assert_eq!(error_body(br#"{"payload":null}"#), None);
    }

    #[test]
    fn errors_carry_hints_and_no_key() {
        let body = br#"{"code":120,"error":"The authentication provider does not support creating records from POST content.","payload":null}"#;
        assert_eq!(error_code(body), Some(120));
        assert!(hint(error_code(body)).contains("group_mode = \"remote\""));
        assert_eq!(error_code(b"<html>"), None);
        assert_eq!(hint(None), "");
    }

    #[test]
    fn api_root_is_appended_once() {
        assert_eq!(api_root("https://c.example/"), "https://c.example/__api__");
        assert_eq!(
            api_root("https://c.example/__api__"),
            "https://c.example/__api__"
        );
    }

    #[test]
    fn config_rejects_unknown_keys_and_requires_a_key() {
        let ok: ConnectConfig = toml::from_str(
            "base_url = \"https://c\"\napi_key = \"k\"\ngroup_mode = \"remote\"\nuser_match = \"email\"",
        )
        .unwrap();
        assert_eq!(ok.group_mode, GroupMode::Remote);
        assert!(ok.validate().is_ok());
        assert!(
            toml::from_str::<ConnectConfig>("base_url = \"https://c\"\napikey = \"k\"").is_err()
        );
        let nokey: ConnectConfig = toml::from_str("base_url = \"https://c\"").unwrap();
        assert_eq!(nokey.validate().unwrap_err().0, "api_key");
    }

    #[test]
    fn user_index_matches_username_and_email() {
        let mut index = UserIndex::default();
        index.insert(&json!({"guid": "u1", "username": "alice", "email": "Alice@X.org"}));
        index.insert(&json!({"guid": "u2", "username": "bob", "email": ""}));
        assert_eq!(index.by_username["alice"], "u1");
        assert_eq!(index.by_email["alice@x.org"], vec!["u1".to_string()]);
        assert!(!index.by_email.contains_key(""));
    }

    /// The code-131 race: the remote search said "not in Connect", the PUT says it is (another
    /// importer got there first). The sink searches again and adopts the guid.
    #[tokio::test]
    async fn code_131_on_put_adopts_the_existing_group() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use axum::Router;
        use axum::http::StatusCode;
        use axum::routing::get;

        fn json_reply(
            status: StatusCode,
            body: Value,
        ) -> (
            StatusCode,
            [(axum::http::HeaderName, &'static str); 1],
            String,
        ) {
            (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
        }
        let searches = Arc::new(AtomicUsize::new(0));
        let counter = searches.clone();
        let app = Router::new()
            .route(
                "/__api__/v1/groups/remote",
                get(move || {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let guid = if n == 0 { Value::Null } else { json!("g-131") };
                    async move {
                        json_reply(
                            StatusCode::OK,
                            json!({"results": [
                                {"name": "devs-extra", "guid": null, "temp_ticket": "x"},
                                {"name": "devs", "guid": guid, "temp_ticket": "t"}
                            ], "current_page": 1, "total": 2}),
                        )
                    }
                }),
            )
            .route(
                "/__api__/v1/groups",
                axum::routing::put(|| async {
                    json_reply(
                        StatusCode::BAD_REQUEST,
                        json!({"code": 131, "error": "A group using the same unique ID already exists.", "payload": null}),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let config: ConnectConfig = toml::from_str(&format!(
            "base_url = \"http://{addr}\"\napi_key = \"k\"\ngroup_mode = \"remote\""
        ))
        .unwrap();
        let sink = ConnectSink::new("c".into(), &config, HttpSettings::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = crate::store::Store::open(&dir.path().join("s.db")).unwrap();
        let group = GroupSpec::for_test("s1", "devs");
        {
            let mut writer = store.ledger_writer("c");
            let ledger = Ledger::default();
            let mut recorder = Recorder::new(&mut writer, &ledger, "c");
            sink.create_remote(&group, &mut recorder).await.unwrap();
            assert!(
                recorder.report.failures.is_empty(),
                "{:?}",
                recorder.report.failures
            );
            assert_eq!(recorder.report.applied.create, 1);
        }
        assert_eq!(searches.load(Ordering::SeqCst), 2);
        let ledger = store.load_ledger("c").unwrap();
        assert_eq!(ledger.groups["s1"].target_id.as_deref(), Some("g-131"));
    }
}
