//! Reliability under the worst conditions: floods, panics and timeouts,
//! a collector that is down, hangs or restarts, and SIGTERM under load.
//!
//! The quick tests run by default. The long ones (a minute each against a
//! down or hanging collector) are `#[ignore]`d and run by `scripts/test`
//! with `--ignored`; each prints its figures (`RELIABILITY_SECS` shortens
//! them for a local run).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_queue::{BackgroundTx, Builder, DebugPage};
use common::otlp::Receiver;
use common::process::{example, free_port, report_field, start_demo, Proc};
use opentelemetry::metrics::MeterProvider as _;
use tower::ServiceExt as _;

/// Resident set size and its peak, in KiB, of a process (`self` or a pid).
fn rss_kib(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(samples: &mut [u64], quantile: f64) -> u64 {
    samples.sort_unstable();
    let rank = ((quantile * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

async fn debug_json(bg: &BackgroundTx) -> serde_json::Value {
    let response = DebugPage::new()
        .pool(bg.clone())
        .router()
        .oneshot(
            axum::http::Request::get("/debug/bg.json")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_a_million_spawns_adds_up_exactly() {
    const CALLS_PER_PRODUCER: u64 = 250_000;
    let metrics = common::Metrics::new();
    let bg = Builder::new("flood")
        .capacity(1024)
        .parallelism(8)
        .meter(metrics.provider.meter("test"))
        .build()
        .unwrap();
    let ran = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let (rss_before, _) = rss_kib("self");
    let started = Instant::now();

    // Tasks are slower than arrivals: 8 runners x 200 us each.
    let produce = {
        let (bg, ran, accepted) = (bg.clone(), ran.clone(), accepted.clone());
        move || {
            let mut latencies = Vec::with_capacity((CALLS_PER_PRODUCER / 100) as usize);
            for i in 0..CALLS_PER_PRODUCER {
                let ran = ran.clone();
                let timed = i % 100 == 0;
                let t0 = timed.then(Instant::now);
                let result = bg.try_spawn("flood", async move {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    ran.fetch_add(1, Ordering::Relaxed);
                });
                if let Some(t0) = t0 {
                    latencies.push(t0.elapsed().as_nanos() as u64);
                }
                if result.is_ok() {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }
    };
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let produce = produce.clone();
            std::thread::spawn(produce)
        })
        .collect();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let produce = produce.clone();
            tokio::spawn(async move { produce() })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    for thread in threads {
        latencies.extend(thread.join().unwrap());
    }
    let calls = 4 * CALLS_PER_PRODUCER;
    let mid = bg.snapshot();
    assert!(mid.is_consistent());
    assert!(mid.queued <= 1024);
    bg.idle().await;
    let elapsed = started.elapsed();
    let (rss_after, peak) = rss_kib("self");

    let snapshot = bg.snapshot();
    let accepted = accepted.load(Ordering::Relaxed);
    assert_eq!(snapshot.spawned + snapshot.dropped, calls);
    assert_eq!(snapshot.spawned, accepted);
    assert_eq!(snapshot.completed, accepted);
    assert_eq!(ran.load(Ordering::Relaxed), accepted);
    assert_eq!(snapshot.dropped, snapshot.dropped_by_reason.queue_full);
    assert!(snapshot.is_consistent());

    // The page and the metrics say the same.
    let page = debug_json(&bg).await;
    assert_eq!(page["pools"][0]["spawned"], accepted);
    assert_eq!(page["pools"][0]["dropped"], calls - accepted);
    let points = metrics.collect();
    let value = |name: &str| {
        points
            .iter()
            .filter(|p| p.metric == name)
            .map(|p| p.value)
            .sum::<f64>()
    };
    assert_eq!(value("bg.task.spawned"), accepted as f64);
    assert_eq!(value("bg.task.dropped"), (calls - accepted) as f64);

    // Memory: at most 1024 queued tasks at any time, whatever the calls.
    let growth_kib = rss_after.saturating_sub(rss_before);
    assert!(growth_kib < 64 * 1024, "RSS grew by {growth_kib} KiB");
    let p99 = percentile(&mut latencies, 0.99);
    println!(
        "flood: calls={calls} accepted={accepted} dropped={} in {:.2}s; RSS {rss_before} -> {rss_after} KiB (peak {peak} KiB); spawn p99 {:.1} us ({} build)",
        calls - accepted,
        elapsed.as_secs_f64(),
        p99 as f64 / 1000.0,
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_panics_and_timeouts_keep_full_parallelism() {
    const TASKS: u64 = 2_000;
    const PARALLELISM: usize = 8;
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // 200 expected panics: keep the log readable
    let bg = Builder::new("faults")
        .capacity(TASKS as usize)
        .parallelism(PARALLELISM)
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak_after_faults = Arc::new(AtomicUsize::new(0));
    let faults_seen = Arc::new(AtomicU64::new(0));
    let (mut panics, mut timeouts, mut failures, mut oks) = (0, 0, 0, 0);
    for i in 0..TASKS {
        let (running, peak, faults) = (
            running.clone(),
            peak_after_faults.clone(),
            faults_seen.clone(),
        );
        let kind = i % 10;
        match kind {
            0 => panics += 1,
            1 => timeouts += 1,
            2 => failures += 1,
            _ => oks += 1,
        }
        bg.try_spawn_fallible("mixed", async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            // Once faults have happened, the pool must still fill up.
            if faults.load(Ordering::SeqCst) > 50 {
                peak.fetch_max(now, Ordering::SeqCst);
            }
            struct Leave(Arc<AtomicUsize>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _leave = Leave(running);
            tokio::time::sleep(Duration::from_millis(2)).await;
            match kind {
                0 => {
                    faults.fetch_add(1, Ordering::SeqCst);
                    panic!("task {i} panics")
                }
                1 => {
                    faults.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                }
                2 => Err("upstream said no"),
                _ => Ok(()),
            }
        })
        .expect("capacity holds every task");
    }
    bg.idle().await;
    std::panic::set_hook(prev_hook);
    let snapshot = bg.snapshot();
    assert_eq!(snapshot.panicked, panics);
    assert_eq!(snapshot.timed_out, timeouts);
    assert_eq!(snapshot.failed, failures);
    assert_eq!(snapshot.completed, oks);
    assert!(snapshot.is_consistent());
    assert_eq!(
        peak_after_faults.load(Ordering::SeqCst),
        PARALLELISM,
        "the pool lost runners to panics or timeouts"
    );
    println!(
        "faults: tasks={TASKS} ok={oks} failed={failures} panicked={panics} timed_out={timeouts}; parallelism after faults {}",
        peak_after_faults.load(Ordering::SeqCst)
    );
}

fn secs() -> u64 {
    std::env::var("RELIABILITY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn demo_with_endpoint(port: u16, endpoint: &str) -> Proc {
    start_demo(
        port,
        &[
            ("BG_CAPACITY", "256".into()),
            ("BG_PARALLELISM", "8".into()),
            ("BG_SHUTDOWN_GRACE_SECS", "5".into()),
            ("DEMO_EMAIL_DELAY_MS", "20".into()),
            ("DEMO_FAILURE_RATE", "0.02".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.into()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    )
}

/// Seconds a load generator run may take beyond its planned duration
/// before the test kills it and fails.
const LOADGEN_SLACK_SECS: u64 = 60;

fn loadgen(port: u16, rate: u32, count: u64) -> Proc {
    Proc::spawn(
        "loadgen",
        Command::new(example("loadgen")).args([
            "--target",
            &format!("http://127.0.0.1:{port}"),
            "--rate",
            &rate.to_string(),
            "--count",
            &count.to_string(),
            "--traceparent",
        ]),
    )
}

struct LoadRun {
    summary: serde_json::Value,
    export_log_lines: usize,
    peak_rss_kib: u64,
    exit_ok: bool,
    report: String,
    shutdown: Duration,
}

/// Runs the demo under steady load for `secs` against `endpoint`, then
/// SIGTERM; returns what the client and the process saw.
fn run_under_load(endpoint: &str, seconds: u64) -> LoadRun {
    let port = free_port();
    let demo = demo_with_endpoint(port, endpoint);
    let pid = demo.child.id().to_string();
    let rate = 100;
    let (status, stdout) = loadgen(port, rate, seconds * u64::from(rate))
        .wait_exit(Duration::from_secs(seconds + LOADGEN_SLACK_SECS));
    assert!(status.success());
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let (_, peak_rss_kib) = rss_kib(&pid);
    let export_log_lines = demo
        .stderr()
        .iter()
        .filter(|l| l.contains("opentelemetry") && (l.contains("WARN") || l.contains("ERROR")))
        .count();
    let start = Instant::now();
    let (exit, out) = demo.terminate(Duration::from_secs(30));
    LoadRun {
        summary,
        export_log_lines,
        peak_rss_kib,
        exit_ok: exit.success(),
        report: out
            .lines()
            .find(|l| l.contains("shut down"))
            .unwrap_or("")
            .to_owned(),
        shutdown: start.elapsed(),
    }
}

fn print_run(label: &str, run: &LoadRun) {
    println!(
        "{label}: requests={} ok={} enqueued={} dropped={} latency p50={}ms p99={}ms; peak RSS {} KiB; export log lines {}; shutdown {:.2}s; {}",
        run.summary["sent"],
        run.summary["ok"],
        run.summary["enqueued"],
        run.summary["dropped"],
        run.summary["latency_ms"]["p50"],
        run.summary["latency_ms"]["p99"],
        run.peak_rss_kib,
        run.export_log_lines,
        run.shutdown.as_secs_f64(),
        run.report
    );
}

fn assert_healthy(label: &str, run: &LoadRun, baseline_p99: f64, seconds: u64) {
    assert_eq!(
        run.summary["ok"], run.summary["sent"],
        "{label}: failed requests"
    );
    assert!(run.exit_ok, "{label}: non-zero exit");
    let p99 = run.summary["latency_ms"]["p99"].as_f64().unwrap();
    assert!(
        p99 <= (baseline_p99 * 5.0).max(baseline_p99 + 20.0),
        "{label}: request p99 {p99} ms against {baseline_p99} ms with a working collector"
    );
    assert!(
        run.peak_rss_kib < 256 * 1024,
        "{label}: peak RSS {} KiB",
        run.peak_rss_kib
    );
    // At most one line per exporter (2) per 5 s throttle window, plus the
    // final flush at shutdown.
    let bound = 2 * (seconds as usize / 5 + 1) + 4;
    assert!(
        run.export_log_lines <= bound,
        "{label}: {} export log lines (bound {bound})",
        run.export_log_lines
    );
    // grace (5 s) + the providers' flush deadline (5 s, both together) +
    // slack: a hanging collector must not hold the exit longer.
    assert!(
        run.shutdown < Duration::from_secs(13),
        "{label}: shutdown took {:?}",
        run.shutdown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute or more: run with --ignored (scripts/test does)"]
async fn the_demo_stays_healthy_when_the_collector_is_down_or_hangs() {
    let seconds = secs();
    // Baseline: a working receiver.
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.grpc);
    let baseline = tokio::task::spawn_blocking(move || run_under_load(&endpoint, seconds))
        .await
        .unwrap();
    print_run("collector up", &baseline);
    assert!(!receiver.spans().is_empty());
    let baseline_p99 = baseline.summary["latency_ms"]["p99"].as_f64().unwrap();

    // Down: nothing listens on the port.
    let closed = free_port();
    let down = tokio::task::spawn_blocking(move || {
        run_under_load(&format!("http://127.0.0.1:{closed}"), seconds)
    })
    .await
    .unwrap();
    print_run("collector down", &down);
    assert_healthy("collector down", &down, baseline_p99, seconds);

    // Hanging: accepts connections, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let hanging = tokio::task::spawn_blocking(move || {
        run_under_load(&format!("http://{hang_addr}"), seconds)
    })
    .await
    .unwrap();
    print_run("collector hanging", &hanging);
    assert_healthy("collector hanging", &hanging, baseline_p99, seconds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_resumes_after_the_collector_restarts() {
    // The collector is down when the demo starts ...
    let grpc_port = free_port();
    let demo_port = free_port();
    let demo = demo_with_endpoint(demo_port, &format!("http://127.0.0.1:{grpc_port}"));
    let (status, _) = tokio::task::spawn_blocking(move || {
        loadgen(demo_port, 200, 50).wait_exit(Duration::from_secs(LOADGEN_SLACK_SECS))
    })
    .await
    .unwrap();
    assert!(status.success());
    // ... then comes up on the same port.
    let receiver = Receiver::start_on(
        format!("127.0.0.1:{grpc_port}").parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let (status, _) = tokio::task::spawn_blocking(move || {
        loadgen(demo_port, 200, 50).wait_exit(Duration::from_secs(LOADGEN_SLACK_SECS))
    })
    .await
    .unwrap();
    assert!(status.success());
    let spans = receiver
        .wait_until("spans after the restart", Duration::from_secs(30), |r| {
            let spans = r.spans();
            spans
                .iter()
                .any(|s| s.name == "bg send_receipt_email")
                .then_some(spans)
        })
        .await;
    let metrics = receiver
        .wait_until("metrics after the restart", Duration::from_secs(30), |r| {
            let points = r.points();
            points
                .iter()
                .any(|p| p.metric == "bg.task.spawned")
                .then_some(points.len())
        })
        .await;
    println!(
        "restart: {} spans and {metrics} metric points arrived after the collector came back",
        spans.len()
    );
    let (exit, _) = tokio::task::spawn_blocking(move || demo.terminate(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(exit.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_and_accounts_for_every_task() {
    let receiver = Receiver::start().await;
    let port = free_port();
    let demo = start_demo(
        port,
        &[
            ("BG_CAPACITY", "64".into()),
            ("BG_PARALLELISM", "4".into()),
            ("BG_SHUTDOWN_GRACE_SECS", "1".into()),
            ("DEMO_EMAIL_DELAY_MS", "300".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", receiver.grpc),
            ),
        ],
    );
    // Load that never ends by itself; SIGTERM the demo while it runs.
    let load = loadgen(port, 200, 1_000_000);
    receiver
        .wait_until(
            "the first exported spans (load is flowing)",
            Duration::from_secs(30),
            |r| (r.spans().len() > 20).then_some(()),
        )
        .await;
    let started = Instant::now();
    let (exit, stdout) =
        tokio::task::spawn_blocking(move || demo.terminate(Duration::from_secs(30)))
            .await
            .unwrap();
    let shutdown = started.elapsed();
    let (status, out) =
        tokio::task::spawn_blocking(move || load.terminate(Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(status.success());
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(exit.success(), "exit {exit}");
    // Grace 1 s + telemetry flush (at most 5 s per provider) + slack.
    assert!(
        shutdown < Duration::from_secs(13),
        "shutdown took {shutdown:?}"
    );
    let report = stdout
        .lines()
        .find(|l| l.contains("shut down"))
        .unwrap()
        .to_owned();
    let field = |key: &str| report_field(&report, key);
    // Every spawn call the clients were told about is in the report.
    assert_eq!(
        field("spawned"),
        summary["enqueued"].as_u64().unwrap(),
        "{report} vs {summary}"
    );
    assert_eq!(
        field("dropped"),
        summary["dropped"].as_u64().unwrap(),
        "{report} vs {summary}"
    );
    assert_eq!(
        field("completed")
            + field("failed")
            + field("panicked")
            + field("timed_out")
            + field("abandoned")
            + field("running"),
        field("spawned"),
        "{report}"
    );
    assert!(
        field("abandoned") > 0,
        "the grace period should cut some work: {report}"
    );
    println!(
        "sigterm under load: shutdown {:.2}s; client saw {summary}; {report}",
        shutdown.as_secs_f64()
    );
}
