//! The ForgeRock Identity Cloud / PingIDM sink: managed groups and their member relationships over CREST.
//!
//! Follows ForgeRock Identity Cloud's "Manage groups" REST documentation (see docs/forgerock.md):
//! `/openidm/managed/<realm>_group` (an empty realm gives self-managed IDM's `managed/group`),
//! `Accept-API-Version: resource=1.0` on every request, OAuth2 client credentials (cached token,
//! refreshed on a 401 by the shared HTTP layer) or a bearer token from a file.
//!
//! * Create: `POST …_group?_action=create {name, description}`; a duplicate (412, or 409 on older
//!   CREST) or a resumed create is resolved by `_queryFilter=name eq "…"` and adopted.
//! * Update: read `_rev`, `PATCH` with `If-Match: <rev>`; a 412 (stale `_rev`) re-reads and
//!   retries once.
//! * Members: the current relationships are listed first (paged with `_pageSize` and
//!   `_pagedResultsCookie`) so nothing is added twice; add with `POST …/members?_action=create
//!   {"_ref"}`, remove with `DELETE …/members/<relationship id>`.
//! * Groups with a `condition` (dynamic membership) never get static member changes: every such
//!   operation is reported as failed with an explanation.

use crate::config::Invalid;
use crate::secret::SecretField;
use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::SinkError;
use super::http::{
    self, Auth, Body, HttpClient, HttpError, HttpSettings, OAuthClient, TokenAuthMethod, check_url,
};
use super::lifecycle::{
    AdoptPolicy, ApiProfile, Change, Created, GroupApi, GroupSink, MemberChange, Membership,
    OpError, Outcome, TargetGroup, UserCache, UserKey, id_values, ids, map_by_filter, named_groups,
    outcome,
};
use super::target::{self, Page, quote};
use crate::model::{ActualGroup, GroupSpec, MemberRef, OpKind};
use crate::secret::{Secret, SecretError, resolve_secret};

const PAGE_SIZE: &str = "500";

/// How an LDAP user is found among the managed users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum ForgeRockUserMatch {
    /// `userName eq "<LDAP user name>"`.
    #[default]
    #[serde(rename = "userName")]
    UserName,
    /// `mail eq "<LDAP mail>"`.
    #[serde(rename = "mail")]
    Mail,
}

fn default_realm() -> String {
    "alpha".into()
}

fn default_scope() -> String {
    "fr:idm:*".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeRockConfig {
    /// The tenant root, e.g. `https://openam-acme.forgeblocks.com` (`/openidm` is appended).
    pub base_url: String,
    /// Managed object prefix: `alpha` → `alpha_group`; `""` → `group` (self-managed IDM).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// OAuth2 client credentials.
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<PathBuf>,
    #[serde(default = "default_scope")]
    pub scope: String,
    #[serde(default)]
    pub token_auth_method: TokenAuthMethod,
    /// A bearer token obtained elsewhere (instead of client credentials).
    pub access_token_file: Option<PathBuf>,
    #[serde(default)]
    pub user_match: ForgeRockUserMatch,
    /// Which existing groups may be adopted: "name" (default), "external_id" or "never".
    #[serde(default)]
    pub adopt: AdoptPolicy,
}

impl ForgeRockConfig {
    fn credential(&self) -> Result<Secret, SecretError> {
        match &self.access_token_file {
            Some(file) => resolve_secret("access_token_file", None, Some(file)),
            None => resolve_secret(
                "client_secret",
                self.client_secret.as_ref().map(Secret::expose),
                self.client_secret_file.as_deref(),
            ),
        }
    }

    /// `<realm>_<kind>`, or `<kind>` for an empty realm.
    fn object(&self, kind: &str) -> String {
        if self.realm.is_empty() {
            kind.to_string()
        } else {
            format!("{}_{kind}", self.realm)
        }
    }
}

impl crate::sinks::SinkType for ForgeRockConfig {
    fn secret_fields(&self) -> Vec<SecretField<'_>> {
        vec![match &self.access_token_file {
            Some(file) => SecretField::new("access_token_file", None, Some(file)),
            None => SecretField::new(
                "client_secret",
                self.client_secret.as_ref(),
                self.client_secret_file.as_deref(),
            ),
        }]
    }
    fn validate(&self) -> Result<(), Invalid> {
        check_url("base_url", &self.base_url)?;
        if let Some(url) = &self.token_url {
            check_url("token_url", url)?;
        }
        if !self
            .realm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err((
                "realm",
                format!(
                    "{:?} is not a realm name (letters, digits, _ and -)",
                    self.realm
                ),
            ));
        }
        let client = self.token_url.is_some()
            || self.client_id.is_some()
            || self.client_secret.is_some()
            || self.client_secret_file.is_some();
        match (client, self.access_token_file.is_some()) {
            (true, true) => Err((
                "access_token_file",
                "use either client credentials (token_url, client_id, client_secret) or access_token_file, not both".into(),
            )),
            (false, false) => Err((
                "token_url",
                "authentication is required: token_url + client_id + client_secret(_file), or access_token_file".into(),
            )),
            (true, false) if self.token_url.is_none() => {
                Err(("token_url", "client credentials need token_url".into()))
            }
            (true, false) if self.client_id.is_none() => {
                Err(("client_id", "client credentials need client_id".into()))
            }
            (true, false) if self.client_secret.is_none() && self.client_secret_file.is_none() => {
                Err((
                    "client_secret",
                    "client credentials need client_secret or client_secret_file".into(),
                ))
            }
            _ => Ok(()),
        }
    }
    fn build(&self, name: String, http: HttpSettings) -> crate::sinks::Built {
        Ok(Box::new(ForgeRockSink::new(name, self, http)?))
    }
}

