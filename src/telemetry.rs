//! Telemetry: tracing setup and the Prometheus registry with the metric families listed in docs/daemon.md.
//!
//! One registry per process ([`metrics`]); the daemon serves it on `/metrics`.

use std::sync::OnceLock;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric ldapsync exports.
pub struct Metrics {
    pub registry: Registry,
    pub runs_total: IntCounterVec,
    pub run_duration_seconds: Histogram,
    pub ldap_entries_read_total: IntCounterVec,
    pub planned_operations: IntGaugeVec,
    /// Operations of the latest plan that repair a change made in the target (`sync --full`).
    pub drift_operations: IntGaugeVec,
    pub applied_operations_total: IntCounterVec,
    /// Every HTTP attempt a sink's client makes (retries and OAuth2 token requests included),
    /// observed by the shared HTTP layer (`sinks::http::HttpClient`).
    pub sink_request_duration_seconds: HistogramVec,
    pub last_success_timestamp_seconds: GaugeVec,
    pub safety_holds_total: IntCounterVec,
    pub safety_hold_active: IntGaugeVec,
    pub unmapped_members: IntGaugeVec,
    /// Share of the current (or last) apply's operations recorded, per sink (0 to 1).
    pub run_progress_ratio: GaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub skipped_ticks_total: prometheus::IntCounter,
    pub scheduler_restarts_total: prometheus::IntCounter,
}

/// `collector`, registered in `registry`.
fn registered<C>(registry: &Registry, collector: C) -> Result<C, prometheus::Error>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let runs_total = registered(
        &registry,
        IntCounterVec::new(
            Opts::new(
                "ldapsync_runs_total",
                "Sync runs by result (success, failure, held).",
            ),
            &["result"],
        )?,
    )?;
    let run_duration_seconds = registered(
        &registry,
        Histogram::with_opts(
            HistogramOpts::new(
                "ldapsync_run_duration_seconds",
                "Wall time of a whole sync run.",
            )
            .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
        )?,
    )?;
    let ldap_entries_read_total = registered(
        &registry,
        IntCounterVec::new(
            Opts::new(
                "ldapsync_ldap_entries_read_total",
                "Directory entries read, by kind (user, group).",
            ),
            &["kind"],
        )?,
    )?;
    let drift_operations = registered(
        &registry,
        IntGaugeVec::new(
            Opts::new(
                "ldapsync_drift_operations",
                "Operations in the latest plan per sink that repair a change made in the target, found by a full reconcile (memberships for member ops).",
            ),
            &["sink", "op"],
        )?,
    )?;
    let planned_operations = registered(
        &registry,
        IntGaugeVec::new(
            Opts::new(
                "ldapsync_planned_operations",
                "Operations in the latest plan per sink (memberships for member ops).",
            ),
            &["sink", "op"],
        )?,
    )?;
    let applied_operations_total = registered(
        &registry,
        IntCounterVec::new(
            Opts::new(
                "ldapsync_applied_operations_total",
                "Operations applied to sinks, by result.",
            ),
            &["sink", "op", "result"],
        )?,
    )?;
    let sink_request_duration_seconds = registered(
        &registry,
        HistogramVec::new(
            HistogramOpts::new(
                "ldapsync_sink_request_duration_seconds",
                "HTTP request latency per sink, per attempt (retries and token requests included).",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["sink"],
        )?,
    )?;
    let last_success_timestamp_seconds = registered(
        &registry,
        GaugeVec::new(
            Opts::new(
                "ldapsync_last_success_timestamp_seconds",
                "Unix time of the last successful run per sink.",
            ),
            &["sink"],
        )?,
    )?;
    let safety_holds_total = registered(
        &registry,
        IntCounterVec::new(
            Opts::new(
                "ldapsync_safety_holds_total",
                "Runs held by the safety thresholds per sink.",
            ),
            &["sink"],
        )?,
    )?;
    let safety_hold_active = registered(
        &registry,
        IntGaugeVec::new(
            Opts::new(
                "ldapsync_safety_hold_active",
                "1 while the latest run of a sink was held.",
            ),
            &["sink"],
        )?,
    )?;
    let unmapped_members = registered(
        &registry,
        IntGaugeVec::new(
            Opts::new(
                "ldapsync_unmapped_members",
                "Members skipped in the latest run because no target user matched.",
            ),
            &["sink"],
        )?,
    )?;
    let run_progress_ratio = registered(
        &registry,
        GaugeVec::new(
            Opts::new(
                "ldapsync_run_progress_ratio",
                "Share of the planned operations (memberships for member ops) applied so far in the current or last run, per sink.",
            ),
            &["sink"],
        )?,
    )?;
    let config_reloads_total = registered(
        &registry,
        IntCounterVec::new(
            Opts::new(
                "ldapsync_config_reloads_total",
                "Configuration reloads (SIGHUP) by result.",
            ),
            &["result"],
        )?,
    )?;
    let counter = |name: &str, help: &str| prometheus::IntCounter::new(name, help);
    let skipped_ticks_total = counter(
        "ldapsync_skipped_ticks_total",
        "Scheduled ticks skipped because a run was still in progress.",
    )?;
    let scheduler_restarts_total = counter(
        "ldapsync_scheduler_restarts_total",
        "Times the cron scheduler was re-created because a due tick did not fire.",
    )?;
    registry.register(Box::new(skipped_ticks_total.clone()))?;
    registry.register(Box::new(scheduler_restarts_total.clone()))?;
    let build_info = registered(
        &registry,
        IntGaugeVec::new(
            Opts::new("ldapsync_build_info", "Build information; always 1."),
            &["version"],
        )?,
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    for result in ["success", "failure", "held"] {
        runs_total.with_label_values(&[result]);
    }
    Ok(Metrics {
        registry,
        runs_total,
        run_duration_seconds,
        ldap_entries_read_total,
        planned_operations,
        drift_operations,
        applied_operations_total,
        sink_request_duration_seconds,
        last_success_timestamp_seconds,
        safety_holds_total,
        safety_hold_active,
        unmapped_members,
        run_progress_ratio,
        config_reloads_total,
        skipped_ticks_total,
        scheduler_restarts_total,
    })
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    // Registration only fails on duplicate or malformed names, which are constants above.
    METRICS.get_or_init(|| build().expect("metric definitions are valid"))
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&metrics().registry.gather(), &mut buffer) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The log filter without `RUST_LOG`: ldapsync's own INFO lines, and only warnings and errors
/// from the libraries (their INFO chatter — migrations applied, scheduler started — is not
/// the operator's business).
pub const DEFAULT_LOG_FILTER: &str = "warn,ldapsync=info";

/// Installs the tracing subscriber: stderr, `RUST_LOG`-style filter (default
/// [`DEFAULT_LOG_FILTER`]).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only on a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_family_is_rendered_with_the_prefix() {
        super::metrics()
            .safety_holds_total
            .with_label_values(&["s"])
            .inc();
        let text = super::render();
        for name in [
            "ldapsync_runs_total",
            "ldapsync_build_info",
            "ldapsync_safety_holds_total",
            "process_cpu_seconds_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
