//! Shutdown signalling.
//!
//! Every long-running task takes a [`Shutdown`] handle rather than listening to
//! signals itself, so tests can stop a program without sending signals and a
//! program stops all of its tasks from one place.

use tokio::sync::watch;

/// A cloneable handle that resolves once shutdown has been requested.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side: whoever owns it decides when the program stops.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A connected trigger/handle pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Ask every holder of a [`Shutdown`] to stop.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// True once shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown is requested (immediately if it already was).
    pub async fn requested(&mut self) {
        // An error means the trigger was dropped: treat that as "stop" too.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends).
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A trigger wired to process signals, and a handle on it.
pub fn on_signals() -> (ShutdownTrigger, Shutdown) {
    let (trigger, handle) = channel();
    let tx = trigger.tx.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    (trigger, handle)
}
