//! The real `scim2-server` ([`ScimServer`]) and where to find it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use super::http::{HttpResponse, http_request};
use super::process::{
    OutputExt, await_server, file_tail, free_port, log_file, on_a_free_address, port_open, run_ok,
    stop_child, temp_dir, venv_program, write_file,
};

const SCIM_GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const SCIM_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

/// The real `scim2-server` (PyPI, in-memory SCIM 2.0 server) on a free 127.0.0.1 port, with a
/// bearer token. Dropping it stops the server.
pub struct ScimServer {
    child: Option<Child>,
    port: u16,
    token: String,
    dir: TempDir,
}

impl ScimServer {
    /// `unique_display_name`: serve a Group schema whose `displayName` has
    /// `uniqueness: "server"`, so that a duplicate group name answers 409 (like StrongDM); by
    /// default scim2-server accepts duplicate group names.
    pub fn start(unique_display_name: bool) -> ScimServer {
        ScimServer::start_with(unique_display_name, true)
    }

    /// Like [`ScimServer::start`]; with `patch_supported = false` its `/ServiceProviderConfig`
    /// announces no PATCH support, so clients must fall back to PUT.
    pub fn start_with(unique_display_name: bool, patch_supported: bool) -> ScimServer {
        let bin = scim2_server_bin();
        let dir = temp_dir("ldapsync-scim-");
        let schema = unique_display_name.then(|| {
            let mut schemas = default_scim_schemas(&bin);
            make_group_display_name_unique(&mut schemas);
            write_file(
                dir.path(),
                "schemas.json",
                serde_json::to_string_pretty(&schemas).unwrap(),
            )
        });
        let provider_config = (!patch_supported).then(|| {
            let mut config = default_scim_resource(&bin, "default-service-provider-config.json");
            config["patch"]["supported"] = Value::Bool(false);
            write_file(
                dir.path(),
                "service-provider-config.json",
                serde_json::to_string_pretty(&config).unwrap(),
            )
        });
        let token = format!("test-token-{:016x}", rand::random::<u64>());
        let mut server = ScimServer {
            child: None,
            port: 0,
            token,
            dir,
        };
        on_a_free_address("scim2-server", |_| {
            server.port = free_port();
            let (out, err) = log_file(&server.log_path());
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--hostname",
                "127.0.0.1",
                "--port",
                &server.port.to_string(),
            ])
            .args(["--bearer-token", &server.token]);
            if let Some(s) = &schema {
                cmd.arg("--schema").arg(s);
            }
            if let Some(c) = &provider_config {
                cmd.arg("--service-provider-config").arg(c);
            }
            let child = cmd
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let child = await_server(child, "scim2-server", &server.log_path(), || {
                if !port_open(server.port) {
                    return Err("port closed".into());
                }
                let r = server.request("GET", "/ServiceProviderConfig", None);
                assert_eq!(
                    r.status,
                    200,
                    "scim2-server /ServiceProviderConfig: {}\nlog:\n{}",
                    r.body,
                    server.log_tail(20)
                );
                Ok(())
            })?;
            server.child = Some(child);
            Ok(())
        });
        server
    }

    /// `http://127.0.0.1:PORT/v2` (scim2-server serves the same routes with and without `/v2`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The bearer token the server accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A `[[sinks]]` table named `scim` for this server reached at `url` (the server itself or
    /// a proxy in front of it), with its token and the lines `extra`.
    pub fn sink_toml(&self, url: &str, extra: &str) -> String {
        format!(
            "[[sinks]]\nname = \"scim\"\ntype = \"scim\"\nbase_url = \"{url}\"\ntoken = \"{token}\"\n{extra}\n",
            token = self.token()
        )
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("scim2-server.log")
    }
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
    }

    /// A request to `base_url() + path` with the right token (JSON body as application/scim+json).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        let token = self.token.clone();
        self.request_with_token(method, path, Some(&token), body)
    }

    /// A request with any token (`None`: no Authorization header).
    pub fn request_with_token(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("accept", "application/scim+json"),
            ("content-type", "application/scim+json"),
        ];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        http_request(
            method,
            &format!("{}{path}", self.base_url()),
            &headers,
            body,
        )
    }

    /// GET `path`, expecting 200; the JSON body.
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.request("GET", path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// POST `body` to `path`: (status, JSON body or Null).
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.request("POST", path, Some(body));
        (r.status, r.json_or_null())
    }

    /// Every resource of `/Groups` or `/Users` (`endpoint`), paging through with startIndex/count.
    pub fn list_all(&self, endpoint: &str) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let page = self.get_json(&format!(
                "{endpoint}?startIndex={}&count=100",
                all.len() + 1
            ));
            let total = page["totalResults"].as_u64().expect("totalResults") as usize;
            let resources = page["Resources"].as_array().cloned().unwrap_or_default();
            if resources.is_empty() {
                break;
            }
            all.extend(resources);
            if all.len() >= total {
                break;
            }
        }
        all
    }

    /// All groups (with their members), paging through.
    pub fn groups(&self) -> Vec<Value> {
        self.list_all("/Groups")
    }

    /// All users, paging through.
    pub fn users(&self) -> Vec<Value> {
        self.list_all("/Users")
    }

    /// userName → user id, for every user.
    pub fn user_ids(&self) -> BTreeMap<String, String> {
        self.users()
            .iter()
            .map(|u| (string(&u["userName"]), string(&u["id"])))
            .collect()
    }

    /// Group displayName → the member userNames of each group of that name (several when the
    /// server allows duplicate names). A member with no user shows as "".
    pub fn groups_by_name(&self) -> BTreeMap<String, Vec<BTreeSet<String>>> {
        let names: BTreeMap<String, String> = self
            .user_ids()
            .into_iter()
            .map(|(name, id)| (id, name))
            .collect();
        let mut out: BTreeMap<String, Vec<BTreeSet<String>>> = BTreeMap::new();
        for group in self.groups() {
            let members = group["members"].as_array().cloned().unwrap_or_default();
            let members = members
                .iter()
                .map(|m| names.get(&string(&m["value"])).cloned().unwrap_or_default())
                .collect();
            out.entry(string(&group["displayName"]))
                .or_default()
                .push(members);
        }
        out
    }

    /// Creates an active user with this userName and primary work email; returns its id.
    pub fn create_user(&self, user_name: &str, email: &str) -> String {
        let (status, body) = self.post_json(
            "/Users",
            &json!({
                "schemas": [SCIM_USER_SCHEMA],
                "userName": user_name,
                "active": true,
                "emails": [{"value": email, "type": "work", "primary": true}],
            }),
        );
        assert_eq!(status, 201, "create user {user_name}: {body}");
        body["id"].as_str().expect("user id").to_owned()
    }

    /// Creates a group with these member (user) ids; returns its id.
    pub fn create_group(&self, display_name: &str, member_ids: &[&str]) -> String {
        let members: Vec<Value> = member_ids.iter().map(|id| json!({"value": id})).collect();
        let (status, body) = self.post_json(
            "/Groups",
            &json!({
                "schemas": [SCIM_GROUP_SCHEMA],
                "displayName": display_name,
                "members": members,
            }),
        );
        assert_eq!(status, 201, "create group {display_name}: {body}");
        body["id"].as_str().expect("group id").to_owned()
    }
}

