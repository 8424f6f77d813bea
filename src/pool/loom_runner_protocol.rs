//! The spawn / runner-exit / park protocol: no admitted task is ever left
//! with no runner (the lost wake-up of a separate semaphore and queue).
//!
//! The models drive the pool's own [`Admission`] and [`RunnerWord`] with
//! the same calls, in the same order, as `spawn` (`admission.rs`,
//! `launch.rs`) and a runner (`runner.rs`). The queue behind them is a
//! counter under a mutex, as the pool's queue is under its lock; a
//! `loom::sync::Notify` stands in for the standby's `tokio::sync::Notify`
//! (both keep one permit for a wake-up that comes before the wait).

use std::sync::Arc;

use loom::sync::{Mutex, Notify};
use loom::thread;

use super::admission::Admission;
use super::runner_word::{Launch, RunnerWord};

/// One pool's protocol state, with parallelism 1 and a runner already
/// counted and running.
struct Model {
    admission: Admission,
    runners: RunnerWord,
    /// Tasks sent and not yet taken.
    queue: Mutex<u64>,
    standby: Notify,
}

impl Model {
    fn new() -> Arc<Self> {
        let model = Model {
            admission: Admission::new(true),
            runners: RunnerWord::new(),
            queue: Mutex::new(0),
            standby: Notify::new(),
        };
        assert!(model.runners.rejoin(1), "the running runner is counted");
        Arc::new(model)
    }

    /// `spawn`: claims a place, sends the task, then claims a runner.
    /// What it launched, if anything.
    fn spawn(&self) -> Option<Launch> {
        let mut word = self.admission.peek();
        loop {
            Admission::check(word, 8).expect("room in the model's queue");
            match self.admission.try_claim(word) {
                Ok(()) => break,
                Err(actual) => word = actual,
            }
        }
        *self.queue.lock().unwrap() += 1;
        let admitted = Admission::waiting_in(word) + 1;
        let launch = self.runners.claim_for_spawn(admitted, false, 1).ok();
        if launch == Some(Launch::WakeStandby) {
            self.standby.notify();
        }
        launch
    }

    /// A runner's take under the lock: whether it took a task.
    fn take(&self) -> bool {
        let mut queue = self.queue.lock().unwrap();
        if *queue == 0 {
            return false;
        }
        *queue -= 1;
        self.admission.take_one();
        true
    }

    /// Tasks sent and not taken.
    fn queued(&self) -> u64 {
        *self.queue.lock().unwrap()
    }
}

/// The runner finds the queue empty and may not park: it steps out, and
/// stays if a task was admitted meanwhile. Racing it, `spawn` admits a
/// task and finds the runner still counted (so it starts none) or gone
/// (so it starts one): never neither.
#[test]
fn a_task_spawned_while_the_last_runner_leaves_gets_a_runner() {
    loom::model(|| {
        let model = Model::new();
        let runner = {
            let model = Arc::clone(&model);
            thread::spawn(move || {
                let mut ran = 0;
                loop {
                    if model.take() {
                        ran += 1;
                        continue;
                    }
                    model.runners.step_out();
                    if model.admission.admitted_latest() > 0 && model.runners.rejoin(1) {
                        // Stays: it lingers (yields) and looks again.
                        thread::yield_now();
                        continue;
                    }
                    return ran;
                }
            })
        };
        let launched = model.spawn();
        let ran = runner.join().unwrap();
        if ran == 0 {
            assert_eq!(
                launched,
                Some(Launch::StartRunner),
                "the runner left without the task and spawn started none"
            );
            assert_eq!(model.queued(), 1);
        } else {
            assert_eq!(model.queued(), 0);
        }
    });
}

/// The runner parks as the standby while `spawn` admits a task: either
/// `spawn` sees the parked bit and wakes it, or the runner sees the task
/// and does not wait. `loom` fails the model if the runner waits for ever.
#[test]
fn a_task_spawned_while_the_runner_parks_wakes_it() {
    loom::model(|| {
        let model = Model::new();
        let runner = {
            let model = Arc::clone(&model);
            thread::spawn(move || {
                while !model.take() {
                    assert!(model.runners.try_park(|| !model.admission.is_closed()));
                    if !model.admission.anything_to_do() {
                        model.standby.wait();
                    }
                    model.runners.leave_standby();
                    // Woken or not waiting: a task was admitted, and may
                    // still be on its way into the queue.
                    thread::yield_now();
                }
            })
        };
        let launched = model.spawn();
        runner.join().unwrap();
        assert_ne!(
            launched,
            Some(Launch::StartRunner),
            "the standby was counted"
        );
        assert_eq!(model.queued(), 0, "the task was taken");
    });
}
