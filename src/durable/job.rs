//! Typed jobs: the trait a job type implements, and how a handler for it
//! is stored by a worker.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{Error, Result};

/// A job type: its arguments are serialized to JSON in `bg_jobs.args`, and
/// its [`NAME`](Job::NAME) in `bg_jobs.task_name` picks the handler.
///
/// `NAME` is a contract with the rows already in the table: renaming a job
/// type (or changing its fields incompatibly) strands the rows enqueued
/// under the old shape. Add fields with `#[serde(default)]` instead.
///
/// # Examples
///
/// ```
/// use bg_queue::durable::Job;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendReceiptEmail {
///     order_id: u64,
///     to: String,
/// }
///
/// impl Job for SendReceiptEmail {
///     const NAME: &'static str = "send_receipt_email";
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The stable name stored in `task_name`, the `bg.task.name` of its
    /// spans and metrics.
    const NAME: &'static str;
}

/// A row's id in `bg_jobs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobContext {
    /// The job's row id.
    pub id: JobId,
    /// This attempt's number, 1 for the first.
    pub attempt: i32,
    /// Attempts allowed before the job is discarded.
    pub max_attempts: i32,
    /// The queue the job was fetched from.
    pub queue: Arc<str>,
}

/// A failed attempt as the worker records it: the error's text (kept in
/// the row's `errors`) and its type (the span's `error.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttemptError {
    pub(crate) message: String,
    pub(crate) error_type: &'static str,
}

pub(crate) type AttemptFuture =
    Pin<Box<dyn Future<Output = std::result::Result<(), AttemptError>> + Send + 'static>>;

/// A registered handler, erased: from the row's JSON to the attempt's
/// future, or the decoding error when the JSON does not fit the job type.
pub(crate) type ErasedHandler = Arc<
    dyn Fn(&str, JobContext) -> std::result::Result<AttemptFuture, serde_json::Error> + Send + Sync,
>;

/// Handlers by job name.
#[derive(Default, Clone)]
pub(crate) struct Registry {
    handlers: HashMap<&'static str, ErasedHandler>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    pub(crate) fn register<J, F, Fut, E>(&mut self, handler: F) -> Result<()>
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        if self.handlers.contains_key(J::NAME) {
            return Err(Error::DuplicateHandler(J::NAME));
        }
        let erased: ErasedHandler = Arc::new(move |args: &str, cx: JobContext| {
            let job: J = serde_json::from_str(args)?;
            let run = handler(job, cx);
            Ok(Box::pin(async move {
                run.await.map_err(|error| AttemptError {
                    message: error.to_string(),
                    error_type: short_type_name::<E>(),
                })
            }) as AttemptFuture)
        });
        self.handlers.insert(J::NAME, erased);
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<&ErasedHandler> {
        self.handlers.get(name)
    }

    /// The registered names: the worker fetches only these.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.keys().map(|name| name.to_string()).collect();
        names.sort();
        names
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

/// `std::any::type_name` without the module path (`io::Error` -> `Error`),
/// the way `error.type` reads in the in-memory pool.
fn short_type_name<E: 'static>() -> &'static str {
    let full = std::any::type_name::<E>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_type_names_drop_the_path() {
        assert_eq!(short_type_name::<std::io::Error>(), "Error");
        assert_eq!(short_type_name::<String>(), "String");
        assert_eq!(short_type_name::<&str>(), "&str");
    }
}
