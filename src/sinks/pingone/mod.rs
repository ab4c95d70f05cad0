//! PingOne targets: shared connection settings (region → hosts, OAuth2 worker credentials) and the two sinks.
//!
//! * [`provisioning_sync`]: `type = "pingone_provisioning_sync"`, the external-group import
//!   (`POST …/propagation/provisioningSyncs/{id}`) with start/next tokens.
//! * [`groups`]: `type = "pingone_groups"`, the Platform Groups API with memberships.
//!
//! Both authenticate with OAuth2 client credentials against `{auth_url}/{environment_id}/as/token`
//! through the shared [`HttpClient`](super::http::HttpClient) (token cached, refreshed once on 401,
//! retries on 429/5xx honouring `Retry-After`, per-sink rate limit). What is known and UNCONFIRMED
//! about these APIs is in `docs/pingone.md`.

pub(crate) mod groups;
pub(crate) mod provisioning_sync;

use std::path::Path;

use serde::Deserialize;

use super::SinkError;
use super::http::{self, Auth, HttpClient, HttpSettings, OAuthClient, TokenAuthMethod, check_url};
use super::target;
use crate::secret::{Secret, SecretError, resolve_secret};

/// A PingOne region, by the top-level domain of its hosts (docs/pingone.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Region {
    /// North America (excluding Canada).
    #[default]
    #[serde(rename = "com")]
    Com,
    #[serde(rename = "ca")]
    Ca,
    #[serde(rename = "eu")]
    Eu,
    #[serde(rename = "com.au")]
    ComAu,
    #[serde(rename = "sg")]
    Sg,
    #[serde(rename = "asia")]
    Asia,
}

impl Region {
    pub fn tld(self) -> &'static str {
        match self {
            Region::Com => "com",
            Region::Ca => "ca",
            Region::Eu => "eu",
            Region::ComAu => "com.au",
            Region::Sg => "sg",
            Region::Asia => "asia",
        }
    }

    /// The management API base (`https://api.pingone.{tld}/v1`).
    pub fn api_url(self) -> String {
        format!("https://api.pingone.{}/v1", self.tld())
    }

    /// The auth host (`https://auth.pingone.{tld}`).
    pub fn auth_url(self) -> String {
        format!("https://auth.pingone.{}", self.tld())
    }
}

/// The connection settings both PingOne sinks share (borrowed from each sink's config, whose
/// keys are flat in the `[[sinks]]` table).
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub region: Option<Region>,
    pub api_url: Option<&'a str>,
    pub auth_url: Option<&'a str>,
    pub environment_id: &'a str,
    pub client_id: &'a str,
    pub client_secret: Option<&'a str>,
    pub client_secret_file: Option<&'a Path>,
    pub token_auth: TokenAuthMethod,
}

impl Connection<'_> {
    /// Checks the shared keys; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match (self.api_url, self.auth_url) {
            (Some(_), None) => {
                return Err((
                    "api_url",
                    "api_url needs auth_url too (or use region)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    "auth_url",
                    "auth_url needs api_url too (or use region)".into(),
                ));
            }
            (Some(api), Some(auth)) => {
                if self.region.is_some() {
                    return Err((
                        "region",
                        "give region or api_url + auth_url, not both".into(),
                    ));
                }
                check_url("api_url", api)?;
                check_url("auth_url", auth)?;
            }
            (None, None) => {}
        }
        if self.environment_id.trim().is_empty() {
            return Err(("environment_id", "must not be empty".into()));
        }
        if self.environment_id.contains(['/', '?', '#']) {
            return Err((
                "environment_id",
                "must be the environment's id, not a URL".into(),
            ));
        }
        if self.client_id.trim().is_empty() {
            return Err(("client_id", "must not be empty".into()));
        }
        if self.client_secret.is_none() && self.client_secret_file.is_none() {
            return Err((
                "client_secret",
                "a client secret is required (client_secret or client_secret_file)".into(),
            ));
        }
        Ok(())
    }

    pub fn client_secret(&self) -> Result<Secret, SecretError> {
        resolve_secret("client_secret", self.client_secret, self.client_secret_file)
    }

    /// The management API base URL, without a trailing slash (`…/v1`).
    pub fn api_url(&self) -> String {
        self.api_url
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| self.region.unwrap_or_default().api_url())
    }

    /// The token endpoint: `{auth_url}/{environment_id}/as/token`.
    pub fn token_url(&self) -> String {
        let auth = self
            .auth_url
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| self.region.unwrap_or_default().auth_url());
        format!("{auth}/{}/as/token", self.environment_id)
    }

    /// `{api_url}/environments/{environment_id}`: the base of every request the sinks make.
    pub fn environment_url(&self) -> String {
        format!("{}/environments/{}", self.api_url(), self.environment_id)
    }

    /// An HTTP client for this environment, authenticated with OAuth2 client credentials.
    pub fn http_client(&self, sink: &str, settings: HttpSettings) -> Result<HttpClient, SinkError> {
        let secret = self.client_secret().map_err(target::secret_error(sink))?;
        let oauth = OAuthClient::new(
            self.token_url(),
            self.client_id.to_string(),
            secret,
            self.token_auth,
            None,
        );
        HttpClient::new(
            sink,
            &self.environment_url(),
            Auth::ClientCredentials(oauth),
            settings,
            error_body,
        )
        .map_err(target::http_error(sink))
    }
}

