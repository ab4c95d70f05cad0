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

/// One secret of a configuration: its key, and where its value is (inline or a `*_file`).
#[derive(Debug, Clone, Copy)]
pub struct SecretField<'a> {
    pub key: &'static str,
    pub inline: Option<&'a Secret>,
    pub file: Option<&'a Path>,
}

impl<'a> SecretField<'a> {
    pub fn new(key: &'static str, inline: Option<&'a Secret>, file: Option<&'a Path>) -> Self {
        SecretField { key, inline, file }
    }

    /// The value (the file read, `env:NAME` looked up); the secret must be given.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        resolve_secret(self.key, self.inline.map(Secret::expose), self.file)
    }

    /// Written in the configuration file itself (not `env:NAME`, not a file).
    pub fn is_inline(&self) -> bool {
        self.inline
            .is_some_and(|secret| !secret.expose().starts_with("env:"))
    }
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

/// Scrubs text that came from outside (a target's error body, headers, URLs) of known secret
/// values and of anything shaped like a credential (`Bearer …`, `Basic …`, `Authorization: …`,
/// `user:pass@` in a URL), so that an echoing target cannot put a secret in a log line, a
/// report, the state file or `/readyz`. Secrets learnt later (OAuth2 access tokens) are added
/// with [`Redactor::learn`].
#[derive(Debug, Default)]
pub(crate) struct Redactor {
    secrets: std::sync::RwLock<Vec<String>>,
}

/// What a scrubbed secret is replaced with.
pub(crate) const REDACTED: &str = "***";

/// Secrets shorter than this are not searched for (a one-letter secret would blank every text);
/// the credential patterns still apply.
const MIN_SECRET_LEN: usize = 4;

impl Redactor {
    pub(crate) fn new(secrets: &[Secret]) -> Redactor {
        let redactor = Redactor::default();
        for secret in secrets {
            redactor.learn(secret);
        }
        redactor
    }

    /// Adds a secret to scrub from now on (also its percent-encoded form).
    pub(crate) fn learn(&self, secret: &Secret) {
        let value = secret.expose();
        if value.len() < MIN_SECRET_LEN {
            return;
        }
        let mut known = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        let encoded = urlencoding::encode(value).into_owned();
        for form in [value.to_string(), encoded] {
            if !known.contains(&form) {
                known.push(form);
            }
        }
        // Longest first, so a secret containing another is replaced whole.
        known.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` without any known secret and without credential-shaped values.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        scrub_credentials(&out)
    }
}

/// Blanks credential-shaped values: the value after `Authorization:` (or `"authorization":`),
/// the token after `Bearer`/`Basic`, and the user info of a URL (`https://user:pass@host`).
pub(crate) fn scrub_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let rest = &lower[i..];
        let at_word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let matched = if rest.starts_with("://") {
            userinfo(text, i + 3)
        } else if !at_word_start {
            None
        } else if rest.starts_with("authorization") {
            value_after_separator(text, i + "authorization".len())
        } else if rest.starts_with("bearer") || rest.starts_with("basic") {
            let word = if rest.starts_with("bearer") { 6 } else { 5 };
            token_after_space(text, i + word)
        } else {
            None
        };
        match matched {
            Some((value_start, value_end)) => {
                out.push_str(&text[i..value_start]);
                out.push_str(REDACTED);
                i = value_end;
            }
            None => {
                let c = text[i..].chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// After `Authorization`: optional quote, `:` or `=`, spaces, optional quote, then the value up
/// to a quote, comma, brace or line end. Returns the value's byte range.
fn value_after_separator(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i < bytes.len() && matches!(bytes[i], b'"' | b'\'' | b' ' | b'\t' | b'\\') {
        i += 1;
    }
    if i >= bytes.len() || !matches!(bytes[i], b':' | b'=') {
        return None;
    }
    i += 1;
    while i < bytes.len() && matches!(bytes[i], b'"' | b'\'' | b' ' | b'\t' | b'\\') {
        i += 1;
    }
    let start = i;
    while i < bytes.len() && !matches!(bytes[i], b'"' | b'\'' | b',' | b'}' | b'\r' | b'\n' | b'\\')
    {
        i += 1;
    }
    (i > start).then_some((start, i))
}

/// After `Bearer`/`Basic`: at least one space, then a token of token68 characters.
fn token_after_space(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
        i += 1;
    }
    if i == from {
        return None;
    }
    let start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"-._~+/=:%".contains(&bytes[i]))
    {
        i += 1;
    }
    (i > start).then_some((start, i))
}

/// After `://`: `user[:password]@` before the host; returns the user info's range.
fn userinfo(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i < bytes.len() && !matches!(bytes[i], b'/' | b'?' | b'#' | b'@' | b' ' | b'"' | b'\'') {
        i += 1;
    }
    (i < bytes.len() && bytes[i] == b'@' && i > from).then_some((from, i))
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

    #[test]
    fn redactor_scrubs_secrets_and_credential_shapes() {
        let r = Redactor::new(&[Secret::new("s3cr3t-token"), Secret::new("ab")]);
        r.learn(&Secret::new("oauth/tok+en"));
        let echoed = r#"{"detail":"bad token s3cr3t-token","headers":{"Authorization":"Bearer xyz.abc"},"t":"oauth%2Ftok%2Ben"}"#;
        let scrubbed = r.scrub(echoed);
        for leaked in ["s3cr3t-token", "xyz.abc", "oauth%2Ftok%2Ben"] {
            assert!(!scrubbed.contains(leaked), "{scrubbed}");
        }
        assert_eq!(
            r.scrub("ab cd"),
            "ab cd",
            "short secrets are not searched for"
        );
        assert_eq!(
            scrub_credentials("Authorization: Basic dXNlcjpwYXNz\nnext"),
            "Authorization: ***\nnext"
        );
        assert_eq!(
            scrub_credentials("token bearer  abc.def ok"),
            "token bearer  *** ok"
        );
        assert_eq!(
            scrub_credentials("see https://user:pw@host/x and http://host/y"),
            "see https://***@host/x and http://host/y"
        );
        assert_eq!(
            scrub_credentials("a basically fine text"),
            "a basically fine text"
        );
        assert_eq!(scrub_credentials("Bearer"), "Bearer");
    }
}
