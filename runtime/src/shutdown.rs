//! One shutdown signal for every task, and a way to wait for all of them.
//!
//! Services spawn their long-running tasks on a [`Shutdown`]'s tracker and stop them by
//! cancelling its token; `wait` returns when every tracked task has finished, so Ctrl-C never
//! cuts a write in half.

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
        tokio::spawn(async move {
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

    /// Triggers shutdown (if not yet) and waits for every tracked task to finish.
    pub async fn wait(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
