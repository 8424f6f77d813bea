//! Calls that compile against the module bg-queue replaces, whose `spawn`
//! is `fn spawn<F>(&self, name: &'static str, fut: F) where F: Future<Output
//! = ()> + Send + 'static`. Built in editions 2021 and 2024 by
//! `./scripts/test` (`cargo check -p seed-compat-2021 -p seed-compat-2024`).
//! Futures whose body never returns (`panic!`, `todo!`, `loop {}`) have the
//! never type as their output, which only `Future<Output = ()>` turns into
//! `()` without a lint.
#![deny(warnings)]

use std::time::Duration;

use bg_queue::{spawn_pool, BackgroundTx};

/// The same construction as before: a pool from `spawn_pool()`.
pub fn pool() -> BackgroundTx {
    spawn_pool()
}

/// Every shape of `spawn` call the old module accepted.
pub fn calls(bg: &BackgroundTx, user_id: u64) {
    bg.spawn("noop", async {});
    bg.spawn("send_receipt_email", async move {
        let _ = user_id;
        tokio::time::sleep(Duration::from_millis(1)).await;
    });
    bg.spawn("panics", async { panic!("boom") });
    bg.spawn("todo", async { todo!() });
    bg.spawn("unimplemented", async { unimplemented!() });
    #[allow(clippy::empty_loop)]
    bg.spawn("never_returns", async { loop {} });
    bg.spawn("boxed", Box::pin(async {}));
    let name: &'static str = "named_elsewhere";
    bg.spawn(name, std::future::ready(()));
    let cloned = bg.clone();
    bg.spawn("spawns_more", async move {
        cloned.spawn("inner", async {});
    });
}

/// Fallible work goes through `spawn_fallible`.
pub fn fallible(bg: &BackgroundTx) {
    bg.spawn_fallible("subscribe_mailing_list", async {
        Err::<(), _>("list API answered 503")
    });
}
