//! The schedule: the parsed `[schedule]`, the tick hand-over to the scheduler loop, and the
//! tokio-cron-scheduler [`Ticker`] with every workaround that crate needs.
//!
//! tokio-cron-scheduler only produces ticks: its job callbacks hand a tick to the loop through
//! [`Ticks`], or, when a run is in progress (or a run is already queued), skip it and count it in
//! `ldapsync_skipped_ticks_total`.
//!
//! Guards against the scheduler's known pitfalls (tokio-cron-scheduler 0.15), all in this module:
//! - it stores a time zone as a *fixed offset* taken when the job is created: [`Ticker::check`]
//!   re-creates the jobs whenever the configured zone's UTC offset changes (DST);
//! - it polls every 500 ms, so a tick arrives up to about half a second late (harmless here);
//! - repeated jobs can stop firing (#113): [`Ticker::check`] computes, with croner and the real
//!   zone, when the next tick is due, and when none arrived well after that (`STALL_GRACE`), it
//!   re-creates the scheduler, counts `ldapsync_scheduler_restarts_total` and runs the missed
//!   tick.
//!
//! The cron expressions are parsed once, when the configuration is read
//! ([`crate::config::CronSchedule`]); every computation here uses that parsed [`croner::Cron`].
//! Only `Job::new_async_tz` gets the text, because it takes nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use super::lock;
use crate::app::Config;
use crate::config::ScheduleConfig;
use crate::telemetry::metrics;

/// How late a tick may be before the scheduler is considered stalled (it polls every 500 ms).
const STALL_GRACE: Duration = Duration::from_secs(5);

/// The `[schedule]` the daemon runs on, with its zone resolved.
#[derive(Debug, Clone)]
pub(super) struct Schedule {
    pub(super) config: ScheduleConfig,
    pub(super) tz: Tz,
}

impl Schedule {
    /// The configuration's `[schedule]`, which `ldapsync daemon` requires.
    pub(super) fn from_config(config: &Config) -> Result<Schedule, String> {
        let Some(schedule) = &config.schedule else {
            return Err(format!(
                "{}: [schedule] is required by `ldapsync daemon` (e.g. [schedule] cron = \"0 */15 * * * *\")",
                config.shown_path()
            ));
        };
        Ok(Schedule {
            config: schedule.clone(),
            tz: schedule.timezone.unwrap_or(Tz::UTC),
        })
    }

    /// The next tick of the main cron strictly after `after`, in the configured zone.
    pub(super) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.config
            .cron
            .cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The longest gap between consecutive ticks of the main cron over its next 64 ticks.
    pub(super) fn interval(&self, now: DateTime<Utc>) -> Duration {
        let mut longest = Duration::ZERO;
        let mut previous = self.next_after(now);
        for _ in 0..64 {
            let Some(p) = previous else { break };
            let Some(next) = self.next_after(p) else {
                break;
            };
            longest = longest.max((next - p).to_std().unwrap_or_default());
            previous = Some(next);
        }
        if longest.is_zero() {
            Duration::from_secs(3600)
        } else {
            longest
        }
    }

    /// Whether `other` needs other scheduler jobs than `self` (an expression or the zone differs).
    pub(super) fn jobs_differ(&self, other: &Schedule) -> bool {
        let expressions = |s: &Schedule| {
            (
                s.config.cron.expression.clone(),
                s.config
                    .full_sync_cron
                    .as_ref()
                    .map(|f| f.expression.clone()),
            )
        };
        expressions(self) != expressions(other) || self.tz != other.tz
    }

    /// The zone's current UTC offset in seconds (what tokio-cron-scheduler freezes into a job).
    fn offset_now(&self) -> i32 {
        self.tz
            .offset_from_utc_datetime(&Utc::now().naive_utc())
            .fix()
            .local_minus_utc()
    }
}

