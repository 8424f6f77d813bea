//! `loom` models of the crate's lock-free protocols, built only with
//! `RUSTFLAGS="--cfg bg_queue_loom"` (`./scripts/loom`). Each model is
//! small and named for the property it checks; `loom` runs it under every
//! interleaving its bounds allow.

mod loom_inbox;
mod loom_runner_protocol;
