//! The one place that listens for signals: the first Ctrl-C or SIGTERM
//! becomes a cancelled token, which the work below turns into cleanup.

/// A token cancelled by the first Ctrl-C (or SIGTERM, as a scheduler stopping
/// a job sends); what it stops still cleans up.
pub fn interrupt_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => if r.is_err() { return },
            _ = terminated => {}
        }
        tracing::warn!(
            "interrupted: cleaning up the targets before exiting (Ctrl-C again quits at once, leaving them as they are)"
        );
        trigger.cancel();
        // Cleanup waits for the targets; a second Ctrl-C is the way out.
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "mshot: interrupted twice: exiting without finishing cleanup; check the targets for a loaded lime module"
            );
            std::process::exit(130);
        }
    });
    token
}
