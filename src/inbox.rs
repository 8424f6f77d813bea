//! The pool's inbox: a fixed ring of slots that any thread sends into
//! without a lock, and that one consumer (whoever holds the pool's lock)
//! empties into the queue.
//!
//! # Guarantees
//!
//! - A send never blocks and never allocates: one compare-and-swap on the
//!   tail, a write into the slot, one store. All slots are allocated by
//!   [`channel`].
//! - Every value sent is received exactly once, and each sender's values in
//!   the order it sent them. A value still in the ring when the ring goes
//!   is dropped with it.
//! - Every send that returned before a receive began is seen by that
//!   receive (the pool's snapshots rely on this to be consistent cuts).
//!
//! # How
//!
//! Each slot carries a *stamp* (Dmitry Vyukov's bounded queue): for the slot
//! at position `pos` (counted from 0 for ever, slot `pos % len`), the stamp
//! is `pos` while the slot is free for that position's sender, `pos + 1`
//! once the value is written, and `pos + len` once the consumer has taken
//! it, which frees the slot for the next lap. A sender claims a position by
//! advancing the tail, writes the value, then publishes the stamp
//! (release); the consumer reads the stamp (acquire) before the value, and
//! publishes the next lap's stamp after it.
//!
//! The ring holds at most `len` values: a send that finds its slot still
//! holding the previous lap's value gets its value back ([`Full`]), and the
//! pool then empties the ring itself (`Pool::send_to_inbox`). A receive
//! that meets a claimed slot whose value is not written yet waits for it,
//! spinning then yielding: the sender is a few instructions from done.
//!
//! The algorithm is the one `crossbeam_queue::ArrayQueue` implements for
//! many consumers; with one consumer, a receive needs no compare-and-swap.
//! It is kept over `ArrayQueue` because it is measurably faster where the
//! pool spends its time: `benches/inbox.rs`, 88-byte values, one thread
//! sending 128 then draining them (a burst of `spawn` calls, then a
//! runner's absorb), took 1.38-1.61 us against `ArrayQueue`'s 2.11-2.33 us
//! (three runs, 2026-12-07: 1.4-1.65x faster). With the sender and the
//! receiver on two threads the two are within this machine's noise (58-138
//! ns against 46-133 ns a value). The concurrency is checked by the `loom`
//! models in `src/tests/loom_inbox.rs` (`./scripts/loom`).

use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::sync::cell::UnsafeCell;
use crate::sync::{hint, AtomicUsize, Ordering};

/// Creates an inbox of `len` slots (rounded up to a power of two, at least
/// 2): the senders' side, which may be shared, and the one receiver.
///
/// At least two slots: with one, the stamp of a written value (`pos + 1`)
/// equals the stamp that frees the slot for the next lap (`pos + len`), and
/// a sender would overwrite a value not yet received (the `loom` model
/// `a_full_ring_wraps_around_in_order` finds that interleaving).
pub(crate) fn channel<T: Send>(len: usize) -> (Sender<T>, Receiver<T>) {
    let len = len.max(2).next_power_of_two();
    let slots = (0..len)
        .map(|pos| Slot {
            stamp: AtomicUsize::new(pos),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })
        .collect();
    let ring = Arc::new(Ring {
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
        slots,
        mask: len - 1,
    });
    (
        Sender {
            ring: Arc::clone(&ring),
        },
        Receiver { ring },
    )
}

/// A send into a full ring: the value, given back.
#[derive(Debug)]
pub(crate) struct Full<T>(pub(crate) T);

/// The sending side; `send` takes `&self`, from any number of threads.
pub(crate) struct Sender<T> {
    ring: Arc<Ring<T>>,
}

/// The one receiving side (not `Clone`: `recv` needs `&mut self`, so only
/// one thread at a time can take values, which the ring relies on).
pub(crate) struct Receiver<T> {
    ring: Arc<Ring<T>>,
}

/// An atomic on its own 128-byte line (two 64-byte lines: adjacent-line
/// prefetch pairs them on x86), so senders advancing the tail do not move
/// the consumer's head between cores, and the reverse.
#[repr(align(128))]
struct Padded(AtomicUsize);

struct Slot<T> {
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

struct Ring<T> {
    /// The next position to receive. Written by the receiver only.
    head: Padded,
    /// The next position to claim for a send.
    tail: Padded,
    slots: Box<[Slot<T>]>,
    /// `slots.len() - 1` (the length is a power of two).
    mask: usize,
}

// SAFETY: a value is written by the one sender that claimed its position
// and read by the one receiver, and the stamps order the two (release on
// publish, acquire before access), so each value crosses from one thread to
// another exactly once: `T: Send` is what that needs. No `&T` is ever
// shared, so `T: Sync` is not.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; every access to a slot's value is ordered by its stamp.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    fn len(&self) -> usize {
        self.mask + 1
    }
}

