//! The daemon: cron schedule, metrics/health endpoints, systemd notification, reload and shutdown.

use crate::config::ScheduleConfig;

/// Checks `[schedule]` values; returns the offending key and why.
pub fn validate_schedule(schedule: &ScheduleConfig) -> Result<(), (&'static str, String)> {
    for (key, expression) in [
        ("cron", Some(&schedule.cron)),
        ("full_sync_cron", schedule.full_sync_cron.as_ref()),
    ] {
        let Some(expression) = expression else {
            continue;
        };
        tokio_cron_scheduler::Job::new_async(expression.as_str(), |_, _| Box::pin(async {}))
            .map_err(|e| {
                (
                    key,
                    format!("{expression:?} is not a seconds-resolution cron expression ({e})"),
                )
            })?;
    }
    if let Some(tz) = &schedule.timezone {
        tz.parse::<chrono_tz::Tz>()
            .map_err(|_| ("timezone", format!("{tz:?} is not an IANA time zone name")))?;
    }
    Ok(())
}

/// Runs the scheduled loop until SIGTERM/SIGINT; returns the exit code.
pub async fn run(path: &std::path::Path) -> i32 {
    let _ = path;
    eprintln!("error: the daemon is not implemented yet");
    crate::cli::EXIT_FAILED
}
