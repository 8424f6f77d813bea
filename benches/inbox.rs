//! The pool's inbox ring against `crossbeam_queue::ArrayQueue`, the
//! well-kept crate that implements the same algorithm for many consumers,
//! in one run. Values are 88 bytes, the size of a task's envelope.
//!
//! - `batch`: one thread sends 128 values then receives them, as a burst
//!   of `spawn` calls and then a runner's absorb do on a quiet machine.
//! - `cross_thread`: one thread sends while another receives, as a
//!   producer and a runner on two cores do.
//!
//! Run with `cargo bench --bench inbox`; figures in BENCHMARKS.md, "Inbox".

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;

#[allow(unused, unreachable_pub)]
#[path = "../src/sync.rs"]
mod sync;

#[allow(unused, unreachable_pub)]
#[path = "../src/inbox.rs"]
mod inbox;

/// An envelope-sized value.
type Value = [u64; 11];

const SLOTS: usize = 256;
const BATCH: usize = 128;

/// The two queues behind one interface.
trait Queue: Send + Sync + 'static {
    fn push(&self, value: Value) -> Result<(), Value>;
}

/// The ring's sender, and its one receiver behind a mutex (the pool's
/// lock plays that part).
struct Ring {
    tx: inbox::Sender<Value>,
    rx: std::sync::Mutex<inbox::Receiver<Value>>,
}

impl Queue for Ring {
    fn push(&self, value: Value) -> Result<(), Value> {
        self.tx.send(value).map_err(|inbox::Full(back)| back)
    }
}

impl Queue for ArrayQueue<Value> {
    fn push(&self, value: Value) -> Result<(), Value> {
        ArrayQueue::push(self, value)
    }
}

fn ring() -> Ring {
    let (tx, rx) = inbox::channel(SLOTS);
    Ring {
        tx,
        rx: std::sync::Mutex::new(rx),
    }
}

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbox_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    let ring = ring();
    group.bench_function("ring", |b| {
        let mut rx = ring.rx.lock().unwrap();
        b.iter(|| {
            for i in 0..BATCH {
                ring.push([i as u64; 11]).unwrap();
            }
            while let Some(value) = rx.recv() {
                black_box(value);
            }
        });
    });
    let queue = ArrayQueue::<Value>::new(SLOTS);
    group.bench_function("array_queue", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                queue.push([i as u64; 11]).unwrap();
            }
            while let Some(value) = queue.pop() {
                black_box(value);
            }
        });
    });
    group.finish();
}

/// Sends `count` values from this thread while `drain` takes what it finds
/// on another (returning how many it took); the time until the last value
/// is received.
fn cross_thread_run<Q: Queue>(
    queue: &Arc<Q>,
    count: u64,
    drain: impl Fn(&Q) -> u64 + Send + 'static,
) -> Duration {
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let queue = Arc::clone(queue);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut received = 0;
            while received < count {
                match drain(&queue) {
                    0 => std::hint::spin_loop(),
                    taken => received += taken,
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let start = Instant::now();
    for i in 0..count {
        let mut value = [i; 11];
        while let Err(back) = queue.push(value) {
            value = back;
            std::hint::spin_loop();
        }
    }
    receiver.join().unwrap();
    assert!(done.load(Ordering::Acquire));
    start.elapsed()
}

fn cross_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbox_cross_thread");
    group.throughput(Throughput::Elements(1));
    let ring = Arc::new(ring());
    group.bench_function("ring", |b| {
        b.iter_custom(|count| {
            // One lock per drain, as the pool's absorb takes it.
            cross_thread_run(&ring, count, |ring: &Ring| {
                let mut rx = ring.rx.lock().unwrap();
                std::iter::from_fn(|| rx.recv()).map(black_box).count() as u64
            })
        });
    });
    let queue = Arc::new(ArrayQueue::<Value>::new(SLOTS));
    group.bench_function("array_queue", |b| {
        b.iter_custom(|count| {
            cross_thread_run(&queue, count, |queue: &ArrayQueue<Value>| {
                std::iter::from_fn(|| queue.pop()).map(black_box).count() as u64
            })
        });
    });
    group.finish();
}

criterion_group!(benches, batch, cross_thread);
criterion_main!(benches);
