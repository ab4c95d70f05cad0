//! The SCIM 2.0 sink (StrongDM's generic SCIM endpoint first): groups via /Groups, members via PATCH or PUT.
//!
//! Follows RFC 7644 and StrongDM's documented behaviour (StrongDM's SCIM documentation, "Create group"):
//! membership changes are PATCH add/remove in chunks, or GET+PUT of the whole member list when
//! `/ServiceProviderConfig` does not announce PATCH; a 409 `uniqueness` on create means "find it
//! by `displayName eq` and adopt it"; 404 on delete means done; users are found by a filter on
//! the configured attribute and cached. 200 and 204 are both success, bodies optional.

use crate::config::Invalid;
use crate::secret::SecretField;
use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::SinkError;
use super::http::{self, Auth, Body, HttpClient, HttpError, HttpSettings, Response, check_url};
use super::lifecycle::{
    AdoptPolicy, ApiProfile, Change, Created, FILTER_VALUES, GroupApi, GroupSink, MemberChange,
    OpError, Outcome, TargetGroup, UserCache, UserKey, id_values, ids, map_by_filter, outcome,
};
use super::target::{self, quote};
use crate::model::{ActualGroup, GroupSpec, MemberRef};
use crate::secret::Secret;

const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SCIM_JSON: &str = "application/scim+json";
/// Resources per page of a listing (`count`); a target may answer fewer.
const LIST_PAGE: usize = 500;

/// How an LDAP user is found among the target's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum ScimUserMatch {
    /// `userName eq "<LDAP user name>"`.
    #[default]
    #[serde(rename = "userName")]
    UserName,
    /// `externalId eq "<LDAP source id>"`.
    #[serde(rename = "externalId")]
    ExternalId,
    /// `emails.value eq "<LDAP mail>"`.
    #[serde(rename = "email")]
    Email,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScimConfig {
    pub base_url: String,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub user_match: ScimUserMatch,
    /// Members per PATCH request.
    #[serde(default = "default_chunk")]
    pub member_chunk_size: usize,
    /// Which existing groups may be adopted: "name" (default), "external_id" or "never".
    #[serde(default)]
    pub adopt: AdoptPolicy,
    /// Create missing users from LDAP (`externalId` = the source id) and deactivate them
    /// (`active: false`, never delete) when they leave the scope.
    #[serde(default)]
    pub provision_users: bool,
}

fn default_chunk() -> usize {
    100
}

impl ScimConfig {
    /// Where the token is.
    fn token_field(&self) -> SecretField<'_> {
        SecretField::new("token", self.token.as_ref(), self.token_file.as_deref())
    }
}

impl crate::sinks::SinkType for ScimConfig {
    fn secret_fields(&self) -> Vec<SecretField<'_>> {
        vec![self.token_field()]
    }
    fn validate(&self) -> Result<(), Invalid> {
        check_url("base_url", &self.base_url)?;
        if self.token.is_none() && self.token_file.is_none() {
            return Err((
                "token",
                "a bearer token is required (token or token_file)".into(),
            ));
        }
        if !(1..=1000).contains(&self.member_chunk_size) {
            return Err(("member_chunk_size", "must be between 1 and 1000".into()));
        }
        Ok(())
    }
    fn build(&self, name: String, http: HttpSettings) -> crate::sinks::Built {
        Ok(Box::new(ScimSink::new(name, self, http)?))
    }
}

pub struct ScimSink {
    name: String,
    config: ScimConfig,
    http: HttpClient,
    patch_supported: Mutex<Option<bool>>,
    /// Lookup key → target user id (positive answers only, so new users are found next run).
    users: UserCache,
}

impl ScimSink {
    pub fn new(
        name: String,
        config: &ScimConfig,
        settings: HttpSettings,
    ) -> Result<ScimSink, SinkError> {
        let token = config
            .token_field()
            .resolve()
            .map_err(target::secret_error(&name))?;
        let http = HttpClient::new(
            &name,
            &config.base_url,
            Auth::Bearer(token),
            settings,
            error_body,
        )
        .map_err(target::http_error(&name))?;
        Ok(ScimSink {
            name,
            config: config.clone(),
            http,
            patch_supported: Mutex::new(None),
            users: UserCache::default(),
        })
    }

