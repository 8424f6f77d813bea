//! The observable instruments: read from the pool at each metric
//! collection, so the hot paths pay nothing for them.

use std::sync::Weak;
use std::time::Duration;

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use super::names;
use super::table::definition;
use super::TaskAttributes;
use crate::stats::TaskStats;
use crate::DropReason;

/// What the observable instruments read from a pool at each collection.
/// The pool implements it; telemetry knows nothing else of the pool.
pub(crate) trait PoolView: Send + Sync + 'static {
    /// `bg.pool.name` with the pool's name.
    fn name_attribute(&self) -> KeyValue;
    /// The pool's capacity.
    fn capacity(&self) -> usize;
    /// The pool's parallelism.
    fn parallelism(&self) -> usize;
    /// Age of the oldest queued task, zero when none is queued.
    fn oldest_queued_age(&self) -> Duration;
    /// Calls `f` with each task name's attributes and counters, under the
    /// pool's lock (one consistent cut).
    fn for_each_task(&self, f: &mut dyn FnMut(&TaskAttributes, &TaskStats));
    /// Hands the histogram values the pool holds in batches to the meter.
    fn flush_records(&self);
}

/// The pool, if it is still there, its held histogram values handed to the
/// meter first. Every callback starts here: the SDK runs all callbacks
/// before it reads any histogram, so a collection sees every value recorded
/// before it began, as long as one of the pool's observable instruments is
/// kept (see `batches.rs`).
fn live(pool: &Weak<dyn PoolView>) -> Option<std::sync::Arc<dyn PoolView>> {
    let pool = pool.upgrade()?;
    pool.flush_records();
    Some(pool)
}

/// Registers the pool's observable instruments. They hold the pool weakly:
/// a pool that is gone reports nothing.
pub(crate) fn register_observers(meter: &Meter, pool: Weak<dyn PoolView>) {
    let spawned = definition("bg.task.spawned");
    let weak = pool.clone();
    meter
        .u64_observable_counter(spawned.name)
        .with_unit(spawned.unit)
        .with_description(spawned.description)
        .with_callback(move |observer| {
            if let Some(pool) = live(&weak) {
                pool.for_each_task(&mut |attrs, stats| {
                    observer.observe(stats.spawned, &attrs.pool_task)
                });
            }
        })
        .build();

    let dropped = definition("bg.task.dropped");
    let weak = pool.clone();
    meter
        .u64_observable_counter(dropped.name)
        .with_unit(dropped.unit)
        .with_description(dropped.description)
        .with_callback(move |observer| {
            if let Some(pool) = live(&weak) {
                pool.for_each_task(&mut |attrs, stats| {
                    let counts = stats.dropped.by_reason();
                    for reason in DropReason::ALL {
                        let count = counts[reason.index()];
                        if count > 0 {
                            let mut set = attrs.pool_task.clone();
                            set.push(KeyValue::new(names::DROP_REASON, reason.as_str()));
                            observer.observe(count, &set);
                        }
                    }
                });
            }
        })
        .build();

    for (name, read) in [
        (
            "bg.queue.depth",
            (|stats| stats.queued) as fn(&TaskStats) -> u64,
        ),
        ("bg.task.active", |stats| stats.running),
    ] {
        let def = definition(name);
        let weak = pool.clone();
        meter
            .i64_observable_up_down_counter(def.name)
            .with_unit(def.unit)
            .with_description(def.description)
            .with_callback(move |observer| {
                if let Some(pool) = live(&weak) {
                    pool.for_each_task(&mut |attrs, stats| {
                        observer.observe(read(stats) as i64, &attrs.pool_task)
                    });
                }
            })
            .build();
    }

    for (name, read) in [
        (
            "bg.queue.capacity",
            (|pool| pool.capacity() as f64) as fn(&dyn PoolView) -> f64,
        ),
        ("bg.pool.parallelism", |pool| pool.parallelism() as f64),
    ] {
        let def = definition(name);
        let weak = pool.clone();
        meter
            .u64_observable_gauge(def.name)
            .with_unit(def.unit)
            .with_description(def.description)
            .with_callback(move |observer| {
                if let Some(pool) = live(&weak) {
                    observer.observe(read(&*pool) as u64, &[pool.name_attribute()]);
                }
            })
            .build();
    }

    let oldest = definition("bg.queue.oldest_age");
    meter
        .f64_observable_gauge(oldest.name)
        .with_unit(oldest.unit)
        .with_description(oldest.description)
        .with_callback(move |observer| {
            if let Some(pool) = live(&pool) {
                observer.observe(
                    pool.oldest_queued_age().as_secs_f64(),
                    &[pool.name_attribute()],
                );
            }
        })
        .build();
}
