//! Load generator for the demo: posts `checkout.session.completed` webhooks
//! at a steady rate, optionally with a fresh W3C `traceparent` on each, and
//! prints what it sent and what the service enqueued or dropped.
//!
//! Run with
//!
//! ```sh
//! cargo run --example loadgen -- --rate 50 --count 500 --traceparent
//! ```
//!
//! Flags (or environment): `--target URL` (`LOADGEN_TARGET`, default
//! `http://127.0.0.1:3000`), `--rate N` per second (`LOADGEN_RATE`, default
//! 5), `--count N` requests then stop (`LOADGEN_COUNT`, default: until
//! ctrl-c or SIGTERM), `--traceparent` (`LOADGEN_TRACEPARENT=1`). The summary
//! is one JSON line on stdout: `sent`, `ok`, `errors`, `enqueued`, `dropped`
//! and request `latency_ms` (`p50`, `p99`, `max`).
//!
//! With `STRIPE_WEBHOOK_SECRET` set (the same secret as the service), every
//! request carries a `Stripe-Signature` for its exact body, as Stripe sends.

#[path = "support/demo.rs"]
mod demo;
#[path = "support/signature.rs"]
mod signature;
#[path = "support/throttle.rs"]
mod throttle;

use std::process::ExitCode;
use std::time::Duration;

use rand::Rng as _;

struct Args {
    target: String,
    secret: Option<String>,
    rate: f64,
    count: Option<u64>,
    traceparent: bool,
}

fn parse_args() -> Result<Args, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut args = Args {
        target: env("LOADGEN_TARGET").unwrap_or_else(|| "http://127.0.0.1:3000".into()),
        secret: env("STRIPE_WEBHOOK_SECRET"),
        rate: env("LOADGEN_RATE").map_or(Ok(5.0), |v| {
            v.parse()
                .map_err(|_| format!("LOADGEN_RATE: not a number: {v:?}"))
        })?,
        count: env("LOADGEN_COUNT")
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("LOADGEN_COUNT: not a whole number: {v:?}"))
            })
            .transpose()?,
        traceparent: env("LOADGEN_TRACEPARENT").is_some_and(|v| v == "1" || v == "true"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--target" => args.target = value("--target")?,
            "--rate" => {
                args.rate = value("--rate")?
                    .parse()
                    .map_err(|_| "--rate: not a number".to_owned())?
            }
            "--count" => {
                args.count = Some(
                    value("--count")?
                        .parse()
                        .map_err(|_| "--count: not a whole number".to_owned())?,
                )
            }
            "--traceparent" => args.traceparent = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        return Err(format!(
            "--rate: expected a rate from 0 to 100000 per second, got {}",
            args.rate
        ));
    }
    Ok(args)
}

#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    errors: u64,
    enqueued: u64,
    dropped: u64,
    /// Request latencies in microseconds (successful requests).
    latencies_us: Vec<u64>,
}

impl Tally {
    fn percentile_ms(&mut self, quantile: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let rank = ((quantile * self.latencies_us.len() as f64).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        self.latencies_us[rank - 1] as f64 / 1000.0
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a plain HTTP client builds");
    let url = format!("{}/webhooks/stripe", args.target.trim_end_matches('/'));
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tally = Tally::default();
    let mut in_flight = 0u64;
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        if args.count.is_some_and(|count| tally.sent >= count) {
            break;
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = interval.tick() => {}
        }
        tally.sent += 1;
        in_flight += 1;
        let body = demo::checkout_event(tally.sent).to_string();
        let mut request = client.post(&url).header("content-type", "application/json");
        if let Some(secret) = &args.secret {
            let header = signature::sign(&[secret], signature::unix_now(), body.as_bytes());
            request = request.header(signature::HEADER, header);
        }
        request = request.body(body);
        if args.traceparent {
            let mut rng = rand::rng();
            let trace: u128 = rng.random_range(1..u128::MAX);
            let span: u64 = rng.random_range(1..u64::MAX);
            request = request.header("traceparent", format!("00-{trace:032x}-{span:016x}-01"));
        }
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = match request.send().await {
                Ok(response) if response.status().is_success() => response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .map(|body| (body, started.elapsed())),
                _ => None,
            };
            let _ = done_tx.send(outcome);
        });
        while let Ok(outcome) = done_rx.try_recv() {
            in_flight -= 1;
            record(&mut tally, outcome);
        }
    }
    while in_flight > 0 {
        let Some(outcome) = done_rx.recv().await else {
            break;
        };
        in_flight -= 1;
        record(&mut tally, outcome);
    }
    let (p50, p99) = (tally.percentile_ms(0.50), tally.percentile_ms(0.99));
    let max = tally.percentile_ms(1.0);
    println!(
        "{}",
        serde_json::json!({
            "sent": tally.sent, "ok": tally.ok, "errors": tally.errors,
            "enqueued": tally.enqueued, "dropped": tally.dropped,
            "latency_ms": {"p50": p50, "p99": p99, "max": max},
        })
    );
    ExitCode::SUCCESS
}

fn record(tally: &mut Tally, outcome: Option<(serde_json::Value, Duration)>) {
    let Some((body, latency)) = outcome else {
        tally.errors += 1;
        return;
    };
    tally.ok += 1;
    tally.latencies_us.push(latency.as_micros() as u64);
    let len = |key: &str| body[key].as_array().map_or(0, |a| a.len() as u64);
    tally.enqueued += len("enqueued");
    tally.dropped += len("dropped");
}

/// Ctrl-c or SIGTERM: stop sending, wait for answers, print the summary.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
