//! Per-thread batches of the pool's bound histogram records.
//!
//! The SDK keeps one tracker per bound attribute set, behind a mutex. When
//! two workers record into the same tracker task after task, its cache
//! lines move between the cores on every record: on a 2-core machine a
//! no-op task's three records (wait, duration, busy) then cost more than
//! the rest of its run. Here each thread adds its values to a shard of its
//! own, and a shard hands a histogram's values to the SDK [`BATCH`] at a
//! time, so the tracker's lines move once per batch.
//!
//! No value waits past the next collection: the pool's observable
//! instruments empty every shard in their callbacks, which the SDK runs
//! before it reads any histogram. The pool empties them again at its
//! shutdown and when it is dropped. A `View` that drops all of the pool's
//! observable instruments removes their callbacks; values then reach the
//! SDK when a batch fills, at shutdown or when the pool is dropped.
//!
//! Only bound records are batched: they come from `opentelemetry_sdk`,
//! whose collections run those callbacks. Unbound records go to the meter
//! at once, whatever it is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::metrics::BoundHistogram;

/// Values of one histogram held before they go to the SDK together.
const BATCH: usize = 64;

/// Histograms (bound attribute sets) a shard batches at once: a task name
/// uses three (its wait, its outcome's duration, its busy time), so two
/// names run back to back on one thread fit. A ninth evicts the oldest
/// slot, whose values go to the SDK first.
const SLOTS: usize = 8;

/// Gives each thread its shard number, in the order threads first record.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// One histogram's held values.
struct Slot {
    histogram: Arc<BoundHistogram<f64>>,
    /// At most [`BATCH`] values; the capacity is kept after a flush.
    values: Vec<f64>,
}

impl Slot {
    /// Hands the values over one by one: if the SDK's record panics, the
    /// values not yet handed over stay held (a drain would drop them).
    fn flush(&mut self) {
        while let Some(value) = self.values.pop() {
            self.histogram.record(value);
        }
    }
}

/// A shard's slots, on a cache line pair of their own so that two threads'
/// shards never share a line.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Slots>);

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    /// The slot the next eviction takes.
    evict_next: usize,
}

/// A pool's shards, one per thread (threads beyond their number share).
pub(crate) struct RecordBatches {
    shards: Box<[Shard]>,
}

impl RecordBatches {
    /// Shards for `threads` threads, rounded up to a power of two.
    pub(super) fn new(threads: usize) -> Self {
        let shards = threads.clamp(1, 256).next_power_of_two();
        RecordBatches {
            shards: (0..shards).map(|_| Shard::default()).collect(),
        }
    }

    /// Adds each `(histogram, value)` to this thread's shard, under one
    /// lock; a histogram whose batch fills goes to the SDK at once.
    #[inline]
    pub(super) fn record(&self, records: &[(&Arc<BoundHistogram<f64>>, f64)]) {
        let thread = THREAD.with(|thread| *thread);
        let shard = &self.shards[thread & (self.shards.len() - 1)];
        // After a panic in the SDK's record the slots are still whole (see
        // `Slot::flush`), so a poisoned lock is used as it is.
        let mut guard = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Slots { slots, evict_next } = &mut *guard;
        for &(histogram, value) in records {
            let index = match slots
                .iter()
                .position(|slot| Arc::ptr_eq(&slot.histogram, histogram))
            {
                Some(index) => index,
                None if slots.len() < SLOTS => {
                    slots.push(Slot {
                        histogram: Arc::clone(histogram),
                        values: Vec::with_capacity(BATCH),
                    });
                    slots.len() - 1
                }
                None => {
                    let index = *evict_next % SLOTS;
                    *evict_next = evict_next.wrapping_add(1);
                    slots[index].flush();
                    slots[index].histogram = Arc::clone(histogram);
                    index
                }
            };
            let slot = &mut slots[index];
            slot.values.push(value);
            if slot.values.len() >= BATCH {
                slot.flush();
            }
        }
    }

    /// Hands every held value to the SDK.
    pub(crate) fn flush(&self) {
        for shard in self.shards.iter() {
            let mut guard = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            for slot in guard.slots.iter_mut() {
                slot.flush();
            }
        }
    }
}

impl Drop for RecordBatches {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    /// Counts recorded per histogram name, as the SDK aggregated them.
    fn counts(
        provider: &SdkMeterProvider,
        exporter: &InMemoryMetricExporter,
    ) -> Vec<(String, u64)> {
        provider.force_flush().unwrap();
        let mut counts = Vec::new();
        for resource in exporter.get_finished_metrics().unwrap() {
            for scope in resource.scope_metrics() {
                for metric in scope.metrics() {
                    if let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = metric.data()
                    {
                        let count = histogram.data_points().map(|point| point.count()).sum();
                        // A bound set is exported from its binding, at 0.
                        if count > 0 {
                            counts.push((metric.name().to_string(), count));
                        }
                    }
                }
            }
        }
        exporter.reset();
        counts
    }

    fn provider() -> (SdkMeterProvider, InMemoryMetricExporter) {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        (provider, exporter)
    }

    /// Held values reach the SDK when a batch fills, when flushed, and when
    /// the batches are dropped; more histograms than slots evict without
    /// losing a value.
    #[test]
    fn every_value_reaches_the_sdk() {
        let (provider, exporter) = provider();
        let meter = provider.meter("test");
        let histograms: Vec<_> = (0..SLOTS + 3)
            .map(|index| {
                let histogram = meter.f64_histogram(format!("h{index}")).build();
                Arc::new(histogram.bind(&[]))
            })
            .collect();
        let batches = RecordBatches::new(1);

        for _ in 0..BATCH - 1 {
            batches.record(&[(&histograms[0], 1.0)]);
        }
        assert_eq!(counts(&provider, &exporter), []);
        batches.record(&[(&histograms[0], 1.0)]);
        assert_eq!(
            counts(&provider, &exporter),
            [("h0".to_string(), BATCH as u64)]
        );

        // Round robin over more histograms than slots: every record of a
        // histogram comes after an eviction of it.
        for round in 0..5 {
            for histogram in &histograms {
                batches.record(&[(histogram, f64::from(round))]);
            }
        }
        batches.flush();
        let mut seen = counts(&provider, &exporter);
        seen.sort();
        let mut expected: Vec<_> = (0..histograms.len())
            .map(|index| {
                (
                    format!("h{index}"),
                    if index == 0 { BATCH as u64 + 5 } else { 5 },
                )
            })
            .collect();
        expected.sort();
        assert_eq!(seen, expected);

        batches.record(&[(&histograms[1], 2.0), (&histograms[2], 3.0)]);
        drop(batches);
        let seen = counts(&provider, &exporter);
        let find = |name: &str| {
            seen.iter()
                .find(|(seen, _)| seen == name)
                .map(|(_, count)| *count)
        };
        assert_eq!(find("h1"), Some(6));
        assert_eq!(find("h2"), Some(6));
    }
}
