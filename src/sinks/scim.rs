//! The SCIM 2.0 sink (StrongDM's generic SCIM endpoint first): groups via /Groups, members via PATCH or PUT.
//!
//! Follows RFC 7644 and StrongDM's documented behaviour (specs/scim-and-forgerock.md §A.11):
//! membership changes are PATCH add/remove in chunks, or GET+PUT of the whole member list when
//! `/ServiceProviderConfig` does not announce PATCH; a 409 `uniqueness` on create means "find it
//! by `displayName eq` and adopt it"; 404 on delete means done; users are found by a filter on
//! the configured attribute and cached. 200 and 204 are both success, bodies optional.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::http::{Auth, Body, HttpClient, HttpError, HttpSettings};
use super::{Recorder, Sink, SinkError};
use crate::config::{Secret, SecretError, resolve_secret};
use crate::ledger::Ledger;
use crate::plan::{GroupSpec, MemberRef, OpKind, Operation, Plan};

const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SCIM_JSON: &str = "application/scim+json";

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
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub user_match: ScimUserMatch,
    /// Members per PATCH request.
    #[serde(default = "default_chunk")]
    pub member_chunk_size: usize,
}

fn default_chunk() -> usize {
    100
}

impl ScimConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err((
                "base_url",
                format!("{:?} must be an http(s) URL", self.base_url),
            ));
        }
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

    pub fn token(&self) -> Result<Secret, SecretError> {
        resolve_secret("token", self.token.as_deref(), self.token_file.as_deref())
    }
}

pub struct ScimSink {
    name: String,
    config: ScimConfig,
    http: HttpClient,
    patch_supported: Mutex<Option<bool>>,
    /// Lookup key → target user id (positive answers only, so new users are found next run).
    users: Mutex<HashMap<String, String>>,
}

impl ScimSink {
    pub fn new(
        name: String,
        config: &ScimConfig,
        settings: HttpSettings,
    ) -> Result<ScimSink, SinkError> {
        let token = config.token().map_err(|source| SinkError::Secret {
            sink: name.clone(),
            source,
        })?;
        let http =
            HttpClient::new(&config.base_url, Auth::Bearer(token), settings).map_err(|source| {
                SinkError::Http {
                    sink: name.clone(),
                    source,
                }
            })?;
        Ok(ScimSink {
            name,
            config: config.clone(),
            http,
            patch_supported: Mutex::new(None),
            users: Mutex::new(HashMap::new()),
        })
    }

    pub fn with_http(mut self, http: impl FnOnce(HttpClient) -> HttpClient) -> Self {
        self.http = http(self.http);
        self
    }