/// A CREST error body (`{code, reason, message}`): `code=… message`, or the reason.
fn error_body(body: &[u8]) -> Option<String> {
    http::json_error(body, &["code"], &["message", "reason"], |_| Vec::new())
}

/// The relationship id and user id of one item of `…/members`.
fn relationship(item: &Value) -> Option<(String, String)> {
    let rel = item
        .pointer("/_refProperties/_id")
        .or_else(|| item.get("_id"))
        .and_then(Value::as_str)?;
    let user = item
        .get("_refResourceId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            item.get("_ref")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
                .map(str::to_string)
        })?;
    Some((rel.to_string(), user))
}

/// A group as read for an update or a membership change.
struct GroupState {
    rev: Option<String>,
    condition: Option<String>,
}

/// Why an operation on a group cannot go on.
enum Blocked {
    /// The group is gone from the target.
    Gone,
    Failed(OpError),
}

pub struct ForgeRockSink {
    name: String,
    config: ForgeRockConfig,
    http: HttpClient,
    group_path: String,
    user_path: String,
    /// Lookup key → managed user id (positive answers only).
    users: UserCache,
}

impl ForgeRockSink {
    pub fn new(
        name: String,
        config: &ForgeRockConfig,
        settings: HttpSettings,
    ) -> Result<ForgeRockSink, SinkError> {
        let credential = config.credential().map_err(target::secret_error(&name))?;
        let auth = match (&config.token_url, &config.client_id) {
            (Some(token_url), Some(client_id)) if config.access_token_file.is_none() => {
                Auth::ClientCredentials(OAuthClient::new(
                    token_url.clone(),
                    client_id.clone(),
                    credential,
                    config.token_auth_method,
                    Some(config.scope.clone()).filter(|s| !s.is_empty()),
                ))
            }
            _ => Auth::Bearer(credential),
        };
        let root = format!("{}/openidm", config.base_url.trim_end_matches('/'));
        let http = HttpClient::new(&name, &root, auth, settings, error_body)
            .map_err(target::http_error(&name))?
            .with_header("Accept-API-Version", "resource=1.0");
        Ok(ForgeRockSink {
            group_path: format!("/managed/{}", config.object("group")),
            user_path: format!("/managed/{}", config.object("user")),
            name,
            config: config.clone(),
            http,
            users: UserCache::default(),
        })
    }

    /// Runs a CREST query over every page (`_pageSize` + `_pagedResultsCookie`).
    async fn query_all(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<Value>, HttpError> {
        let fetch = |cookie: Option<String>| async move {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("_pageSize", PAGE_SIZE));
            if let Some(c) = &cookie {
                q.push(("_pagedResultsCookie", c));
            }
            self.http.json(Method::GET, path, &q, None).await
        };
        let read = |page: Value| Page {
            items: page
                .get("result")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            next: page
                .get("pagedResultsCookie")
                .and_then(Value::as_str)
                .filter(|next| !next.is_empty())
                .map(str::to_string),
        };
        let pages = target::all_pages(&self.name, path, fetch, read).await?;
        Ok(pages.items)
    }

