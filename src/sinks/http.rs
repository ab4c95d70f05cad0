//! The shared HTTP layer every sink uses: auth (bearer, API key, OAuth2 client credentials), retries, rate limit.
//!
//! Retries: 429, 502, 503, 504 (and 500 for idempotent methods) and connection errors, with
//! exponential backoff and jitter, honouring `Retry-After` (seconds or HTTP date, capped).
//! A POST is retried only when the target cannot have processed it (429, 503, connect errors);
//! a create ([`HttpClient::send_create`]) only after a connect error, never after an answer.
//! OAuth2 tokens are cached until shortly before `expires_in` and refreshed once on a 401.
//! Secrets never appear in errors or logs: errors carry the method, the URL path and the
//! target's own error text, scrubbed (once, here, where a response becomes an error text) of
//! every configured secret ([`HttpSettings::secrets`]), of the OAuth2 tokens obtained, and of
//! credential-shaped values (`Bearer …`, `Basic …`, `Authorization: …`) a target may echo.
//! A `Retry-After` longer than [`HttpSettings::max_retry_after`] fails the request at once. Each sink reads its target's error bodies itself (an [`ErrorBody`]
//! given to [`HttpClient::new`]); this layer only falls back to a short excerpt ([`excerpt`]).
//! Every attempt is timed in `ldapsync_sink_request_duration_seconds{sink}`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::Histogram;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::secret::{Redactor, Secret};

/// The default of a sink's `max_retry_after_secs`.
pub const DEFAULT_MAX_RETRY_AFTER_SECS: u64 = 300;

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub rate_limit_per_second: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this fails the request instead of waiting.
    pub max_retry_after: Duration,
    /// The sink's configured secrets, scrubbed from every text that comes from the target.
    pub secrets: Vec<Secret>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            rate_limit_per_second: 50,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_retries: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(DEFAULT_MAX_RETRY_AFTER_SECS),
            secrets: Vec::new(),
        }
    }
}

/// How requests authenticate.
#[derive(Debug)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: <scheme> <key>` (Connect uses `Key`).
    Scheme { scheme: &'static str, key: Secret },
    /// OAuth2 client credentials with a cached token.
    ClientCredentials(OAuthClient),
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenAuthMethod {
    #[default]
    Basic,
    Post,
}

#[derive(Debug)]
pub struct OAuthClient {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub method: TokenAuthMethod,
    pub scope: Option<String>,
    cached: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

impl OAuthClient {
    pub fn new(
        token_url: String,
        client_id: String,
        client_secret: Secret,
        method: TokenAuthMethod,
        scope: Option<String>,
    ) -> Self {
        OAuthClient {
            token_url,
            client_id,
            client_secret,
            method,
            scope,
            cached: tokio::sync::Mutex::new(None),
        }
    }
}

/// A failed exchange with a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{method} {path}: cannot reach the target: {message}")]
    Transport {
        method: String,
        path: String,
        message: String,
    },
    #[error("{method} {path}: HTTP {status}: {detail}")]
    Status {
        method: String,
        path: String,
        status: u16,
        detail: String,
    },
    #[error("token request to {path} failed: {detail}. Check the client id and secret")]
    Token { path: String, detail: String },
    #[error(
        "{method} {path}: HTTP {status} asking to retry after {asked} s, longer than max_retry_after_secs ({max} s); the request failed. Raise max_retry_after_secs on the sink to wait that long"
    )]
    RetryAfterTooLong {
        method: String,
        path: String,
        status: u16,
        asked: u64,
        max: u64,
    },
    #[error("{method} {path}: unexpected response: {detail}")]
    Decode {
        method: String,
        path: String,
        detail: String,
    },
}

impl HttpError {
    /// The HTTP status of an error answer (`None` when the target did not answer one).
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } | HttpError::RetryAfterTooLong { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The target rejected the credential: an HTTP 401, or a failed OAuth2 token request.
    pub fn is_auth(&self) -> bool {
        matches!(self, HttpError::Token { .. }) || self.status() == Some(401)
    }
}

/// A sink's reader of its target's error bodies: the useful text, or `None` when the body is
/// not in the target's error shape (then the layer shows an [`excerpt`]).
pub type ErrorBody = fn(&[u8]) -> Option<String>;