    /// Whether to use PATCH (from /ServiceProviderConfig; assumed when discovery fails).
    async fn patch_supported(&self) -> bool {
        let mut known = self.patch_supported.lock().await;
        if let Some(value) = *known {
            return value;
        }
        let value = match self
            .http
            .json::<Value>(Method::GET, "/ServiceProviderConfig", &[], None)
            .await
        {
            Ok(config) => config
                .pointer("/patch/supported")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            Err(e) => {
                tracing::debug!(sink = %self.name, error = %e, "no usable /ServiceProviderConfig; assuming PATCH");
                true
            }
        };
        *known = Some(value);
        value
    }

    /// `GET /Groups?filter=…` → the groups it answers (whatever they are: the caller checks).
    async fn find_groups(&self, filter: &str) -> Result<Vec<TargetGroup>, HttpError> {
        let query = [("filter", filter)];
        let list = target::get_if_exists(&self.http, "/Groups", &query).await?;
        let groups = list.as_ref().map(resources).unwrap_or_default();
        Ok(groups.iter().filter_map(target_group).collect())
    }

    /// Every resource of `path` (`/Users`, `/Groups`), paging with `startIndex`/`count`.
    async fn list_all(&self, path: &str, extra: &[(&str, &str)]) -> Result<Vec<Value>, HttpError> {
        let fetch = |next: Option<String>| async move {
            let start = next.unwrap_or_else(|| "1".into());
            let count = LIST_PAGE.to_string();
            let mut query = vec![("startIndex", start.as_str()), ("count", count.as_str())];
            query.extend_from_slice(extra);
            let answer: Value = self.http.json(Method::GET, path, &query, None).await?;
            Ok((start.parse::<u64>().unwrap_or(1), answer))
        };
        let mut items: Vec<Value> = Vec::new();
        let mut next = None;
        for _ in 0..target::MAX_PAGES {
            let (start, answer) = fetch(next.take()).await?;
            let page = resources(&answer);
            let total = answer.get("totalResults").and_then(Value::as_u64);
            let got = page.len() as u64;
            items.extend(page);
            let seen = start - 1 + got;
            if got == 0 || total.is_none_or(|t| seen >= t) {
                return Ok(items);
            }
            next = Some((seen + 1).to_string());
        }
        tracing::warn!(sink = %self.name, path, "listing stopped after {} pages", target::MAX_PAGES);
        Ok(items)
    }

    /// PUT fallback for targets without PATCH: read the group, change it, write it whole.
    async fn put_group(
        &self,
        id: &str,
        rename: Option<&str>,
        add: &[&str],
        remove: &[&str],
    ) -> Result<Response, HttpError> {
        let path = format!("/Groups/{id}");
        let current = self.http.send(Method::GET, &path, &[], None).await?;
        if !current.is_success() {
            return Ok(current);
        }
        let mut group: Value = current.json()?;
        let mut members: Vec<Value> = group
            .get("members")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        members.retain(|m| {
            m.get("value")
                .and_then(Value::as_str)
                .is_none_or(|v| !remove.contains(&v))
        });
        for uid in add {
            if !members
                .iter()
                .any(|m| m.get("value").and_then(Value::as_str) == Some(uid))
            {
                members.push(json!({"value": uid}));
            }
        }
        let object = group.as_object_mut().ok_or_else(|| HttpError::Decode {
            method: "GET".into(),
            path: path.clone(),
            detail: "the group is not a JSON object".into(),
        })?;
        object.insert("members".into(), Value::Array(members));
        if let Some(name) = rename {
            object.insert("displayName".into(), json!(name));
        }
        object.remove("meta");
        let body = Body::typed(SCIM_JSON, &group);
        self.http.send(Method::PUT, &path, &[], Some(&body)).await
    }
}