    /// Groups with exactly this name (case-sensitive matches first; the repository compares
    /// names case-insensitively).
    async fn find_by_name(&self, name: &str) -> Result<Vec<TargetGroup>, HttpError> {
        self.query_groups(&format!("name eq {}", quote(name))).await
    }

    /// The groups a `_queryFilter` answers, every page.
    async fn query_groups(&self, filter: &str) -> Result<Vec<TargetGroup>, HttpError> {
        let found = self
            .query_all(
                &self.group_path,
                &[("_queryFilter", filter), ("_fields", "_id,name")],
            )
            .await?;
        Ok(named_groups(&found, "_id"))
    }

    async fn read_group(&self, id: &str) -> Result<GroupState, Blocked> {
        let response = self
            .http
            .send(
                Method::GET,
                &format!("{}/{id}", self.group_path),
                &[("_fields", "_id,_rev,name,condition")],
                None,
            )
            .await
            .map_err(|e| Blocked::Failed(e.into()))?;
        if response.status.as_u16() == 404 {
            return Err(Blocked::Gone);
        }
        let group: Value = response
            .success()
            .and_then(|r| r.json())
            .map_err(|e| Blocked::Failed(e.into()))?;
        Ok(GroupState {
            rev: group
                .get("_rev")
                .and_then(Value::as_str)
                .map(str::to_string),
            condition: group
                .get("condition")
                .and_then(Value::as_str)
                .filter(|c| !c.trim().is_empty())
                .map(str::to_string),
        })
    }

    /// User id → relationship ids of the group's current static members.
    async fn relationships(&self, id: &str) -> Result<HashMap<String, Vec<String>>, HttpError> {
        let items = self
            .query_all(
                &format!("{}/{id}/members", self.group_path),
                &[("_queryFilter", "true")],
            )
            .await?;
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for item in &items {
            if let Some((rel, user)) = relationship(item) {
                map.entry(user).or_default().push(rel);
            }
        }
        Ok(map)
    }
}

#[async_trait]
impl GroupApi for ForgeRockSink {
    /// User id → relationship ids of the group's current static members.
    type Members = HashMap<String, Vec<String>>;

