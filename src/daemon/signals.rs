//! Signals and systemd notification: SIGTERM/SIGINT/SIGHUP as [`Interrupt`]s, sd_notify, and the
//! watchdog.
//!
//! Signals: SIGTERM/SIGINT let the run in flight finish (bounded by [`super::SHUTDOWN_GRACE`]),
//! record it and exit 0; SIGHUP reloads the configuration (`app::load_config` +
//! `app::build_sinks`): a bad new configuration is rejected and the running one kept, with an
//! error log line and `ldapsync_config_reloads_total{result="failure"}`.
//!
//! systemd (`Type=notify`): `READY=1` after the configuration is loaded, the state file is open,
//! the HTTP listener is bound and the first LDAP bind check passed; `STATUS=` after each run;
//! `WATCHDOG=1` from the scheduler loop, also while a run is in progress (see [`Watchdog`]). All
//! of it is a no-op outside systemd.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// A signal the daemon acts on.
pub(super) enum Interrupt {
    /// SIGTERM or SIGINT (the name).
    Shutdown(&'static str),
    /// SIGHUP.
    Reload,
}

/// The installed handlers; from then on the signals no longer kill the process.
pub(super) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub(super) fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal. Cancel-safe.
    pub(super) async fn next(&mut self) -> Interrupt {
        tokio::select! {
            _ = self.term.recv() => Interrupt::Shutdown("SIGTERM"),
            _ = self.int.recv() => Interrupt::Shutdown("SIGINT"),
            _ = self.hup.recv() => Interrupt::Reload,
        }
    }
}

/// systemd notification; a no-op outside systemd (no `NOTIFY_SOCKET`).
pub(super) fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The systemd watchdog (`WatchdogSec=`), and the period of the scheduler loop's housekeeping.
///
/// Only the scheduler loop pings, from its own future: a ping then proves that the loop is being
/// polled, and a loop that stops being polled stops the pings, so systemd restarts the service.
/// That proof is only worth something if nothing else stalls that future, so the loop does no
/// blocking work: every SQLite call, the runs included, happens on tokio's blocking pool
/// ([`super::state`]), and the loop only awaits it while it keeps pinging. A separate pinging
/// task was not chosen: it would need a heartbeat from the loop and a staleness threshold, which
/// a loop blocked in SQLite would miss all the same.
#[derive(Debug, Clone, Copy)]
pub(super) struct Watchdog {
    enabled: bool,
    period: Duration,
}

impl Watchdog {
    /// From `WATCHDOG_USEC`/`WATCHDOG_PID`: a ping every third of the watchdog timeout (between
    /// 100 ms and 1 s); disabled outside systemd, with a housekeeping period of 1 s.
    pub(super) fn from_env() -> Watchdog {
        match watchdog_usec() {
            Some(usec) => Watchdog {
                enabled: true,
                period: Duration::from_micros(usec / 3)
                    .clamp(Duration::from_millis(100), Duration::from_secs(1)),
            },
            None => Watchdog {
                enabled: false,
                period: Duration::from_secs(1),
            },
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// How often the loop pings and does its housekeeping.
    pub(super) fn period(&self) -> Duration {
        self.period
    }

    /// `WATCHDOG=1`, when the watchdog is enabled.
    pub(super) fn ping(&self) {
        if self.enabled {
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }
}

/// `WATCHDOG_USEC` when the watchdog is meant for this process: like sd_watchdog_enabled(3),
/// `WATCHDOG_PID`, when set, must be our pid.
fn watchdog_usec() -> Option<u64> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?.parse::<u64>().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => (usec > 0).then_some(usec),
    }
}
