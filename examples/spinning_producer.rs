//! How many tasks run while a producer calls `spawn` in a loop that never
//! yields: the figure behind the README's no-starvation promise.
//!
//! Run with
//!
//! ```sh
//! cargo run --release --example spinning_producer            # 20 quiet runs
//! cargo run --release --example spinning_producer -- --contended
//! cargo run --release --example spinning_producer -- --flat [--contended]
//! ```
//!
//! Each run builds a 2-worker runtime and `spawn_pool()` (capacity 1024,
//! parallelism 8), then a task spins for 300 ms, calling `spawn` with a
//! no-op task 50,000 times at an even pace, and reads how many tasks ran
//! before it stopped. A pool whose runners wait behind the spinning task
//! runs none of them in that time and accepts only the queue's 1,024.
//! `--flat` calls `spawn` as fast as it can for the whole spin instead
//! (nearly every call refused for a full queue).
//! `--contended` first starts two CPU-bound processes on the same cores
//! (this binary with `--burn`), as a busy machine would. `RUNS` sets the
//! number of runs (default 20).

#[path = "support/spin.rs"]
mod spin;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Two CPU-bound processes, killed when dropped.
struct Burners(Vec<Child>);

impl Burners {
    fn start() -> Self {
        let me = std::env::current_exe().expect("this binary's path");
        Burners(
            (0..2)
                .map(|_| {
                    Command::new(&me)
                        .arg("--burn")
                        .spawn()
                        .expect("a CPU-bound child")
                })
                .collect(),
        )
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--burn") {
        // A CPU-bound neighbour; the parent kills it. Bounded anyway.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(600) {
            std::hint::spin_loop();
        }
        return;
    }
    let contended = args.iter().any(|arg| arg == "--contended");
    let pace = if args.iter().any(|arg| arg == "--flat") {
        spin::Pace::Flat
    } else {
        spin::Pace::Even
    };
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(20);
    let _burners = contended.then(Burners::start);
    let mut figures = Vec::with_capacity(runs);
    for run in 1..=runs {
        let (ran, accepted) = spin::run_once(pace);
        println!("run {run:2}: {ran:6} ran during the spin, {accepted:6} accepted");
        figures.push(ran);
    }
    figures.sort_unstable();
    let at_least = figures.iter().filter(|&&ran| ran >= spin::PROMISED).count();
    println!(
        "spinning_producer ({pace:?} pace{}): min {} median {} max {} ran during the spin; {at_least} of {runs} runs at least 2048",
        if contended { ", 2 CPU-bound neighbours" } else { "" },
        figures[0],
        figures[runs / 2],
        figures[runs - 1],
    );
}