/// Tick hand-over between the scheduler's callbacks and the scheduler loop.
#[derive(Default)]
pub(super) struct Ticks {
    /// A run is in progress.
    busy: AtomicBool,
    /// A tick waits for the loop: `Some(full)`.
    pending: Mutex<Option<bool>>,
    /// A full-sync tick was skipped while busy: the next run is a full one.
    full_owed: AtomicBool,
    /// When the main cron last fired (skipped or not).
    last_fire: Mutex<Option<DateTime<Utc>>>,
    notify: tokio::sync::Notify,
}

impl Ticks {
    /// A tick (`full` for the full-sync cron): queue it for the loop or count it as skipped.
    pub(super) fn fire(&self, full: bool) {
        if !full {
            *lock(&self.last_fire) = Some(Utc::now());
        }
        if self.busy.load(Ordering::SeqCst) {
            if full {
                self.full_owed.store(true, Ordering::SeqCst);
            }
            metrics().skipped_ticks_total.inc();
            tracing::info!(full, "scheduled tick skipped: a run is still in progress");
            return;
        }
        let mut pending = lock(&self.pending);
        match *pending {
            Some(queued_full) => {
                *pending = Some(queued_full || full);
                if queued_full == full {
                    metrics().skipped_ticks_total.inc();
                    tracing::info!(full, "scheduled tick skipped: a run is already queued");
                }
            }
            None => *pending = Some(full),
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// Waits for a tick; `Some(full)` when one is queued. Cancel-safe.
    pub(super) async fn next(&self) -> Option<bool> {
        self.notify.notified().await;
        self.take()
    }

    /// Marks a run as in progress (ticks are skipped meanwhile) or finished.
    pub(super) fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::SeqCst);
    }

    fn take(&self) -> Option<bool> {
        let full = lock(&self.pending).take()?;
        Some(full || self.full_owed.swap(false, Ordering::SeqCst))
    }
}

/// The running tokio-cron-scheduler with the jobs of one [`Schedule`].
struct Jobs {
    scheduler: JobScheduler,
    /// The UTC offset frozen into the jobs.
    offset: i32,
    /// When it was started (reference for the stall check before the first tick).
    started: DateTime<Utc>,
}

impl Jobs {
    async fn start(schedule: &Schedule, ticks: &Arc<Ticks>) -> Result<Jobs, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        let mut crons = vec![(schedule.config.cron.expression.as_str(), false)];
        if let Some(full) = &schedule.config.full_sync_cron {
            crons.push((full.expression.as_str(), true));
        }
        for (expression, full) in crons {
            let ticks = ticks.clone();
            // The one place the expression is parsed again: tokio-cron-scheduler takes only text.
            let job = Job::new_async_tz(expression, schedule.tz, move |_, _| {
                let ticks = ticks.clone();
                Box::pin(async move { ticks.fire(full) })
            })?;
            scheduler.add(job).await?;
        }
        scheduler.start().await?;
        Ok(Jobs {
            scheduler,
            offset: schedule.offset_now(),
            started: Utc::now(),
        })
    }

    async fn stop(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "stopping the scheduler");
        }
    }
}

/// The tick source: tokio-cron-scheduler feeding [`Ticks`], kept firing by [`Ticker::check`].
pub(super) struct Ticker {
    ticks: Arc<Ticks>,
    /// `None` after a failed re-creation; [`Ticker::check`] retries.
    jobs: Option<Jobs>,
}

impl Ticker {
    pub(super) async fn start(
        schedule: &Schedule,
        ticks: Arc<Ticks>,
    ) -> Result<Ticker, JobSchedulerError> {
        let jobs = Jobs::start(schedule, &ticks).await?;
        Ok(Ticker {
            ticks,
            jobs: Some(jobs),
        })
    }