/// Declares the connection keys shared by both PingOne sink configs (serde cannot combine
/// `flatten` with `deny_unknown_fields`, so each config lists them itself).
macro_rules! connection_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            /// `com` (default), `ca`, `eu`, `com.au`, `sg` or `asia`.
            pub region: Option<$crate::sinks::pingone::Region>,
            /// Explicit management API base (e.g. `https://api.pingone.eu/v1`); needs `auth_url`.
            pub api_url: Option<String>,
            /// Explicit auth host (e.g. `https://auth.pingone.eu`); needs `api_url`.
            pub auth_url: Option<String>,
            pub environment_id: String,
            pub client_id: String,
            pub client_secret: Option<$crate::secret::Secret>,
            pub client_secret_file: Option<std::path::PathBuf>,
            /// How the client authenticates to the token endpoint: `basic` (default) or `post`.
            #[serde(default)]
            pub token_auth: $crate::sinks::http::TokenAuthMethod,
            $($body)*
        }

        impl $name {
            pub fn connection(&self) -> $crate::sinks::pingone::Connection<'_> {
                $crate::sinks::pingone::Connection {
                    region: self.region,
                    api_url: self.api_url.as_deref(),
                    auth_url: self.auth_url.as_deref(),
                    environment_id: &self.environment_id,
                    client_id: &self.client_id,
                    client_secret: self.client_secret.as_ref().map($crate::secret::Secret::expose),
                    client_secret_file: self.client_secret_file.as_deref(),
                    token_auth: self.token_auth,
                }
            }

            pub fn client_secret(&self) -> Result<$crate::secret::Secret, $crate::secret::SecretError> {
                self.connection().client_secret()
            }
        }
    };
}
pub(crate) use connection_fields;

