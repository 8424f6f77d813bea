//! The one error type of the durable-job API.

/// What can go wrong talking to the jobs table.
///
/// A job's own failure is not an `Error`: it is recorded in the job's row
/// (`errors`) and retried or discarded. These are failures of the library's
/// calls: a bad configuration, a job that cannot be encoded, or the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The schema name is not a plain identifier (ASCII letters, digits and
    /// `_`, starting with a letter or `_`, at most 48 bytes).
    #[error("invalid schema name {0:?}: use ASCII letters, digits and _ (at most 48 bytes)")]
    InvalidSchema(String),
    /// A job's arguments could not be serialized to JSON.
    #[error("job {task} could not be encoded as JSON: {source}")]
    Encode {
        /// The job's stable name.
        task: &'static str,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// An option is out of range (the message says which and why).
    #[error("invalid option: {0}")]
    InvalidOption(&'static str),
    /// Two handlers were registered for one job name.
    #[error("a handler for job {0:?} is already registered")]
    DuplicateHandler(&'static str),
    /// The database refused or could not be reached (connection lost,
    /// timeout, constraint, SQL error). Enqueue inside a transaction: the
    /// transaction is unusable after this and should be rolled back.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema was migrated by a newer version of this library than the
    /// running one knows (rolling back a deploy past a migration).
    #[error("schema {schema} is at version {found}, newer than this library's {known}")]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// The highest version recorded in the database.
        found: i32,
        /// The highest version this library embeds.
        known: i32,
    },
}

/// Result alias of the durable-job API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
