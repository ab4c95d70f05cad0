//! `type = "pingone_groups"`: groups and direct user memberships through the PingOne Platform Groups API.
//!
//! Groups are created with `POST /groups` (`externalId` = the source id), renamed with a full
//! `PUT /groups/{id}` and removed with `DELETE /groups/{id}` (404 = already gone). Memberships
//! are `POST /users/{uid}/memberOfGroups {"id": gid}` and `DELETE /users/{uid}/memberOfGroups/{gid}`;
//! users are found with a `filter` on the configured attribute and cached. Lists are followed
//! through `_links.next`. A duplicate name (400 `INVALID_DATA` with detail `UNIQUENESS_VIOLATION`,
//! or 409: which one PingOne sends is UNCONFIRMED) means "find the group by `externalId`, then
//! by name, and adopt it"; a duplicate membership (UNCONFIRMED: success or the same errors) is
//! treated as success. Nested groups are not written (`nested = "keep"` is not implemented).

use crate::config::Invalid;
use crate::secret::SecretField;
use std::collections::HashMap;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::connection_fields;
use crate::model::{ActualGroup, GroupSpec, MemberRef};
use crate::sinks::SinkError;
use crate::sinks::http::{Body, HttpClient, HttpError, HttpSettings};
use crate::sinks::lifecycle::{
    AdoptPolicy, ApiProfile, Change, Created, GroupApi, GroupSink, MemberChange, OpError, Outcome,
    TargetGroup, UserCache, UserKey, id_values, ids, map_by_filter, member_pairs, outcome,
};
use crate::sinks::target::{self, Page, quote};

/// How an LDAP user is found among PingOne users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum UserMatch {
    /// `username eq "<LDAP user name>"`.
    #[default]
    #[serde(rename = "username")]
    Username,
    /// `email eq "<LDAP mail>"`.
    #[serde(rename = "email")]
    Email,
    /// `externalId eq "<LDAP source id>"`.
    #[serde(rename = "externalId")]
    ExternalId,
}

connection_fields! {
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PingOneGroupsConfig {
        /// Create population groups in this population (environment groups when unset).
        pub population_id: Option<String>,
        #[serde(default)]
        pub user_match: UserMatch,
        /// `limit` asked for on list requests.
        #[serde(default = "default_page_size")]
        pub page_size: u32,
        /// Which existing groups may be adopted: "name" (default), "external_id" or "never".
        #[serde(default)]
        pub adopt: AdoptPolicy,
    }
}

fn default_page_size() -> u32 {
    100
}

impl crate::sinks::SinkType for PingOneGroupsConfig {
    fn secret_fields(&self) -> Vec<SecretField<'_>> {
        vec![self.connection().secret_field()]
    }
    fn validate(&self) -> Result<(), Invalid> {
        self.connection().validate()?;
        if let Some(population) = &self.population_id
            && population.trim().is_empty()
        {
            return Err(("population_id", "must not be empty when set".into()));
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err(("page_size", "must be between 1 and 1000".into()));
        }
        Ok(())
    }
    fn build(&self, name: String, http: HttpSettings) -> crate::sinks::Built {
        Ok(Box::new(PingOneGroupsSink::new(name, self, http)?))
    }
}

/// Whether an error answer means "this already exists" (400 + UNIQUENESS_VIOLATION, or 409).
pub(crate) fn is_uniqueness_violation(status: u16, body: &[u8]) -> bool {
    if status == 409 {
        return true;
    }
    if status != 400 {
        return false;
    }
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("details").and_then(Value::as_array).cloned())
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| d.get("code").and_then(Value::as_str) == Some("UNIQUENESS_VIOLATION"))
        })
}