/// Config validation: `url` (the value of `key`) must be an http(s) URL.
pub fn check_url(key: &'static str, url: &str) -> Result<(), (&'static str, String)> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err((key, format!("{url:?} must be an http(s) URL")))
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct Response {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// The sink's reader of error bodies, for [`Response::into_error`].
    error_body: ErrorBody,
    /// Scrubs the texts made from this response.
    redactor: Arc<Redactor>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// Parses the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Decode {
            method: self.method.to_string(),
            path: self.path.clone(),
            detail: self
                .redactor
                .scrub(&format!("{e}; body starts with {:?}", self.body_excerpt())),
        })
    }

    /// Ok when 2xx, otherwise an error carrying the target's error text.
    pub fn success(self) -> Result<Response, HttpError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    pub fn into_error(self) -> HttpError {
        HttpError::Status {
            method: self.method.to_string(),
            path: self.path.clone(),
            status: self.status.as_u16(),
            detail: self.redactor.scrub(&describe(self.error_body, &self.body)),
        }
    }

    fn body_excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(200)
            .collect()
    }
}

/// The text of an error body: what the sink's `error_body` reads, or else an [`excerpt`].
fn describe(error_body: ErrorBody, body: &[u8]) -> String {
    error_body(body).unwrap_or_else(|| excerpt(body))
}

/// What the layer shows of an error body no sink reader understood: JSON compacted, any other
/// text trimmed with control characters blanked, at most 300 characters; or "(empty body)".
pub fn excerpt(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => value.to_string(),
        Err(_) => String::from_utf8_lossy(body)
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    };
    if text.is_empty() {
        return "(empty body)".into();
    }
    text.chars().take(300).collect()
}

/// Reads a JSON error body the usual way: `key=value` for each of `codes` present, then the
/// first of `texts` present, then whatever `more` adds; `None` when none of them is there.
/// The building block of the sinks' [`ErrorBody`] readers.
pub fn json_error(
    body: &[u8],
    codes: &[&str],
    texts: &[&str],
    more: impl FnOnce(&serde_json::Value) -> Vec<String>,
) -> Option<String> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let mut parts = Vec::new();
    for key in codes {
        if let Some(v) = value.get(key).filter(|v| !v.is_null()) {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            parts.push(format!("{key}={v}"));
        }
    }
    if let Some(text) = texts
        .iter()
        .find_map(|key| value.get(key).and_then(serde_json::Value::as_str))
    {
        parts.push(text.to_string());
    }
    parts.extend(more(&value));
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// An OAuth2 token endpoint's error body (RFC 6749 §5.2): its `error` code.
fn oauth_error(body: &[u8]) -> Option<String> {
    json_error(body, &[], &["error"], |_| Vec::new())
}

/// One target's HTTP client: base URL, auth, retries, rate limit, the sink's reader of error
/// bodies and the request-duration metric.
pub struct HttpClient {
    client: reqwest::Client,
    base_url: String,
    auth: Auth,
    settings: HttpSettings,
    limiter: DefaultDirectRateLimiter,
    extra_headers: HeaderMap,
    error_body: ErrorBody,
    /// Scrubs every text made from the target's answers (configured secrets, tokens obtained).
    redactor: Arc<Redactor>,
    /// `ldapsync_sink_request_duration_seconds{sink}` of this client's sink.
    duration: Histogram,
}

/// A request body with its content type.
pub struct Body {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl Body {
    pub fn json(value: &serde_json::Value) -> Body {
        Body::typed("application/json", value)
    }
    pub fn typed(content_type: &str, value: &serde_json::Value) -> Body {
        Body {
            content_type: content_type.to_string(),
            bytes: serde_json::to_vec(value).unwrap_or_default(),
        }
    }
}

impl HttpClient {
    /// A client for the sink named `sink` (the metric label) whose target answers errors in the
    /// shape `error_body` reads.
    pub fn new(
        sink: &str,
        base_url: &str,
        auth: Auth,
        settings: HttpSettings,
        error_body: ErrorBody,
    ) -> Result<HttpClient, HttpError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("ldapsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Transport {
                method: "-".into(),
                path: base_url.into(),
                message: e.to_string(),
            })?;
        let rate =
            NonZeroU32::new(settings.rate_limit_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let redactor = Redactor::new(&settings.secrets);
        match &auth {
            Auth::Bearer(secret) | Auth::Scheme { key: secret, .. } => redactor.learn(secret),
            Auth::ClientCredentials(oauth) => redactor.learn(&oauth.client_secret),
        }
        Ok(HttpClient {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            auth,
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            settings,
            extra_headers: HeaderMap::new(),
            error_body,
            redactor: Arc::new(redactor),
            duration: crate::telemetry::metrics()
                .sink_request_duration_seconds
                .with_label_values(&[sink]),
        })
    }