#[async_trait]
impl GroupApi for ScimSink {
    type Members = ();

    fn profile(&self) -> ApiProfile<'_> {
        ApiProfile {
            member_chunk_size: self.config.member_chunk_size,
            ..ApiProfile::new(
                &self.name,
                "the target",
                "check the token",
                self.config.adopt,
            )
        }
    }

    /// `externalId eq` the source id, and with `by_name` `displayName eq` the name (the driver
    /// checks what comes back: a target may ignore the filter).
    async fn candidates(
        &self,
        group: &GroupSpec,
        by_name: bool,
    ) -> Result<Vec<TargetGroup>, OpError> {
        let mut found = self
            .find_groups(&format!("externalId eq {}", quote(&group.source_id)))
            .await?;
        if by_name {
            found.extend(
                self.find_groups(&format!("displayName eq {}", quote(&group.name)))
                    .await?,
            );
        }
        Ok(found)
    }

    /// `GET /Groups/{id}`: name and members (SCIM groups carry their members inline).
    async fn read_group(&self, id: &str) -> Result<Option<ActualGroup>, OpError> {
        let path = format!("/Groups/{}", urlencoding::encode(id));
        let Some(resource) = target::get_if_exists(&self.http, &path, &[]).await? else {
            return Ok(None);
        };
        let group = target_group(&resource).ok_or("the group read has no \"id\"")?;
        Ok(Some(ActualGroup {
            name: group.name,
            description: None,
            members: group.members.unwrap_or_default(),
        }))
    }

    /// One paged listing of `/Groups`, members included.
    async fn list_groups(&self) -> Result<Option<Vec<TargetGroup>>, OpError> {
        let all = self.list_all("/Groups", &[]).await?;
        Ok(Some(all.iter().filter_map(target_group).collect()))
    }

    fn provisions_users(&self) -> bool {
        self.config.provision_users
    }

    fn plans_user_ops(&self) -> bool {
        self.config.provision_users
    }

    /// `POST /Users` (`userName` per `user_match`, `externalId` = the source id, `name`,
    /// `emails`, `active`), sent once; an answer lost or failed after sending is resolved by
    /// looking the user up by `externalId` before anything is sent again.
    async fn create_user(&self, user: &MemberRef) -> Result<String, OpError> {
        let user_name = match self.config.user_match {
            ScimUserMatch::Email => user.email.clone().unwrap_or_else(|| user.username.clone()),
            _ => user.username.clone(),
        };
        let mut body = json!({
            "schemas": [USER_SCHEMA],
            "userName": user_name,
            "externalId": user.source_id,
            "name": {"formatted": user.username},
            "displayName": user.username,
            "active": true,
        });
        if let Some(email) = &user.email {
            body["emails"] = json!([{"value": email, "primary": true}]);
        }
        let answer = self
            .http
            .send_create("/Users", &[], &Body::typed(SCIM_JSON, &body))
            .await;
        let failed: OpError = match answer {
            Ok(response) if response.is_success() => {
                let created: Value = response.json()?;
                return match created.get("id").and_then(Value::as_str) {
                    Some(id) => Ok(id.to_string()),
                    None => Err("the user create answer has no \"id\"".into()),
                };
            }
            Ok(response) => response.into_error().into(),
            Err(e) => e.into(),
        };
        if !failed.maybe_committed() {
            return Err(failed);
        }
        let filter = format!("externalId eq {}", quote(&user.source_id));
        let found = self.list_all("/Users", &[("filter", &filter)]).await?;
        let ours: Vec<&str> = found
            .iter()
            .filter(|u| u.get("externalId").and_then(Value::as_str) == Some(&user.source_id))
            .filter_map(|u| u.get("id").and_then(Value::as_str))
            .collect();
        match ours.as_slice() {
            [id] => Ok(id.to_string()),
            _ => Err(failed),
        }
    }

    /// `PATCH /Users/{id}` replacing `active`.
    async fn set_user_active(&self, id: &str, active: bool) -> Result<Outcome, OpError> {
        let body = patch(vec![json!({"op": "replace", "value": {"active": active}})]);
        let path = format!("/Users/{}", urlencoding::encode(id));
        outcome(
            self.http
                .send(Method::PATCH, &path, &[], Some(&body))
                .await?,
        )
    }

    fn user_match(&self) -> Option<(&'static str, UserKey)> {
        Some(match self.config.user_match {
            ScimUserMatch::UserName => ("userName", UserKey::Username),
            ScimUserMatch::ExternalId => ("externalId", UserKey::SourceId),
            ScimUserMatch::Email => ("emails.value", UserKey::Email),
        })
    }

    /// A few users (the misses of the user map on a later run): filters with several values
    /// (`userName eq "a" or …`). Many (a first run), or matched by email: one paged listing of
    /// `/Users`. Either way matched locally on the configured attribute (a user several target
    /// users match is left unmapped, with a warning).
    async fn map_users(&self, users: &[MemberRef]) -> Result<HashMap<String, String>, OpError> {
        if let Some(matched) = self.user_match()
            && users.len() <= FILTER_VALUES
            && self.config.user_match != ScimUserMatch::Email
        {
            let find = |filter: String| async move {
                let listed = self.list_all("/Users", &[("filter", &filter)]).await?;
                Ok(id_values(&listed, "id", matched.0))
            };
            return map_by_filter(&self.name, users, matched, find).await;
        }
        let listed = self.list_all("/Users", &[]).await?;
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for user in &listed {
            let Some(id) = user.get("id").and_then(Value::as_str) else {
                continue;
            };
            let text = |name: &str| user.get(name).and_then(Value::as_str);
            let keys: Vec<String> = match self.config.user_match {
                ScimUserMatch::UserName => text("userName")
                    .map(str::to_lowercase)
                    .into_iter()
                    .collect(),
                ScimUserMatch::ExternalId => {
                    text("externalId").map(str::to_string).into_iter().collect()
                }
                ScimUserMatch::Email => user
                    .get("emails")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.get("value").and_then(Value::as_str))
                    .map(str::to_lowercase)
                    .collect(),
            };
            for key in keys {
                let ids = by_key.entry(key).or_default();
                if !ids.iter().any(|i| i == id) {
                    ids.push(id.to_string());
                }
            }
        }
        let mut mapped = HashMap::new();
        for user in users {
            let key = match self.config.user_match {
                ScimUserMatch::UserName => Some(user.username.to_lowercase()),
                ScimUserMatch::ExternalId => Some(user.source_id.clone()),
                ScimUserMatch::Email => user.email.as_deref().map(str::to_lowercase),
            };
            match key.and_then(|k| by_key.get(&k)).map(Vec::as_slice) {
                Some([id]) => {
                    mapped.insert(user.source_id.clone(), id.clone());
                }
                Some([_, _, ..]) => {
                    tracing::warn!(sink = %self.name, member = %user.username, "several target users match; member skipped")
                }
                _ => {}
            }
        }
        Ok(mapped)
    }

    /// The target user id of an LDAP user, by the configured match attribute (cached).
    async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, OpError> {
        let Some(matched) = self.user_match() else {
            return Ok(None);
        };
        let find = |filter: String| async move {
            let query = [("filter", filter.as_str())];
            let response = self.http.send(Method::GET, "/Users", &query, None).await?;
            if response.status.as_u16() == 404 {
                return Ok(Vec::new());
            }
            let list: Value = response.success()?.json()?;
            Ok(ids(&resources(&list), "id"))
        };
        self.users.lookup(&self.name, member, matched, find).await
    }

    async fn create(&self, group: &GroupSpec, _: Option<String>) -> Result<Created, OpError> {
        let body = Body::typed(
            SCIM_JSON,
            &json!({"schemas": [GROUP_SCHEMA], "displayName": group.name, "externalId": group.source_id}),
        );
        let response = self.http.send_create("/Groups", &[], &body).await?;
        if response.status.as_u16() == 409 {
            return Ok(Created::Conflict(response.into_error().into()));
        }
        target::created(&response.success()?.json()?, "id")
    }

    async fn update(&self, id: &str, group: &GroupSpec, _: &GroupSpec) -> Result<Outcome, OpError> {
        let response = if self.patch_supported().await {
            let body = patch(vec![
                json!({"op": "replace", "value": {"displayName": group.name}}),
            ]);
            self.http
                .send(Method::PATCH, &format!("/Groups/{id}"), &[], Some(&body))
                .await?
        } else {
            self.put_group(id, Some(&group.name), &[], &[]).await?
        };
        outcome(response)
    }

    async fn delete(&self, id: &str) -> Result<Outcome, OpError> {
        outcome(
            self.http
                .send(Method::DELETE, &format!("/Groups/{id}"), &[], None)
                .await?,
        )
    }

    /// A PATCH (`add` with the members, or one `remove` per member), or a PUT of the whole
    /// group where the target has no PATCH.
    async fn change_members(&self, request: Change<'_, ()>) -> Result<Outcome, OpError> {
        let (change, id, chunk) = (request.kind, request.id, request.chunk);
        let ids = target_ids(chunk);
        if !self.patch_supported().await {
            let (add, remove) = match change {
                MemberChange::Add => (&ids[..], &[][..]),
                MemberChange::Remove => (&[][..], &ids[..]),
            };
            return outcome(self.put_group(id, None, add, remove).await?);
        }
        let operations = match change {
            MemberChange::Add => {
                let value: Vec<Value> = chunk
                    .iter()
                    .map(|m| json!({"value": m.target_id, "display": m.username}))
                    .collect();
                vec![json!({"op": "add", "path": "members", "value": value})]
            }
            MemberChange::Remove => ids
                .iter()
                .map(|uid| json!({"op": "remove", "path": format!("members[value eq {}]", quote(uid))}))
                .collect(),
        };
        let body = patch(operations);
        outcome(
            self.http
                .send(Method::PATCH, &format!("/Groups/{id}"), &[], Some(&body))
                .await?,
        )
    }
}