fn string(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_owned()
}

impl Drop for ScimServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
    }
}

/// `$LDAPSYNC_SCIM2_SERVER`, else `$REPO/.venv/bin/scim2-server`.
pub fn scim2_server_bin() -> PathBuf {
    venv_program("LDAPSYNC_SCIM2_SERVER", "scim2-server")
}

/// The Python interpreter of a console script: its `#!` line, else `python` beside it.
fn script_python(script: &Path) -> PathBuf {
    let first = fs::read_to_string(script)
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_default();
    if let Some(interp) = first.strip_prefix("#!") {
        let interp = PathBuf::from(interp.trim());
        if interp.is_absolute() && interp.exists() {
            return interp;
        }
    }
    script.with_file_name("python")
}

/// The package's own default schemas (`scim2_server/resources/default-schemas.json`).
fn default_scim_schemas(bin: &Path) -> Vec<Value> {
    serde_json::from_value(default_scim_resource(bin, "default-schemas.json"))
        .expect("default-schemas.json is a list")
}

/// One of the JSON files scim2-server ships in `scim2_server/resources/`.
fn default_scim_resource(bin: &Path, name: &str) -> Value {
    let python = script_python(bin);
    let out = run_ok(
        &format!("{} locating scim2_server", python.display()),
        Command::new(&python).args([
            "-c",
            &format!(
                "import importlib.util, os; \
                 s = importlib.util.find_spec('scim2_server'); \
                 print(os.path.join(s.submodule_search_locations[0], 'resources', '{name}'))"
            ),
        ]),
        None,
        Duration::from_secs(60),
    );
    let path = PathBuf::from(out.stdout_str().trim());
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn make_group_display_name_unique(schemas: &mut [Value]) {
    let group = schemas
        .iter_mut()
        .find(|s| s["id"] == SCIM_GROUP_SCHEMA)
        .expect("Group schema in scim2-server's default schemas");
    let attr = group["attributes"]
        .as_array_mut()
        .expect("Group schema attributes")
        .iter_mut()
        .find(|a| a["name"] == "displayName")
        .expect("Group displayName attribute");
    attr["uniqueness"] = json!("server");
}
