//! A producer that calls `spawn` in a loop without yielding for 300 ms, on
//! a 2-worker runtime, does not starve the pool: at least 2,048 of its
//! 50,000 no-op tasks run during the spin (`examples/spinning_producer.rs`
//! gives the figures over 20 runs, quiet and contended, in BENCHMARKS.md).

#[path = "../examples/support/spin.rs"]
mod spin;

/// Needs a second CPU: the tasks run on the worker the producer does not
/// hold, and with one CPU that worker's thread only runs when the OS
/// preempts the producer.
#[test]
fn a_producer_that_never_yields_does_not_starve_the_pool() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        println!("skipped: needs 2 CPUs, this machine has {cpus}");
        return;
    }
    for pace in [spin::Pace::Even, spin::Pace::Flat] {
        let (ran, accepted) = spin::run_once(pace);
        assert!(
            ran >= spin::PROMISED,
            "{pace:?} pace: only {ran} tasks ran during the {:?} spin ({accepted} accepted)",
            spin::SPIN
        );
    }
}
