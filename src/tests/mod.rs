//! `loom` models of the inbox ring (the pool's are in
//! `src/pool/loom_runner_protocol.rs`), built only with
//! `RUSTFLAGS="--cfg bg_queue_loom"` (`./scripts/loom`). Each model is
//! small and named for the property it checks; `loom` runs it under every
//! interleaving its bounds allow.

mod loom_inbox;