    /// ForgeRock groups carry no externalId; their names are unique, so the exact name is the
    /// identity (adoption is by name only).
    fn profile(&self) -> ApiProfile<'_> {
        let auth_hint = "check the client credentials or the access token";
        ApiProfile {
            external_id: false,
            ..ApiProfile::new(&self.name, "the target", auth_hint, self.config.adopt)
        }
    }

    /// The groups `name eq` the group's name answers (checked by the driver).
    async fn candidates(&self, group: &GroupSpec, _: bool) -> Result<Vec<TargetGroup>, OpError> {
        Ok(self.find_by_name(&group.name).await?)
    }

    /// The group (name, description) and its static members.
    async fn read_group(&self, id: &str) -> Result<Option<ActualGroup>, OpError> {
        let path = format!("{}/{id}", self.group_path);
        let query = [("_fields", "_id,name,description")];
        let Some(group) = target::get_if_exists(&self.http, &path, &query).await? else {
            return Ok(None);
        };
        let members = self.group_members(id).await?;
        Ok(Some(target::actual_group(&group, members)))
    }

    /// One paged query of every managed group (`_queryFilter=true`).
    async fn list_groups(&self) -> Result<Option<Vec<TargetGroup>>, OpError> {
        Ok(Some(self.query_groups("true").await?))
    }

    /// The group's static members, from its `members` relationships: (user id, user id).
    async fn group_members(&self, id: &str) -> Result<Vec<(String, String)>, OpError> {
        Ok(self
            .relationships(id)
            .await?
            .into_keys()
            .map(|user| (user.clone(), user))
            .collect())
    }

    fn user_match(&self) -> Option<(&'static str, UserKey)> {
        Some(match self.config.user_match {
            ForgeRockUserMatch::UserName => ("userName", UserKey::Username),
            ForgeRockUserMatch::Mail => ("mail", UserKey::Email),
        })
    }

    /// Queries with several values (`userName eq "a" or userName eq "b" …`), paged.
    async fn map_users(&self, users: &[MemberRef]) -> Result<HashMap<String, String>, OpError> {
        let Some(matched) = self.user_match() else {
            return Ok(HashMap::new());
        };
        let find = |filter: String| async move {
            let query = [
                ("_queryFilter", filter.as_str()),
                ("_fields", "_id,userName,mail"),
            ];
            let found = self.query_all(&self.user_path, &query).await?;
            Ok(id_values(&found, "_id", matched.0))
        };
        map_by_filter(&self.name, users, matched, find).await
    }

    async fn create(&self, group: &GroupSpec, _: Option<String>) -> Result<Created, OpError> {
        let mut body = json!({"name": group.name});
        if let Some(description) = &group.description {
            body["description"] = json!(description);
        }
        let response = self
            .http
            .send_create(
                &self.group_path,
                &[("_action", "create")],
                &Body::json(&body),
            )
            .await?;
        if matches!(response.status.as_u16(), 409 | 412) {
            return Ok(Created::Conflict(response.into_error().into()));
        }
        target::created(&response.success()?.json()?, "_id")
    }

    /// `PATCH` with `If-Match: <_rev>`; one re-read and retry after a 412 (someone else changed
    /// the group between our read and write).
    async fn update(&self, id: &str, group: &GroupSpec, _: &GroupSpec) -> Result<Outcome, OpError> {
        let path = format!("{}/{id}", self.group_path);
        let body = Body::json(&json!([
            {"operation": "replace", "field": "/name", "value": group.name},
            {"operation": "replace", "field": "/description", "value": group.description},
        ]));
        let mut retried = false;
        loop {
            let state = match self.read_group(id).await {
                Ok(state) => state,
                Err(Blocked::Gone) => return Ok(Outcome::NotFound),
                Err(Blocked::Failed(e)) => return Err(e),
            };
            let headers: Vec<(&'static str, String)> = state
                .rev
                .map(|rev| ("If-Match", format!("\"{rev}\"")))
                .into_iter()
                .collect();
            let response = self
                .http
                .send_with_headers(Method::PATCH, &path, &[], &headers, Some(&body))
                .await?;
            if response.status.as_u16() == 412 && !retried {
                retried = true;
                tracing::info!(sink = %self.name, group = %group.name, "the group's _rev changed since it was read (412); re-reading");
                continue;
            }
            return outcome(response);
        }
    }

    async fn delete(&self, id: &str) -> Result<Outcome, OpError> {
        let path = format!("{}/{id}", self.group_path);
        outcome(self.http.send(Method::DELETE, &path, &[], None).await?)
    }

    /// The managed user id of an LDAP user, by the configured attribute (cached).
    async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, OpError> {
        let Some(matched) = self.user_match() else {
            return Ok(None);
        };
        let find = |filter: String| async move {
            let query = [
                ("_queryFilter", filter.as_str()),
                ("_fields", "_id,userName,mail"),
            ];
            let found: Value = self
                .http
                .json(Method::GET, &self.user_path, &query, None)
                .await?;
            let result = found.get("result").and_then(Value::as_array);
            Ok(ids(result.map_or(&[][..], Vec::as_slice), "_id"))
        };
        self.users.lookup(&self.name, member, matched, find).await
    }

    /// Groups with a `condition` compute their members: static changes are refused.
    async fn members(
        &self,
        _: OpKind,
        id: &str,
        _: &GroupSpec,
    ) -> Result<Membership<Self::Members>, OpError> {
        match self.read_group(id).await {
            Ok(GroupState {
                condition: Some(condition),
                ..
            }) => Err(format!(
                "the group has a condition ({condition}): its members are computed by the target, so ldapsync does not change them; remove the condition or stop syncing this group"
            )
            .into()),
            Ok(_) => Ok(Membership::Managed(self.relationships(id).await?)),
            Err(Blocked::Gone) => Ok(Membership::Gone),
            Err(Blocked::Failed(e)) => Err(e),
        }
    }

    /// Adds with `POST …/members?_action=create {"_ref"}` unless the user is already a member;
    /// removes with `DELETE …/members/<relationship id>` for each relationship of the user.
    async fn change_members(&self, request: Change<'_, Self::Members>) -> Result<Outcome, OpError> {
        let (change, id, current, chunk) =
            (request.kind, request.id, request.current, request.chunk);
        let members = format!("{}/{id}/members", self.group_path);
        let user_object = self.config.object("user");
        for user_id in chunk.iter().filter_map(|m| m.target_id.as_deref()) {
            let relationships = current.get(user_id).into_iter().flatten();
            match change {
                MemberChange::Add if current.contains_key(user_id) => {}
                MemberChange::Add => {
                    let body = Body::json(&json!({
                        "_ref": format!("managed/{user_object}/{user_id}"),
                        "_refProperties": {},
                    }));
                    self.http
                        .send(
                            Method::POST,
                            &members,
                            &[("_action", "create")],
                            Some(&body),
                        )
                        .await?
                        .success()?;
                }
                MemberChange::Remove => {
                    for rel in relationships {
                        let path = format!("{members}/{rel}");
                        // 404: the relationship is gone already.
                        outcome(self.http.send(Method::DELETE, &path, &[], None).await?)?;
                    }
                }
            }
        }
        Ok(Outcome::Done)
    }
}

