//! Plumbing the HTTP sinks share, written once: filter-string quoting, sink-level errors, bounded paging, the id of a created object.
//!
//! The group lifecycle itself is in [`super::lifecycle`], the HTTP exchange in [`super::http`];
//! what is here is the small glue every target module would otherwise repeat.

use std::collections::HashSet;

use serde_json::Value;

use super::SinkError;
use super::http::{HttpClient, HttpError};
use super::lifecycle::{Created, OpError};
use crate::model::ActualGroup;
use crate::secret::SecretError;

/// `GET path?query` as JSON; `None` when the target answers 404 (the object is gone).
pub async fn get_if_exists(
    http: &HttpClient,
    path: &str,
    query: &[(&str, &str)],
) -> Result<Option<Value>, HttpError> {
    let response = http.send(reqwest::Method::GET, path, query, None).await?;
    if response.status.as_u16() == 404 {
        return Ok(None);
    }
    response.success()?.json().map(Some)
}

/// No listing fetches more pages than this, whatever the target answers.
pub const MAX_PAGES: usize = 10_000;

/// A string literal of a SCIM, PingOne or CREST filter (JSON string syntax, double quotes).
pub fn quote(value: &str) -> String {
    Value::String(value.to_string()).to_string()
}

/// Maps a failed request of the sink `sink` as a whole (construction, `check`) to its error.
pub fn http_error(sink: &str) -> impl Fn(HttpError) -> SinkError + '_ {
    move |source| SinkError::Http {
        sink: sink.to_string(),
        source,
    }
}

/// `check --connect` of a sink with a harmless read: `GET path?query`, any failure the sink's.
pub async fn probe(
    sink: &str,
    http: &HttpClient,
    path: &str,
    query: &[(&str, &str)],
) -> Result<(), SinkError> {
    http.json::<Value>(reqwest::Method::GET, path, query, None)
        .await
        .map(|_| ())
        .map_err(http_error(sink))
}

/// Maps an unreadable secret of the sink `sink` to its error.
pub fn secret_error(sink: &str) -> impl Fn(SecretError) -> SinkError + '_ {
    move |source| SinkError::Secret {
        sink: sink.to_string(),
        source,
    }
}

/// The answer to a create: the new object's `key` (`id`, `_id`, `guid`), or an error naming it.
pub fn created(answer: &Value, key: &str) -> Result<Created, OpError> {
    match answer.get(key).and_then(Value::as_str) {
        Some(id) => Ok(Created::Id(id.to_string())),
        None => Err(format!("the create answer has no {key:?}").into()),
    }
}

/// A group as a full reconcile read it: `name` and `description` of the target's JSON (an empty
/// description is none), with the members read separately.
pub fn actual_group(group: &Value, members: Vec<(String, String)>) -> ActualGroup {
    let text = |key: &str| group.get(key).and_then(Value::as_str).map(str::to_string);
    ActualGroup {
        name: text("name").unwrap_or_default(),
        description: Some(text("description").filter(|d| !d.is_empty())),
        members,
    }
}

/// One page of a listing: its items, and where the next page is (`None` on the last page).
pub struct Page {
    pub items: Vec<Value>,
    pub next: Option<String>,
}

/// Everything a listing returned.
pub struct Pages {
    pub items: Vec<Value>,
    /// The listing was cut: the target's cursors looped, or [`MAX_PAGES`] were read.
    pub cut: bool,
}

/// Reads every page of a listing: `fetch(None)` gets the first page, `fetch(Some(next))` the
/// page a previous one pointed to, and `read` takes each answer apart. Stops on the last page,
/// on a `next` seen before (a target whose cursors loop) or after [`MAX_PAGES`] pages (both
/// logged), so it never loops forever.
pub async fn all_pages<F, Fut>(
    sink: &str,
    path: &str,
    fetch: F,
    mut read: impl FnMut(Value) -> Page,
) -> Result<Pages, HttpError>
where
    F: Fn(Option<String>) -> Fut,
    Fut: Future<Output = Result<Value, HttpError>>,
{
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    let mut next = None;
    for _ in 0..MAX_PAGES {
        let page = read(fetch(next.take()).await?);
        items.extend(page.items);
        match page.next {
            None => return Ok(Pages { items, cut: false }),
            Some(cursor) if !seen.insert(cursor.clone()) => {
                tracing::warn!(
                    sink,
                    path,
                    "the target's paging repeats a page cursor (link or cookie); listing stopped there"
                );
                return Ok(Pages { items, cut: true });
            }
            Some(cursor) => next = Some(cursor),
        }
    }
    tracing::warn!(sink, path, "listing stopped after {MAX_PAGES} pages");
    Ok(Pages { items, cut: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_json_quoted() {
        assert_eq!(quote("line\nbreak"), r#""line\nbreak""#);
    }

    #[test]
    fn created_reads_the_id_or_names_it() {
        let answer = serde_json::json!({"_id": "g1"});
        assert_eq!(created(&answer, "_id"), Ok(Created::Id("g1".into())));
        let error = created(&answer, "guid").unwrap_err().to_string();
        assert_eq!(error, "the create answer has no \"guid\"");
    }

    #[tokio::test]
    async fn paging_follows_cursors_and_stops_on_a_loop() {
        let asked = std::sync::Mutex::new(Vec::new());
        let fetch = |cursor: Option<String>| {
            asked.lock().unwrap().push(cursor.clone());
            async move { Ok(Value::from(cursor)) }
        };
        let read = |answer: Value| Page {
            items: vec![answer.clone()],
            next: match answer.as_str() {
                None => Some("a"),
                Some("a") => Some("b"),
                _ => Some("a"),
            }
            .map(str::to_string),
        };
        let pages = all_pages("s", "/x", fetch, read).await.unwrap();
        assert!(pages.cut);
        assert_eq!(pages.items.len(), 3);
        assert_eq!(
            *asked.lock().unwrap(),
            [None, Some("a".into()), Some("b".into())]
        );

        let last = |_| Page {
            items: Vec::new(),
            next: None,
        };
        let single = all_pages("s", "/x", |_| async { Ok(Value::Null) }, last).await;
        assert!(!single.unwrap().cut);
    }
}