impl<T: Send> Sender<T> {
    /// Sends `value`, or gives it back if the ring holds `len` values not
    /// yet received. Never blocks, never allocates.
    pub(crate) fn send(&self, value: T) -> Result<(), Full<T>> {
        let ring = &*self.ring;
        let mut pos = ring.tail.0.load(Ordering::Relaxed);
        loop {
            let slot = &ring.slots[pos & ring.mask];
            let stamp = slot.stamp.load(Ordering::Acquire);
            // Positions only grow; the difference says which lap the slot
            // is on relative to `pos`, whatever the absolute values.
            let lap = stamp.wrapping_sub(pos) as isize;
            if lap == 0 {
                // Free for `pos`: claim it.
                match ring.tail.0.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the claim made this thread the only one
                        // with position `pos`, and the stamp (acquired
                        // above, equal to `pos`) says the receiver is done
                        // with the previous lap's value: nobody else reads
                        // or writes this slot until the stamp below.
                        slot.value.with_mut(|value_ptr| unsafe {
                            (*value_ptr).write(value);
                        });
                        slot.stamp.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(actual) => pos = actual,
                }
            } else if lap < 0 {
                // Still holds the value from `len` positions ago.
                return Err(Full(value));
            } else {
                // Another sender claimed `pos` meanwhile.
                pos = ring.tail.0.load(Ordering::Relaxed);
            }
        }
    }
}

impl<T: Send> Receiver<T> {
    /// Takes the oldest value, or `None` if every send that claimed a
    /// position has been received. Waits for a send that claimed the next
    /// position and has not written it yet.
    pub(crate) fn recv(&mut self) -> Option<T> {
        let ring = &*self.ring;
        let pos = ring.head.0.load(Ordering::Relaxed);
        let slot = &ring.slots[pos & ring.mask];
        let mut spins = 0u32;
        loop {
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == pos.wrapping_add(1) {
                break;
            }
            // Not written: empty, or a send between its claim and its
            // stamp. The tail tells which.
            if ring.tail.0.load(Ordering::Acquire) == pos {
                return None;
            }
            if spins < 64 {
                spins += 1;
                hint::spin_loop();
            } else {
                hint::yield_now();
            }
        }
        // SAFETY: the stamp `pos + 1` (acquired above) says the sender of
        // `pos` wrote the value and will not touch the slot again, and
        // `&mut self` makes this the only receiver: the value is
        // initialised and read once, here.
        let value = slot
            .value
            .with_mut(|value_ptr| unsafe { (*value_ptr).assume_init_read() });
        slot.stamp
            .store(pos.wrapping_add(ring.len()), Ordering::Release);
        ring.head.0.store(pos.wrapping_add(1), Ordering::Relaxed);
        Some(value)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // No sender or receiver is left, so every claimed position is
        // written: drop the values not received.
        // `&mut self`: no other thread can reach the ring, so relaxed loads
        // see the last values written.
        let tail = self.tail.0.load(Ordering::Relaxed);
        let mut pos = self.head.0.load(Ordering::Relaxed);
        while pos != tail {
            let slot = &self.slots[pos & self.mask];
            debug_assert_eq!(slot.stamp.load(Ordering::Relaxed), pos.wrapping_add(1));
            // SAFETY: position `pos` is between the head and the tail, so it
            // was claimed and (no sender being left) written, and not
            // received; `&mut self` means nobody else can reach it.
            slot.value
                .with_mut(|value_ptr| unsafe { (*value_ptr).assume_init_drop() });
            pos = pos.wrapping_add(1);
        }
    }
}

#[cfg(all(test, not(bg_queue_loom)))]
mod tests {
    use super::{channel, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    #[test]
    fn values_come_out_in_order_and_a_full_ring_gives_the_value_back() {
        let (tx, mut rx) = channel::<u32>(3);
        // Rounded up to 4.
        for value in 0..4 {
            tx.send(value).unwrap();
        }
        let Err(Full(back)) = tx.send(4) else {
            panic!("a fifth value fitted in a ring of four");
        };
        assert_eq!(back, 4);
        assert_eq!(rx.recv(), Some(0));
        // One slot free again, on the next lap.
        tx.send(4).unwrap();
        assert!(tx.send(5).is_err());
        let drained: Vec<u32> = std::iter::from_fn(|| rx.recv()).collect();
        assert_eq!(drained, [1, 2, 3, 4]);
        assert_eq!(rx.recv(), None);
    }

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn values_left_in_the_ring_are_dropped_with_it() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = channel(8);
        for _ in 0..8 {
            assert!(tx.send(Counted(drops.clone())).is_ok());
        }
        // Two received (and dropped here), six left, over the wrap point.
        drop(rx.recv());
        drop(rx.recv());
        for _ in 0..2 {
            assert!(tx.send(Counted(drops.clone())).is_ok());
        }
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        drop((tx, rx));
        assert_eq!(drops.load(Ordering::SeqCst), 10);
    }

    /// Four senders and a receiver that takes values while they send, over
    /// many laps of a small ring: every value arrives exactly once, and
    /// each sender's values in the order it sent them.
    #[test]
    fn concurrent_senders_lose_and_repeat_nothing() {
        const SENDERS: usize = 4;
        const EACH: usize = 50_000;
        let (tx, mut rx) = channel::<(usize, usize)>(16);
        let tx = Arc::new(tx);
        let start = Arc::new(Barrier::new(SENDERS + 1));
        let senders: Vec<_> = (0..SENDERS)
            .map(|sender| {
                let tx = Arc::clone(&tx);
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    for seq in 0..EACH {
                        let mut value = (sender, seq);
                        // 200,000 values through 16 slots: full at times.
                        while let Err(Full(back)) = tx.send(value) {
                            value = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        start.wait();
        let mut next = [0usize; SENDERS];
        let mut received = 0;
        while received < SENDERS * EACH {
            match rx.recv() {
                Some((sender, seq)) => {
                    assert_eq!(seq, next[sender], "sender {sender} out of order");
                    next[sender] += 1;
                    received += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for sender in senders {
            sender.join().unwrap();
        }
        assert_eq!(next, [EACH; SENDERS]);
        assert_eq!(rx.recv(), None);
    }
}
