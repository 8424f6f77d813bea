//! The runner word: how many runners a pool has, and what they are doing,
//! in one atomic that `spawn` and the runners update without the lock.
//!
//! # Layout
//!
//! | bits  | meaning |
//! |-------|---------|
//! | 0-29  | runners counted (never more than `parallelism`) |
//! | 30    | [`STANDBY`]: one runner holds the standby place |
//! | 31    | [`PARKED`]: the standby runner is parked, waiting for `spawn` |
//! | 32-47 | runners lingering (found the queue empty, yielded once) |
//! | 48-63 | runners pending (started or woken, not polled since) |
//!
//! # The guarantee: no task is left without a runner
//!
//! A producer increments the admission word *then* reads this word (in
//! [`RunnerWord::claim_for_spawn`]); a runner about to leave decrements its
//! count here *then* reads the admission word (in [`RunnerWord::step_out`]
//! and [`RunnerWord::rejoin`]), and a runner about to park sets [`PARKED`]
//! *then* reads the admission word. Of two racing sides at least one sees
//! the other: either the producer claims a runner, or the runner stays.
//! Every update of both words is a `SeqCst` read-modify-write, and the
//! runner reads the admission word with one too (`Admission::latest`), so
//! this holds through release and acquire alone: whichever of the
//! runner's read and the producer's claim comes later in the admission
//! word's order sees the other side's step. The `loom` model
//! `loom_runner_protocol.rs` checks it for every interleaving.

use crate::sync::{AtomicU64, Ordering};

/// One runner (its bits below [`STANDBY`] count runners).
pub(super) const RUNNER: u64 = 1;
/// One runner holds the standby place, from the moment it parks until it
/// is polled again after its wake-up (or dropped). So at most one runner
/// is ever parked, and [`PARKED`] always belongs to it.
pub(super) const STANDBY: u64 = 1 << 30;
/// The standby runner is parked, still counted. Whoever clears the bit
/// counts the standby [`PENDING`] and owes it one wake-up.
pub(super) const PARKED: u64 = 1 << 31;
/// One lingering runner.
pub(super) const LINGERING: u64 = 1 << 32;
/// One pending runner.
pub(super) const PENDING: u64 = 1 << 48;
/// The runner count's bits.
const RUNNERS_MASK: u64 = STANDBY - 1;
/// Largest parallelism the word has room for: lingering and pending
/// runners are counted in 16 bits each.
pub(super) const MAX_RUNNERS: u64 = 0xFFFF;

/// Runners counted in a word.
#[inline]
pub(super) fn runners(word: u64) -> u64 {
    word & RUNNERS_MASK
}

/// Lingering runners counted in a word.
#[inline]
pub(super) fn lingering(word: u64) -> u64 {
    (word / LINGERING) & 0xFFFF
}

/// Pending runners counted in a word.
#[inline]
pub(super) fn pending(word: u64) -> u64 {
    word / PENDING
}

/// Whether the word's standby runner is parked.
#[inline]
pub(super) fn is_parked(word: u64) -> bool {
    word & PARKED != 0
}

/// The word after claiming a runner for waiting tasks, counted pending:
/// the parked standby if there is one, else a new runner if fewer than
/// `limit` exist; `None` if neither.
#[inline]
pub(super) fn claim_runner(word: u64, limit: u64) -> Option<u64> {
    if is_parked(word) {
        Some((word & !PARKED) + PENDING)
    } else {
        (runners(word) < limit).then_some(word + RUNNER + PENDING)
    }
}

/// What a claim took: wake the parked standby, or start a new runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Launch {
    /// The standby was parked: its [`PARKED`] bit is cleared, and the
    /// claimer owes it one wake-up.
    WakeStandby,
    /// A runner was counted: the claimer owes the pool a new runner task.
    StartRunner,
}

impl Launch {
    /// What claiming in a word that was `previous` took.
    #[inline]
    fn from_previous(previous: u64) -> Launch {
        if is_parked(previous) {
            Launch::WakeStandby
        } else {
            Launch::StartRunner
        }
    }
}

/// The atomic runner word. Every update is `SeqCst`: the guarantee above
/// pairs each update here with a read of the admission word, and only a
/// total order makes "one of the two sees the other" hold.
#[derive(Debug)]
pub(super) struct RunnerWord(AtomicU64);

impl RunnerWord {
    pub(super) fn new() -> Self {
        RunnerWord(AtomicU64::new(0))
    }

    #[inline]
    pub(super) fn load(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    #[inline]
    fn update(&self, f: impl FnMut(u64) -> Option<u64>) -> Result<u64, u64> {
        self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, f)
    }

    /// `spawn`'s claim, after it admitted its task: `admitted` tasks wait.
    ///
    /// Claims nothing when at least `admitted` runners linger (each looks
    /// at the queue again before it leaves), or when `mine` (the caller's
    /// thread launched the runner still pending) and a runner is pending.
    /// Otherwise claims the parked standby or a new runner.
    ///
    /// # Errors
    ///
    /// The word as it was, when nothing was claimed.
    #[inline]
    pub(super) fn claim_for_spawn(
        &self,
        admitted: u64,
        mine: bool,
        limit: u64,
    ) -> Result<Launch, u64> {
        self.update(|word| {
            if lingering(word) >= admitted || (mine && pending(word) > 0) {
                None
            } else {
                claim_runner(word, limit)
            }
        })
        .map(Launch::from_previous)
    }

    /// A runner's claim for `waiting` tasks behind the one it took: only
    /// while fewer runners linger or are pending than tasks wait.
    #[inline]
    pub(super) fn claim_for_waiting(&self, waiting: u64, limit: u64) -> Option<Launch> {
        self.update(|word| {
            if lingering(word) + pending(word) >= waiting {
                None
            } else {
                claim_runner(word, limit)
            }
        })
        .ok()
        .map(Launch::from_previous)
    }