    /// Housekeeping: re-creates the jobs when the zone's UTC offset changed (DST), and when the
    /// scheduler missed a due tick (#113) also fires that tick.
    pub(super) async fn check(&mut self, schedule: &Schedule) {
        let Some(jobs) = &self.jobs else {
            return self.restart(schedule, false).await;
        };
        if schedule.offset_now() != jobs.offset {
            tracing::info!(timezone = %schedule.tz, "the time zone's UTC offset changed; re-creating the schedule");
            return self.restart(schedule, false).await;
        }
        let reference = lock(&self.ticks.last_fire)
            .unwrap_or(jobs.started)
            .max(jobs.started);
        let Some(due) = schedule.next_after(reference) else {
            return;
        };
        let grace = chrono::Duration::from_std(STALL_GRACE).unwrap_or_default();
        if Utc::now() > due + grace {
            tracing::warn!(
                due = %due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "the scheduler did not fire a due tick (tokio-cron-scheduler #113?); re-creating it and running the missed tick"
            );
            metrics().scheduler_restarts_total.inc();
            self.restart(schedule, true).await;
        }
    }

    /// Replaces the jobs with those of `schedule`; `fire_missed` then hands a tick to the loop.
    pub(super) async fn restart(&mut self, schedule: &Schedule, fire_missed: bool) {
        self.stop().await;
        match Jobs::start(schedule, &self.ticks).await {
            Ok(jobs) => self.jobs = Some(jobs),
            Err(e) => {
                tracing::error!(error = %e, "cannot re-create the scheduler; retrying in a moment")
            }
        }
        if fire_missed {
            self.ticks.fire(false);
        }
    }

    pub(super) async fn stop(&mut self) {
        if let Some(jobs) = self.jobs.take() {
            jobs.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: Option<&str>) -> Schedule {
        let config = ScheduleConfig {
            cron: crate::config::CronSchedule::parse(cron).unwrap(),
            timezone: tz.map(|t| t.parse().unwrap()),
            run_on_start: false,
            full_sync_cron: None,
        };
        Schedule {
            tz: config.timezone.unwrap_or(Tz::UTC),
            config,
        }
    }

    #[test]
    fn interval_is_the_longest_gap() {
        let now = Utc::now();
        assert_eq!(
            schedule("0 */15 * * * *", None).interval(now),
            Duration::from_secs(900)
        );
        assert_eq!(
            schedule("* * * * * *", None).interval(now),
            Duration::from_secs(1)
        );
        // Weekdays at 09:00: the weekend gap (3 days) is the longest.
        assert_eq!(
            schedule("0 0 9 * * Mon-Fri", Some("Europe/Berlin")).interval(now),
            Duration::from_secs(3 * 86400)
        );
    }

    #[test]
    fn next_tick_uses_the_real_zone_across_dst() {
        let s = schedule("0 30 2 * * *", Some("Europe/Berlin"));
        // 2026-03-29: 02:30 does not exist in Berlin; croner fires at 03:00 CEST = 01:00 UTC.
        let before = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        let next = s.next_after(before).unwrap();
        let after = s.next_after(next).unwrap();
        assert_eq!(after, Utc.with_ymd_and_hms(2026, 3, 30, 0, 30, 0).unwrap());
    }

    #[test]
    fn jobs_differ_on_expression_or_zone_only() {
        let a = schedule("0 */15 * * * *", None);
        let mut b = schedule("0 */15 * * * *", None);
        b.config.run_on_start = true;
        assert!(!a.jobs_differ(&b));
        assert!(a.jobs_differ(&schedule("0 */5 * * * *", None)));
        assert!(a.jobs_differ(&schedule("0 */15 * * * *", Some("Europe/Berlin"))));
    }

    #[test]
    fn ticks_coalesce_and_count_skips() {
        let t = Ticks::default();
        let before = metrics().skipped_ticks_total.get();
        t.fire(false);
        t.fire(false);
        assert_eq!(metrics().skipped_ticks_total.get(), before + 1);
        t.set_busy(true);
        t.fire(true);
        assert_eq!(metrics().skipped_ticks_total.get(), before + 2);
        t.set_busy(false);
        // The skipped full tick is owed to the next run.
        assert_eq!(t.take(), Some(true));
        assert_eq!(t.take(), None);
    }
}
