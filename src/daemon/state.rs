//! The state file as the daemon holds it: one [`Store`] for the process's whole life, and every
//! SQLite call on it — the runs included — on tokio's blocking pool, never on the scheduler loop.
//!
//! rusqlite blocks (up to the store's busy timeout and beyond on a slow disk), and so do the
//! store calls inside `engine::run`. The scheduler loop is what answers the systemd watchdog
//! ([`super::signals::Watchdog`]), so it must never wait inside SQLite: it only awaits the
//! blocking pool, and keeps pinging meanwhile.
//!
//! A run is `engine::run` driven by `Handle::block_on` on a blocking-pool thread: its network
//! I/O still runs on the runtime's drivers, its SQLite calls block only that thread, and its
//! future need not be `Send` (it holds `&Store` across awaits, and `Store` is not `Sync`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::app::Config;
use crate::engine::{self, EngineError, RunOptions, RunReport};
use crate::sinks::Sink;
use crate::store::{RunRecord, Store, StoreError};

/// The daemon's state file. The mutex is only ever locked on the blocking pool, and by one call
/// or run at a time in practice (the loop awaits each one), so it serializes nothing that runs.
pub(super) struct StateFile {
    store: Arc<Mutex<Store>>,
}

impl StateFile {
    /// Opens (and locks, and migrates) the state file.
    pub(super) async fn open(path: &Path) -> Result<StateFile, StoreError> {
        let path = path.to_path_buf();
        let store = blocking(move || Store::open(&path)).await?;
        Ok(StateFile {
            store: Arc::new(Mutex::new(store)),
        })
    }

    /// Calls `f` with the store on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        blocking(move || f(&mut lock(&store))).await
    }

    /// The newest `limit` runs of the history, newest first.
    pub(super) async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.with(move |store| store.recent_runs(limit)).await
    }

    /// Closes the newest unfinished run in the history as interrupted. An abandoned run holds the
    /// store until it reaches its next await point; this waits for that (on the blocking pool).
    pub(super) async fn mark_interrupted(&self) -> Result<(), StoreError> {
        self.with(|store| {
            store
                .close_unfinished_runs(
                    "interrupted: the daemon was stopped during the run and abandoned it after its shutdown grace period",
                )
                .map(|_| ())
        })
        .await
    }

    /// Starts one run on the blocking pool.
    pub(super) fn start_run(
        &self,
        config: Arc<Config>,
        sinks: Arc<Vec<Box<dyn Sink>>>,
        options: RunOptions,
    ) -> RunTask {
        let store = self.store.clone();
        let cancel = CancellationToken::new();
        let cancelled = cancel.clone();
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            let mut store = lock(&store);
            let result = runtime.block_on(async {
                tokio::select! {
                    result = engine::run(&*config, Some(&mut *store), &sinks[..], &options) => Some(result),
                    _ = cancelled.cancelled() => None,
                }
            });
            release_freed_memory();
            result
        });
        RunTask { task, cancel }
    }
}

/// Hands the memory a run freed back to the system. glibc keeps freed heap in per-thread arenas
/// (the read's runtime workers, this blocking-pool thread) and returns little of it by itself,
/// so without this the daemon's resident size between runs stays at the largest run's
/// high-water mark and creeps up from it as the arenas fragment.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own free lists (of every
    // arena, under their locks); it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// A run in flight on the blocking pool; dropping it abandons the run.
pub(super) struct RunTask {
    task: JoinHandle<Option<Result<RunReport, EngineError>>>,
    cancel: CancellationToken,
}

impl RunTask {
    /// Waits for the run to end. Cancel-safe: after another `select!` branch won, call it again.
    pub(super) async fn finished(&mut self) -> Result<RunReport, EngineError> {
        match (&mut self.task).await {
            Ok(Some(result)) => result,
            // Only `Drop` cancels, and the runtime shuts down only when the process exits.
            Ok(None) => unreachable!("a run was cancelled while awaited"),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => unreachable!("the run's thread was cancelled: {e}"),
            },
        }
    }
}

impl Drop for RunTask {
    /// Abandons the run: it stops at its next await point (an SQLite call in progress completes)
    /// and releases the store; the thread is detached.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Runs `f` on the blocking pool; a panic in `f` continues here.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The loop's pattern: a slow SQLite call awaited in a `select!` next to the watchdog interval.
    #[tokio::test]
    async fn a_slow_sqlite_call_does_not_stall_the_pings() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::open(&dir.path().join("state.db")).await.unwrap();
        let slow = state.with(|store| {
            std::thread::sleep(Duration::from_millis(400));
            store.recent_runs(1)
        });
        tokio::pin!(slow);
        let mut ping = tokio::time::interval(Duration::from_millis(20));
        let mut pings = 0;
        let runs = loop {
            tokio::select! {
                runs = &mut slow => break runs,
                _ = ping.tick() => pings += 1,
            }
        };
        assert!(runs.unwrap().is_empty());
        assert!(
            pings >= 10,
            "only {pings} pings during a 400 ms SQLite call"
        );
        state.with(|store| store.begin_run("sync")).await.unwrap();
        state.mark_interrupted().await.unwrap();
        let runs = state.recent_runs(1).await.unwrap();
        assert_eq!(
            runs[0].result.as_deref(),
            Some("interrupted"),
            "an abandoned run is recorded as interrupted"
        );
    }
}
