//! Durable jobs, measured: bg-queue's Postgres jobs against `apalis` 1.0 +
//! `apalis-postgres` 1.0 on the same database in the same run, the two
//! alternating round by round.
//!
//! ```sh
//! DATABASE_URL=$(./scripts/pg start /tmp/pg-bench) \
//!   cargo run --release --features postgres --example durable_bench
//! ```
//!
//! First, once, `sql_limit`: what Postgres itself does with the worker's
//! statements and no application in the way (pgbench, `BENCH_CLIENTS`
//! connections, 1,000,000 rows; skipped when pgbench is not installed).
//! Then `BENCH_ROUNDS` rounds, each: bg-queue's four figures without
//! telemetry, the same four with full telemetry (spans and metrics
//! exported to exporters that discard), then apalis's burn-down:
//!
//! - `burn_down`: `BENCH_JOBS` no-op jobs inserted beforehand (not timed),
//!   then worked to completion by one worker of `BENCH_PARALLELISM`
//!   handlers; jobs/s from the worker's start until the last completion
//!   is written. apalis gets the same jobs, parallelism, database and
//!   connection pool size.
//! - `enqueue_single`: up to 20,000 jobs, one per transaction, from
//!   `BENCH_CLIENTS` connections at once; `enqueue_batch`: `BENCH_JOBS`
//!   jobs in batches of 1,000 from one connection.
//! - `pickup`: enqueue to handler start on an idle worker, one job at a
//!   time, `BENCH_PICKUP_JOBS` per round.
//!
//! Prints one line per figure: throughputs are the median over the rounds
//! (each round's value on stderr), pickup percentiles are over every
//! round's jobs together.
//!
//! Settings (environment): `DATABASE_URL` (required), `BENCH_JOBS`
//! (100000), `BENCH_PARALLELISM` (100), `BENCH_ROUNDS` (3),
//! `BENCH_CLIENTS` (4), `BENCH_PICKUP_JOBS` (1000), `BENCH_APALIS` (1; 0
//! skips apalis), `BENCH_SQL_LIMIT` (1; 0 skips pgbench), `APALIS_BATCH`
//! (apalis-postgres's `batch_size`, 5000). BENCHMARKS.md, "Durable jobs",
//! has the figures and how they compare with what Postgres itself does.

mod apalis;
mod bg;
#[path = "../../benches/support/discard.rs"]
mod discard;
mod sql_limit;
mod telemetry;

use std::process::ExitCode;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use telemetry::Telemetry;

/// Connections in each system's pool (bg-queue's worker also opens one
/// for `LISTEN`, apalis's `with_pubsub` one too).
pub const POOL_SIZE: u32 = 16;

struct Settings {
    url: String,
    jobs: usize,
    parallelism: usize,
    rounds: usize,
    clients: usize,
    pickup_jobs: usize,
    apalis: bool,
    sql_limit: bool,
}

fn switch(key: &str) -> Result<bool, String> {
    match std::env::var(key).as_deref() {
        Err(_) | Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(other) => Err(format!("{key}={other:?} is not 0 or 1")),
    }
}

fn number(key: &str, default: usize) -> Result<usize, String> {
    match std::env::var(key) {
        Err(_) => Ok(default),
        Ok(value) => match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{key}={value:?} is not a positive whole number")),
        },
    }
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        Ok(Settings {
            url: std::env::var("DATABASE_URL")
                .map_err(|_| "DATABASE_URL is not set (./scripts/pg start DIR prints one)")?,
            jobs: number("BENCH_JOBS", 100_000)?,
            parallelism: number("BENCH_PARALLELISM", 100)?,
            rounds: number("BENCH_ROUNDS", 3)?,
            clients: number("BENCH_CLIENTS", 4)?,
            pickup_jobs: number("BENCH_PICKUP_JOBS", 1000)?,
            apalis: switch("BENCH_APALIS")?,
            sql_limit: switch("BENCH_SQL_LIMIT")?,
        })
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

