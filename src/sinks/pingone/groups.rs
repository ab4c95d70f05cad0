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

use std::collections::HashMap;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{connection_fields, quote};
use crate::ledger::Ledger;
use crate::plan::{GroupSpec, MemberRef, OpKind, Operation, Plan};
use crate::sinks::http::{Body, HttpClient, HttpError, HttpSettings, Response};
use crate::sinks::{Recorder, Sink, SinkError};

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
    }
}

fn default_page_size() -> u32 {
    100
}

impl PingOneGroupsConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
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

/// Members recorded together, to keep ledger writes few on large groups.
const RECORD_CHUNK: usize = 100;

pub struct PingOneGroupsSink {
    name: String,
    config: PingOneGroupsConfig,
    http: HttpClient,
    /// Lookup key → PingOne user id (positive answers only, so new users are found next run).
    users: Mutex<HashMap<String, String>>,
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

    /// Every item of a filtered list, following `_links.next` (absolute hrefs).
    async fn list_all(&self, path: &str, filter: &str, key: &str) -> Result<Vec<Value>, HttpError> {
        let limit = self.config.page_size.to_string();
        let mut items = Vec::new();
        let mut page: Value = self
            .http
            .json(
                Method::GET,
                path,
                &[("filter", filter), ("limit", limit.as_str())],
                None,
            )
            .await?;
        let mut seen = std::collections::HashSet::new();
        loop {
            items.extend(embedded(&page, key));
            let Some(next) = page
                .pointer("/_links/next/href")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                break;
            };
            if !seen.insert(next.clone()) || seen.len() > 10_000 {
                tracing::warn!(sink = %self.name, path, "the target's paging links loop; stopped following them");
                break;
            }
            page = self.http.json(Method::GET, &next, &[], None).await?;
        }
        Ok(items)
    }

    /// Whether a listed group is one this sink may adopt: not external, same population.
    fn adoptable(&self, group: &Value) -> bool {
        let population = group.pointer("/population/id").and_then(Value::as_str);
        group.get("sourceType").is_none_or(Value::is_null)
            && population == self.config.population_id.as_deref()
    }

    /// Finds a group to adopt: by `externalId` (our source id), then by exact name.
    async fn find_existing(&self, group: &GroupSpec) -> Result<Option<String>, HttpError> {
        let id_of = |g: &Value| g.get("id").and_then(Value::as_str).map(str::to_string);
        let by_external_id = self
            .list_all(
                "/groups",
                &format!("externalId eq {}", quote(&group.source_id)),
                "groups",
            )
            .await?;
        if let Some(found) = by_external_id
            .iter()
            .filter(|g| self.adoptable(g))
            .find_map(id_of)
        {
            return Ok(Some(found));
        }
        let by_name = self
            .list_all(
                "/groups",
                &format!("name eq {}", quote(&group.name)),
                "groups",
            )
            .await?;
        let same_name = |g: &&Value| {
            g.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.to_lowercase() == group.name.to_lowercase())
        };
        Ok(by_name
            .iter()
            .filter(|g| self.adoptable(g))
            .filter(same_name)
            .find_map(id_of))
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

    async fn adopt(
        &self,
        group: &GroupSpec,
        why: &str,
        otherwise: Option<Response>,
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        match self.find_existing(group).await {
            Ok(Some(id)) => {
                tracing::info!(sink = %self.name, group = %group.name, id, "{why}; adopted the existing group");
                recorder.created(group, &id)
            }
            Ok(None) => {
                match otherwise {
                    Some(response) => {
                        recorder.failed(OpKind::Create, group, response.into_error(), 1)
                    }
                    None => return Ok(()),
                }
                Ok(())
            }
            Err(e) => {
                recorder.failed(OpKind::Create, group, e, 1);
                Ok(())
            }
        }
    }

    async fn create(
        &self,
        group: &GroupSpec,
        resume: bool,
        recorder: &mut Recorder<'_>,
    ) -> Result<bool, SinkError> {
        if resume {
            match self.find_existing(group).await {
                Ok(Some(id)) => {
                    tracing::info!(sink = %self.name, group = %group.name, id, "adopted the group an interrupted run created");
                    recorder.created(group, &id)?;
                    return Ok(true);
                }
                Ok(None) => {}
                Err(e) => {
                    recorder.failed(OpKind::Create, group, e, 1);
                    return Ok(false);
                }
            }
        }
        recorder.intent(group)?;
        let body = self.group_body(group);
        let response = match self
            .http
            .send(Method::POST, "/groups", &[], Some(&body))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                recorder.failed(OpKind::Create, group, e, 1);
                return Ok(false);
            }
        };
        if is_uniqueness_violation(response.status.as_u16(), &response.body) {
            self.adopt(group, "group name already in use", Some(response), recorder)
                .await?;
            return Ok(recorder.target_id(group).is_some());
        }
        match response.success().and_then(|r| r.json::<Value>()) {
            Ok(created) => match created.get("id").and_then(Value::as_str) {
                Some(id) => {
                    recorder.created(group, id)?;
                    Ok(true)
                }
                None => {
                    recorder.failed(OpKind::Create, group, "the create answer has no \"id\"", 1);
                    Ok(false)
                }
            },
            Err(e) => {
                recorder.failed(OpKind::Create, group, e, 1);
                Ok(false)
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
        let body = self.group_body(group);
        let path = format!("/groups/{}", urlencoding::encode(&id));
        match self.http.send(Method::PUT, &path, &[], Some(&body)).await {
            Ok(r) if r.is_success() => recorder.updated(group, &id),
            Ok(r) if r.status.as_u16() == 404 => {
                recorder.failed(
                    OpKind::Update,
                    group,
                    "the group no longer exists in PingOne; it will be recreated next run",
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
        let path = format!("/groups/{}", urlencoding::encode(&id));
        match self.http.send(Method::DELETE, &path, &[], None).await {
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

    /// The PingOne user id of an LDAP user, by the configured match attribute (cached).
    async fn user_id(&self, member: &MemberRef) -> Result<Option<String>, HttpError> {
        let (attribute, value) = match self.config.user_match {
            UserMatch::Username => ("username", member.username.clone()),
            UserMatch::ExternalId => ("externalId", member.source_id.clone()),
            UserMatch::Email => match &member.email {
                Some(email) => ("email", email.clone()),
                None => return Ok(None),
            },
        };
        let key = format!("{attribute}\u{0}{value}");
        if let Some(id) = self.users.lock().await.get(&key) {
            return Ok(Some(id.clone()));
        }
        let found = self
            .list_all(
                "/users",
                &format!("{attribute} eq {}", quote(&value)),
                "users",
            )
            .await?;
        let ids: Vec<&str> = found
            .iter()
            .filter_map(|u| u.get("id").and_then(Value::as_str))
            .collect();
        match ids.as_slice() {
            [id] => {
                self.users.lock().await.insert(key, id.to_string());
                Ok(Some(id.to_string()))
            }
            [] => Ok(None),
            _ => {
                tracing::warn!(sink = %self.name, member = %member.username, "several PingOne users match; member skipped");
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
        let Some(gid) = recorder.target_id(group) else {
            recorder.failed(
                OpKind::MemberAdd,
                group,
                "the group was not created",
                members.len() as u64,
            );
            return Ok(());
        };
        let body = Body::json(&json!({"id": gid}));
        let mut done = Vec::new();
        for member in members {
            let uid = match self.user_id(member).await {
                Ok(Some(uid)) => uid,
                Ok(None) => {
                    recorder.unmapped(group, member);
                    continue;
                }
                Err(e) => {
                    recorder.failed(
                        OpKind::MemberAdd,
                        group,
                        format!("{}: {e}", member.username),
                        1,
                    );
                    continue;
                }
            };
            let path = format!("/users/{}/memberOfGroups", urlencoding::encode(&uid));
            match self.http.send(Method::POST, &path, &[], Some(&body)).await {
                Ok(r) if r.is_success() || is_uniqueness_violation(r.status.as_u16(), &r.body) => {
                    done.push(MemberRef {
                        target_id: Some(uid),
                        ..member.clone()
                    });
                    if done.len() >= RECORD_CHUNK {
                        recorder.members_added(group, &std::mem::take(&mut done))?;
                    }
                }
                Ok(r) => recorder.failed(
                    OpKind::MemberAdd,
                    group,
                    format!("{}: {}", member.username, r.into_error()),
                    1,
                ),
                Err(e) => recorder.failed(
                    OpKind::MemberAdd,
                    group,
                    format!("{}: {e}", member.username),
                    1,
                ),
            }
        }
        recorder.members_added(group, &done)
    }

    async fn remove_members(
        &self,
        group: &GroupSpec,
        members: &[MemberRef],
        recorder: &mut Recorder<'_>,
    ) -> Result<(), SinkError> {
        let Some(gid) = recorder.target_id(group) else {
            recorder.failed(
                OpKind::MemberRemove,
                group,
                "no target id recorded",
                members.len() as u64,
            );
            return Ok(());
        };
        let mut done = Vec::new();
        for member in members {
            let uid = match &member.target_id {
                Some(uid) => Some(uid.clone()),
                None => match self.user_id(member).await {
                    Ok(found) => found,
                    Err(e) => {
                        recorder.failed(
                            OpKind::MemberRemove,
                            group,
                            format!("{}: {e}", member.username),
                            1,
                        );
                        continue;
                    }
                },
            };
            // A user PingOne does not have cannot be a member: nothing to remove.
            let removed = match uid {
                None => true,
                Some(uid) => {
                    let path = format!(
                        "/users/{}/memberOfGroups/{}",
                        urlencoding::encode(&uid),
                        urlencoding::encode(&gid)
                    );
                    match self.http.send(Method::DELETE, &path, &[], None).await {
                        Ok(r) if r.is_success() || r.status.as_u16() == 404 => true,
                        Ok(r) => {
                            recorder.failed(
                                OpKind::MemberRemove,
                                group,
                                format!("{}: {}", member.username, r.into_error()),
                                1,
                            );
                            false
                        }
                        Err(e) => {
                            recorder.failed(
                                OpKind::MemberRemove,
                                group,
                                format!("{}: {e}", member.username),
                                1,
                            );
                            false
                        }
                    }
                }
            };
            if removed {
                done.push(member.clone());
                if done.len() >= RECORD_CHUNK {
                    recorder.members_removed(group, &std::mem::take(&mut done))?;
                }
            }
        }
        recorder.members_removed(group, &done)
    }
}

#[async_trait]
impl Sink for PingOneGroupsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "pingone_groups"
    }

    async fn check(&self) -> Result<(), SinkError> {
        self.http
            .json::<Value>(Method::GET, "/groups", &[("limit", "1")], None)
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
                    self.create(group, *resume, recorder).await?;
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
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
