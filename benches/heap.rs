//! Bytes of heap per queued task at capacity: 1,024 queued 16-byte futures
//! in the seed's channel, in a bg-queue pool, and as pending `tokio::spawn`
//! tasks. A counting allocator measures the net heap growth; bg-queue's
//! figure also counts the slots its inbox reserves when the pool is built.
//!
//! Run with `cargo bench --bench heap`.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/seed.rs"]
mod seed;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use harness::{Latch, Sixteen};

struct Counting;

static NET_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        NET_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        NET_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        NET_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const QUEUED: usize = 1024;

/// Net heap growth per task while `queue` puts `QUEUED` 16-byte futures in
/// the queue of something `prepare` built (not counted), on a
/// current-thread runtime where nothing runs until the measurement is
/// taken; `reserved` bytes (queue storage taken up front) are added.
fn per_task<T>(
    reserved: isize,
    name: &str,
    prepare: impl FnOnce(&tokio::runtime::Runtime) -> T,
    queue: impl FnOnce(&tokio::runtime::Runtime, &T, Vec<Sixteen>),
) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prepared = prepare(&runtime);
    let latch = Latch::new();
    let tasks: Vec<Sixteen> = (0..QUEUED)
        .map(|_| Sixteen {
            latch: latch.clone(),
            pad: 7,
        })
        .collect();
    assert_eq!(std::mem::size_of::<Sixteen>(), 16);
    let before = NET_BYTES.load(Ordering::SeqCst);
    queue(&runtime, &prepared, tasks);
    let after = NET_BYTES.load(Ordering::SeqCst);
    // The Vec that held the futures was freed by the moves into the queue.
    let vec_bytes = (QUEUED * std::mem::size_of::<Sixteen>()) as isize;
    let bytes = (after - before + vec_bytes + reserved) as f64 / QUEUED as f64;
    println!("{name:<14} {bytes:>7.1} bytes per queued task");
    std::mem::forget(prepared);
    std::mem::forget(runtime);
    bytes
}

/// A pool of `capacity` places, built on `runtime`, its task name
/// registered and its first task run, so its queue starts empty.
fn pool(runtime: &tokio::runtime::Runtime, capacity: usize) -> bg_queue::BackgroundTx {
    let pool = bg_queue::Builder::new("heap")
        .capacity(capacity)
        .runtime(runtime.handle().clone())
        .build()
        .unwrap();
    // Register the task name (its stats are per name, not per task) and let
    // that first task run.
    pool.spawn("noop", async {});
    runtime.block_on(pool.idle());
    pool
}

/// The heap a pool of `capacity` places holds once built and idle.
fn built_bytes(capacity: usize) -> isize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = NET_BYTES.load(Ordering::SeqCst);
    let built = pool(&runtime, capacity);
    let bytes = NET_BYTES.load(Ordering::SeqCst) - before;
    std::mem::forget(built);
    std::mem::forget(runtime);
    bytes
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` and `--list`: nothing to run here.
        return;
    }
    let seed = per_task(
        0,
        "seed",
        |runtime| {
            let _guard = runtime.enter();
            seed::spawn_pool()
        },
        |_, tx, tasks| {
            for task in tasks {
                tx.spawn("noop", task);
            }
        },
    );
    // What the pool reserves for its capacity when built: its inbox's
    // slots (the rest of a pool's fixed heap is the same at capacity 1).
    let reserved = built_bytes(QUEUED) - built_bytes(1);
    println!(
        "{:<14} {reserved:>7} bytes reserved at build for {QUEUED} places",
        "bg-queue"
    );
    let pool = per_task(
        reserved,
        "bg-queue",
        |runtime| pool(runtime, QUEUED),
        |_, pool, tasks| {
            for task in tasks {
                pool.try_spawn("noop", task).expect("room in the queue");
            }
            // Into the queue, where a pool at capacity holds them (its
            // runners absorb the inbox whenever they take the lock); the
            // snapshot's own heap is freed with it.
            assert_eq!(pool.snapshot().queued, QUEUED as u64);
        },
    );
    let raw = per_task(
        0,
        "tokio::spawn",
        |_| (),
        |runtime, _, tasks| {
            let _guard = runtime.enter();
            for task in tasks {
                std::mem::forget(tokio::spawn(task));
            }
        },
    );
    println!(
        "ratios: bg-queue/seed {:.2}, bg-queue/tokio::spawn {:.2}",
        pool / seed,
        pool / raw
    );
}
