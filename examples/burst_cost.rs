//! The caller's cost of `spawn` in bursts of 512 (benchmark row 4), burst by
//! burst, against the number of tasks the pool's runners started *during*
//! the burst, on another worker, while the caller was still calling.
//!
//! Criterion's row 4 gives one figure per run, and that figure moved from
//! 2.2x to 4.9x the seed between runs of the same code. This shows why:
//! bursts in which no runner ran beside the caller cost about what the
//! seed's do, and bursts in which runners on the other core took tasks as
//! they arrived cost more, because each task they take moves cache lines
//! the caller writes next (the admission word, the inbox's slots and
//! tail). How many bursts are of which kind varies from process to
//! process.
//!
//! ```sh
//! cargo run --release --example burst_cost              # parallelism 8 (the seed's)
//! cargo run --release --example burst_cost -- 1 3000    # parallelism 1, 3000 bursts per round
//! ```
//!
//! Three rounds, each the seed's module (`benches/support/seed.rs`) then
//! bg-queue, telemetry off, on a 2-worker runtime, from a task on a worker.
//! Per round it prints the median cost per call of each, then bg-queue's
//! bursts grouped by how many tasks were started during them (read from
//! [`bg_queue::PoolSnapshot`] after each burst, outside the timed part).
//! docs/benchmarks-log.md ("Runners beside the producer") has the figures.

#[path = "../benches/support/harness.rs"]
mod harness;
#[path = "../benches/support/seed.rs"]
mod seed;

use std::process::ExitCode;
use std::time::Instant;

use harness::{Latch, Mode, Setup, Sixteen};

/// Calls per burst (row 4's).
const BURST: usize = 512;
/// Upper bounds of the groups of "tasks started during the burst".
const GROUPS: [(u64, &str); 5] = [
    (0, "none"),
    (63, "1-63"),
    (127, "64-127"),
    (255, "128-255"),
    (u64::MAX, "256+"),
];

/// One burst of bg-queue: nanoseconds per call, tasks started during it.
struct Burst {
    per_call: u64,
    started: u64,
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let parse = |arg: Option<String>, default: usize, what: &str| match arg {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(value) if value > 0 => Ok(value),
            _ => Err(format!("{what} must be a positive integer, not {text:?}")),
        },
    };
    let (parallelism, bursts) = match (
        parse(args.next(), 8, "parallelism"),
        parse(args.next(), 2000, "bursts"),
    ) {
        (Ok(parallelism), Ok(bursts)) => (parallelism, bursts),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("usage: burst_cost [parallelism] [bursts]: {error}");
            return ExitCode::from(2);
        }
    };
    let setup = Setup::new(Mode::Off);
    let seed_tx = setup.runtime.block_on(async { seed::spawn_pool() });
    let pool = setup.pool(1024, parallelism);
    println!("bursts of {BURST}, {bursts} per round, bg-queue parallelism {parallelism}");
    for round in 1..=3 {
        let seed = seed_bursts(&setup, bursts, seed_tx.clone());
        let bg = pool_bursts(&setup, bursts, pool.clone());
        let seed_median = median(seed);
        let bg_median = median(bg.iter().map(|burst| burst.per_call).collect());
        println!(
            "round {round}: seed {seed_median} ns per call, bg-queue {bg_median} ns ({:.2}x)",
            bg_median as f64 / seed_median as f64
        );
        let mut lower = 0;
        for (upper, label) in GROUPS {
            let mut group: Vec<u64> = bg
                .iter()
                .filter(|burst| (lower..=upper).contains(&burst.started))
                .map(|burst| burst.per_call)
                .collect();
            lower = upper.saturating_add(1);
            if group.is_empty() {
                continue;
            }
            group.sort_unstable();
            let middle = group[group.len() / 2];
            let p90 = group[group.len() * 9 / 10];
            println!(
                "  started during the burst {label:>7}: {:>5} bursts, median {middle:>4} ns ({:.2}x the seed), p90 {p90} ns",
                group.len(),
                middle as f64 / seed_median as f64,
            );
        }
    }
    ExitCode::SUCCESS
}

/// Runs `bursts` bursts of [`BURST`] calls to `submit` from a task on a
/// worker, after a warm-up of a quarter as many again (not returned), each
/// burst waited for before the next. `started` is asked after each burst,
/// outside the timed part, with the number of earlier bursts.
fn run_bursts(
    setup: &Setup,
    bursts: usize,
    submit: impl Fn(Sixteen) + Send + 'static,
    started: impl Fn(usize) -> u64 + Send + 'static,
) -> Vec<Burst> {
    setup.runtime.block_on(async move {
        tokio::spawn(async move {
            let latch = Latch::new();
            let warm_up = bursts / 4;
            let mut costs = Vec::with_capacity(bursts);
            for burst in 0..warm_up + bursts {
                let start = Instant::now();
                for _ in 0..BURST {
                    submit(Sixteen {
                        latch: latch.clone(),
                        pad: 0,
                    });
                }
                let per_call =
                    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX) / BURST as u64;
                let started = started(burst);
                latch.wait_for((burst + 1) * BURST).await;
                if burst >= warm_up {
                    costs.push(Burst { per_call, started });
                }
            }
            costs
        })
        .await
        .expect("the bursts panicked")
    })
}

/// The seed's bursts (nobody can see when its drainer starts a task).
fn seed_bursts(setup: &Setup, bursts: usize, tx: seed::BackgroundTx) -> Vec<u64> {
    let bursts = run_bursts(setup, bursts, move |task| tx.spawn("noop", task), |_| 0);
    bursts.into_iter().map(|burst| burst.per_call).collect()
}

/// bg-queue's bursts, each with the tasks its runners started during it.
fn pool_bursts(setup: &Setup, bursts: usize, pool: bg_queue::BackgroundTx) -> Vec<Burst> {
    let before = pool.snapshot().spawned;
    let submitter = pool.clone();
    run_bursts(
        setup,
        bursts,
        move |task| submitter.spawn("noop", task),
        move |earlier| {
            // Every earlier task has finished (the latch said so), so what
            // is not queued of this burst has been started.
            let snapshot = pool.snapshot();
            snapshot.spawned - snapshot.queued - (before + (earlier * BURST) as u64)
        },
    )
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}