/// A PingOne error body: `code=… message`, then up to five `[code target: message]` details.
fn error_body(body: &[u8]) -> Option<String> {
    http::json_error(body, &["code"], &["message"], |value| {
        let details = value.get("details").and_then(|d| d.as_array());
        fn field<'v>(d: &'v serde_json::Value, key: &str) -> &'v str {
            d.get(key).and_then(|v| v.as_str()).unwrap_or("")
        }
        details
            .into_iter()
            .flatten()
            .take(5)
            .map(|d| {
                format!(
                    "[{} {}: {}]",
                    field(d, "code"),
                    field(d, "target"),
                    field(d, "message")
                )
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(region: Option<Region>) -> Connection<'static> {
        Connection {
            region,
            api_url: None,
            auth_url: None,
            environment_id: "env-1",
            client_id: "client",
            client_secret: Some("s"),
            client_secret_file: None,
            token_auth: TokenAuthMethod::Basic,
        }
    }

    #[test]
    fn error_bodies_read_code_message_and_details() {
        let ping = br#"{"id":"x","code":"INVALID_DATA","message":"bad","details":[{"code":"UNIQUENESS_VIOLATION","target":"name","message":"taken"}]}"#;
        assert_eq!(
            error_body(ping).as_deref(),
            Some("code=INVALID_DATA bad [UNIQUENESS_VIOLATION name: taken]")
        );
        assert_eq!(error_body(br#"{"id":"x"}"#), None);
    }

    #[test]
    fn regions_map_to_api_and_auth_hosts() {
        let cases = [
            (None, "com"),
            (Some(Region::Com), "com"),
            (Some(Region::Ca), "ca"),
            (Some(Region::Eu), "eu"),
            (Some(Region::ComAu), "com.au"),
            (Some(Region::Sg), "sg"),
            (Some(Region::Asia), "asia"),
        ];
        for (region, tld) in cases {
            let c = connection(region);
            assert_eq!(c.api_url(), format!("https://api.pingone.{tld}/v1"));
            assert_eq!(
                c.token_url(),
                format!("https://auth.pingone.{tld}/env-1/as/token")
            );
            assert_eq!(
                c.environment_url(),
                format!("https://api.pingone.{tld}/v1/environments/env-1")
            );
        }
    }

    #[test]
    fn region_names_deserialize_as_documented() {
        #[derive(Deserialize)]
        struct T {
            region: Region,
        }
        for (text, region) in [
            ("com", Region::Com),
            ("ca", Region::Ca),
            ("eu", Region::Eu),
            ("com.au", Region::ComAu),
            ("sg", Region::Sg),
            ("asia", Region::Asia),
        ] {
            let t: T = toml::from_str(&format!("region = {text:?}")).unwrap();
            assert_eq!(t.region, region);
        }
        assert!(toml::from_str::<T>("region = \"us\"").is_err());
    }

    #[test]
    fn explicit_urls_override_the_region_and_must_come_in_pairs() {
        let mut c = connection(None);
        c.api_url = Some("http://127.0.0.1:9/v1/");
        c.auth_url = Some("http://127.0.0.1:9");
        assert!(c.validate().is_ok());
        assert_eq!(c.api_url(), "http://127.0.0.1:9/v1");
        assert_eq!(c.token_url(), "http://127.0.0.1:9/env-1/as/token");
        c.region = Some(Region::Eu);
        assert_eq!(c.validate().unwrap_err().0, "region");
        c.region = None;
        c.auth_url = None;
        assert_eq!(c.validate().unwrap_err().0, "api_url");
        let mut c = connection(None);
        c.client_secret = None;
        assert_eq!(c.validate().unwrap_err().0, "client_secret");
        let mut c = connection(None);
        c.environment_id = "";
        assert_eq!(c.validate().unwrap_err().0, "environment_id");
    }
}

#[cfg(test)]
mod config_tests {
    use std::path::Path;

    use crate::config::{SinkOptions, TEST_CONFIG_SCOPES as BASE};
    type Config = crate::config::Config<crate::sinks::SinkSettings>;

    #[test]
    fn both_sinks_parse_in_a_config_and_unknown_keys_name_the_line() {
        let text = format!(
            r#"{BASE}
[[sinks]]
name = "ping-import"
type = "pingone_provisioning_sync"
region = "eu"
environment_id = "env"
client_id = "c"
client_secret = "env:PINGONE_SECRET"
provisioning_sync_id = "sync"

[[sinks]]
name = "ping-groups"
type = "pingone_groups"
api_url = "http://127.0.0.1:1/v1"
auth_url = "http://127.0.0.1:1"
environment_id = "env"
client_id = "c"
client_secret = "s"
user_match = "email"
"#
        );
        let config = Config::parse(&text, Path::new("config.toml")).unwrap();
        assert_eq!(config.sinks.len(), 2);
        assert_eq!(
            config.sinks[0].settings.type_name(),
            "pingone_provisioning_sync"
        );
        assert_eq!(config.sinks[1].settings.type_name(), "pingone_groups");
        assert_eq!(
            crate::sinks::http_settings(&config.sinks[0]).rate_limit_per_second,
            50
        );

        let bad = format!("{text}bogus_key = 1\n");
        let error = Config::parse(&bad, Path::new("config.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("config.toml:"), "{error}");
        assert!(error.contains("bogus_key"), "{error}");
    }
}
