//! Graceful draining on SIGTERM (or Ctrl-C): readiness turns false and new API requests get
//! 503 while load balancers notice, then the listener closes and in-flight requests finish
//! (`wick serve` drives the timing: `drain_delay_secs`, then up to `drain_grace_secs`).

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the server is draining: set once, read by the readiness probe and the handlers.
#[derive(Debug, Default)]
pub struct Drain(AtomicBool);

impl Drain {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Resolves at the first SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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
        _ = ctrl_c => {}
        _ = term => {}
    }
}
