//! SIGINT/SIGTERM into a cancellation token.

use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGINT or SIGTERM; a second one exits at once (130).
pub(crate) fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            wait_for_signal().await;
            signals += 1;
            if signals == 1 {
                tracing::info!("shutting down (signal again to exit at once)");
                cancel.cancel();
            } else {
                eprintln!("vigil: second signal, exiting now");
                std::process::exit(130);
            }
        }
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            // No SIGTERM handler could be installed: Ctrl-C alone stops the program (if even
            // that fails, only a kill does).
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
