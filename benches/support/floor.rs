// A reference for the caller-cost rows, not a design: the seed module
// (support/seed.rs) with the two reads that every bg-queue `spawn` makes by
// contract added to its `spawn`, and nothing else. It says how much of the
// telemetry-off target (2x the seed) those reads alone use.
//
// - The enqueue instant, from the clock the pool uses (tokio's, which is the
//   OS's monotonic clock unless a test pauses it): queue wait, the oldest
//   queued age and `bg.task`'s backdated start are measured from it.
// - Whether the calling thread has a `tracing` subscriber, which says
//   whether there is a parent span to capture (bg-queue asks the same way).
//
// The drainer reads both, so neither is optimized away. Everything else is
// the seed's: one drainer, a semaphore of 8, a drop logged per task.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

const CAPACITY: usize = 1024;
const PARALLELISM: usize = 8;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

struct Queued {
    name: &'static str,
    enqueued_at: Instant,
    traced: bool,
    task: BoxFuture,
}

/// The seed's sender, with the two contract reads in `spawn`.
#[derive(Clone)]
pub struct FloorTx {
    tx: mpsc::Sender<Queued>,
}

impl FloorTx {
    /// The seed's `spawn` plus a clock read and a subscriber check.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let traced = tracing::dispatcher::has_been_set()
            && tracing::dispatcher::get_default(|dispatch| {
                !dispatch.is::<tracing::subscriber::NoSubscriber>()
            });
        let queued = Queued {
            name,
            enqueued_at: Instant::now(),
            traced,
            task: Box::pin(fut),
        };
        if self.tx.try_send(queued).is_err() {
            tracing::warn!(task = name, "background queue full, task dropped");
        }
    }
}

/// The seed's drainer, reading what `spawn` recorded.
pub fn spawn_pool() -> FloorTx {
    let (tx, mut rx) = mpsc::channel::<Queued>(CAPACITY);
    let sem = Arc::new(Semaphore::new(PARALLELISM));
    tokio::spawn(async move {
        while let Some(queued) = rx.recv().await {
            black_box((queued.name, queued.enqueued_at.elapsed(), queued.traced));
            let permit = match sem.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => break,
            };
            let task = queued.task;
            tokio::spawn(async move {
                task.await;
                drop(permit);
            });
        }
    });
    FloorTx { tx }
}
