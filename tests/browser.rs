//! `/debug/bg` in a real browser: headless Chromium loads the page from a
//! running server, shows the current depth, and shows the new depth after
//! more tasks are queued, without a reload. Saves a screenshot to
//! `test-artifacts/debug-page.png`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use bg_queue::{BackgroundTx, Builder, DebugPage};

/// Debian's `/usr/bin/chromium` (`CHROMIUM` overrides); `./scripts/test`
/// installs it. The test checks it exists with `common::require_tool`.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Seconds a Chromium run may take before `timeout` kills it (exit status
/// 124), so that a stuck browser fails the test instead of hanging it.
const CHROMIUM_LIMIT_SECS: &str = "90";

/// Chromium with the flags this machine needs (no sandbox as root, no
/// background networking: only loopback is reachable), under coreutils'
/// `timeout`.
fn headless(profile: &std::path::Path) -> Command {
    let mut command = Command::new("timeout");
    command.args(["--kill-after=5", CHROMIUM_LIMIT_SECS]);
    command.arg(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--hide-scrollbars",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

fn queue(bg: &BackgroundTx, n: usize) {
    for _ in 0..n {
        bg.spawn("send_receipt_email", async {});
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_depth_and_updates_it_live() {
    if !common::require_tool("chromium", chromium().exists()) {
        return;
    }
    let bg = Builder::new("webhooks")
        .capacity(100)
        .parallelism(1)
        .build()
        .unwrap();
    // A failure first, with markup in its error text: the page lists it,
    // escaped.
    bg.spawn_fallible("send_receipt_email", async {
        Err::<(), _>("smtp said 550 <user@example.com>")
    });
    bg.idle().await;
    let gate = common::occupy(&bg, "blocker", 1).await;
    queue(&bg, 3);

    // The first refresh request from the page queues four more tasks: the
    // depth changes only after the page has loaded.
    let full_loads = Arc::new(AtomicUsize::new(0));
    let refreshes = Arc::new(AtomicUsize::new(0));
    let grown = Arc::new(AtomicBool::new(false));
    let app = {
        let (bg, full_loads, refreshes, grown) = (
            bg.clone(),
            full_loads.clone(),
            refreshes.clone(),
            grown.clone(),
        );
        DebugPage::new()
            .pool(bg.clone())
            .router()
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let (bg, full_loads, refreshes, grown) = (
                        bg.clone(),
                        full_loads.clone(),
                        refreshes.clone(),
                        grown.clone(),
                    );
                    async move {
                        let partial = request
                            .uri()
                            .query()
                            .is_some_and(|q| q.contains("partial=1"));
                        if partial {
                            refreshes.fetch_add(1, Ordering::SeqCst);
                            if !grown.swap(true, Ordering::SeqCst) {
                                queue(&bg, 4);
                            }
                        } else if request.uri().path() == "/debug/bg" {
                            full_loads.fetch_add(1, Ordering::SeqCst);
                        }
                        next.run(request).await
                    }
                },
            ))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/debug/bg", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let profile = std::env::temp_dir().join(format!("bgq-chromium-{}", std::process::id()));
    let dom = {
        let mut command = headless(&profile);
        // Virtual time runs the page's 2 s refresh timer several times;
        // it waits for the page's fetches to complete.
        command.args(["--virtual-time-budget=9000", "--dump-dom", &url]);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    };
    let html = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.status.success(),
        "chromium failed ({}; 124 is the {CHROMIUM_LIMIT_SECS} s limit): {}",
        dom.status,
        String::from_utf8_lossy(&dom.stderr)
    );
    assert_eq!(
        full_loads.load(Ordering::SeqCst),
        1,
        "the page was loaded once, not reloaded"
    );
    assert!(
        refreshes.load(Ordering::SeqCst) >= 1,
        "the page never refreshed itself"
    );
    assert!(
        html.contains("queued 7 / 100"),
        "new depth not shown live:\n{html}"
    );
    assert!(html.contains("running 1 / 1"));
    assert!(
        html.contains("<span id=\"stale\"></span>"),
        "a refresh failed"
    );
    assert!(
        html.contains("Recent failures"),
        "no failures section:\n{html}"
    );
    assert!(
        html.contains("smtp said 550 &lt;user@example.com&gt;"),
        "the failure's error text is not shown escaped:\n{html}"
    );
    assert!(!html.contains("<user@example.com>"));

    // A screenshot for people (and the README).
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("debug-page.png");
    let _ = std::fs::remove_file(&shot);
    let mut command = headless(&profile);
    command.args([
        "--window-size=1280,1500",
        "--virtual-time-budget=3000",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed ({}; 124 is the {CHROMIUM_LIMIT_SECS} s limit): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "screenshot is only {} bytes", png.len());

    let _ = std::fs::remove_dir_all(&profile);
    gate.add_permits(1);
    bg.idle().await;
}