fn spread(values: &[f64]) -> String {
    let list: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
    list.join(" ")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// Empties the table, inserts the burn-down's jobs and vacuums, so each
/// burn-down starts from the same clean table.
async fn fill(pool: &PgPool, telemetry: &Telemetry, jobs: usize) -> Result<(), String> {
    bg::reset(pool).await?;
    bg::enqueue_batch(pool, telemetry, false, jobs, 10_000).await?;
    sqlx::query("VACUUM ANALYZE bench.bg_jobs")
        .execute(pool)
        .await
        .map_err(|e| format!("vacuuming bench.bg_jobs: {e}"))?;
    Ok(())
}

async fn run(settings: Settings) -> Result<(), String> {
    let telemetry = Telemetry::install();
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect(&settings.url)
        .await
        .map_err(|e| format!("connecting to DATABASE_URL: {e}"))?;
    let limits = if settings.sql_limit {
        let limits = sql_limit::measure(&pool, &settings.url, settings.clients).await?;
        match &limits {
            Some(l) => println!(
                "sql_limit: fetch_complete_100 {:.0} jobs/s, fetch_complete_10 {:.0} jobs/s, \
                 insert_single {:.0} jobs/s, insert_select {:.0} rows/s (pgbench, {} clients)",
                l.fetch_complete_100,
                l.fetch_complete_10,
                l.insert_single,
                l.insert_select,
                settings.clients
            ),
            None => println!("sql_limit: skipped, pgbench is not installed"),
        }
        limits
    } else {
        None
    };
    let (mut plain, mut full, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    let (mut single, mut single_full, mut batch, mut batch_full) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut pickups = Vec::new();
    let mut pickups_full = Vec::new();
    for round in 1..=settings.rounds {
        for on in [false, true] {
            telemetry.set(on);
            fill(&pool, &telemetry, settings.jobs).await?;
            let rate =
                bg::burn_down(&pool, &telemetry, on, settings.jobs, settings.parallelism).await?;
            if on { &mut full } else { &mut plain }.push(rate);

            bg::reset(&pool).await?;
            let rate = bg::enqueue_single(
                &pool,
                &telemetry,
                on,
                settings.jobs.min(20_000),
                settings.clients,
            )
            .await?;
            if on { &mut single_full } else { &mut single }.push(rate);

            bg::reset(&pool).await?;
            let rate = bg::enqueue_batch(&pool, &telemetry, on, settings.jobs, 1000).await?;
            if on { &mut batch_full } else { &mut batch }.push(rate);

            bg::reset(&pool).await?;
            let latencies = bg::pickup(&pool, &telemetry, on, settings.pickup_jobs).await?;
            if on { &mut pickups_full } else { &mut pickups }.push(latencies);
        }
        telemetry.set(false);
        if settings.apalis {
            let rate =
                apalis::burn_down(&settings.url, settings.jobs, settings.parallelism).await?;
            peer.push(rate);
        }
        eprintln!(
            "round {round}: burn_down {:.0} / full telemetry {:.0} / apalis {} jobs/s",
            plain[round - 1],
            full[round - 1],
            peer.last().map_or("-".to_string(), |r| format!("{r:.0}")),
        );
    }
    let (spread_plain, spread_full) = (spread(&plain), spread(&full));
    let bg_rate = median(&mut plain);
    if settings.apalis {
        let spread_peer = spread(&peer);
        let peer_rate = median(&mut peer);
        println!(
            "burn_down: bg-queue {bg_rate:.0} jobs/s, apalis {peer_rate:.0} jobs/s, ratio {:.2}",
            bg_rate / peer_rate
        );
        eprintln!("  rounds: bg-queue {spread_plain}; apalis {spread_peer}");
    } else {
        println!("burn_down: bg-queue {bg_rate:.0} jobs/s");
        eprintln!("  rounds: {spread_plain}");
    }
    if let Some(limits) = &limits {
        eprintln!(
            "  {:.0}% of the SQL-only fetch-and-complete limit at 100 per statement",
            bg_rate / limits.fetch_complete_100 * 100.0
        );
    }
    let full_rate = median(&mut full);
    println!("burn_down_full_telemetry: bg-queue {full_rate:.0} jobs/s");
    eprintln!(
        "  rounds: {spread_full}; telemetry costs {:.0}% of burn-down throughput",
        (1.0 - full_rate / bg_rate) * 100.0
    );
    for (name, values) in [
        ("enqueue_single", &mut single),
        ("enqueue_single_full_telemetry", &mut single_full),
        ("enqueue_batch", &mut batch),
        ("enqueue_batch_full_telemetry", &mut batch_full),
    ] {
        let rounds = spread(values);
        println!("{name}: bg-queue {:.0} jobs/s", median(values));
        eprintln!("  rounds: {rounds}");
    }
    for (name, runs) in [
        ("pickup", &pickups),
        ("pickup_full_telemetry", &pickups_full),
    ] {
        let mut all: Vec<Duration> = runs.iter().flatten().copied().collect();
        all.sort();
        println!(
            "{name}: p50 {:.1} ms, p99 {:.1} ms",
            percentile(&all, 0.50),
            percentile(&all, 0.99)
        );
        for run in runs {
            eprintln!(
                "  round: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                percentile(run, 0.50),
                percentile(run, 0.99),
                percentile(run, 1.0)
            );
        }
    }
    telemetry.shutdown();
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
