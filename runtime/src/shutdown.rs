//! One shutdown signal for every task, and a way to wait for all of them.
//!
//! Services spawn their long-running tasks on a [`Shutdown`]'s tracker and stop them by
//! cancelling its token. [`Shutdown::wait`] only waits: it returns once shutdown has been
//! triggered (by Ctrl-C, SIGTERM or [`Shutdown::trigger`]) and every tracked task has finished,
//! so Ctrl-C never cuts a write in half. [`Shutdown::stop`] triggers and then waits.
//!
//! ```no_run
//! # async fn run() {
//! use gridmesh_runtime::shutdown::Shutdown;
//! let shutdown = Shutdown::new();
//! shutdown.trigger_on_signals();
//! let token = shutdown.token();
//! shutdown.spawn(async move { token.cancelled().await /* finish in-flight work */ });
//! // Runs until Ctrl-C or SIGTERM, then waits for every task.
//! shutdown.wait().await;
//! # }
//! ```

use std::future::Future;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A cancellation token plus the tasks that honour it.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown triggered when `parent` is cancelled (or by its own [`Shutdown::trigger`],
    /// which leaves `parent` alone), with its own tracked tasks. For code that holds only a
    /// token, such as a test, but must start something that tracks its tasks.
    pub fn child_of(parent: &CancellationToken) -> Self {
        Shutdown {
            token: parent.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// The token tasks select on.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a tracked task.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(future)
    }

    /// Triggers shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown was triggered.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown is triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Triggers shutdown on Ctrl-C or SIGTERM (in a tracked background task).
    pub fn trigger_on_signals(&self) {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("install SIGTERM handler");
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                    _ = token.cancelled() => return,
                }
            }
            #[cfg(not(unix))]
            tokio::select! {
                _ = ctrl_c => {},
                _ = token.cancelled() => return,
            }
            tracing::info!("shutdown requested; finishing in-flight work");
            token.cancel();
        });
    }

    /// Waits until shutdown is triggered (elsewhere: a signal, [`Shutdown::trigger`]) and then
    /// until every tracked task has finished. It never triggers shutdown itself, so calling it
    /// right after starting a service runs the service until it is told to stop; to stop now
    /// and wait, call [`Shutdown::stop`].
    pub async fn wait(&self) {
        self.token.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Triggers shutdown (if not yet) and waits for every tracked task to finish.
    pub async fn stop(&self) {
        self.trigger();
        self.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Regression: `wait` used to cancel, so a service whose caller waited right after start
    /// stopped at once.
    #[tokio::test(start_paused = true)]
    async fn wait_only_waits_for_the_trigger_and_the_tasks() {
        let shutdown = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let (token, done) = (shutdown.token(), finished.clone());
        shutdown.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            done.store(true, Ordering::SeqCst);
        });
        let waited = tokio::time::timeout(Duration::from_secs(60), shutdown.wait()).await;
        assert!(waited.is_err(), "wait returned without a trigger");
        assert!(!shutdown.is_triggered(), "wait triggered shutdown");

        let waiter = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { shutdown.wait().await })
        };
        shutdown.trigger();
        waiter.await.unwrap();
        assert!(
            finished.load(Ordering::SeqCst),
            "wait returned before the task finished"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stop_triggers_and_waits() {
        let shutdown = Shutdown::new();
        let finished = Arc::new(AtomicBool::new(false));
        let (token, done) = (shutdown.token(), finished.clone());
        shutdown.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            done.store(true, Ordering::SeqCst);
        });
        shutdown.stop().await;
        assert!(shutdown.is_triggered());
        assert!(finished.load(Ordering::SeqCst));
        // Stopping again returns at once.
        shutdown.stop().await;
    }
}
