//! Waking idle workers: `LISTEN` on a dedicated connection, with polling as
//! the fallback.
//!
//! Enqueue sends `NOTIFY` on the schema's channel (payload: the queue) in
//! the same statement as the insert, for delayed jobs too (a woken worker
//! that finds nothing due sleeps until the next job's `run_at`), so inside a transaction it is
//! delivered at commit, never before the rows are visible. The listener
//! holds its own connection (a pool of one, outside the application's
//! pool): a `LISTEN` on a pooled connection would stop hearing as soon as
//! the connection went back to the pool. Notifications sent while that
//! connection is down are lost, so the fetch loop also polls every
//! `poll_interval`, and the listener wakes it after every reconnect to catch
//! up.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};

use super::worker::{ReconnectBackoff, Shared};

/// Listens until the worker stops, reconnecting with backoff.
pub(crate) async fn listen(shared: Arc<Shared>) {
    let options = (*shared.pool.connect_options()).clone();
    let own_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut backoff = ReconnectBackoff::new();
    loop {
        let connected = tokio::select! {
            result = connect(&own_pool, &shared.channel) => result,
            _ = shared.stopped() => break,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                shared.database_error("listen for new jobs", &error);
                if !backoff.wait(&shared).await {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        // Jobs enqueued while nobody listened: look now.
        shared.wake.notify_one();
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                _ = shared.stopped() => {
                    // The pool's close waits for the listener's connection.
                    drop(listener);
                    own_pool.close().await;
                    return;
                }
            };
            match received {
                Ok(Some(notification)) => {
                    if notification.payload() == &*shared.config.queue {
                        shared.wake.notify_one();
                    }
                }
                // The connection dropped and was re-established (with its
                // LISTEN): whatever was sent in between is lost, so look.
                Ok(None) => shared.wake.notify_one(),
                Err(error) => {
                    shared.database_error("listen for new jobs", &error);
                    break;
                }
            }
        }
        if !backoff.wait(&shared).await {
            break;
        }
    }
    own_pool.close().await;
}

async fn connect(pool: &sqlx::PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