#[async_trait]
impl GroupSink for ForgeRockSink {
    const TYPE_NAME: &'static str = "forgerock";

    async fn probe(&self) -> Result<(), SinkError> {
        let query = [
            ("_queryFilter", "true"),
            ("_pageSize", "1"),
            ("_fields", "_id"),
        ];
        target::probe(&self.name, &self.http, &self.group_path, &query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkType as _;

    fn config(extra: &str) -> ForgeRockConfig {
        toml::from_str(&format!("base_url = \"https://t.example\"\n{extra}")).unwrap()
    }

    #[test]
    fn realm_names_the_managed_objects() {
        let alpha = config("access_token_file = \"/t\"");
        assert_eq!(alpha.object("group"), "alpha_group");
        let bravo = config("realm = \"bravo\"\naccess_token_file = \"/t\"");
        assert_eq!(bravo.object("user"), "bravo_user");
        let idm = config("realm = \"\"\naccess_token_file = \"/t\"");
        assert_eq!(idm.object("group"), "group");
    }

    #[test]
    fn auth_settings_are_validated() {
        assert!(
            config("token_url = \"https://t/am/oauth2/access_token\"\nclient_id = \"c\"\nclient_secret = \"s\"")
                .validate()
                .is_ok()
        );
        assert_eq!(config("").validate().unwrap_err().0, "token_url");
        assert_eq!(
            config("token_url = \"https://t/x\"\nclient_secret = \"s\"")
                .validate()
                .unwrap_err()
                .0,
            "client_id"
        );
        assert_eq!(
            config("client_id = \"c\"\nclient_secret = \"s\"\naccess_token_file = \"/t\"")
                .validate()
                .unwrap_err()
                .0,
            "access_token_file"
        );
        assert_eq!(
            config("realm = \"a/b\"\naccess_token_file = \"/t\"")
                .validate()
                .unwrap_err()
                .0,
            "realm"
        );
        assert!(
            toml::from_str::<ForgeRockConfig>("base_url = \"https://t\"\nrealms = \"a\"").is_err()
        );
    }

    #[test]
    fn relationships_are_read_from_either_shape() {
        let full = json!({"_id": "r1", "_ref": "managed/alpha_user/u1", "_refResourceId": "u1",
            "_refProperties": {"_id": "r1", "_rev": "1"}});
        assert_eq!(relationship(&full), Some(("r1".into(), "u1".into())));
        let minimal = json!({"_ref": "managed/alpha_user/u2", "_refProperties": {"_id": "r2"}});
        assert_eq!(relationship(&minimal), Some(("r2".into(), "u2".into())));
        assert_eq!(relationship(&json!({"_ref": "x"})), None);
    }

    #[test]
    fn error_bodies_read_code_and_message_or_reason() {
        let crest =
            br#"{"code":412,"reason":"Precondition Failed","message":"Expectation failed"}"#;
        assert_eq!(
            error_body(crest).as_deref(),
            Some("code=412 Expectation failed")
        );
        let reason = br#"{"code":403,"reason":"Forbidden"}"#;
        assert_eq!(error_body(reason).as_deref(), Some("code=403 Forbidden"));
        assert_eq!(error_body(b"<html>"), None);
    }

    #[test]
    fn filter_values_are_double_quoted() {
        assert_eq!(quote(r#"R&D "core""#), r#""R&D \"core\"""#);
    }
}
