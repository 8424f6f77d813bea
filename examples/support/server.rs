//! The HTTP/1.1 server loop both listeners use: hyper's connection builder
//! with a header read timeout, so a client that trickles its request line
//! and headers is cut off, and a graceful shutdown that lets requests in
//! flight finish. (`axum::serve` has no header timeout to set.)
#![allow(dead_code)]

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Longest a client may take to send its request line and headers, from
/// the connection's start or the previous response on a kept-alive
/// connection; past it the connection is closed without an answer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest the server waits, at shutdown, for requests in flight.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(15);

/// Serves `app` on `listener` until `stop` turns true, then stops accepting
/// and waits (at most [`SHUTDOWN_DRAIN`]) for open connections to finish
/// their current request.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off a
                    // little rather than spin, and keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // Timeouts and resets by slow or vanished clients: routine.
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {} s after shutdown began; closing them",
            SHUTDOWN_DRAIN.as_secs()
        );
    }
}
