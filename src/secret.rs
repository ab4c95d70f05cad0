//! Secrets from the configuration: a [`Secret`] never prints its value, and is given inline, as `env:NAME`, or as a `*_file`.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// A secret value. Its `Debug` and `Display` never show the value, so a configuration printed
/// with `{:?}` does not leak an inline secret either.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for the one place that sends it (a bind, an auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a secret could not be resolved; names the key, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: environment variable {var} is not set")]
    EnvMissing { key: String, var: String },
    #[error("{key}: cannot read secret file {path}: {source}")]
    File {
        key: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: secret file {path} is empty")]
    Empty { key: String, path: String },
    #[error("{key}: give the secret inline or as a file, not both")]
    Both { key: String },
    #[error("{key}: a secret is required")]
    Missing { key: String },
}

/// `[key]` when the secret is written inline in the file (not `env:NAME`), else nothing: what
/// the permission warning lists.
pub fn inline(key: &'static str, secret: Option<&Secret>) -> Vec<&'static str> {
    secret
        .filter(|secret| !secret.expose().starts_with("env:"))
        .map(|_| key)
        .into_iter()
        .collect()
}

/// Resolves a secret given inline (`value`, possibly `env:NAME`) or as `*_file`.
pub fn resolve_optional_secret(
    key: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret>, SecretError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(SecretError::Both { key: key.into() }),
        (Some(value), None) => {
            if let Some(var) = value.strip_prefix("env:") {
                std::env::var(var)
                    .map(|v| Some(Secret(v)))
                    .map_err(|_| SecretError::EnvMissing {
                        key: key.into(),
                        var: var.into(),
                    })
            } else {
                Ok(Some(Secret(value.to_string())))
            }
        }
        (None, Some(path)) => {
            let contents = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                key: key.into(),
                path: path.display().to_string(),
                source,
            })?;
            let trimmed = contents.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Err(SecretError::Empty {
                    key: key.into(),
                    path: path.display().to_string(),
                });
            }
            Ok(Some(Secret(trimmed.to_string())))
        }
        (None, None) => Ok(None),
    }
}

/// Like [`resolve_optional_secret`] but the secret must be present.
pub fn resolve_secret(
    key: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Secret, SecretError> {
    resolve_optional_secret(key, inline, file)?
        .ok_or_else(|| SecretError::Missing { key: key.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_from_env_and_file_and_never_display() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let s = resolve_secret("k", None, Some(&file)).unwrap();
        assert_eq!(s.expose(), "from-file");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        let err = resolve_secret("k", Some("env:LDAPSYNC_SURELY_UNSET_VAR"), None).unwrap_err();
        assert!(err.to_string().contains("LDAPSYNC_SURELY_UNSET_VAR"));
        assert!(resolve_secret("k", None, Some(&dir.path().join("nope"))).is_err());
    }
}
