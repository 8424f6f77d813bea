//! The inbox: concurrent senders and a receiver lose nothing, repeat
//! nothing, keep each sender's order, and the ring's `Drop` frees what is
//! left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use loom::thread;

use crate::inbox::{channel, Full};

/// Sends `value`, yielding to the model while the ring is full.
fn send_retrying<T: Send>(tx: &crate::inbox::Sender<T>, mut value: T) {
    while let Err(Full(back)) = tx.send(value) {
        value = back;
        thread::yield_now();
    }
}

#[test]
fn two_senders_and_a_receiver_lose_and_repeat_nothing() {
    loom::model(|| {
        let (tx, mut rx) = channel::<u32>(2);
        let tx = Arc::new(tx);
        let senders: Vec<_> = [1, 2]
            .into_iter()
            .map(|value| {
                let tx = Arc::clone(&tx);
                thread::spawn(move || send_retrying(&tx, value))
            })
            .collect();
        // One receive while the senders run, the rest after.
        let mut received: Vec<u32> = rx.recv().into_iter().collect();
        for sender in senders {
            sender.join().unwrap();
        }
        received.extend(std::iter::from_fn(|| rx.recv()));
        received.sort_unstable();
        assert_eq!(received, [1, 2]);
    });
}

#[test]
fn a_full_ring_wraps_around_in_order() {
    loom::model(|| {
        // The smallest ring, two slots: the third send must wait for the
        // first receive, and lands on the next lap.
        let (tx, mut rx) = channel::<u32>(1);
        let sender = thread::spawn(move || {
            for value in 1..=3 {
                send_retrying(&tx, value);
            }
        });
        let mut received = Vec::new();
        while received.len() < 3 {
            match rx.recv() {
                Some(value) => received.push(value),
                None => thread::yield_now(),
            }
        }
        sender.join().unwrap();
        assert_eq!(received, [1, 2, 3]);
        assert_eq!(rx.recv(), None);
    });
}

/// Counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dropping_the_ring_frees_every_value_once() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = channel(2);
        let tx = Arc::new(tx);
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let tx = Arc::clone(&tx);
                let drops = Arc::clone(&drops);
                thread::spawn(move || send_retrying(&tx, Counted(drops)))
            })
            .collect();
        // A value received while the senders run is dropped here; the rest
        // go with the ring.
        drop(rx.recv());
        for sender in senders {
            sender.join().unwrap();
        }
        drop((tx, rx));
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    });
}