    /// Claims the parked standby or a new runner, whatever else is counted.
    #[inline]
    pub(super) fn claim(&self, limit: u64) -> Option<Launch> {
        self.update(|word| claim_runner(word, limit))
            .ok()
            .map(Launch::from_previous)
    }

    /// A launched runner's first poll: it is no longer pending.
    #[inline]
    pub(super) fn polled(&self) {
        self.0.fetch_sub(PENDING, Ordering::SeqCst);
    }

    /// A runner found the queue empty and yields once before looking again.
    #[inline]
    pub(super) fn begin_linger(&self) {
        self.0.fetch_add(LINGERING, Ordering::SeqCst);
    }

    /// A lingering runner looks again (or is dropped).
    #[inline]
    pub(super) fn end_linger(&self) {
        self.0.fetch_sub(LINGERING, Ordering::SeqCst);
    }

    /// A runner steps out of the count. Before it leaves, it must read the
    /// admission word and [`rejoin`](Self::rejoin) if a task is waiting.
    pub(super) fn step_out(&self) {
        self.0.fetch_sub(RUNNER, Ordering::SeqCst);
    }

    /// Counts a runner that stepped out back in, if fewer than `limit` are
    /// counted; whether it did (then it stays).
    pub(super) fn rejoin(&self, limit: u64) -> bool {
        self.update(|word| (runners(word) < limit).then_some(word + RUNNER))
            .is_ok()
    }

    /// Takes the standby place and parks, if no runner holds it and
    /// `may_park()` (read inside the update: the pool is open and has
    /// handles). After it, the runner must read the admission word, and not
    /// wait if a task was admitted.
    pub(super) fn try_park(&self, may_park: impl Fn() -> bool) -> bool {
        self.update(|word| (word & STANDBY == 0 && may_park()).then_some(word | STANDBY | PARKED))
            .is_ok()
    }

    /// Clears [`PARKED`] and counts the standby pending; whether this call
    /// did (it then owes the standby one wake-up).
    pub(super) fn unpark(&self) -> bool {
        self.update(|word| is_parked(word).then_some((word & !PARKED) + PENDING))
            .is_ok()
    }

    /// The standby runner, running again (or dropped), gives its place up:
    /// it clears [`PARKED`] if nobody did, or else steps out of the pending
    /// count its waker put it in.
    pub(super) fn leave_standby(&self) {
        let _ = self.update(|word| {
            Some(if is_parked(word) {
                word & !(PARKED | STANDBY)
            } else {
                (word & !STANDBY) - PENDING
            })
        });
    }
}

#[cfg(all(test, not(bg_queue_loom)))]
mod tests {
    use super::*;

    #[test]
    fn fields_pack_and_unpack_independently() {
        let word = 3 * RUNNER + STANDBY + PARKED + 5 * LINGERING + 7 * PENDING;
        assert_eq!(runners(word), 3);
        assert_eq!(lingering(word), 5);
        assert_eq!(pending(word), 7);
        assert!(is_parked(word));
        // The largest counts fit without spilling into a neighbour.
        let full = MAX_RUNNERS * RUNNER + MAX_RUNNERS * LINGERING + MAX_RUNNERS * PENDING;
        assert_eq!(runners(full), MAX_RUNNERS);
        assert_eq!(lingering(full), MAX_RUNNERS);
        assert_eq!(pending(full), MAX_RUNNERS);
        assert!(!is_parked(full));
        assert_eq!(full & STANDBY, 0);
    }

    #[test]
    fn a_claim_wakes_the_parked_standby_before_starting_a_runner() {
        let parked = 2 * RUNNER + STANDBY + PARKED;
        let woken = claim_runner(parked, 8).unwrap();
        assert!(!is_parked(woken));
        assert_eq!(runners(woken), 2, "waking starts no runner");
        assert_eq!(pending(woken), 1);
        assert_eq!(woken & STANDBY, STANDBY, "the place stays taken");

        let started = claim_runner(2 * RUNNER, 8).unwrap();
        assert_eq!(runners(started), 3);
        assert_eq!(pending(started), 1);
    }

    #[test]
    fn a_claim_at_the_limit_takes_nothing() {
        assert_eq!(claim_runner(8 * RUNNER, 8), None);
        assert_eq!(claim_runner(8 * RUNNER + 3 * LINGERING, 8), None);
    }

    #[test]
    fn spawn_leaves_tasks_to_lingering_runners_and_its_own_pending_one() {
        let word = RunnerWord::new();
        assert_eq!(word.claim_for_spawn(1, false, 8), Ok(Launch::StartRunner));
        // Its own runner is pending: no second claim from that thread...
        assert!(word.claim_for_spawn(2, true, 8).is_err());
        // ...but another thread does not rely on it.
        assert_eq!(word.claim_for_spawn(2, false, 8), Ok(Launch::StartRunner));
        word.polled();
        word.polled();
        word.begin_linger();
        word.begin_linger();
        assert!(
            word.claim_for_spawn(2, false, 8).is_err(),
            "two lingering runners take two tasks"
        );
        assert_eq!(word.claim_for_spawn(3, false, 8), Ok(Launch::StartRunner));
    }

    #[test]
    fn the_standby_is_parked_once_and_unparked_once() {
        let word = RunnerWord::new();
        assert!(word.rejoin(1));
        assert!(word.try_park(|| true));
        assert!(!word.try_park(|| true), "one standby at most");
        assert!(word.unpark());
        assert!(!word.unpark(), "one wake-up per park");
        word.leave_standby();
        assert_eq!(word.load(), RUNNER, "back to one plain runner");
        assert!(!word.try_park(|| false), "a closed pool parks nobody");
    }
}