    fn error(&self, source: HttpError) -> SinkError {
        SinkError::Http {
            sink: self.name.clone(),
            source,
        }
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

    /// `GET /Groups?filter=…` → ids of the matching groups.
    async fn find_groups(&self, filter: &str) -> Result<Vec<String>, HttpError> {
        let response = self
            .http
            .send(
                Method::GET,
                "/Groups",
                &[("filter", filter), ("excludedAttributes", "members")],
                None,
            )
            .await?;
        if response.status.as_u16() == 404 {
            return Ok(Vec::new());
        }
        let list: Value = response.success()?.json()?;
        Ok(resources(&list)
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// Finds a group this sink may adopt: by externalId (our source id), then by exact name.
    async fn find_existing(&self, group: &GroupSpec) -> Result<Option<String>, HttpError> {
        let by_external_id = self
            .find_groups(&format!("externalId eq {}", quote(&group.source_id)))
            .await
            .unwrap_or_default();
        if let Some(id) = by_external_id.into_iter().next() {
            return Ok(Some(id));
        }
        Ok(self
            .find_groups(&format!("displayName eq {}", quote(&group.name)))
            .await?
            .into_iter()
            .next())
    }

    async fn create(
        &self,
        group: &GroupSpec,
        resume: bool,
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        if resume {
            match self.find_existing(group).await {
                Ok(Some(id)) => {
                    tracing::info!(sink = %self.name, group = %group.name, id, "adopted the group an interrupted run created");
                    return recorder.created(group, &id);
                }
                Ok(None) => {}
                Err(e) => {
                    recorder.failed(OpKind::Create, group, e, 1);
                    return Ok(());
                }
            }
        }
        recorder.intent(group)?;
        let body = Body::typed(
            SCIM_JSON,
            &json!({"schemas": [GROUP_SCHEMA], "displayName": group.name, "externalId": group.source_id}),
        );
        let response = match self
            .http
            .send(Method::POST, "/Groups", &[], Some(&body))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                recorder.failed(OpKind::Create, group, e, 1);
                return Ok(());
            }
        };
        if response.status.as_u16() == 409 {
            return match self.find_existing(group).await {
                Ok(Some(id)) => {
                    tracing::info!(sink = %self.name, group = %group.name, id, "group name already in use; adopted the existing group");
                    recorder.created(group, &id)
                }
                Ok(None) => {
                    recorder.failed(OpKind::Create, group, response.into_error(), 1);
                    Ok(())
                }
                Err(e) => {
                    recorder.failed(OpKind::Create, group, e, 1);
                    Ok(())
                }
            };
        }
        match response.success().and_then(|r| r.json::<Value>()) {
            Ok(created) => match created.get("id").and_then(Value::as_str) {
                Some(id) => recorder.created(group, id),
                None => {
                    recorder.failed(OpKind::Create, group, "the create answer has no \"id\"", 1);
                    Ok(())
                }
            },
            Err(e) => {
                recorder.failed(OpKind::Create, group, e, 1);
                Ok(())
            }
        }
    }

    async fn update(
        &self,
        group: &GroupSpec,
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        let Some(id) = recorder.target_id(group) else {
            recorder.failed(OpKind::Update, group, "no target id recorded", 1);
            return Ok(());
        };
        let result = if self.patch_supported().await {
            let body = patch(vec![
                json!({"op": "replace", "value": {"displayName": group.name}}),
            ]);
            self.http
                .send(Method::PATCH, &format!("/Groups/{id}"), &[], Some(&body))
                .await
        } else {
            self.put_group(&id, Some(&group.name), &[], &[]).await
        };
        match result {
            Ok(r) if r.is_success() => recorder.updated(group, &id),
            Ok(r) if r.status.as_u16() == 404 => {
                recorder.failed(
                    OpKind::Update,
                    group,
                    "the group no longer exists in the target; it will be recreated next run",
                    1,
                );
                recorder.forget(group)
            }
            Ok(r) => {
                recorder.failed(OpKind::Update, group, r.into_error(), 1);
                Ok(())
            }
            Err(e) => {
                recorder.failed(OpKind::Update, group, e, 1);
                Ok(())
            }
        }
    }

    async fn delete(
        &self,
        group: &GroupSpec,
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        let id = match recorder.target_id(group) {
            Some(id) => Some(id),
            // An unconfirmed create: delete what it may have created.
            None => match self.find_existing(group).await {
                Ok(found) => found,
                Err(e) => {
                    recorder.failed(OpKind::Delete, group, e, 1);
                    return Ok(());
                }
            },
        };
        let Some(id) = id else {
            return recorder.deleted(group);
        };
        match self
            .http
            .send(Method::DELETE, &format!("/Groups/{id}"), &[], None)
            .await
        {
            Ok(r) if r.is_success() || r.status.as_u16() == 404 => recorder.deleted(group),
            Ok(r) => {
                recorder.failed(OpKind::Delete, group, r.into_error(), 1);
                Ok(())
            }
            Err(e) => {
                recorder.failed(OpKind::Delete, group, e, 1);
                Ok(())
            }
        }
    }

    /// The target user id of an LDAP user, by the configured match attribute (cached).
    async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, HttpError> {
        let (attribute, value) = match self.config.user_match {
            ScimUserMatch::UserName => ("userName", member.username.clone()),
            ScimUserMatch::ExternalId => ("externalId", member.source_id.clone()),
            ScimUserMatch::Email => match &member.email {
                Some(email) => ("emails.value", email.clone()),
                None => return Ok(None),
            },
        };
        let key = format!("{attribute}\u{0}{value}");
        if let Some(id) = self.users.lock().await.get(&key) {
            return Ok(Some(id.clone()));
        }
        let filter = format!("{attribute} eq {}", quote(&value));
        let response = self
            .http
            .send(Method::GET, "/Users", &[("filter", filter.as_str())], None)
            .await?;
        if response.status.as_u16() == 404 {
            return Ok(None);
        }
        let list: Value = response.success()?.json()?;
        let found = resources(&list);
        let ids: Vec<&str> = found
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_str))
            .collect();
        match ids.as_slice() {
            [id] => {
                self.users.lock().await.insert(key, id.to_string());
                Ok(Some(id.to_string()))
            }
            [] => Ok(None),
            _ => {
                tracing::warn!(sink = %self.name, member = %member.username, "several target users match; member skipped");
                Ok(None)
            }
        }
    }

    async fn add_members(
        &self,
        group: &GroupSpec,
        members: &[MemberRef],
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        let Some(id) = recorder.target_id(group) else {
            recorder.failed(
                OpKind::MemberAdd,
                group,
                "the group was not created",
                members.len() as u64,
            );
            return Ok(());
        };
        let mut mapped = Vec::with_capacity(members.len());
        for member in members {
            match self.user_id(member).await {
                Ok(Some(user_id)) => mapped.push(MemberRef {
                    target_id: Some(user_id),
                    ..member.clone()
                }),
                Ok(None) => recorder.unmapped(group, member),
                Err(e) => recorder.failed(OpKind::MemberAdd, group, e, 1),
            }
        }
        let patch_supported = self.patch_supported().await;
        for chunk in mapped.chunks(self.config.member_chunk_size) {
            let ids: Vec<&str> = chunk
                .iter()
                .filter_map(|m| m.target_id.as_deref())
                .collect();
            let result = if patch_supported {
                let value: Vec<Value> = chunk
                    .iter()
                    .map(|m| json!({"value": m.target_id, "display": m.username}))
                    .collect();
                let body = patch(vec![
                    json!({"op": "add", "path": "members", "value": value}),
                ]);
                self.http
                    .send(Method::PATCH, &format!("/Groups/{id}"), &[], Some(&body))
                    .await
            } else {
                self.put_group(&id, None, &ids, &[]).await
            };
            match result.and_then(Response::success_or_404) {
                Ok(true) => recorder.members_added(group, chunk)?,
                Ok(false) => {
                    recorder.failed(
                        OpKind::MemberAdd,
                        group,
                        "the group no longer exists in the target; it will be recreated next run",
                        chunk.len() as u64,
                    );
                    return recorder.forget(group);
                }
                Err(e) => recorder.failed(OpKind::MemberAdd, group, e, chunk.len() as u64),
            }
        }
        Ok(())
    }

    async fn remove_members(
        &self,
        group: &GroupSpec,
        members: &[MemberRef],
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        let Some(id) = recorder.target_id(group) else {
            recorder.failed(
                OpKind::MemberRemove,
                group,
                "no target id recorded",
                members.len() as u64,
            );
            return Ok(());
        };
        let mut resolved = Vec::with_capacity(members.len());
        for member in members {
            let target = match &member.target_id {
                Some(t) => Some(t.clone()),
                None => self.user_id(member).await.unwrap_or(None),
            };
            match target {
                Some(t) => resolved.push(MemberRef {
                    target_id: Some(t),
                    ..member.clone()
                }),
                // Not in the target at all, so not in the group: nothing to remove.
                None => recorder.members_removed(group, std::slice::from_ref(member))?,
            }
        }
        let patch_supported = self.patch_supported().await;
        for chunk in resolved.chunks(self.config.member_chunk_size) {
            let ids: Vec<&str> = chunk
                .iter()
                .filter_map(|m| m.target_id.as_deref())
                .collect();
            let result = if patch_supported {
                let operations = ids
                    .iter()
                    .map(|uid| json!({"op": "remove", "path": format!("members[value eq {}]", quote(uid))}))
                    .collect();
                self.http
                    .send(
                        Method::PATCH,
                        &format!("/Groups/{id}"),
                        &[],
                        Some(&patch(operations)),
                    )
                    .await
            } else {
                self.put_group(&id, None, &[], &ids).await
            };
            match result.and_then(Response::success_or_404) {
                Ok(true) => recorder.members_removed(group, chunk)?,
                Ok(false) => {
                    recorder.failed(
                        OpKind::MemberRemove,
                        group,
                        "the group no longer exists in the target",
                        chunk.len() as u64,
                    );
                    return recorder.forget(group);
                }
                Err(e) => recorder.failed(OpKind::MemberRemove, group, e, chunk.len() as u64),
            }
        }
        Ok(())
    }

    /// PUT fallback for targets without PATCH: read the group, change it, write it whole.
    async fn put_group(
        &self,
        id: &str,
        rename: Option<&str>,
        add: &[&str],
        remove: &[&str],
    ) -> Result<super::http::Response, HttpError> {
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

use super::http::Response;

impl Response {
    /// Ok(true) on 2xx, Ok(false) on 404, Err otherwise.
    fn success_or_404(self) -> Result<bool, HttpError> {
        if self.is_success() {
            Ok(true)
        } else if self.status.as_u16() == 404 {
            Ok(false)
        } else {
            Err(self.into_error())
        }
    }
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

/// A SCIM filter string literal: JSON string syntax.
fn quote(value: &str) -> String {
    Value::String(value.to_string()).to_string()
}

#[async_trait]
impl Sink for ScimSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "scim"
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.http
            .json::<Value>(Method::GET, "/Groups", &[("count", "1")], None)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    async fn apply(
        &self,
        plan: &Plan,
        _ledger: &Ledger,
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        for op in &plan.operations {
            match op {
                Operation::Create { group, resume } => {
                    self.create(group, *resume, recorder).await?
                }
                Operation::Update { group, .. } => self.update(group, recorder).await?,
                Operation::MemberAdd { group, members } => {
                    self.add_members(group, members, recorder).await?
                }
                Operation::MemberRemove { group, members } => {
                    self.remove_members(group, members, recorder).await?
                }
                Operation::Delete { group } => self.delete(group, recorder).await?,
            }
            if let Some(failure) = recorder.report.failures.last()
                && failure.error.contains("HTTP 401")
            {
                return Err(SinkError::Target {
                    sink: self.name.clone(),
                    message: format!(
                        "authentication rejected ({}); check the token",
                        failure.error
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_json_quoted() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