fn target_ids(members: &[MemberRef]) -> Vec<&str> {
    members
        .iter()
        .filter_map(|m| m.target_id.as_deref())
        .collect()
}

fn patch(operations: Vec<Value>) -> Body {
    Body::typed(
        SCIM_JSON,
        &json!({"schemas": [PATCH_SCHEMA], "Operations": operations}),
    )
}

fn resources(list: &Value) -> Vec<Value> {
    list.get("Resources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A SCIM error body (RFC 7644 §3.12): `scimType=… detail`.
fn error_body(body: &[u8]) -> Option<String> {
    http::json_error(body, &["scimType"], &["detail"], |_| Vec::new())
}

#[async_trait]
impl GroupSink for ScimSink {
    const TYPE_NAME: &'static str = "scim";

    async fn probe(&self) -> Result<(), SinkError> {
        target::probe(&self.name, &self.http, "/Groups", &[("count", "1")]).await
    }
}

/// A SCIM group resource as the lifecycle checks it.
fn target_group(resource: &Value) -> Option<TargetGroup> {
    let text = |key: &str| {
        resource
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let members = resource
        .get("members")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| {
                    let id = m.get("value").and_then(Value::as_str)?;
                    let display = m.get("display").and_then(Value::as_str).unwrap_or(id);
                    Some((id.to_string(), display.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(TargetGroup {
        id: text("id")?,
        name: text("displayName").unwrap_or_default(),
        external_id: text("externalId").filter(|e| !e.is_empty()),
        members: Some(members),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_json_quoted() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }

    #[test]
    fn error_bodies_read_scim_type_and_detail() {
        let scim = br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409","scimType":"uniqueness","detail":"in use"}"#;
        assert_eq!(
            error_body(scim).as_deref(),
            Some("scimType=uniqueness in use")
        );
        assert_eq!(error_body(br#"{"status":"500"}"#), None);
    }
}