    /// Adds a header sent with every request (e.g. ForgeRock's `Accept-API-Version`).
    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.extra_headers
            .insert(name, HeaderValue::from_static(value));
        self
    }

    /// Sends a request to `path` (relative to the base URL, or absolute), retrying as described
    /// in the module doc. Any final HTTP status is returned as a [`Response`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Body>,
    ) -> Result<Response, HttpError> {
        self.send_with_headers(method, path, query, &[], body).await
    }

    /// [`HttpClient::send`] with extra headers for this request only (e.g. `If-Match`).
    pub async fn send_with_headers(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&'static str, String)],
        body: Option<&Body>,
    ) -> Result<Response, HttpError> {
        self.exchange(method, path, query, headers, body, false)
            .await
    }

    /// Sends a create (`POST`) at most once: it is re-sent only when the connection could not be
    /// opened (the target never saw it). After a timeout, a reset, a 5xx or a 429 the target may
    /// have committed it, so the answer goes back to the caller, which must look the object up
    /// before creating it again (a retried create would duplicate it).
    pub async fn send_create(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &Body,
    ) -> Result<Response, HttpError> {
        self.exchange(Method::POST, path, query, &[], Some(body), true)
            .await
    }

    /// One exchange with retries; `create`: see [`HttpClient::send_create`].
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&'static str, String)],
        body: Option<&Body>,
        create: bool,
    ) -> Result<Response, HttpError> {
        let mut request_headers = self.extra_headers.clone();
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|_| HttpError::Decode {
                method: method.to_string(),
                path: path.to_string(),
                detail: format!("header {name} has characters not allowed in HTTP"),
            })?;
            request_headers.insert(*name, value);
        }
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{}", self.base_url, path)
        };
        let shown_path = url.split('?').next().unwrap_or(&url).to_string();
        let idempotent = method != Method::POST;
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            self.limiter.until_ready().await;
            let mut request = self
                .client
                .request(method.clone(), &url)
                .headers(request_headers.clone())
                .query(query);
            request = match self.authorization(false).await? {
                Some(value) => request.header(AUTHORIZATION, value),
                None => request,
            };
            if let Some(body) = body {
                request = request
                    .header(CONTENT_TYPE, body.content_type.as_str())
                    .body(body.bytes.clone());
            }
            let started = Instant::now();
            let outcome = request.send().await;
            let retry_delay = match outcome {
                Err(e) => {
                    self.observe(started.elapsed());
                    let safe_to_retry = idempotent || e.is_connect();
                    if attempt >= self.settings.max_retries || !safe_to_retry {
                        return Err(HttpError::Transport {
                            method: method.to_string(),
                            path: shown_path,
                            message: self.redactor.scrub(&describe_reqwest_error(&e)),
                        });
                    }
                    tracing::debug!(path = %shown_path, error = %describe_reqwest_error(&e), "retrying after a connection error");
                    self.backoff(attempt)
                }
                Ok(response) => {
                    let (status, headers, bytes) = self.read_answer(response, started).await;
                    if status == StatusCode::UNAUTHORIZED
                        && !refreshed
                        && matches!(self.auth, Auth::ClientCredentials(_))
                    {
                        refreshed = true;
                        self.authorization(true).await?;
                        continue;
                    }
                    let retryable = match status.as_u16() {
                        _ if create => false,
                        429 | 503 => true,
                        500 | 502 | 504 => idempotent,
                        _ => false,
                    };
                    let asked = retry_after(&headers);
                    let max_wait = self.settings.max_retry_after;
                    let too_long = |asked: Duration| {
                        tracing::warn!(path = %shown_path, status = status.as_u16(), retry_after_secs = asked.as_secs(), max_retry_after_secs = max_wait.as_secs(), "the target asked to wait longer than max_retry_after_secs; failing the request");
                        HttpError::RetryAfterTooLong {
                            method: method.to_string(),
                            path: shown_path.clone(),
                            status: status.as_u16(),
                            asked: asked.as_secs(),
                            max: max_wait.as_secs(),
                        }
                    };
                    // A create is never re-sent here, but one the target asks to wait longer
                    // than allowed fails the same way as any other request.
                    if let Some(asked) = asked
                        .filter(|a| create && matches!(status.as_u16(), 429 | 503) && *a > max_wait)
                    {
                        return Err(too_long(asked));
                    }
                    if !retryable || attempt >= self.settings.max_retries {
                        return Ok(Response {
                            method: method.clone(),
                            path: shown_path,
                            status,
                            body: bytes,
                            error_body: self.error_body,
                            redactor: self.redactor.clone(),
                        });
                    }
                    let delay = match asked {
                        Some(asked) if asked > max_wait => return Err(too_long(asked)),
                        Some(asked) => asked,
                        None => self.backoff(attempt),
                    };
                    tracing::info!(path = %shown_path, status = status.as_u16(), delay_ms = delay.as_millis() as u64, "target asked to slow down or failed; retrying");
                    delay
                }
            };
            attempt += 1;
            tokio::time::sleep(retry_delay).await;
        }
    }

    /// Sends and parses a JSON answer; non-2xx becomes an error.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Body>,
    ) -> Result<T, HttpError> {
        self.send(method, path, query, body)
            .await?
            .success()?
            .json()
    }

    /// Obtains (or reuses) the credential without sending an API request (`check --connect`
    /// for targets without a harmless read).
    pub async fn authenticate(&self) -> Result<(), HttpError> {
        self.authorization(false).await.map(|_| ())
    }

    /// Reads an answer whole (an unreadable body counts as empty) and observes the attempt's
    /// duration.
    async fn read_answer(
        &self,
        response: reqwest::Response,
        started: Instant,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        self.observe(started.elapsed());
        (status, headers, body)
    }

    /// Called after every attempt, retries and token requests included: each one is a sample
    /// of `ldapsync_sink_request_duration_seconds{sink}`.
    fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .settings
            .base_backoff
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.settings.max_backoff);
        let jitter = rand::random_range(0.5..1.0);
        exp.mul_f64(jitter)
    }

    async fn authorization(&self, force_refresh: bool) -> Result<Option<HeaderValue>, HttpError> {
        let value = match &self.auth {
            Auth::Bearer(token) => format!("Bearer {}", token.expose()),
            Auth::Scheme { scheme, key } => format!("{scheme} {}", key.expose()),
            Auth::ClientCredentials(oauth) => {
                let mut cached = oauth.cached.lock().await;
                let fresh = cached
                    .as_ref()
                    .filter(|(_, expires)| !force_refresh && Instant::now() < *expires);
                let token = match fresh {
                    Some((token, _)) => token.clone(),
                    None => {
                        let (token, lifetime) = self.fetch_token(oauth).await?;
                        // Refresh a little before the target would reject it.
                        let margin =
                            (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                        *cached = Some((
                            token.clone(),
                            Instant::now() + lifetime.saturating_sub(margin),
                        ));
                        token
                    }
                };
                format!("Bearer {}", token.expose())
            }
        };
        let mut header = HeaderValue::from_str(&value).map_err(|_| HttpError::Token {
            path: self.base_url.clone(),
            detail: "the credential contains characters not allowed in an HTTP header".into(),
        })?;
        header.set_sensitive(true);
        Ok(Some(header))
    }

    async fn fetch_token(&self, oauth: &OAuthClient) -> Result<(Secret, Duration), HttpError> {
        let shown = oauth
            .token_url
            .split('?')
            .next()
            .unwrap_or(&oauth.token_url)
            .to_string();
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if let Some(scope) = &oauth.scope {
            form.push(("scope", scope.clone()));
        }
        let mut attempt = 0;
        loop {
            self.limiter.until_ready().await;
            let mut request = self.client.post(&oauth.token_url);
            let mut fields = form.clone();
            match oauth.method {
                TokenAuthMethod::Basic => {
                    request =
                        request.basic_auth(&oauth.client_id, Some(oauth.client_secret.expose()));
                }
                TokenAuthMethod::Post => {
                    fields.push(("client_id", oauth.client_id.clone()));
                    fields.push(("client_secret", oauth.client_secret.expose().to_string()));
                }
            }
            let started = Instant::now();
            let response = request.form(&fields).send().await;
            let response = match response {
                Ok(r) => r,
                Err(e) => {
                    self.observe(started.elapsed());
                    if attempt < self.settings.max_retries {
                        attempt += 1;
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(HttpError::Token {
                        path: shown,
                        detail: self.redactor.scrub(&describe_reqwest_error(&e)),
                    });
                }
            };
            let (status, headers, body) = self.read_answer(response, started).await;
            if (status.as_u16() == 429 || status.is_server_error())
                && attempt < self.settings.max_retries
            {
                attempt += 1;
                let delay = retry_after(&headers).unwrap_or_else(|| self.backoff(attempt));
                if delay > self.settings.max_retry_after {
                    return Err(HttpError::Token {
                        path: shown,
                        detail: format!(
                            "HTTP {} asking to retry after {} s, longer than max_retry_after_secs ({} s)",
                            status.as_u16(),
                            delay.as_secs(),
                            self.settings.max_retry_after.as_secs()
                        ),
                    });
                }
                tokio::time::sleep(delay).await;
                continue;
            }
            if !status.is_success() {
                return Err(HttpError::Token {
                    path: shown,
                    detail: self.redactor.scrub(&format!(
                        "HTTP {}: {}",
                        status.as_u16(),
                        oauth_error(&body).unwrap_or_else(|| describe(self.error_body, &body))
                    )),
                });
            }
            #[derive(serde::Deserialize)]
            struct TokenResponse {
                access_token: String,
                expires_in: Option<u64>,
            }
            let token: TokenResponse =
                serde_json::from_slice(&body).map_err(|e| HttpError::Token {
                    path: shown.clone(),
                    detail: format!("unreadable token response: {e}"),
                })?;
            let token_secret = Secret::new(token.access_token);
            self.redactor.learn(&token_secret);
            return Ok((
                token_secret,
                Duration::from_secs(token.expires_in.unwrap_or(300)),
            ));
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

fn describe_reqwest_error(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL with its query; keep only the kind and cause.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn unknown_error_bodies_become_short_printable_excerpts() {
        let none: ErrorBody = |_| None;
        assert_eq!(describe(none, b""), "(empty body)");
        assert_eq!(describe(none, b" \n\t "), "(empty body)");
        assert_eq!(
            describe(none, b"\n<html>\r\nBad\tGateway</html>\n"),
            "<html>  Bad Gateway</html>"
        );
        assert_eq!(describe(none, b"{ \"odd\": [1, 2] }"), r#"{"odd":[1,2]}"#);
        assert_eq!(describe(none, "x".repeat(1000).as_bytes()).len(), 300);
        let sink: ErrorBody = |_| Some("read by the sink".into());
        assert_eq!(describe(sink, b"{}"), "read by the sink");
        assert_eq!(
            oauth_error(br#"{"error":"invalid_client","error_description":"no"}"#).as_deref(),
            Some("invalid_client")
        );
    }

    #[test]
    fn json_error_reads_codes_then_the_first_text() {
        let body = br#"{"code":7,"reason":"r","message":"m","n":null}"#;
        let read = |codes: &[&str], texts: &[&str]| json_error(body, codes, texts, |_| Vec::new());
        assert_eq!(
            read(&["code"], &["message", "reason"]).as_deref(),
            Some("code=7 m")
        );
        assert_eq!(read(&["n"], &["reason"]).as_deref(), Some("r"));
        assert_eq!(read(&["x"], &["y"]), None);
        assert_eq!(
            json_error(b"not json", &["code"], &[], |_| Vec::new()),
            None
        );
    }

    #[test]
    fn auth_failures_are_401_and_token_requests() {
        let status = |status| HttpError::Status {
            method: "GET".into(),
            path: "/x".into(),
            status,
            detail: "HTTP 401 in the text".into(),
        };
        assert!(status(401).is_auth());
        assert!(!status(403).is_auth());
        let token = HttpError::Token {
            path: "/t".into(),
            detail: "HTTP 400: invalid_client".into(),
        };
        assert!(token.is_auth());
        assert_eq!(token.status(), None);
    }

    #[tokio::test]
    async fn every_attempt_is_timed_per_sink() {
        let settings = HttpSettings {
            max_retries: 1,
            base_backoff: Duration::from_millis(1),
            connect_timeout: Duration::from_secs(2),
            ..HttpSettings::default()
        };
        let client = HttpClient::new(
            "timed-sink",
            "http://127.0.0.1:1",
            Auth::Bearer(Secret::new("t")),
            settings,
            |_| None,
        )
        .unwrap();
        let error = client.send(Method::GET, "/x", &[], None).await.unwrap_err();
        assert!(matches!(error, HttpError::Transport { .. }), "{error}");
        let samples = crate::telemetry::metrics()
            .sink_request_duration_seconds
            .with_label_values(&["timed-sink"])
            .get_sample_count();
        assert_eq!(samples, 2, "one sample per attempt");
    }
}
