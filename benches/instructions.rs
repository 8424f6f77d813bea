//! Instructions per task, counted by valgrind's callgrind: a figure that,
//! unlike wall-clock time on a noisy 2-core machine, moves by a few percent
//! at most between runs (up to 9% seen with metrics on: the workers and the
//! SDK's threads interleave differently, and the metric reader's period is
//! wall-clock time).
//!
//! `cargo bench --bench instructions` builds this binary and runs it under
//! `valgrind --tool=callgrind` once per implementation and telemetry mode,
//! with `TASKS` tasks and with none; the difference divided by `TASKS` is the
//! cost of one task, all threads included (the caller, the runners or the
//! drainer, the SDK's batch span processor). Figures are in BENCHMARKS.md.
//!
//! Counting instructions says nothing about waiting, cache misses or how the
//! work spreads over the two cores: the criterion benchmarks in
//! `throughput.rs` measure that.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/seed.rs"]
mod seed;

use std::process::Command;
use std::sync::Arc;

use harness::{Latch, Mode, Setup, Sixteen, CHUNK};

/// Tasks per counted run.
const TASKS: usize = 20_000;

/// Set in the environment of the runs under valgrind.
const CHILD: &str = "BG_QUEUE_INSTRUCTIONS_CHILD";

/// (implementation, mode) pairs, in the order of the table.
const CASES: &[(&str, &str)] = &[
    ("seed", "Off"),
    ("bg-queue", "Off"),
    ("tokio::spawn", "Off"),
    ("seed", "Metrics"),
    ("bg-queue", "Metrics"),
    ("bg-queue (busy_time off)", "Metrics"),
    ("bg-queue (bound_metrics off)", "Metrics"),
    ("bg-queue (bound_metrics off, busy_time off)", "Metrics"),
    ("tokio::spawn", "Metrics"),
    ("seed", "Full"),
    ("bg-queue", "Full"),
    ("bg-queue (RunSpan::OpenTelemetry)", "Full"),
    ("bg-queue", "FullLean"),
    ("tokio::spawn", "Full"),
];

fn mode(name: &str) -> Mode {
    match name {
        "Off" => Mode::Off,
        "Metrics" => Mode::Metrics,
        "Full" => Mode::Full,
        "FullLean" => Mode::FullLean,
        other => panic!("unknown mode {other:?}"),
    }
}

/// One counted run: `tasks` no-op tasks through `implementation`, in bursts
/// of `CHUNK` from a worker task, as in `throughput.rs`.
fn child(implementation: &str, mode_name: &str, tasks: usize) {
    let setup = Setup::new(mode(mode_name));
    let submit: Arc<dyn Fn(Sixteen) + Send + Sync> = match implementation {
        "seed" => {
            let tx = setup.runtime.block_on(async { seed::spawn_pool() });
            Arc::new(move |task| tx.spawn("noop", task))
        }
        "bg-queue" => {
            let pool = setup.pool(1024, 8);
            Arc::new(move |task| pool.spawn("noop", task))
        }
        "bg-queue (busy_time off)" => {
            let pool = setup.builder(1024, 8).busy_time(false).build().unwrap();
            Arc::new(move |task| pool.spawn("noop", task))
        }
        "bg-queue (bound_metrics off)" => {
            let pool = setup.builder(1024, 8).bound_metrics(false).build().unwrap();
            Arc::new(move |task| pool.spawn("noop", task))
        }
        "bg-queue (bound_metrics off, busy_time off)" => {
            let pool = setup
                .builder(1024, 8)
                .bound_metrics(false)
                .busy_time(false)
                .build()
                .unwrap();
            Arc::new(move |task| pool.spawn("noop", task))
        }
        "bg-queue (RunSpan::OpenTelemetry)" => {
            let pool = setup
                .builder(1024, 8)
                .run_span(bg_queue::RunSpan::OpenTelemetry)
                .build()
                .unwrap();
            Arc::new(move |task| pool.spawn("noop", task))
        }
        "tokio::spawn" => Arc::new(|task| {
            tokio::spawn(task);
        }),
        other => panic!("unknown implementation {other:?}"),
    };
    setup.runtime.block_on(async {
        tokio::spawn(async move {
            let latch = Latch::new();
            let mut submitted = 0;
            while submitted < tasks {
                let burst = (tasks - submitted).min(CHUNK);
                for _ in 0..burst {
                    submit(Sixteen {
                        latch: latch.clone(),
                        pad: 0,
                    });
                }
                submitted += burst;
                latch.wait_for(submitted).await;
            }
        })
        .await
        .unwrap();
    });
}

/// Instructions of one run of this binary under callgrind.
fn count(implementation: &str, mode_name: &str, tasks: usize) -> u64 {
    let me = std::env::current_exe().expect("the benchmark's own path");
    let output = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(&me)
        .args([implementation, mode_name, &tasks.to_string()])
        .env(CHILD, "1")
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run valgrind ({error}); install it (Debian: apt-get install valgrind)")
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{implementation} / {mode_name} failed under valgrind:\n{stderr}"
    );
    stderr
        .lines()
        .find_map(|line| line.split("Collected : ").nth(1))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no instruction count in valgrind's output:\n{stderr}"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os(CHILD).is_some() {
        let tasks = args[2].parse().expect("a task count");
        child(&args[0], &args[1], tasks);
        return;
    }
    // `cargo bench` passes `--bench` (and a filter, if one was given): run
    // the cases whose "implementation/mode" contains the filter.
    let filter = args.iter().find(|arg| !arg.starts_with("--"));
    println!("instructions per task (callgrind, {TASKS} tasks, all threads)");
    let mut seed_per_task = None;
    for &(implementation, mode_name) in CASES {
        let name = format!("{implementation}/{mode_name}");
        if filter.is_some_and(|filter| !name.contains(filter.as_str())) {
            continue;
        }
        let empty = count(implementation, mode_name, 0);
        let full = count(implementation, mode_name, TASKS);
        let per_task = full.saturating_sub(empty) as f64 / TASKS as f64;
        if implementation == "seed" {
            seed_per_task = Some(per_task);
        }
        let ratio = seed_per_task
            .map(|seed| format!("{:.2}x the seed", per_task / seed))
            .unwrap_or_default();
        println!("{name:<45} {per_task:>9.0}  {ratio}");
    }
}
