//! A cheap, coarse clock for the drop path.
//!
//! `Instant::now()` costs about 30 ns on a virtual machine, as much as a
//! whole refused `spawn` should. A flood of refused calls only needs to know
//! whether the clock has moved on since the last drop it recorded in full;
//! Linux's `CLOCK_MONOTONIC_COARSE` answers that in a few nanoseconds, with
//! the resolution of the kernel's tick (1-10 ms, 4 ms on most builds).

/// The current tick of the coarse monotonic clock, as nanoseconds since an
/// arbitrary origin, never 0; `None` where there is no such clock (then
/// every drop is recorded in full).
#[cfg(target_os = "linux")]
pub(crate) fn coarse_tick() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid `timespec` that lives across the call, which
    // only writes to it; the clock id is a constant Linux has had since
    // 2.6.32, and a failure is reported by the return value, not by UB.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) } != 0;
    if failed {
        return None;
    }
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u64::try_from(now.tv_nsec).ok()?;
    Some(secs.wrapping_mul(1_000_000_000).wrapping_add(nanos).max(1))
}

/// The current tick of the coarse monotonic clock: none on this platform.
#[cfg(not(target_os = "linux"))]
pub(crate) fn coarse_tick() -> Option<u64> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::coarse_tick;

    #[test]
    fn the_coarse_clock_never_goes_back_and_moves_on() {
        let first = coarse_tick().expect("Linux has a coarse clock");
        let mut last = first;
        // It moves within a kernel tick (at most 10 ms at HZ=100); give it
        // a generous bound in reads, not in time.
        for _ in 0..200_000_000u64 {
            let now = coarse_tick().unwrap();
            assert!(now >= last, "went back from {last} to {now}");
            last = now;
            if now > first {
                return;
            }
        }
        panic!("the coarse clock did not move in 200 million reads");
    }
}