/// The `_embedded.<key>` items of a PingOne list page.
fn embedded(page: &Value, key: &str) -> Vec<Value> {
    page.pointer(&format!("/_embedded/{key}"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

pub struct PingOneGroupsSink {
    name: String,
    config: PingOneGroupsConfig,
    http: HttpClient,
    /// Lookup key → PingOne user id (positive answers only, so new users are found next run).
    users: UserCache,
}

impl PingOneGroupsSink {
    pub fn new(
        name: String,
        config: &PingOneGroupsConfig,
        settings: HttpSettings,
    ) -> Result<PingOneGroupsSink, SinkError> {
        let http = config.connection().http_client(&name, settings)?;
        Ok(PingOneGroupsSink {
            name,
            config: config.clone(),
            http,
            users: UserCache::default(),
        })
    }

    /// Every item of a list (filtered when `filter` is set), following `_links.next` (absolute
    /// hrefs).
    async fn list_all(&self, path: &str, filter: &str, key: &str) -> Result<Vec<Value>, HttpError> {
        let limit = self.config.page_size.to_string();
        let mut first = vec![("limit", limit.as_str())];
        if !filter.is_empty() {
            first.push(("filter", filter));
        }
        let first = &first;
        let fetch = |next: Option<String>| async move {
            match next {
                None => self.http.json(Method::GET, path, first, None).await,
                Some(href) => self.http.json(Method::GET, &href, &[], None).await,
            }
        };
        let read = |page: Value| Page {
            items: embedded(&page, key),
            next: page
                .pointer("/_links/next/href")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        let pages = target::all_pages(&self.name, path, fetch, read).await?;
        Ok(pages.items)
    }

    /// The groups of a listing this sink may adopt, as the lifecycle checks them.
    fn target_groups(&self, listed: &[Value]) -> Vec<TargetGroup> {
        listed
            .iter()
            .filter(|g| self.adoptable(g))
            .filter_map(|g| {
                let text = |key: &str| g.get(key).and_then(Value::as_str).map(str::to_string);
                Some(TargetGroup {
                    id: text("id")?,
                    name: text("name").unwrap_or_default(),
                    external_id: text("externalId").filter(|e| !e.is_empty()),
                    members: None,
                })
            })
            .collect()
    }

    /// Whether a listed group is one this sink may adopt: not external, same population.
    fn adoptable(&self, group: &Value) -> bool {
        let population = group.pointer("/population/id").and_then(Value::as_str);
        group.get("sourceType").is_none_or(Value::is_null)
            && population == self.config.population_id.as_deref()
    }

    fn group_body(&self, group: &GroupSpec) -> Body {
        let mut body = json!({"name": group.name, "externalId": group.source_id});
        if let Some(object) = body.as_object_mut() {
            if let Some(description) = &group.description {
                object.insert("description".into(), json!(description));
            }
            if let Some(population) = &self.config.population_id {
                object.insert("population".into(), json!({"id": population}));
            }
        }
        Body::json(&body)
    }
}

#[async_trait]
impl GroupApi for PingOneGroupsSink {
    type Members = ();

    fn profile(&self) -> ApiProfile<'_> {
        let auth_hint = "check the client credentials";
        ApiProfile::new(&self.name, "PingOne", auth_hint, self.config.adopt)
    }

    /// `externalId eq` the source id and, with `by_name`, `name eq` the name; groups this sink
    /// may not adopt (another population, an external source) are left out.
    async fn candidates(
        &self,
        group: &GroupSpec,
        by_name: bool,
    ) -> Result<Vec<TargetGroup>, OpError> {
        let mut filters = vec![format!("externalId eq {}", quote(&group.source_id))];
        if by_name {
            filters.push(format!("name eq {}", quote(&group.name)));
        }
        let mut found = Vec::new();
        for filter in filters {
            let listed = self.list_all("/groups", &filter, "groups").await?;
            found.extend(self.target_groups(&listed));
        }
        Ok(found)
    }

    /// `GET /groups/{id}` (name, description) and its members.
    async fn read_group(&self, id: &str) -> Result<Option<ActualGroup>, OpError> {
        let path = format!("/groups/{}", urlencoding::encode(id));
        let Some(group) = target::get_if_exists(&self.http, &path, &[]).await? else {
            return Ok(None);
        };
        let members = self.group_members(id).await?;
        Ok(Some(target::actual_group(&group, members)))
    }

    /// One paged listing of `/groups`.
    async fn list_groups(&self) -> Result<Option<Vec<TargetGroup>>, OpError> {
        let listed = self.list_all("/groups", "", "groups").await?;
        Ok(Some(self.target_groups(&listed)))
    }

    /// `GET /users?filter=memberOfGroups[id eq "<gid>"]`, paged: (user id, username).
    async fn group_members(&self, id: &str) -> Result<Vec<(String, String)>, OpError> {
        let filter = format!("memberOfGroups[id eq {}]", quote(id));
        let users = self.list_all("/users", &filter, "users").await?;
        Ok(member_pairs(&users, "id", "username"))
    }

    fn user_match(&self) -> Option<(&'static str, UserKey)> {
        Some(match self.config.user_match {
            UserMatch::Username => ("username", UserKey::Username),
            UserMatch::ExternalId => ("externalId", UserKey::SourceId),
            UserMatch::Email => ("email", UserKey::Email),
        })
    }

    /// Filters with several values (`username eq "a" or username eq "b" …`), paged.
    async fn map_users(&self, users: &[MemberRef]) -> Result<HashMap<String, String>, OpError> {
        let Some(matched) = self.user_match() else {
            return Ok(HashMap::new());
        };
        let find = |filter: String| async move {
            let listed = self.list_all("/users", &filter, "users").await?;
            Ok(id_values(&listed, "id", matched.0))
        };
        map_by_filter(&self.name, users, matched, find).await
    }

    async fn create(&self, group: &GroupSpec, _: Option<String>) -> Result<Created, OpError> {
        let body = self.group_body(group);
        let response = self.http.send_create("/groups", &[], &body).await?;
        if is_uniqueness_violation(response.status.as_u16(), &response.body) {
            return Ok(Created::Conflict(response.into_error().into()));
        }
        target::created(&response.success()?.json()?, "id")
    }

    async fn update(&self, id: &str, group: &GroupSpec, _: &GroupSpec) -> Result<Outcome, OpError> {
        let body = self.group_body(group);
        let path = format!("/groups/{}", urlencoding::encode(id));
        outcome(self.http.send(Method::PUT, &path, &[], Some(&body)).await?)
    }

    async fn delete(&self, id: &str) -> Result<Outcome, OpError> {
        let path = format!("/groups/{}", urlencoding::encode(id));
        outcome(self.http.send(Method::DELETE, &path, &[], None).await?)
    }

    /// The PingOne user id of an LDAP user, by the configured match attribute (cached).
    async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, OpError> {
        let Some(matched) = self.user_match() else {
            return Ok(None);
        };
        let find = |filter: String| async move {
            Ok(ids(&self.list_all("/users", &filter, "users").await?, "id"))
        };
        self.users.lookup(&self.name, member, matched, find).await
    }

    /// Adds with `POST /users/{uid}/memberOfGroups` (a duplicate membership is success); removes
    /// with `DELETE /users/{uid}/memberOfGroups/{gid}` (404, not a member, is success).
    async fn change_members(&self, request: Change<'_, ()>) -> Result<Outcome, OpError> {
        let (change, gid, chunk) = (request.kind, request.id, request.chunk);
        let body = Body::json(&json!({"id": gid}));
        for uid in chunk.iter().filter_map(|m| m.target_id.as_deref()) {
            let memberships = format!("/users/{}/memberOfGroups", urlencoding::encode(uid));
            match change {
                MemberChange::Add => {
                    let r = self
                        .http
                        .send(Method::POST, &memberships, &[], Some(&body))
                        .await?;
                    if !(r.is_success() || is_uniqueness_violation(r.status.as_u16(), &r.body)) {
                        return Err(r.into_error().into());
                    }
                }
                MemberChange::Remove => {
                    let path = format!("{memberships}/{}", urlencoding::encode(gid));
                    outcome(self.http.send(Method::DELETE, &path, &[], None).await?)?;
                }
            }
        }
        Ok(Outcome::Done)
    }
}

#[async_trait]
impl GroupSink for PingOneGroupsSink {
    const TYPE_NAME: &'static str = "pingone_groups";

    async fn probe(&self) -> Result<(), SinkError> {
        target::probe(&self.name, &self.http, "/groups", &[("limit", "1")]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkType as _;

    #[test]
    fn uniqueness_violations_are_recognised_in_both_shapes() {
        let body = br#"{"id":"x","code":"INVALID_DATA","message":"m","details":[{"code":"UNIQUENESS_VIOLATION","target":"name","message":"taken","innerError":{"existingId":"g"}}]}"#;
        assert!(is_uniqueness_violation(400, body));
        assert!(is_uniqueness_violation(409, b""));
        let other = br#"{"id":"x","code":"INVALID_DATA","details":[{"code":"INVALID_VALUE"}]}"#;
        assert!(!is_uniqueness_violation(400, other));
        assert!(!is_uniqueness_violation(400, b"not json"));
        assert!(!is_uniqueness_violation(500, body));
    }

    #[test]
    fn config_parses_and_validates() {
        let config: PingOneGroupsConfig = toml::from_str(
            r#"
region = "eu"
environment_id = "env"
client_id = "c"
client_secret_file = "/run/secret"
token_auth = "post"
user_match = "externalId"
"#,
        )
        .unwrap();
        assert_eq!(config.user_match, UserMatch::ExternalId);
        assert_eq!(
            config.connection().token_url(),
            "https://auth.pingone.eu/env/as/token"
        );
        assert!(config.validate().is_ok());
        assert!(
            toml::from_str::<PingOneGroupsConfig>(
                "environment_id = \"e\"\nclient_id = \"c\"\nclient_secret = \"s\"\nbogus = 1\n"
            )
            .is_err()
        );
    }

    #[test]
    fn embedded_reads_list_pages() {
        let page = json!({"_embedded": {"groups": [{"id": "a"}, {"id": "b"}]}, "count": 2});
        assert_eq!(embedded(&page, "groups").len(), 2);
        assert!(embedded(&page, "users").is_empty());
    }
}
