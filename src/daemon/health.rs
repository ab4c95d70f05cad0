//! The health state behind `/readyz`: the latest run of every sink, seeded from the run history
//! at start and updated after each run.
//!
//! Ready means: the latest run of every configured sink succeeded, and not longer ago than
//! `[metrics] ready_max_age_secs` (default: twice the longest gap between scheduled ticks).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::schedule::Schedule;
use crate::app::Config;
use crate::engine::{RunReport, SinkResult};
use crate::store::RunRecord;

/// The health state shared between the scheduler loop and the HTTP handlers.
pub(super) type SharedHealth = Arc<Mutex<Health>>;

/// The latest run of one sink.
#[derive(Debug, Clone)]
struct SinkHealth {
    finished_at: DateTime<Utc>,
    result: SinkResult,
    error: Option<String>,
}

/// What `/readyz` decides on.
#[derive(Debug, Default)]
pub(super) struct Health {
    sinks: Vec<String>,
    max_age: Duration,
    latest: BTreeMap<String, SinkHealth>,
}

impl Health {
    /// The sinks and the maximum age of a configuration, with no run known yet.
    pub(super) fn new(config: &Config, sinks: Vec<String>, schedule: &Schedule) -> Health {
        Health {
            sinks,
            max_age: max_age(config, schedule),
            latest: BTreeMap::new(),
        }
    }

    /// Takes over the sinks and the maximum age of a reloaded configuration.
    pub(super) fn reconfigure(&mut self, config: &Config, sinks: Vec<String>, schedule: &Schedule) {
        self.sinks = sinks;
        self.max_age = max_age(config, schedule);
    }

    /// `Ok(body)` when ready, `Err(reasons)` when not.
    pub(super) fn readiness(&self, now: DateTime<Utc>) -> Result<String, String> {
        let mut problems = Vec::new();
        for sink in &self.sinks {
            match self.latest.get(sink) {
                None => problems.push(format!("sink {sink:?}: no completed run yet")),
                Some(h) if h.result != SinkResult::Success => problems.push(format!(
                    "sink {sink:?}: latest run at {} {}{}",
                    h.finished_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    if h.result == SinkResult::Held {
                        "was held by a safety threshold"
                    } else {
                        "failed"
                    },
                    h.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )),
                Some(h) => {
                    let age = (now - h.finished_at).to_std().unwrap_or_default();
                    if age > self.max_age {
                        problems.push(format!(
                            "sink {sink:?}: latest successful run is {}s old (ready_max_age_secs = {})",
                            age.as_secs(),
                            self.max_age.as_secs()
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(format!(
                "ready: the latest run of every sink ({}) succeeded within {}s\n",
                self.sinks.len(),
                self.max_age.as_secs()
            ))
        } else {
            Err(format!("not ready:\n{}\n", problems.join("\n")))
        }
    }

    fn record(&mut self, sink: &str, at: DateTime<Utc>, result: SinkResult, error: Option<String>) {
        self.latest.insert(
            sink.to_string(),
            SinkHealth {
                finished_at: at,
                result,
                error,
            },
        );
    }

    /// Records a failure of every configured sink (the run failed before reaching them).
    pub(super) fn fail_all(&mut self, at: DateTime<Utc>, error: &str) {
        for sink in self.sinks.clone() {
            self.record(&sink, at, SinkResult::Failed, Some(error.to_string()));
        }
    }

    /// Applies a run from the history (oldest first) so a restarted daemon knows where it is.
    pub(super) fn seed(&mut self, run: &RunRecord) {
        if run.mode != "sync" {
            return;
        }
        let Some(at) = run
            .finished_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            return;
        };
        if run.sinks.is_empty() {
            if let Some(error) = &run.error {
                self.fail_all(at, error);
            }
            return;
        }
        for s in &run.sinks {
            let result = SinkResult::parse(&s.result).unwrap_or(SinkResult::Failed);
            self.record(&s.sink, at, result, s.error.clone());
        }
    }

    /// Applies a finished run.
    pub(super) fn apply(&mut self, report: &RunReport) {
        let at = Utc::now();
        if let Some(error) = &report.read_error {
            self.fail_all(at, error);
            return;
        }
        for s in &report.sinks {
            self.record(&s.name, at, s.result, s.error.clone());
        }
    }
}

/// `[metrics] ready_max_age_secs`, or twice the schedule interval.
fn max_age(config: &Config, schedule: &Schedule) -> Duration {
    config
        .metrics
        .as_ref()
        .and_then(|m| m.ready_max_age_secs)
        .map(Duration::from_secs)
        .unwrap_or_else(|| schedule.interval(Utc::now()) * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sinks "a" and "b", no run yet, results older than 60 s are stale.
    fn two_sinks() -> Health {
        Health {
            sinks: vec!["a".into(), "b".into()],
            max_age: Duration::from_secs(60),
            latest: BTreeMap::new(),
        }
    }

    #[test]
    fn readiness_names_the_failing_sink() {
        let mut h = two_sinks();
        let now = Utc::now();
        assert!(
            h.readiness(now)
                .unwrap_err()
                .contains("\"a\": no completed run yet")
        );
        h.record("a", now, SinkResult::Success, None);
        h.record("b", now, SinkResult::Failed, Some("HTTP 401".into()));
        let why = h.readiness(now).unwrap_err();
        assert!(
            why.contains("\"b\"") && why.contains("HTTP 401") && !why.contains("\"a\""),
            "{why}"
        );
        h.record("b", now, SinkResult::Success, None);
        assert!(h.readiness(now).is_ok());
        let later = now + chrono::Duration::seconds(61);
        assert!(h.readiness(later).unwrap_err().contains("61s old"));
    }

    #[test]
    fn a_failed_read_fails_every_sink() {
        let mut h = two_sinks();
        h.fail_all(Utc::now(), "LDAP down");
        let why = h.readiness(Utc::now()).unwrap_err();
        assert_eq!(why.matches("failed: LDAP down").count(), 2, "{why}");
    }
}
