//! The debug page behind the service's own auth: a bearer token read from
//! the environment (docs/security.md). The router is in
//! `support/debug_auth.rs`, quoted whole in docs/security.md.
//!
//! Run with
//!
//! ```sh
//! export DEBUG_TOKEN=$(openssl rand -hex 32)
//! cargo run --example debug_auth
//! curl -s -H "Authorization: Bearer $DEBUG_TOKEN" http://127.0.0.1:3001/debug/bg.json
//! curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:3001/debug/bg   # 401
//! ```

#[path = "support/debug_auth.rs"]
mod debug_auth;

use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    // A token too short to resist guessing is a configuration error.
    let token = match std::env::var("DEBUG_TOKEN") {
        Ok(token) if token.len() >= 32 => token,
        _ => {
            eprintln!("error: DEBUG_TOKEN: expected a secret of at least 32 characters");
            return ExitCode::from(2);
        }
    };
    let bg = bg_queue::spawn_pool();
    bg.spawn("example_task", async {});
    let app = debug_auth::protected_debug_router(bg, Arc::from(token));
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:3001").await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: cannot listen on 127.0.0.1:3001: {error}");
            return ExitCode::from(1);
        }
    };
    println!("debug page on http://127.0.0.1:3001/debug/bg (bearer token required)");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("error: {error}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
